"""sngan's spectral norm against independent references: SVD, torch's two spectral norms."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as torch_legacy_sn

from sngan.spectral_norm import (
    SpectralNorm,
    apply_spectral_norm,
    exact_sigmas,
    is_spectral_normalized,
    no_power_iteration,
    remove_spectral_norm,
    sigmas,
    spectral_norm,
)


def matrix(w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return w.movedim(dim, 0).reshape(w.shape[dim], -1)


def spec(w: torch.Tensor, dim: int = 0) -> float:
    return torch.linalg.matrix_norm(matrix(w.detach(), dim), ord=2).item()


def planted(rows: int, cols: int, top: float = 3.0, ratio: float = 0.8) -> torch.Tensor:
    """U diag(s) V^T with s1 = top and s2 / s1 = ratio: power iteration converges fast."""
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64))
    s = top * ratio * torch.linspace(1.0, 0.1, k, dtype=torch.float64)
    s[0] = top
    return (u * s) @ v.T


# -- accuracy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Linear(200, 64), (64, 200)),
        (lambda: nn.Conv2d(16, 32, 3), (32, 16 * 9)),
        (lambda: nn.Conv2d(64, 8, 4), (8, 64 * 16)),
    ],
)
def test_converges_to_svd_on_planted_spectrum(make, shape):
    layer = make()
    with torch.no_grad():
        layer.weight.copy_(planted(*shape).reshape(layer.weight.shape))
    true_sigma = torch.linalg.matrix_norm(matrix(layer.weight), ord=2).item()
    spectral_norm(layer)
    x = torch.randn(2, *((200,) if isinstance(layer, nn.Linear) else (layer.in_channels, 6, 6)))
    for _ in range(100):
        layer(x)
    (estimate,) = sigmas(layer).values()
    assert estimate == pytest.approx(true_sigma, rel=1e-4)
    assert spec(layer.weight) == pytest.approx(1.0, rel=1e-4)


def test_exact_sigmas_is_the_svd_value():
    layer = spectral_norm(nn.Conv2d(4, 6, 3))
    ref = torch.linalg.svdvals(layer.weight_orig.detach().reshape(6, -1))[0].item()
    assert exact_sigmas(layer)["weight"] == pytest.approx(ref, rel=1e-6)


# -- equivalence with torch's modules ----------------------------------------------------


def _same_state(ours: nn.Module, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
    with torch.no_grad():
        ours.weight_orig.copy_(w)
        ours.weight_u.copy_(u)
        ours.weight_v.copy_(v)


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Linear(20, 10), lambda: nn.Conv2d(3, 5, 3), lambda: nn.ConvTranspose2d(4, 6, 3)],
)
def test_training_forward_matches_torch_legacy(make):
    """Same W, u, v: one training forward gives the same output and dL/dW as torch's legacy."""
    torch.manual_seed(1)
    base = make().double()  # float64, so the comparison at 1e-6 tests the maths, not rounding
    theirs = torch_legacy_sn(copy.deepcopy(base))
    ours = spectral_norm(copy.deepcopy(base))
    _same_state(ours, theirs.weight_orig, theirs.weight_u, theirs.weight_v)
    x = (
        torch.randn(4, 20)
        if isinstance(base, nn.Linear)
        else torch.randn(2, base.in_channels, 7, 7)
    )
    x = x.double()
    out_t, out_o = theirs(x), ours(x)
    torch.testing.assert_close(out_o, out_t, atol=1e-6, rtol=1e-6)
    (out_t**2).sum().backward()
    (out_o**2).sum().backward()
    torch.testing.assert_close(ours.weight_orig.grad, theirs.weight_orig.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.weight_u, theirs.weight_u, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.weight_v, theirs.weight_v, atol=1e-6, rtol=1e-6)


