"""Console entry points: sngan-train, sngan-eval, sngan-sample, sngan --version.

The only module that imports Hydra. It composes the config, checks it against the
schemas in ``sngan.config`` and hands plain typed objects to ``sngan.train.train``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngan import __version__, checkpoint
from sngan.config import (
    ConfigError,
    MetricsConfig,
    TrainConfig,
    from_dict,
    to_dict,
    validate,
)

CONFIG_DIR = str(importlib.resources.files("sngan.configs"))

# Keys a resumed run may change; anything else would make it a different run.
RESUMABLE_OVERRIDES = (
    "resume",
    "iterations",
    "device",
    "amp",
    "compile",
    "progress",
    "log_every",
    "log_exact_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "nan_policy",
    "metrics.",
)

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# hydra.run.dir: a resumed run keeps writing into its own directory.
OmegaConf.register_new_resolver("or_else", lambda value, default: value or default, replace=True)


def _fail(prog: str, err: BaseException, code: int = 1) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def resume_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """The saved config of the run ``cfg.resume``, with the overrides a resume may change."""
    path = checkpoint.find_latest(cfg.resume)
    saved = from_dict(checkpoint.load(path)["config"])
    current = to_dict(cfg)
    merged = to_dict(saved)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not key.startswith(RESUMABLE_OVERRIDES):
            raise ConfigError(
                f"resume={cfg.resume} continues that run with its saved config; the override "
                f"'{override}' would change it (a resume may change only "
                f"{', '.join(k.rstrip('.') for k in RESUMABLE_OVERRIDES[1:])})"
            )
    for key, value in current.items():
        if isinstance(value, dict):
            continue
        if any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides):
            merged[key] = value
    merged["metrics"] = (
        current["metrics"]
        if any(o.lstrip("+~").startswith("metrics.") for o in overrides)
        else merged["metrics"]
    )
    merged["resume"] = cfg.resume
    return from_dict(merged)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(dcfg: DictConfig) -> None:
    from sngan.train import Interrupted, NonFiniteError, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg: TrainConfig = OmegaConf.to_object(dcfg)
        cfg.optim.betas = tuple(cfg.optim.betas)
        if cfg.resume:
            cfg = resume_config(cfg, list(HydraConfig.get().overrides.task))
        validate(cfg)
        print(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))), end="", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
        train(cfg, run_dir)
    except Interrupted as e:
        _fail("sngan-train", e, 130)
    except (ConfigError, checkpoint.CheckpointError, FileNotFoundError, NonFiniteError) as e:
        _fail("sngan-train", e)


def train_main() -> None:
    """sngan-train [overrides...]: train with the composed config."""
    _train_app()


def _parse(prog: str, schema: Any, argv: list[str]) -> Any:
    """key=value arguments checked against a dataclass schema (unknown keys are errors)."""
    if any(a in ("-h", "--help") for a in argv):
        fields = ", ".join(f.name for f in dataclasses.fields(schema))
        print(f"usage: {prog} key=value ...  (keys: {fields})")
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        _fail(prog, ConfigError(f"arguments must be key=value, got {bad}"))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        _fail(prog, ConfigError(str(e).splitlines()[0] + _full_key(e)))


def _full_key(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    return f" (key: {key})" if key else ""


def _load_generator(path: str, ema: bool, device: torch.device) -> tuple[Any, dict[str, Any]]:
    from sngan.train import build_networks

    state = checkpoint.load(path, map_location="cpu")
    cfg = from_dict(state["config"])
    G, _ = build_networks(cfg)
    G.load_state_dict(state["G_ema" if ema else "G"])
    return G.to(device).eval(), state


@dataclass
class SampleArgs:
    checkpoint: str = "???"  # a checkpoint file (ckpt_*.pt, latest.pt, best.pt)
    n: int = 64  # number of images
    out: str = "samples.png"  # a .png file for one grid, otherwise a directory of PNG files
    ema: bool = True  # sample G_ema (false: the raw G)
    seed: int = 0
    device: str = "auto"
    batch_size: int = 500


def sample_main(argv: list[str] | None = None) -> None:
    """sngan-sample checkpoint=<file> n=64 [out=grid.png | out=<dir>]."""
    import torchvision

    from sngan.train import resolve_device, sample_z

    args: SampleArgs = _parse("sngan-sample", SampleArgs, sys.argv[1:] if argv is None else argv)
    try:
        device = resolve_device(args.device)
        G, state = _load_generator(args.checkpoint, args.ema, device)
    except (ConfigError, checkpoint.CheckpointError) as e:
        _fail("sngan-sample", e)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = Path(args.out)
    chunks = []
    with torch.no_grad():
        for start in range(0, args.n, args.batch_size):
            z, y = sample_z(
                min(args.batch_size, args.n - start), G.z_dim, G.num_classes, gen, device
            )
            chunks.append(((G(z, y).float() + 1) * 127.5).round().clamp(0, 255).byte().cpu())
    images = torch.cat(chunks)  # (n, 3, H, W) uint8
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = torchvision.utils.make_grid(images, nrow=max(1, int(args.n**0.5)))
        torchvision.io.write_png(grid, str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            torchvision.io.write_png(img, str(out / f"{i:06d}.png"))
    print(f"sngan-sample: wrote {args.n} images of iteration {state['iteration']} to {out}")


@dataclass
class EvalArgs:
    checkpoint: str = "???"  # a checkpoint file
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    data_root: str | None = None  # reference images' root (default: the run's data.root)
    ema: bool = True  # evaluate G_ema (false: the raw G)
    device: str = "auto"
    seed: int = 0


def eval_main(argv: list[str] | None = None) -> None:
    """sngan-eval checkpoint=<file> [metrics.protocol=paper] [metrics.num_samples=N]."""
    from sngan.data import load_images
    from sngan.metrics import evaluate
    from sngan.train import reference_name, resolve_device

    args: EvalArgs = _parse("sngan-eval", EvalArgs, sys.argv[1:] if argv is None else argv)
    try:
        device = resolve_device(args.device)
        G, state = _load_generator(args.checkpoint, args.ema, device)
        cfg = from_dict(state["config"])
        if args.data_root is not None:
            cfg.data.root = args.data_root
        d = cfg.data
        reference, _ = load_images(
            d.source,
            root=d.root,
            image_size=d.image_size,
            download=d.download,
            num_images=d.num_images,
            seed=cfg.seed,
        )
        e = args.metrics
        result = evaluate(
            G,
            reference,
            reference_name=reference_name(cfg),
            protocol=e.protocol,
            num_samples=e.num_samples,
            batch_size=e.batch_size,
            kid=e.kid,
            inception_weights=e.inception_weights,
            cache_dir=e.cache_dir,
            device=device,
            seed=args.seed,
        )
    except (ConfigError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        _fail("sngan-eval", e)
    record = {
        "checkpoint": str(args.checkpoint),
        "iteration": state["iteration"],
        "protocol": args.metrics.protocol,
        "generator": "G_ema" if args.ema else "G",
        **result,
    }
    print(json.dumps(record))


def main_version(argv: list[str] | None = None) -> None:
    """sngan --version."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        print(f"sngan {__version__}")
        return
    print(
        f"sngan {__version__}: use sngan-train, sngan-eval or sngan-sample "
        "(each takes key=value arguments; sngan-train --help lists the config)"
    )
    raise SystemExit(0 if not argv else 2)


if __name__ == "__main__":
    train_main()
