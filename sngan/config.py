"""Typed configuration schemas: one dataclass per config group, checked before anything runs.

These dataclasses are registered with Hydra's ConfigStore by ``sngan.cli`` (the only module
that imports Hydra), so an unknown key or a wrong type in an override fails at once with
the key's full name. ``validate`` then rejects values that cannot work. Every field's
comment is its documentation: the README's config reference is generated from them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

MODEL_NAMES = ("dcgan", "resnet")
LOSS_NAMES = ("hinge", "nonsaturating", "wasserstein")
DATA_SOURCES = ("cifar10", "folder", "synthetic")
PROTOCOLS = ("standard", "paper")
LR_DECAYS = ("linear", "none")
NAN_POLICIES = ("stop", "skip")
# torch.compile's modes; reduce-overhead adds CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and valid values."""


@dataclass
class ModelConfig:
    name: str = "resnet"  # architecture family: dcgan (the paper's standard CNN) or resnet
    z_dim: int = 128  # dimension of the latent z ~ N(0, I)
    g_channels: int = 256  # G width (resnet: every block; dcgan: the 4x4 bottom, halved per stage)
    d_channels: int = 128  # D width (resnet: every block; dcgan: the first conv, doubled per stage)
    bottom_width: int = 4  # spatial size G starts from (32 = bottom_width * 2^3)
    num_classes: int = 0  # > 0: conditional BN in G and a projection D


@dataclass
class LossConfig:
    name: str = "hinge"  # hinge, nonsaturating (the paper's "standard") or wasserstein


@dataclass
class DataConfig:
    source: str = "cifar10"  # cifar10, folder (ImageFolder layout) or synthetic (random images)
    root: str | None = "data"  # cifar10: holds cifar-10-batches-py/; folder: the image folder
    download: bool = True  # cifar10: download into root when the files are missing
    image_size: int = 32  # resolution the networks work at (folder images are resized)
    num_images: int = 1024  # synthetic: how many images


@dataclass
class OptimConfig:
    n_dis: int = 5  # D steps per generator iteration
    g_lr: float = 2e-4  # Adam learning rate of G
    d_lr: float = 2e-4  # Adam learning rate of D
    betas: tuple[float, float] = (0.0, 0.9)  # Adam (beta1, beta2) for both networks
    d_batch_size: int = 64  # real images per D step (and as many generated ones)
    g_batch_size: int = 128  # generated images per G step
    lr_decay: str = "linear"  # linear (to 0 at the last iteration) or none
    ema_decay: float = 0.9999  # decay of G_ema, the weight average that is evaluated
    ema_start: int = 1000  # iterations before G_ema starts averaging (copies G until then)


