"""Standing statistics: checked against per-batch statistics computed by hand from each
BatchNorm's own inputs, with sngan's real generators at tiny widths."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sngan.distributed import convert_sync_batchnorm
from sngan.models import ResNetGenerator
from sngan.spectral_norm import spectral_norm
from sngan.standing_stats import recompute_batchnorm_statistics

NUM_BATCHES, BATCH_SIZE, SEED = 3, 4, 7
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def generator(num_classes: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A tiny ResNet G whose BatchNorms hold statistics that are not their initial ones."""
    torch.manual_seed(0)
    G = ResNetGenerator(z_dim=8, channels=8, num_classes=num_classes).to(dtype)
    gen = torch.Generator().manual_seed(1)
    for bn in norms(G):
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.num_batches_tracked.fill_(123)
    return G


def norms(G: nn.Module) -> list[_BatchNorm]:
    return [m for m in G.modules() if isinstance(m, _BatchNorm)]


def recompute(G: nn.Module, seed: int = SEED) -> None:
    recompute_batchnorm_statistics(G, num_batches=NUM_BATCHES, batch_size=BATCH_SIZE, seed=seed)


def bn_inputs(G: nn.Module) -> dict[_BatchNorm, list[torch.Tensor]]:
    """Every input each BatchNorm of G gets from now on, recorded by a forward pre-hook."""
    seen = {bn: [] for bn in norms(G)}
    for bn, inputs in seen.items():
        bn.register_forward_pre_hook(lambda m, args, inputs=inputs: inputs.append(args[0].clone()))
    return seen


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_running_statistics_are_the_average_of_per_batch_statistics(num_classes):
    G = generator(num_classes)
    seen = bn_inputs(G)
    recompute(G)
    assert len(seen) == 7  # 2 per block and bn_out
    for bn, inputs in seen.items():
        assert len(inputs) == NUM_BATCHES
        x = torch.stack(inputs)  # (num_batches, B, C, H, W)
        # torch's momentum=None: the plain average over batches of each batch's mean and of
        # each batch's unbiased variance over its B*H*W positions.
        batch_means = x.mean(dim=(1, 3, 4))  # (num_batches, C)
        batch_vars = x.var(dim=(1, 3, 4), correction=1)  # (num_batches, C)
        torch.testing.assert_close(bn.running_mean, batch_means.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, batch_vars.mean(0), rtol=1e-12, atol=1e-12)
        assert int(bn.num_batches_tracked) == NUM_BATCHES
        # The batches differ, so the test tells this average from others: the mean of the last
        # batch (an exponential average's main part) or the variance pooled over all positions.
        assert (batch_means - batch_means.mean(0)).abs().max() > 1e-3
        pooled = x.transpose(0, 2).reshape(x.shape[2], -1).var(dim=1, correction=1)
        assert (pooled - batch_vars.mean(0)).abs().max() > 1e-6


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_the_noise_and_labels_come_from_a_generator_seeded_with_seed(num_classes):
    G = generator(num_classes)
    calls = []
    G.register_forward_pre_hook(lambda m, args: calls.append(args))
    recompute(G)
    gen = torch.Generator().manual_seed(SEED)
    assert len(calls) == NUM_BATCHES
    for z, y in calls:
        assert z.dtype == torch.float64  # G's dtype
        assert torch.equal(z, torch.randn(BATCH_SIZE, 8, generator=gen).double())
        if num_classes == 0:
            assert y is None
        else:
            assert torch.equal(y, torch.randint(3, (BATCH_SIZE,), generator=gen))


def test_everything_else_is_left_as_it_was():
    G = generator(num_classes=3)
    G.conv_out = spectral_norm(G.conv_out)  # buffers (u, v) that a train-mode forward changes
    G.train()
    G.blocks[1].eval()
    bns = norms(G)
    bns[0].eval()
    bns[1].momentum = 0.3
    bns[2].momentum = None
    before = {k: v.clone() for k, v in G.state_dict(keep_vars=True).items()}
    params = [id(p) for p in G.parameters()]
    modes = {name: m.training for name, m in G.named_modules()}
    momenta = [bn.momentum for bn in bns]
    rng = torch.get_rng_state()

    recompute(G)

    after = G.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key.endswith(STATISTICS):
            continue
        assert torch.equal(after[key], value) and after[key].dtype == value.dtype, key
    assert [id(p) for p in G.parameters()] == params
    assert {name: m.training for name, m in G.named_modules()} == modes
    assert [bn.momentum for bn in bns] == momenta == [0.1, 0.3, None, 0.1, 0.1, 0.1, 0.1]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not torch.equal(after[k], before[k]) for k in after if k.endswith("running_mean"))


