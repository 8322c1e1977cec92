"""The configuration: typed schemas, the checks on their values, and how they are composed.

One dataclass per config group, registered with Hydra's ConfigStore, so an unknown key or a
wrong type in an override fails at once with the key's full name; ``validate`` then rejects
values that cannot work. Every field's comment is its documentation: the README's config
reference is generated from them.

``compose(overrides)`` is the one way from a command line to a ``TrainConfig``: it composes the
real Hydra config (configs/train.yaml), turns Hydra's errors into one line naming the key, and
validates. The CLI, the tests and the scripts all use it, so everything downstream gets a
checked, typed config and never looks at Hydra. (Hydra is imported only inside the functions
that compose; ``sngan.cli`` runs the Hydra app itself.)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sngan.protocols import PROTOCOLS

# The registries (models, losses, data sources) are imported by the checks that read them, not
# here: they import torch, and a typo on the command line is refused by the schema alone, in a
# fraction of the time torch takes to import.


def _config_dir() -> str:
    try:
        return str(importlib.resources.files("sngan.configs"))
    except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed: configs/ beside sngan/
        return str(Path(__file__).resolve().parents[1] / "configs")


CONFIG_DIR = _config_dir()

LR_DECAYS = ("linear", "none")
GENERATORS_SCORED = ("G_ema", "G")
# G_ema's BatchNorm statistics as sampled and scored: sngan.standing_stats.as_evaluated's modes.
BN_STATS = ("copy", "recompute")
NAN_POLICIES = ("stop", "skip")
# data.residence: on the training device, or gathered batch by batch from a memory map on the
# host; auto: the device unless the set would take more than a quarter of its memory.
RESIDENCES = ("auto", "device", "host")
# torch.compile's modes; reduce-overhead adds CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and valid values."""


@dataclass
class ModelConfig:
    name: str = "resnet"  # architecture family: dcgan (the paper's standard CNN) or resnet
    z_dim: int = 128  # dimension of the latent z ~ N(0, I)
    g_channels: int | None = None  # G width (ngf); null: the published width for data.image_size
    d_channels: int | None = None  # D width (ndf); null: the published width for data.image_size
    d_widths: str = "paper"  # dcgan's D: paper (Table 3 as printed) or chainer (official code)
    num_classes: int = 0  # > 0: class-conditional BN in G and a conditional D
    conditioning: str = "projection"  # a conditional D: projection, or concat (resnet at 128)


@dataclass
class LossConfig:
    name: str = "hinge"  # hinge, nonsaturating (the paper's "standard") or wasserstein


@dataclass
class DataConfig:
    source: str = "cifar10"  # cifar10, stl10, folder (ImageFolder layout), imagenet, synthetic
    root: str | None = "data"  # cifar10/stl10: holds their files; imagenet: holds train/; folder
    download: bool = True  # cifar10/stl10: download into root when the files are missing
    image_size: int = 32  # the resolution of data and networks (stl10, folder: resized to it)
    split: str = "unlabeled"  # stl10: unlabeled (100k images) or train+unlabeled (105k)
    cache_dir: str | None = None  # folder/stl10: the image store; null: ~/.cache/sngan/images
    store: str | None = None  # a prepared store's .npy, used as it is: no source files needed
    workers: int | None = None  # processes preparing the image store; null: every CPU
    residence: str = "auto"  # where the set is held: device, host (memory map), auto
    classes: int | None = None  # imagenet: class folders train/ must have; null: 1000
    dequantize: bool = False  # real images as x/128 - 1 + U(0, 1/128), as the official ImageNet
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
    lr_decay_start: int = 0  # linear decay: the iteration it starts from (constant lr before)
    ema_decay: float = 0.9999  # decay of G_ema, the weight average that is evaluated
    ema_start: int = 1000  # iterations before G_ema starts averaging (copies G until then)
    ema_bn_stats: str = "recompute"  # G_ema's BatchNorm stats when sampled/evaluated, or copy

    def __post_init__(self) -> None:
        # YAML and JSON have lists, not tuples: every way in (Hydra, from_dict) lands here.
        self.betas = tuple(self.betas)