def test_eval_forward_matches_torch_parametrization():
    base = nn.Conv2d(3, 8, 3)
    theirs = parametrizations.spectral_norm(copy.deepcopy(base))
    theirs.train()
    theirs(torch.randn(1, 3, 5, 5))  # advance their u, v away from the initial values
    theirs.eval()
    ours = spectral_norm(copy.deepcopy(base)).eval()
    p = theirs.parametrizations.weight
    _same_state(ours, p.original, p[0]._u, p[0]._v)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)


def test_loads_legacy_checkpoint_and_matches_outputs():
    theirs = torch_legacy_sn(nn.Linear(12, 7))
    theirs(torch.randn(3, 12))
    theirs.eval()
    ours = spectral_norm(nn.Linear(12, 7)).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)
    assert sigmas(ours)["weight"] == pytest.approx(
        torch.dot(theirs.weight_u, theirs.weight_orig.detach() @ theirs.weight_v).item(), rel=1e-6
    )


def test_loads_parametrization_checkpoint_inside_a_model():
    def net() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 1))

    theirs = net()
    for i in (0, 3):
        parametrizations.spectral_norm(theirs[i])
    theirs(torch.randn(2, 3, 8, 8))
    theirs.eval()
    ours = net()
    apply_spectral_norm(ours)
    ours.load_state_dict(theirs.state_dict())  # strict: every key maps
    ours.eval()
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)


def test_loads_a_plain_checkpoint_and_warms_up():
    plain = nn.Linear(30, 20)
    ours = spectral_norm(nn.Linear(30, 20)).eval()
    ours.load_state_dict(plain.state_dict())
    torch.testing.assert_close(ours.weight_orig, plain.weight)
    assert spec(ours.weight) == pytest.approx(1.0, rel=0.05)


def test_state_dict_round_trip():
    a = spectral_norm(nn.Conv2d(3, 4, 3))
    a(torch.randn(1, 3, 6, 6))
    b = spectral_norm(nn.Conv2d(3, 4, 3))
    b.load_state_dict(a.state_dict())
    for key in ("weight_orig", "weight_u", "weight_v", "bias"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), atol=0, rtol=0)
    assert sigmas(b) == sigmas(a)


# -- semantics ---------------------------------------------------------------------------


def test_conv_transpose_uses_dim_1():
    layer = spectral_norm(nn.ConvTranspose2d(4, 6, 3))
    assert layer.weight_u.shape == (6,)  # out_channels: weight is (in, out, kh, kw)
    assert spec(layer.weight, dim=1) == pytest.approx(1.0, rel=0.05)