def test_the_callers_rng_is_untouched_even_if_G_draws_from_it():
    G = generator()

    def draw(module, args):
        torch.rand(1)  # as a dropout layer would

    G.register_forward_pre_hook(draw)
    rng = torch.get_rng_state()
    recompute(G)
    assert torch.equal(torch.get_rng_state(), rng)


def test_deterministic_for_a_seed():
    G1, G2, G3 = generator(), generator(), generator()
    recompute(G1)
    recompute(G2)
    recompute(G3, seed=SEED + 1)
    s1, s2, s3 = (G.state_dict() for G in (G1, G2, G3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["bn_out.running_mean"], s3["bn_out.running_mean"])


def test_statistics_in_fp32_whatever_autocast_the_caller_enabled():
    G, G_autocast = generator(dtype=torch.float32), generator(dtype=torch.float32)
    seen = bn_inputs(G_autocast)
    recompute(G)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recompute(G_autocast)
    assert {x.dtype for inputs in seen.values() for x in inputs} == {torch.float32}
    plain, autocast = G.state_dict(), G_autocast.state_dict()
    assert all(torch.equal(plain[k], autocast[k]) for k in plain)


def test_float32_against_a_float64_reference():
    G32 = generator(num_classes=3, dtype=torch.float32)
    G64 = copy.deepcopy(G32).double()
    recompute(G32)
    recompute(G64)
    for bn32, bn64 in zip(norms(G32), norms(G64), strict=True):
        torch.testing.assert_close(bn32.running_mean.double(), bn64.running_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(bn32.running_var.double(), bn64.running_var, rtol=1e-5, atol=0)


def test_sync_batchnorm_outside_torchrun_is_plain_batchnorm():
    G = generator(dtype=torch.float32)
    G_sync = convert_sync_batchnorm(copy.deepcopy(G))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in G_sync.modules())
    recompute(G)
    recompute(G_sync)
    plain, sync = G.state_dict(), G_sync.state_dict()
    assert plain.keys() == sync.keys()
    assert all(torch.equal(plain[k], sync[k]) for k in plain)


def test_a_failing_forward_leaves_the_old_statistics():
    G = generator()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    G.train()

    calls = []

    def fail_in_the_second_batch(module, args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("out of memory")

    G.register_forward_pre_hook(fail_in_the_second_batch)
    with pytest.raises(RuntimeError, match="out of memory"):
        recompute(G)
    after = G.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(m.training for m in G.modules())
    assert [bn.momentum for bn in norms(G)] == [0.1] * 7


@pytest.mark.parametrize("name", ["num_batches", "batch_size"])
def test_counts_must_be_positive(name):
    kwargs = {"num_batches": 2, "batch_size": 2, name: 0}
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1, got 0$"):
        recompute_batchnorm_statistics(generator(), seed=0, **kwargs)


def test_recomputed_statistics_never_reach_training_or_checkpoints(tmp_path):
    """optim.ema_bn_stats=recompute changes only what the grids (and evaluations) see: the
    training G, D and G_ema and the checkpoints are bit-identical to a run that copies."""
    from conftest import compose_config, read_events

    from sngan import checkpoint
    from sngan.train import train

    runs = {}
    for mode in ("copy", "recompute"):
        run_dir = tmp_path / mode
        train(compose_config(f"optim.ema_bn_stats={mode}", "iterations=4"), run_dir)
        runs[mode] = run_dir
    for name in ("ckpt_0000002.pt", "ckpt_0000004.pt"):
        a, b = (checkpoint.load(runs[m] / "checkpoints" / name) for m in runs)
        for key in ("G", "D", "G_ema", "opt_g", "opt_d"):
            flat_a = {k: v for k, v in _tensors(a[key])}
            flat_b = {k: v for k, v in _tensors(b[key])}
            assert flat_a.keys() == flat_b.keys()
            assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), (name, key)
    # What the grids show does differ: G_ema's own statistics move its samples.
    grids = [read_events(runs[m]).Images("samples/G_ema")[-1].encoded_image_string for m in runs]
    assert grids[0] != grids[1]


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}.{i}")