@dataclass
class MetricsConfig:
    eval_every: int = 5000  # iterations between evaluations (0: only at the end)
    enabled: bool = True  # evaluate FID/IS during and at the end of training
    generators: list[str] = field(default_factory=lambda: ["G_ema", "G"])  # what is scored
    best: str = "G_ema"  # whose FID best.pt follows
    protocol: str = "standard"  # standard (50k vs train set) or paper (5k vs 10k, appendix B.1)
    num_samples: int | None = None  # generated images; null: the protocol's number
    num_real: int | None = None  # reference images (a fixed random subset); null: the protocol's
    batch_size: int = 250  # generation and Inception batch size
    kid: bool = False  # also compute KID
    prc: bool = False  # also compute precision and recall (VGG16 features)
    inception_weights: str | None = None  # local torch-fidelity Inception file (offline use)
    prc_weights: str | None = None  # local torchvision VGG16 file for prc (offline use)
    cache_dir: str | None = None  # where reference features are cached (null: torch-fidelity's)
    intra_fid: bool = False  # conditional G: also the mean over classes of each class's FID
    intra_fid_classes: list[int] | None = None  # the classes intra-FID scores; null: all
    intra_fid_samples: int = 5000  # generated images per class for intra-FID (the paper's 5,000)


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


@dataclass
class SampleConfig:
    """sngan-sample's arguments."""

    checkpoint: str = "???"  # a checkpoint file (ckpt_*.pt, latest.pt, best.pt)
    n: int = 64  # images; grid=per_class: per class (row); interpolate: rows
    out: str = "samples.png"  # one grid image (.png, .jpg, .webp, ...), or <dir>/: a PNG per image
    ema: bool = True  # sample G_ema (false: the raw G)
    ema_bn_stats: str | None = None  # G_ema's BatchNorm stats: copy or recompute; null: the run's
    seed: int = 0  # seeds z and labels: the same seed, the same images
    device: str = "auto"  # auto (cuda if available), cpu, cuda or cuda:N
    batch_size: int = 500  # images per forward of G
    # `class` is a Python keyword: the command line's class=<k> (sngan.cli maps it to class_).
    class_: int | None = None  # class=<k>: every image of class k (conditional G); null: uniform
    grid: str = "square"  # a .png's layout: square (sqrt(n) wide) or per_class (a row per class)
    interpolate: int = 0  # >= 2: n rows of this many images, slerp between two z; 0: off


@dataclass
class EvalConfig:
    """sngan-eval's arguments (of ``metrics``, the training schedule's keys do not apply)."""

    checkpoint: str = "???"  # a checkpoint file
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    data_root: str | None = None  # reference images' root (default: the run's data.root)
    ema: bool = True  # evaluate G_ema (false: the raw G)
    generators: list[str] | None = None  # e.g. [G_ema,G]: both at once; null: as ema says
    ema_bn_stats: str | None = None  # copy or recompute; null: as the run was evaluated
    device: str = "auto"
    seed: int = 0


# -- checks ---------------------------------------------------------------------------------------


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: {valid}")


