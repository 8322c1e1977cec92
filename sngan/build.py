"""Config -> objects: the device, the data, the networks, optimisers, schedules and fast paths.

``build_train_state`` turns a checked ``TrainConfig`` into a ``TrainState``, everything one
generator iteration reads and updates; ``sngan.train`` runs the loop over it and
``scripts/benchmark.py`` times the same thing. Nothing here reads the config once the objects
exist: the networks and optimisers take explicit arguments.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sngan import distributed
from sngan.batches import BatchStream
from sngan.config import ConfigError, TrainConfig
from sngan.data import load_images
from sngan.guard import UpdateGuard
from sngan.losses import get_loss
from sngan.models import build_models


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; a CUDA request without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name!r} is not valid: torch.cuda.is_available() is False here "
                "(no CUDA device, or a CPU-only torch build); use device=cpu or device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name!r} is not valid: only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls/convolutions on CUDA: what training runs with.

    (The metrics switch TF32 off again for their own duration: sngan.metrics.)
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def training_images(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.data``'s images, uint8 (N, 3, H, W), and labels (N,); bad data is a ConfigError."""
    d = cfg.data
    try:
        return load_images(
            d.source,
            root=d.root,
            image_size=d.image_size,
            download=d.download,
            split=d.split,
            num_images=d.num_images,
            seed=cfg.seed,
            cache_dir=d.cache_dir,
        )
    except (OSError, ValueError) as e:  # no such folder, no images in it, CIFAR-10 not there
        raise ConfigError(str(e)) from e


def check_fits(
    cfg: TrainConfig, ctx: distributed.Context, device: torch.device, labels: torch.Tensor
) -> None:
    """What only the data and the ranks can tell: the batches fit both, a conditional model's
    classes cover the labels; sync_bn has CUDA."""
    o, m = cfg.optim, cfg.model
    num_images = len(labels)
    if m.num_classes and (labels.min() < 0 or labels.max() >= m.num_classes):
        raise ConfigError(
            f"model.num_classes={m.num_classes} is not valid for this data: its labels run "
            f"from {int(labels.min())} to {int(labels.max())} (a conditional model needs labels "
            f"0..num_classes-1)"
        )
    ctx.split(o.d_batch_size, "optim.d_batch_size")  # each rank takes an equal share
    ctx.split(o.g_batch_size, "optim.g_batch_size")
    if cfg.sync_bn and ctx.enabled and device.type != "cuda":
        raise ConfigError("sync_bn=true is not valid here: SyncBatchNorm needs CUDA devices")
    if o.d_batch_size > num_images:
        raise ConfigError(
            f"optim.d_batch_size={o.d_batch_size} is not valid: the data has only "
            f"{num_images} images"
        )


def build_networks(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(G, D) of ``cfg.model``, on the CPU, initialised from torch's global RNG."""
    m = cfg.model
    return build_models(
        m.name,
        image_size=cfg.data.image_size,
        z_dim=m.z_dim,
        g_channels=m.g_channels,
        d_channels=m.d_channels,
        num_classes=m.num_classes,
    )


@dataclass(frozen=True)
class FastPaths:
    """The speed switches of the training step, as resolved for one device."""

    amp: bool  # bf16 autocast
    compile: bool  # torch.compile of G and D
    channels_last: bool  # networks and batches in channels_last memory format
    fused_adam: bool  # Adam(fused=True)
    joint_d_forward: bool  # real and fake through D in one forward (see train.d_step)

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> FastPaths:
        """The config's switches; null means on for CUDA and off for the CPU.

        (On CPUs bf16 autocast and compile do not pay everywhere, one D batch of 2B was 1-5 %
        slower than two of B on ours, and fused Adam no faster: docs/benchmarks.md.)
        """
        on_cuda = device.type == "cuda"
        names = cls.__dataclass_fields__
        return cls(**{k: on_cuda if getattr(cfg, k) is None else getattr(cfg, k) for k in names})


@dataclass
class TrainState:
    """Everything a generator iteration reads and updates, built by ``build_train_state``.

    ``G``, ``D`` and ``G_ema`` are the modules checkpoints save. ``G_run``/``D_run`` are the
    same networks as run without an update (compiled when asked), ``G_train``/``D_train`` as
    run for their own update (also wrapped in DDP under torchrun); all share their parameters.
    """

    cfg: TrainConfig
    device: torch.device
    ctx: distributed.Context
    fast: FastPaths
    stream: BatchStream
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor], torch.Tensor]
    z_gen: torch.Generator  # every z and fake label of training
    G_run: nn.Module
    G_train: nn.Module
    D_run: nn.Module
    D_train: nn.Module
    autocast: AbstractContextManager[Any]
    guard: UpdateGuard
    best_fid: float = math.inf  # the lowest FID so far (best.pt is its checkpoint)


def build_train_state(
    cfg: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    ctx: distributed.Context | None = None,
) -> TrainState:
    """Networks, optimisers, schedules, data stream and fast paths, as ``cfg`` says."""
    ctx = ctx or distributed.Context()
    fast = FastPaths.resolve(cfg, device)
    o = cfg.optim
    memory_format = torch.channels_last if fast.channels_last else torch.preserve_format
    stream = BatchStream(
        images, labels, device=device, seed=cfg.seed, channels_last=fast.channels_last
    )
    torch.manual_seed(cfg.seed)  # the networks' initial weights
    G, D = build_networks(cfg)
    G.to(device, memory_format=memory_format)
    D.to(device, memory_format=memory_format)
    if cfg.sync_bn and ctx.enabled:
        distributed.convert_sync_batchnorm(G)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    fused = {"fused": True} if fast.fused_adam else {}
    opt_g = torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=o.betas, **fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=o.betas, **fused)

    def lr_factor(it: int) -> float:
        return max(0.0, 1.0 - it / cfg.iterations) if o.lr_decay == "linear" else 1.0

    G_run, G_train = _wrap(G, cfg, fast, ctx, device)
    D_run, D_train = _wrap(D, cfg, fast, ctx, device)
    d_loss, g_loss = get_loss(cfg.loss.name)
    return TrainState(
        cfg=cfg,
        device=device,
        ctx=ctx,
        fast=fast,
        stream=stream,
        G=G,
        D=D,
        G_ema=G_ema,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor),
        sched_d=torch.optim.lr_scheduler.LambdaLR(opt_d, lr_factor),
        d_loss=d_loss,
        g_loss=g_loss,
        z_gen=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        G_run=G_run,
        G_train=G_train,
        D_run=D_run,
        D_train=D_train,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16) if fast.amp else nullcontext(),
        guard=UpdateGuard(
            G,
            D,
            {G: opt_g, D: opt_d},
            on_device=fast.fused_adam,
            policy=cfg.nan_policy,
            verbose=ctx.is_main,
        ),
    )


def _wrap(
    net: nn.Module,
    cfg: TrainConfig,
    fast: FastPaths,
    ctx: distributed.Context,
    device: torch.device,
) -> tuple[nn.Module, nn.Module]:
    """``net`` as run without an update and as run for its own update.

    The updated network runs under DDP (gradients averaged over ranks; its buffers, D's u and v
    among them, broadcast from rank 0 at each forward); the other one runs as the plain module.
    """

    def compiled(module: nn.Module) -> nn.Module:
        return torch.compile(module, mode=cfg.compile_mode) if fast.compile else module

    if not ctx.enabled:
        plain = compiled(net)
        return plain, plain
    ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return compiled(net), compiled(ddp)