@dataclass
class MetricsConfig:
    eval_every: int = 5000  # iterations between evaluations of G_ema (0: only at the end)
    enabled: bool = True  # evaluate FID/IS during and at the end of training
    protocol: str = "standard"  # standard (50k vs train set) or paper (5k vs 10k, appendix B.1)
    num_samples: int | None = None  # generated images; null: the protocol's number
    batch_size: int = 250  # generation and Inception batch size
    kid: bool = False  # also compute KID
    inception_weights: str | None = None  # local torch-fidelity Inception file (offline use)
    cache_dir: str | None = None  # where reference statistics are cached (null: torch-fidelity's)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    iterations: int = 50000  # generator iterations (each: n_dis D steps, then one G step)
    seed: int = 0  # seeds model init, data order and z
    device: str = "auto"  # auto (cuda if available), cpu, cuda or cuda:N
    amp: bool | None = None  # bf16 autocast; null: on for CUDA, off for CPU
    compile: bool | None = None  # torch.compile of G and D; null: on for CUDA, off for CPU
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead: CUDA graphs too
    channels_last: bool = True  # channels_last memory format (faster on CUDA and x86 CPUs)
    fused_adam: bool | None = None  # Adam(fused=True); null: on for CUDA, off for CPU
    joint_d_forward: bool | None = None  # real+fake in one D forward; null: on for CUDA only
    threads: int | None = None  # CPU threads for torch ops (torch.set_num_threads); null: default
    sync_bn: bool = False  # torchrun on CUDA: G's BatchNorm statistics over all ranks, not per rank
    log_every: int = 100  # iterations between scalar logs (losses, sigmas, lr, throughput)
    log_exact_every: int = 1000  # iterations between exact (SVD) sigmas of D's weights
    sample_every: int = 1000  # iterations between sample grids of G_ema and G
    checkpoint_every: int = 1000  # iterations between checkpoints
    keep_checkpoints: int = 3  # snapshots kept besides latest.pt and best.pt
    nan_policy: str = "stop"  # non-finite loss: stop (save last good state, exit) or skip the step
    progress: bool = True  # tqdm progress bar
    resume: str | None = None  # a run directory to continue from its latest checkpoint


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: {valid}")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, value, f"choose one of {', '.join(options)}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject values that cannot work, naming the key; return ``cfg`` unchanged."""
    m, o, d, e = cfg.model, cfg.optim, cfg.data, cfg.metrics
    _choice("model.name", m.name, MODEL_NAMES)
    _choice("loss.name", cfg.loss.name, LOSS_NAMES)
    _choice("data.source", d.source, DATA_SOURCES)
    _choice("optim.lr_decay", o.lr_decay, LR_DECAYS)
    _choice("metrics.protocol", e.protocol, PROTOCOLS)
    _choice("nan_policy", cfg.nan_policy, NAN_POLICIES)
    _choice("compile_mode", cfg.compile_mode, COMPILE_MODES)
    for key, value in (
        ("model.z_dim", m.z_dim),
        ("model.g_channels", m.g_channels),
        ("model.d_channels", m.d_channels),
        ("model.bottom_width", m.bottom_width),
        ("optim.n_dis", o.n_dis),
        ("optim.d_batch_size", o.d_batch_size),
        ("optim.g_batch_size", o.g_batch_size),
        ("iterations", cfg.iterations),
        ("log_every", cfg.log_every),
        ("log_exact_every", cfg.log_exact_every),
        ("sample_every", cfg.sample_every),
        ("checkpoint_every", cfg.checkpoint_every),
        ("keep_checkpoints", cfg.keep_checkpoints),
        ("data.image_size", d.image_size),
        ("data.num_images", d.num_images),
        ("metrics.batch_size", e.batch_size),
    ):
        _check(value >= 1, key, value, "must be an integer >= 1")
    _check(
        m.num_classes >= 0, "model.num_classes", m.num_classes, "must be >= 0 (0: unconditional)"
    )
    _check(
        cfg.threads is None or cfg.threads >= 1,
        "threads",
        cfg.threads,
        "must be an integer >= 1, or null for torch's default",
    )
    _check(
        e.eval_every >= 0, "metrics.eval_every", e.eval_every, "must be >= 0 (0: only at the end)"
    )
    if e.num_samples is not None:
        # IS is a mean over 10 splits of the generated images.
        _check(e.num_samples >= 10, "metrics.num_samples", e.num_samples, "must be >= 10 or null")
    for key, lr in (("optim.g_lr", o.g_lr), ("optim.d_lr", o.d_lr)):
        _check(math.isfinite(lr) and lr > 0, key, lr, "must be a finite number > 0")
    _check(
        len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
        "optim.betas",
        list(o.betas),
        "must be two numbers in [0, 1), e.g. [0.0, 0.9]",
    )
    _check(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", o.ema_decay, "must be in [0, 1)")
    _check(o.ema_start >= 0, "optim.ema_start", o.ema_start, "must be >= 0")
    _check(
        d.source != "folder" or d.root is not None,
        "data.root",
        d.root,
        "data.source=folder needs data.root=<a folder of class subfolders of images>",
    )
    dev = cfg.device
    _check(
        dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
        "device",
        dev,
        "choose auto, cpu, cuda or cuda:N",
    )
    return cfg


def config_keys(schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every settable key of ``schema`` by its full name (``optim.n_dis``), in schema order."""
    out = []
    for f in dataclasses.fields(schema):
        kind = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(kind):
            out += config_keys(kind, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def expected_value(key: str) -> str | None:
    """What ``key`` (a full name; ``optim.betas[1]`` too) takes, in words; None if not a value."""
    schema: Any = TrainConfig
    kind: Any = None
    for part in key.split("[")[0].split("."):
        hints = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
        if part not in hints:
            return None
        kind = schema = hints[part]
    if dataclasses.is_dataclass(kind):
        return None
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        return f"a list of {len(args)} numbers, e.g. [0.0, 0.9]"
    if type(None) in args:  # X | None
        inner = next(a for a in args if a is not type(None))
        return "true, false or null" if inner is bool else f"{_KINDS[inner]} or null"
    return _KINDS.get(kind, getattr(kind, "__name__", str(kind)))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain, JSON-able dict (saved in checkpoints, which are loaded with weights_only)."""
    out = dataclasses.asdict(cfg)
    out["optim"]["betas"] = list(cfg.optim.betas)
    return out


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of ``to_dict``; unknown keys raise ConfigError naming them."""
    sections = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    groups = {
        "model": ModelConfig,
        "loss": LossConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "metrics": MetricsConfig,
    }
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(f"unknown config key '{key}'")
        if key in groups:
            names = {f.name for f in dataclasses.fields(groups[key])}
            unknown = sorted(set(value) - names)
            if unknown:
                raise ConfigError(f"unknown config keys {[f'{key}.{u}' for u in unknown]}")
            value = groups[key](**value)
            if key == "optim":
                value.betas = tuple(value.betas)
        kwargs[key] = value
    return TrainConfig(**kwargs)
