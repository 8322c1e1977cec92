"""Standing statistics: BatchNorm running statistics recomputed for the weights G has now.

G_ema's weights are an average of G's, but the running means and variances it normalises with
in eval mode are copied from G, gathered on G's weights of the last few hundred steps. BigGAN
(Brock et al. 2019) and StudioGAN call the remedy "standing statistics": forget the running
statistics and gather them again from forward passes of the averaged network itself.

What the two reference implementations do, and what is taken from them:

- BigGAN-PyTorch (``utils.accumulate_standing_stats`` with its ``layers.myBN``): reset, then
  ``num_standing_accumulations`` (16 by default) no-grad forward passes of ``G.train()`` with
  fresh ``z ~ N(0, I)`` and uniform labels at the training batch size, each batch's mean and
  *biased* variance summed and divided by the number of batches: an equal-weight average of
  per-batch statistics, computed in fp32.
- StudioGAN (``utils.misc.apply_standing_statistics``): ``G.train()``, ``reset_running_stats()``
  on every ``_BatchNorm``, ``standing_step`` passes with a random batch size in
  [1, ``standing_max_batch``], then ``G.eval()``; the momentum is left at torch's 0.1, so its
  result is an exponential average that mostly reflects the last twenty or so batches.

Taken here: BigGAN's equal-weight average over a fixed batch size, through torch's own
cumulative average (``momentum=None``), so it works on every ``_BatchNorm`` (sngan's
``BatchNorm2d``, the statistics inside ``ConditionalBatchNorm2d``, ``SyncBatchNorm``) without a
BatchNorm class of our own. torch then holds, per channel, the mean over batches of each batch's
mean and of each batch's *unbiased* variance (over its B*H*W positions). A fixed batch size keeps
that average the statistics of all the samples; with random sizes as StudioGAN draws them, it
would weight a batch of one like a batch of a thousand. Noise and labels come from a
``torch.Generator`` seeded with ``seed``, so the statistics are a function of the weights and
the seed.

Not taken: putting the whole network in train mode. Only the BatchNorm layers go to train mode
(to normalise with, and record, batch statistics); every other module is put in eval mode, as
G_ema is when it is sampled, so that e.g. a spectrally normalised layer neither advances its
power iteration nor changes the weight the statistics are gathered for. sngan's generators
have no such layer today, so for them the two ways agree.

``num_batches_tracked`` is left at the number of batches the new statistics come from rather
than put back: torch reads it only under ``momentum=None``, where that is the count a later
cumulative update must continue from.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sngan.config import BN_STATS
from sngan.distributed import without_sync_batchnorm
from sngan.fp32 import full_precision  # the statistics as the metrics see them: plain fp32
from sngan.models.layers import check_positive

__all__ = ["STANDING_BATCHES", "as_evaluated", "recompute_batchnorm_statistics"]

# Standing statistics: this many batches of the G step's size (4,096 images in the official
# config), from a fixed seed (the same z every time, on every rank), as BigGAN's
# accumulate_standing_stats. Why recompute is the default: docs/benchmarks.md (the measurement).
STANDING_BATCHES = 32


def as_evaluated(G_ema: nn.Module, mode: str, batch_size: int, seed: int) -> nn.Module:
    """G_ema as it is drawn and scored everywhere: training's grids and evaluations,
    sngan-eval and sngan-sample all get it from here.

    ``mode``: ``copy`` returns G_ema itself (BatchNorm statistics copied from G, as
    ``sngan.train.update_ema`` keeps them); ``recompute`` a copy whose statistics are recomputed
    from its own samples (``STANDING_BATCHES`` batches of ``batch_size``, the run's G batch,
    from ``seed``, the run's seed). Training, and what checkpoints hold, never see the copy.
    """
    if mode not in BN_STATS:
        raise ValueError(f"ema_bn_stats must be one of {', '.join(BN_STATS)}, got {mode!r}")
    if mode == "copy":
        return G_ema
    net = without_sync_batchnorm(copy.deepcopy(G_ema))  # one rank alone runs this copy
    recompute_batchnorm_statistics(
        net, num_batches=STANDING_BATCHES, batch_size=batch_size, seed=seed
    )
    return net


def recompute_batchnorm_statistics(
    G: nn.Module,
    *,
    num_batches: int,
    batch_size: int,
    seed: int,
    device: torch.device | str | None = None,
) -> None:
    """Replace the running mean and variance of G's BatchNorms by those of G's own samples.

    ``num_batches`` no-grad forwards of ``G(z, y)`` at ``batch_size`` on ``device`` (default:
    where G is; G is moved there and back), in G's own dtype with autocast and TF32 off whatever
    the caller enabled. ``z ~ N(0, I)`` (drawn in float32, cast to G's dtype) and, for
    ``G.num_classes > 0``, uniform labels are drawn batch by batch, z then y, from a
    ``torch.Generator`` on the device seeded with ``seed``; y is None for an unconditional G.
    Afterwards each BatchNorm's running statistics are the averages torch's ``momentum=None``
    computes over those batches and ``num_batches_tracked`` is ``num_batches``; every module's
    mode, each BatchNorm's momentum, all parameters, all other buffers and the caller's RNG state
    are as they were. If G raises, the old statistics are put back too.
    """
    check_positive(num_batches=num_batches, batch_size=batch_size)
    norms = [m for m in G.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return
    home = _device_of(G)
    device = torch.device(device) if device is not None else home
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the generator needs one
    modes = {module: module.training for module in G.modules()}
    momenta = {bn: bn.momentum for bn in norms}
    saved = [t.clone() for t in _statistics(norms)]
    try:
        G.to(device)
        G.eval()
        for bn in norms:
            bn.reset_running_stats()  # mean 0, variance 1, num_batches_tracked 0
            bn.momentum = None  # cumulative average: batch k gets weight 1/k
            bn.train()
        with torch.no_grad(), full_precision(device), _own_rng(device):
            for z, y in _latents(G, num_batches, batch_size, seed, device):
                G(z, y)
    except BaseException:
        G.to(home)  # .to() replaces the buffers: look them up again
        with torch.no_grad():
            for tensor, old in zip(_statistics(norms), saved, strict=True):
                tensor.copy_(old)
        raise
    finally:
        G.to(home)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, training in modes.items():
            module.train(training)


def _statistics(norms: list[_BatchNorm]) -> list[torch.Tensor]:
    return [
        t
        for bn in norms
        for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
        if t is not None
    ]


def _latents(
    G: nn.Module, num_batches: int, batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(z, y) batch by batch: z (B, z_dim) ~ N(0, I), y (B,) uniform labels or None."""
    gen = torch.Generator(device).manual_seed(seed)
    num_classes = int(getattr(G, "num_classes", 0))
    dtype = next((p.dtype for p in G.parameters() if p.is_floating_point()), torch.float32)
    for _ in range(num_batches):
        # Drawn in float32 whatever G's dtype, so that a seed means the same noise for all.
        z = torch.randn(batch_size, G.z_dim, generator=gen, device=device).to(dtype)
        y = None
        if num_classes > 0:
            y = torch.randint(num_classes, (batch_size,), generator=gen, device=device)
        yield z, y


def _device_of(G: nn.Module) -> torch.device:
    tensor = next(G.parameters(), None)
    if tensor is None:
        tensor = next(G.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def _own_rng(device: torch.device) -> Iterator[None]:
    """The caller's global RNG state (CPU, and ``device``'s if CUDA) as it was, whatever G draws."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield
