"""The losses against values and gradients computed by hand on small fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from sngan.losses import (
    LOSSES,
    d_hinge,
    d_nonsaturating,
    d_wasserstein,
    g_hinge,
    g_nonsaturating,
    g_wasserstein,
    get_loss,
)

REAL = [2.0, 0.5, -1.0]
FAKE = [-2.0, 0.0, 0.5, 3.0]  # a different batch size on purpose


def _logits(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def _softplus(t: float) -> float:
    return math.log1p(math.exp(t))


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _check(loss: torch.Tensor, value: float, grads: list[tuple[torch.Tensor, list[float]]]) -> None:
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(value, abs=1e-12)
    loss.backward()
    for t, expected in grads:
        assert t.grad.tolist() == pytest.approx(expected, abs=1e-12)


def test_d_hinge_value_and_gradient() -> None:
    real, fake = _logits(REAL), _logits(FAKE)
    # relu(1 - real) = [0, 0.5, 2]; relu(1 + fake) = [0, 1, 1.5, 4].
    value = (0 + 0.5 + 2) / 3 + (0 + 1 + 1.5 + 4) / 4
    # Only the logits inside the margin get a gradient: real pushed up, fake pushed down.
    _check(
        d_hinge(real, fake),
        value,
        [(real, [0.0, -1 / 3, -1 / 3]), (fake, [0.0, 1 / 4, 1 / 4, 1 / 4])],
    )


def test_g_hinge_value_and_gradient() -> None:
    fake = _logits(FAKE)
    _check(g_hinge(fake), -(-2.0 + 0.0 + 0.5 + 3.0) / 4, [(fake, [-1 / 4] * 4)])


def test_d_nonsaturating_value_and_gradient() -> None:
    real, fake = _logits(REAL), _logits(FAKE)
    # -log sigmoid(r) and -log(1 - sigmoid(f)), written out.
    value = (
        sum(-math.log(_sigmoid(r)) for r in REAL) / 3
        + sum(-math.log(1 - _sigmoid(f)) for f in FAKE) / 4
    )
    assert value == pytest.approx(
        sum(_softplus(-r) for r in REAL) / 3 + sum(_softplus(f) for f in FAKE) / 4
    )
    # d/dr -log sigmoid(r) = -(1 - sigmoid(r)) < 0; d/df -log(1 - sigmoid(f)) = sigmoid(f) > 0.
    _check(
        d_nonsaturating(real, fake),
        value,
        [
            (real, [-(1 - _sigmoid(r)) / 3 for r in REAL]),
            (fake, [_sigmoid(f) / 4 for f in FAKE]),
        ],
    )


def test_g_nonsaturating_value_and_gradient() -> None:
    fake = _logits(FAKE)
    value = sum(-math.log(_sigmoid(f)) for f in FAKE) / 4
    _check(g_nonsaturating(fake), value, [(fake, [-(1 - _sigmoid(f)) / 4 for f in FAKE])])


def test_nonsaturating_is_finite_for_large_logits() -> None:
    big = torch.tensor([200.0, -200.0])
    assert torch.isfinite(d_nonsaturating(big, big))
    assert g_nonsaturating(big).item() == pytest.approx(100.0)  # (0 + 200) / 2


def test_d_wasserstein_value_and_gradient() -> None:
    real, fake = _logits(REAL), _logits(FAKE)
    value = (-2.0 + 0.0 + 0.5 + 3.0) / 4 - (2.0 + 0.5 - 1.0) / 3
    _check(d_wasserstein(real, fake), value, [(real, [-1 / 3] * 3), (fake, [1 / 4] * 4)])


def test_g_wasserstein_value_and_gradient() -> None:
    fake = _logits(FAKE)
    _check(g_wasserstein(fake), -1.5 / 4, [(fake, [-1 / 4] * 4)])


@pytest.mark.parametrize("name", ["hinge", "nonsaturating", "wasserstein"])
def test_d_loss_falls_when_d_separates_better(name: str) -> None:
    d_fn, g_fn = get_loss(name)
    real, fake = torch.tensor([0.5, 0.2]), torch.tensor([-0.1, 0.3])
    assert d_fn(real + 1.0, fake - 1.0) < d_fn(real, fake)
    # And G's loss falls as D rates its samples as more real.
    assert g_fn(fake + 1.0) < g_fn(fake)


def test_registry_names_pairs() -> None:
    expected = {
        "hinge": (d_hinge, g_hinge),
        "nonsaturating": (d_nonsaturating, g_nonsaturating),
        "wasserstein": (d_wasserstein, g_wasserstein),
    }
    assert expected == LOSSES
    assert get_loss("hinge") == (d_hinge, g_hinge)


def test_unknown_loss_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="hinge") as info:
        get_loss("hinj")
    assert "hinj" in str(info.value)
    assert "nonsaturating" in str(info.value) and "wasserstein" in str(info.value)


@pytest.mark.parametrize("fn", [d_hinge, d_nonsaturating, d_wasserstein])
def test_d_losses_reject_non_1d_logits(fn) -> None:
    good = torch.zeros(4)
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        fn(torch.zeros(4, 1), good)
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        fn(good, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\(\)"):
        fn(torch.tensor(1.0), good)


@pytest.mark.parametrize("fn", [g_hinge, g_nonsaturating, g_wasserstein])
def test_g_losses_reject_bad_logits(fn) -> None:
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        fn(torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\(0,\)"):
        fn(torch.zeros(0))
    with pytest.raises(ValueError, match="int64"):
        fn(torch.zeros(4, dtype=torch.int64))