def _choice(key: str, value: str, options: Sequence[str]) -> None:
    _check(value in options, key, value, f"choose one of {', '.join(options)}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject values that cannot work, naming the key; return ``cfg`` unchanged."""
    from sngan.data import SOURCES, STORE_SOURCES
    from sngan.losses import LOSSES
    from sngan.models import GENERATORS

    m, o, d, e = cfg.model, cfg.optim, cfg.data, cfg.metrics
    # The registries are the lists of valid names.
    _choice("model.name", m.name, tuple(GENERATORS))
    _choice("loss.name", cfg.loss.name, tuple(LOSSES))
    _choice("data.source", d.source, SOURCES)
    _choice("optim.lr_decay", o.lr_decay, LR_DECAYS)
    _choice("optim.ema_bn_stats", o.ema_bn_stats, BN_STATS)
    check_generators("metrics.generators", e.generators)
    _check(
        e.best in e.generators,
        "metrics.best",
        e.best,
        f"choose one of the generators scored, metrics.generators={override_value(e.generators)}",
    )
    _choice("metrics.protocol", e.protocol, PROTOCOLS)
    _choice("data.residence", d.residence, RESIDENCES)
    _check(
        d.workers is None or d.workers >= 1,
        "data.workers",
        d.workers,
        "must be an integer >= 1, or null for every CPU",
    )
    _choice("nan_policy", cfg.nan_policy, NAN_POLICIES)
    _choice("compile_mode", cfg.compile_mode, COMPILE_MODES)
    for key, value in (
        ("model.z_dim", m.z_dim),
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
    check_architecture(cfg)
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
        0 <= o.lr_decay_start < cfg.iterations,
        "optim.lr_decay_start",
        o.lr_decay_start,
        f"must be in 0..{cfg.iterations - 1}, below iterations={cfg.iterations}, where the "
        "linear decay reaches 0 (a preset run for fewer iterations needs it lowered too)",
    )
    _check(
        d.classes is None or d.classes >= 1,
        "data.classes",
        d.classes,
        "must be an integer >= 1, or null for ImageNet's 1000",
    )
    _check(
        e.num_real is None or e.num_real >= 2,
        "metrics.num_real",
        e.num_real,
        "must be >= 2 (FID needs two images at least) or null",
    )
    check_intra_fid("metrics", e, m.num_classes)
    _check(
        d.store is None or (d.source in STORE_SOURCES and d.store.endswith(".npy")),
        "data.store",
        d.store,
        f"a .npy file that sngan-prepare wrote, for data.source={'|'.join(STORE_SOURCES)}"
        f" (data.source={d.source})",
    )
    _check(
        d.source != "folder" or d.root is not None or d.store is not None,
        "data.root",
        d.root,
        "data.source=folder needs data.root=<a folder of class subfolders of images>",
    )
    check_device_name(cfg.device)
    return cfg


def check_intra_fid(section: str, e: MetricsConfig, num_classes: int) -> None:
    """Intra-FID needs a conditional G, classes it has, and at least two samples per class."""
    if not e.intra_fid:
        return
    _check(
        num_classes > 0,
        f"{section}.intra_fid",
        True,
        "intra-FID scores a class-conditional G (model.num_classes > 0)",
    )
    classes = e.intra_fid_classes
    _check(
        classes is None or (bool(classes) and all(0 <= c < num_classes for c in classes)),
        f"{section}.intra_fid_classes",
        classes,
        f"a non-empty list of classes in 0..{num_classes - 1}, or null for all",
    )
    _check(
        e.intra_fid_samples >= 2,
        f"{section}.intra_fid_samples",
        e.intra_fid_samples,
        "must be >= 2",
    )


def check_generators(key: str, names: list[str]) -> None:
    """A non-empty list of distinct names from GENERATORS_SCORED."""
    _check(
        bool(names) and len(set(names)) == len(names) and set(names) <= set(GENERATORS_SCORED),
        key,
        override_value(list(names)),
        f"a list of distinct names from {', '.join(GENERATORS_SCORED)}, e.g. [G_ema,G]",
    )


def check_architecture(cfg: TrainConfig) -> None:
    """The networks can be built for the data: sizes, widths and labels agree."""
    from sngan.data import CIFAR10_SIZE, STL10_SPLITS
    from sngan.models import D_WIDTH_CHOICES, SUPPORTED_SIZES, conditioning_error, width_error

    m, d = cfg.model, cfg.data
    # Resolution comes from one place, data.image_size; each network supports some sizes.
    sizes = SUPPORTED_SIZES[m.name]
    _check(
        d.image_size in sizes,
        "data.image_size",
        d.image_size,
        f"model.name={m.name} is built for {', '.join(map(str, sizes))} pixels",
    )
    _check(
        d.source != "cifar10" or d.image_size == CIFAR10_SIZE,
        "data.image_size",
        d.image_size,
        f"CIFAR-10's images are {CIFAR10_SIZE}x{CIFAR10_SIZE} (data=stl10 or data=folder resize "
        "images to other sizes)",
    )
    _check(
        m.d_widths in D_WIDTH_CHOICES[m.name],
        "model.d_widths",
        m.d_widths,
        f"choose {' or '.join(D_WIDTH_CHOICES[m.name])} for model.name={m.name}",
    )
    error = conditioning_error(m.name, d.image_size, m.conditioning, m.num_classes)
    _check(error is None, "model.conditioning", m.conditioning, str(error))
    for key, net, width in (
        ("model.g_channels", "G", m.g_channels),
        ("model.d_channels", "D", m.d_channels),
    ):
        if width is None:
            continue
        _check(width >= 1, key, width, "must be an integer >= 1, or null for the published width")
        error = width_error(m.name, d.image_size, net, width)
        _check(
            error is None,
            key,
            width,
            f"{error} (model.name={m.name}, data.image_size={d.image_size})",
        )
    _choice("data.split", d.split, STL10_SPLITS)
    # STL-10's unlabeled images carry the label -1, which no class embedding can take.
    _check(
        m.num_classes == 0 or d.source != "stl10",
        "model.num_classes",
        m.num_classes,
        "data.source=stl10 has unlabeled images (label -1): a conditional model cannot train on it",
    )


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill what the config leaves to be derived: null widths become the published ones for
    the image size (so a checkpoint records the networks' real widths); returns ``cfg``."""
    from sngan.models import SUPPORTED_SIZES, default_widths

    m = cfg.model
    if m.name in SUPPORTED_SIZES and cfg.data.image_size in SUPPORTED_SIZES[m.name]:
        g, d = default_widths(m.name, cfg.data.image_size)
        m.g_channels = g if m.g_channels is None else m.g_channels
        m.d_channels = d if m.d_channels is None else m.d_channels
    return cfg


def check_device_name(name: str) -> None:
    """``name`` is auto, cpu, cuda or cuda:N (whether that device exists is sngan.build's check)."""
    _check(
        name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()),
        "device",
        name,
        "choose auto, cpu, cuda or cuda:N",
    )


# -- conversions ----------------------------------------------------------------------------------


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain, JSON-able nested dict (saved in checkpoints, which are loaded with weights_only)."""
    out = dataclasses.asdict(cfg)
    out["optim"]["betas"] = list(cfg.optim.betas)
    return out


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of ``to_dict``, resolved and validated; an unknown key is a ConfigError."""
    kwargs: dict[str, Any] = {}
    sections = _sections(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'")
        if key in sections:
            names = {f.name for f in dataclasses.fields(sections[key])}
            unknown = sorted(set(value) - names)
            if unknown:
                raise ConfigError(f"unknown config keys {[f'{key}.{u}' for u in unknown]}")
            value = sections[key](**value)
        kwargs[key] = value
    return validate(resolve(TrainConfig(**kwargs)))


def to_flat(cfg: TrainConfig) -> dict[str, Any]:
    """Every key by its full name (``optim.n_dis``), in schema order, with plain values."""
    out = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def from_flat(flat: dict[str, Any]) -> TrainConfig:
    """Inverse of ``to_flat``, validated."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        target = nested.setdefault(section, {}) if section else nested
        target[name] = value
    return from_dict(nested)


def config_keys() -> list[str]:
    """Every settable key of the train config by its full name, in schema order."""
    return list(to_flat(TrainConfig()))


def override_value(value: Any) -> str:
    """A value as it is written in an override (``null``, ``true``, ``[0.0,0.9]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def _sections(schema: type) -> dict[str, type]:
    hints = typing.get_type_hints(schema)
    return {name: kind for name, kind in hints.items() if dataclasses.is_dataclass(kind)}


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


# -- composition ----------------------------------------------------------------------------------


def register_with_hydra() -> None:
    """Make configs/train.yaml composable: its schema in the ConfigStore, its resolvers."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # hydra.run.dir: a resumed run keeps writing into its own directory.
    OmegaConf.register_new_resolver(
        "or_else", lambda value, default: value or default, replace=True
    )


def compose(overrides: Sequence[str] = ()) -> TrainConfig:
    """configs/train.yaml with ``overrides`` as a checked TrainConfig; ConfigError if it cannot be.

    ``resume=<run>`` is kept as a key: ``sngan.resume.resumed_config`` turns it into the run's
    own saved config.
    """
    return from_hydra(compose_hydra(overrides))


def compose_hydra(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> Any:
    """The composed Hydra DictConfig (unchecked values); Hydra's errors as one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_with_hydra()
    overrides = list(overrides)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return hydra_compose(
                "train", overrides=overrides, return_hydra_config=return_hydra_config
            )
    except HydraException as e:
        raise hydra_error(e, overrides) from e


def from_hydra(dcfg: Any) -> TrainConfig:
    """The checked TrainConfig of a composed Hydra config (its ``hydra`` node, if any, ignored)."""
    from omegaconf import OmegaConf

    # Hydra's own node is left out before resolving: some of its values (a sweep's) are set
    # only once a job runs.
    task = OmegaConf.masked_copy(dcfg, [k for k in dcfg if k != "hydra"])
    values = OmegaConf.to_container(task, resolve=True)
    # Hydra adds "+key=value" keys to the config without checking them against the schema.
    known = set(config_keys())
    for key, value in values.items():
        for name in [f"{key}.{n}" for n in value] if isinstance(value, dict) else [key]:
            if name not in known:
                raise unknown_key(name)
    return from_dict(values)


def unknown_key(key: str) -> ConfigError:
    """An unknown key's error: the closest known key, and the keys that its section has."""
    known = config_keys()
    section, _, leaf = key.rpartition(".")
    # Names are compared within the key's own section, so the shared "model." of every model
    # key does not make a far-off name look close.
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.75)
    hint = f" (did you mean {siblings[close[0]]}?)" if close else ""
    if section and any(k.startswith(section + ".") for k in known):
        names = [k[len(section) + 1 :] for k in known if k.startswith(section + ".")]
        return ConfigError(f"unknown config key '{key}'{hint}: {section} has {', '.join(names)}")
    groups = list(dict.fromkeys(k.split(".")[0] for k in known if "." in k))
    top = [k for k in known if "." not in k]
    return ConfigError(
        f"unknown config key '{key}'{hint}: the config has the sections {', '.join(groups)} "
        f"and the keys {', '.join(top)} (sngan-train --help shows them all)"
    )


def hydra_error(err: Exception, overrides: Sequence[str]) -> ConfigError:
    """Hydra's composition errors as one line naming the key and what it takes."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return ConfigError(
            f"{group}={name} is not valid: choose one of {', '.join(sorted(err.options))}"
        )
    if isinstance(err, OverrideParseException):
        reason = str(err).splitlines()[0]
        return ConfigError(f"cannot parse the override '{err.override}': {reason}")
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (KeyError, AttributeError)) and key:  # ConfigKey/AttributeError
        return unknown_key(key)
    if key:
        base = key.split("[")[0]
        # "Error merging override optim.n_dis=abc"; else the last override of the key.
        given = str(err).partition("Error merging override ")[2].strip() or next(
            (o for o in reversed(overrides) if o.split("=", 1)[0].lstrip("+~") == base),
            f"{base}=...",
        )
        expected = expected_value(key)
        if expected is not None:
            return ConfigError(f"{given} is not valid: must be {expected}")
        keys = config_keys()
        if any(k.startswith(base + ".") for k in keys):
            example = next(k for k in keys if k.startswith(base + "."))
            return ConfigError(
                f"{given} is not valid: {base} is a section of the config, not a value; set "
                f"its keys, e.g. {example}=..."
            )
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError("; ".join(lines))