def test_one_dimensional_weight_is_divided_by_its_norm():
    layer = spectral_norm(nn.BatchNorm1d(5))
    with torch.no_grad():
        layer.weight_orig.copy_(torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(layer.weight, torch.tensor([0.6, 0.8, 0.0, 0.0, 0.0]))


def test_eval_mode_changes_nothing():
    layer = spectral_norm(nn.Linear(10, 10)).eval()
    u, v = layer.weight_u.clone(), layer.weight_v.clone()
    x = torch.randn(3, 10)
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    assert torch.equal(layer.weight_u, u) and torch.equal(layer.weight_v, v)


def unconverged(layer: nn.Module) -> nn.Module:
    """Replace the warmed-up u by a random one, so that one power iteration visibly moves it."""
    with torch.no_grad():
        layer.weight_u.copy_(torch.nn.functional.normalize(torch.randn_like(layer.weight_u), dim=0))
    return layer


def test_training_forward_advances_u_and_no_grad_reaches_them():
    layer = unconverged(spectral_norm(nn.Linear(10, 10)))
    u = layer.weight_u.clone()
    layer(torch.randn(3, 10)).sum().backward()
    assert not torch.equal(layer.weight_u, u)
    assert not layer.weight_u.requires_grad and layer.weight_u.grad is None


def test_two_forwards_then_backward():
    """D(real) and D(fake) before one backward: the in-place u, v update must not break it."""
    layer = spectral_norm(nn.Linear(8, 1))
    loss = layer(torch.randn(4, 8)).mean() - layer(torch.randn(4, 8)).mean()
    loss.backward()
    assert torch.isfinite(layer.weight_orig.grad).all()


def test_removal_bakes_the_normalised_weight():
    layer = spectral_norm(nn.Conv2d(3, 4, 3)).eval()
    expected = layer.weight.detach().clone()
    remove_spectral_norm(layer)
    assert type(layer) is nn.Conv2d
    assert isinstance(layer._parameters["weight"], nn.Parameter)
    assert set(layer.state_dict()) == {"weight", "bias"}
    torch.testing.assert_close(layer.weight, expected)


def test_wrapper_and_its_type_error():
    wrapped = SpectralNorm(nn.Embedding(10, 4))
    assert spec(wrapped.layer.weight) == pytest.approx(1.0, rel=0.05)
    assert wrapped(torch.tensor([1, 2])).shape == (2, 4)
    with pytest.raises(TypeError, match="ReLU has none"):
        SpectralNorm(nn.ReLU())


def test_apply_default_filter_takes_exactly_the_four_weights():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.deconv = nn.ConvTranspose2d(4, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)
            self.embed = nn.Embedding(10, 4)

    net = Net()
    names = apply_spectral_norm(net)
    assert sorted(names) == ["conv.weight", "deconv.weight", "embed.weight", "fc.weight"]
    assert not is_spectral_normalized(net.bn)
    assert sorted(sigmas(net)) == sorted(names)
    custom = apply_spectral_norm(Net(), name_filter=lambda n: n == "fc.weight")
    assert custom == ["fc.weight"]
    with pytest.raises(ValueError, match="name_filter must be a callable"):
        apply_spectral_norm(Net(), name_filter="fc.weight")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_power_iterations": -1}, "n_power_iterations must be an integer >= 0, got -1"),
        ({"eps": 0.0}, "eps must be > 0, got 0.0"),
        (
            {"name": "wieght"},
            "Linear has no parameter 'wieght'; its parameters: ['bias', 'weight']",
        ),
        ({"dim": 2}, "dim=2 is out of range for 'weight' of shape (3, 4) (valid: -2 to 1)"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        spectral_norm(nn.Linear(4, 3), **kwargs)
    assert message in str(err.value)


def test_cannot_normalise_twice():
    layer = spectral_norm(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="already normalised"):
        spectral_norm(layer)


# -- where the references fall short (issue 2, point 8) ----------------------------------


def test_usable_at_once_in_eval_mode():
    """Right after registration the norm is ~1; torch's legacy one is far off (pytorch#51800)."""
    torch.manual_seed(0)
    for make in (
        lambda: nn.Conv2d(128, 128, 3),
        lambda: nn.Linear(8192, 1),
        lambda: nn.Conv2d(3, 64, 3),
    ):
        base = make()
        ours = spectral_norm(copy.deepcopy(base)).eval()
        assert spec(ours.weight) == pytest.approx(1.0, rel=0.05)
    legacy = torch_legacy_sn(nn.Conv2d(128, 128, 3)).eval()
    with torch.no_grad():
        legacy(torch.randn(1, 128, 3, 3))  # eval mode: no power iteration ran
    assert spec(legacy.weight) > 1.5  # the reference figure this beats


def test_zero_weight_gives_zero_not_nan():
    ours = spectral_norm(nn.Linear(4, 3))
    theirs = parametrizations.spectral_norm(nn.Linear(4, 3))
    with torch.no_grad():
        ours.weight_orig.zero_()
        theirs.parametrizations.weight.original.zero_()
    x = torch.randn(2, 4)
    out = ours(x) - ours.bias
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isnan(theirs(x)).any()  # the reference's behaviour
    # u and v survived: a non-zero weight afterwards is normalised again.
    with torch.no_grad():
        ours.weight_orig.copy_(torch.randn(3, 4))
    for _ in range(20):
        ours(x)
    assert spec(ours.weight) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("forward_first", [False, True])
def test_save_load_and_deepcopy_round_trip(forward_first):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 1))
    apply_spectral_norm(net)
    x = torch.randn(2, 3, 6, 6)
    if forward_first:
        net(x).sum().backward()
    copied = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (copied, loaded):
        assert is_spectral_normalized(other[0]) and is_spectral_normalized(other[3])
        torch.testing.assert_close(other.eval()(x), net.eval()(x), atol=0, rtol=0)
        net.train()
    # the references: legacy cannot deepcopy after a forward, the parametrisation cannot pickle
    legacy = torch_legacy_sn(nn.Linear(3, 3))
    legacy(torch.randn(1, 3))
    with pytest.raises(RuntimeError):
        copy.deepcopy(legacy)


