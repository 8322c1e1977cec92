"""Config -> objects, each by one function: the device, the data, the networks, the weights
files and the evaluator, and (``build_train_state``) the optimisers, schedules, batch stream and
fast paths.

``build_train_state`` turns a checked ``TrainConfig`` into a ``TrainState``, everything one
generator iteration reads and updates; ``sngan.train`` runs the loop over it and
``benchmarks/benchmark.py`` times the same thing. Nothing here reads the config once the objects
exist: the networks and optimisers take explicit arguments. (Plain functions rather than Hydra's
``instantiate``: docs/architecture.md says why.)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sngan import distributed
from sngan.batches import BatchStream, HostBatchStream, choose_residence
from sngan.config import ConfigError, MetricsConfig, TrainConfig
from sngan.data import as_tensors, read_source, source_store
from sngan.guard import UpdateGuard
from sngan.image_store import Store
from sngan.losses import get_loss
from sngan.models import build_models

if TYPE_CHECKING:  # torch-fidelity: imported only where an evaluator is built
    from sngan.extractor_weights import CheckedWeights, Network
    from sngan.metrics import Evaluator


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


@dataclass(frozen=True)
class TrainingSet:
    """The training images, their labels, and the identity that names their cached statistics."""

    images: torch.Tensor  # (N, 3, H, W) uint8; a view of the store's memory map where there is one
    labels: torch.Tensor  # (N,) int64
    # An image store's key digest: it identifies the pixels, so the metrics name their cache by
    # it instead of hashing ImageNet's 58.6 GiB (95 s on a 2-core CPU) at every start. None:
    # hash the pixels.
    digest: str | None = None


def training_set(cfg: TrainConfig) -> TrainingSet:
    """``cfg.data``'s images, labels and digest, read or prepared now; bad data is a
    ConfigError. Images from an image store are a view of its memory map."""
    store = training_store(cfg)
    if store is not None:
        return TrainingSet(*as_tensors(store), digest=store.digest)
    d = cfg.data
    try:  # the sources without a store (source_store was asked once, above)
        images, labels = read_source(
            d.source,
            root=d.root,
            image_size=d.image_size,
            download=d.download,
            split=d.split,
            num_images=d.num_images,
            seed=cfg.seed,
        )
    except (OSError, ValueError) as e:  # CIFAR-10 not there, or damaged
        raise ConfigError(str(e)) from e
    return TrainingSet(images, labels)


def training_images(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``training_set``'s images, uint8 (N, 3, H, W), and labels (N,)."""
    data = training_set(cfg)
    return data.images, data.labels


def training_store(cfg: TrainConfig) -> Store | None:
    """``cfg.data``'s image store, prepared now if needed (sngan-prepare); None for a source
    read as it is. Bad data is a ConfigError."""
    try:
        return source_store(cfg.data.source, **_source(cfg))
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from e


def _source(cfg: TrainConfig) -> dict[str, Any]:
    """What ``sngan.data`` reads a source with, from the config."""
    d = cfg.data
    return {
        "root": d.root,
        "image_size": d.image_size,
        "download": d.download,
        "split": d.split,
        "cache_dir": d.cache_dir,
        "workers": d.workers,
        "progress": cfg.progress,
        "classes": d.classes,
        "store": d.store,
    }


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
    for key, batch_size in (
        ("optim.d_batch_size", o.d_batch_size),
        ("optim.g_batch_size", o.g_batch_size),
    ):
        if batch_size % ctx.world_size:  # each rank takes an equal share
            raise ConfigError(
                f"{key}={batch_size} is not valid: with {ctx.world_size} processes it must "
                f"be a multiple of {ctx.world_size}"
            )
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
        d_widths=m.d_widths,
        conditioning=m.conditioning,
    )


def checked_weights_files(settings: MetricsConfig) -> dict[Network, CheckedWeights]:
    """The metrics' weights files, found (or fetched now) and checked without running code, by
    network; a ConfigError naming the file and what is wrong. torch-fidelity is imported here,
    when metrics are wanted, not before."""
    from sngan.extractor_weights import INCEPTION, VGG16, WeightsFileError, checked_weights

    networks = [(INCEPTION, settings.inception_weights)]
    if settings.prc:
        networks.append((VGG16, settings.prc_weights))
    try:
        return {network: checked_weights(path, network) for network, path in networks}
    except (OSError, RuntimeError, WeightsFileError) as e:  # missing, offline, damaged, foreign
        raise ConfigError(str(e)) from e


def build_evaluator(
    settings: MetricsConfig,
    reference: torch.Tensor,
    name: str,
    device: torch.device | str | None,
    weights: dict[Network, CheckedWeights] | None = None,
    labels: torch.Tensor | None = None,
    digest: str | None = None,
) -> Evaluator:
    """``sngan.metrics.Evaluator`` with the settings of a ``metrics`` config section;
    ``weights`` as ``checked_weights_files`` returned them (None: checked here); ``labels``
    the reference's (intra-FID); ``digest`` its identity, as ``TrainingSet.digest``."""
    from sngan.metrics import Evaluator

    return Evaluator(
        reference,
        reference_name=name,
        protocol=settings.protocol,
        num_samples=settings.num_samples,
        num_real=settings.num_real,
        labels=labels,
        reference_digest=digest,
        intra_fid=settings.intra_fid,
        intra_fid_classes=settings.intra_fid_classes,
        intra_fid_samples=settings.intra_fid_samples,
        batch_size=settings.batch_size,
        kid=settings.kid,
        prc=settings.prc,
        inception_weights=settings.inception_weights,
        prc_weights=settings.prc_weights,
        cache_dir=settings.cache_dir,
        device=device,
        weights=weights,
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
    residence, why = choose_residence(cfg.data.residence, images.nbytes, device)
    if why and ctx.is_main:
        print(why)
    stream = (HostBatchStream if residence == "host" else BatchStream)(
        images,
        labels,
        device=device,
        seed=cfg.seed,
        channels_last=fast.channels_last,
        dequantize=cfg.data.dequantize,
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
        # Constant until lr_decay_start, then linearly to 0 at the last iteration (the
        # official LinearShift from iteration_decay_start).
        if o.lr_decay != "linear" or it <= o.lr_decay_start:
            return 1.0
        return max(0.0, 1.0 - (it - o.lr_decay_start) / (cfg.iterations - o.lr_decay_start))

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