def test_reset_parameters_really_reinitialises():
    layer = spectral_norm(nn.Conv2d(16, 16, 3))
    with torch.no_grad():
        layer.weight_orig.fill_(0.5)
    layer.reset_parameters()
    assert layer.weight_orig.std() > 0  # the layer's own init ran on the raw weight
    assert spec(layer.eval().weight) == pytest.approx(1.0, rel=0.05)


def test_assigning_a_weight_rewarms_u_and_v():
    ours = spectral_norm(nn.Linear(64, 64)).eval()
    ours.weight = nn.Parameter(torch.randn(64, 64) * 10)
    assert spec(ours.weight) == pytest.approx(1.0, rel=0.05)
    ours.weight = torch.randn(64, 64)  # a plain tensor is copied into weight_orig
    assert spec(ours.weight) == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        ours.weight = torch.randn(3, 3)
    # the reference: torch's parametrisation keeps stale u, v after an assignment
    theirs = parametrizations.spectral_norm(nn.Linear(64, 64)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.weight = torch.randn(64, 64) * 10
    assert abs(spec(theirs.weight) - 1.0) > 0.05


def test_no_power_iteration_freezes_u_and_v():
    layer = unconverged(spectral_norm(nn.Linear(10, 10)))
    u = layer.weight_u.clone()
    with no_power_iteration(layer):
        layer(torch.randn(2, 10))
    assert torch.equal(layer.weight_u, u)
    layer(torch.randn(2, 10))
    assert not torch.equal(layer.weight_u, u)


def test_target_at_most_and_learnable_scale():
    w = planted(20, 30, top=3.0)
    layer = spectral_norm(nn.Linear(30, 20), target=2.0)
    with torch.no_grad():
        layer.weight_orig.copy_(w)
    for _ in range(30):
        layer(torch.randn(1, 30))
    assert spec(layer.weight) == pytest.approx(2.0, rel=1e-4)

    small = spectral_norm(nn.Linear(30, 20), at_most=True)
    with torch.no_grad():
        small.weight_orig.copy_(w / 6.0)  # norm 0.5: left as it is
    small.eval()
    torch.testing.assert_close(small.weight, small.weight_orig)

    scaled = spectral_norm(nn.Linear(30, 20), learnable_scale=True).eval()
    assert scaled.weight_gamma.item() == pytest.approx(spec(scaled.weight_orig), rel=1e-6)
    torch.testing.assert_close(scaled.weight, scaled.weight_orig, rtol=0.01, atol=1e-4)
    assert "weight_gamma" in dict(scaled.named_parameters())


def test_bf16_autocast_keeps_power_iteration_in_float32():
    layer = spectral_norm(nn.Linear(16, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(4, 16))
    assert out.dtype == torch.bfloat16
    assert layer.weight_u.dtype == torch.float32 and layer.weight_v.dtype == torch.float32
    assert layer.weight.dtype == torch.float32


def test_channels_last():
    layer = spectral_norm(nn.Conv2d(3, 8, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = layer(x)
    layer = layer.to(memory_format=torch.channels_last)
    out = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_compiles_without_graph_breaks():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(8 * 8 * 8, 1)
    )
    apply_spectral_norm(net)
    explanation = torch._dynamo.explain(net)(torch.randn(2, 3, 8, 8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
