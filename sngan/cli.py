"""Console entry points: sngan-train, sngan-eval, sngan-sample, sngan --version.

The only module that imports Hydra. It composes the config, checks it against the
schemas in ``sngan.config`` and hands plain typed objects to ``sngan.train.train``.
"""

from __future__ import annotations

import dataclasses
import difflib
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
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngan import __version__, checkpoint
from sngan.config import (
    ConfigError,
    MetricsConfig,
    TrainConfig,
    config_keys,
    expected_value,
    from_dict,
    to_dict,
    validate,
)

CONFIG_DIR = str(importlib.resources.files("sngan.configs"))

# Keys a resumed run may change (and metrics.*); anything else would make it a different run.
RESUMABLE_OVERRIDES = (
    "resume",
    "iterations",
    "device",
    "amp",
    "compile",
    "compile_mode",
    "channels_last",
    "fused_adam",
    "joint_d_forward",
    "threads",
    "progress",
    "log_every",
    "log_exact_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "nan_policy",
)

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# hydra.run.dir: a resumed run keeps writing into its own directory.
OmegaConf.register_new_resolver("or_else", lambda value, default: value or default, replace=True)


def _fail(prog: str, err: BaseException | str, code: int = 1) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def _resumable(key: str) -> bool:
    return key in RESUMABLE_OVERRIDES or key.startswith(("metrics.", "hydra.", "hydra/"))


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _yaml(value: Any) -> str:
    """A value as written on the command line (null, true, [0.0, 0.9])."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def saved_config(path: Path, state: dict[str, Any]) -> TrainConfig:
    """The config stored in a checkpoint; one this sngan cannot read is a CheckpointError."""
    try:
        return from_dict(state["config"])
    except (ConfigError, TypeError) as e:
        raise checkpoint.CheckpointError(
            f"{path} was written by sngan {state.get('sngan_version')} with a config this "
            f"sngan {__version__} cannot read: {e}"
        ) from e


def resume_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """The saved config of the run ``cfg.resume``, with the overrides a resume may change.

    ``cfg`` is composed from the whole command line. What its other overrides set must equal
    the saved values (so the run's own command line plus resume=... is fine): a difference is
    an error naming the checkpoint, the keys and both values.
    """
    path = checkpoint.find_latest(cfg.resume)
    saved = saved_config(path, checkpoint.load(path))
    current, merged = _flat(to_dict(cfg)), _flat(to_dict(saved))
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    touched = set()
    for key in (k for k in keys if not _resumable(k)):
        # A key, a section's config group (model=dcgan), or a global preset (experiment=...).
        under = [k for k in current if k == key or k.startswith(key + ".")]
        touched.update(under or current)
    if touched:
        changed = [
            k for k in current if k in touched and not _resumable(k) and current[k] != merged[k]
        ]
        if changed:
            shown = ", ".join(
                f"{k}={_yaml(current[k])} (the run has {_yaml(merged[k])})" for k in changed[:6]
            )
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            raise ConfigError(
                f"resume={cfg.resume} continues the run saved in {path} with its own config, "
                f"but this command line changes it: {shown}{more}. A resume may change only "
                f"{', '.join(RESUMABLE_OVERRIDES[1:])} and metrics.*; pass only those with "
                "resume=..., or start a new run in another directory"
            )
    for key in keys:
        if key in current and _resumable(key):
            merged[key] = current[key]
    merged["resume"] = cfg.resume
    nested: dict[str, Any] = {}
    for key, value in merged.items():
        *sections, name = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return from_dict(nested)


def _unknown_key(key: str) -> ConfigError:
    """An unknown key's error: the closest known key, and the keys that its section has."""
    known = config_keys()
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    section, _, _ = key.rpartition(".")
    if section and any(k.startswith(section + ".") for k in known):
        names = [k[len(section) + 1 :] for k in known if k.startswith(section + ".")]
        return ConfigError(f"unknown config key '{key}'{hint}: {section} has {', '.join(names)}")
    groups = list(dict.fromkeys(k.split(".")[0] for k in known if "." in k))
    top = [k for k in known if "." not in k]
    return ConfigError(
        f"unknown config key '{key}'{hint}: the config has the sections {', '.join(groups)} "
        f"and the keys {', '.join(top)} (sngan-train --help shows them all)"
    )


def _hydra_error(err: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's composition errors as one line naming the key and what it takes."""
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
        return _unknown_key(key)
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
        if any(k.startswith(base + ".") for k in config_keys()):
            example = next(k for k in config_keys() if k.startswith(base + "."))
            return ConfigError(
                f"{given} is not valid: {base} is a section of the config, not a value; set "
                f"its keys, e.g. {example}=..."
            )
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError("; ".join(lines))


def _train_config(dcfg: DictConfig, overrides: list[str]) -> TrainConfig:
    """The checked TrainConfig of a composed config; resume= takes the run's saved one."""
    from sngan.train import resolve_device

    # Hydra adds "+key=value" keys to the config without checking them against the schema.
    known = set(config_keys())
    unknown = [k for k in _flat(OmegaConf.to_container(dcfg)) if k not in known]
    if unknown:
        raise _unknown_key(unknown[0])
    cfg: TrainConfig = OmegaConf.to_object(dcfg)
    cfg.optim.betas = tuple(cfg.optim.betas)
    if cfg.resume:
        cfg = resume_config(cfg, overrides)
    validate(cfg)
    resolve_device(cfg.device)  # a GPU that is not there fails before anything is written
    return cfg


def _check_command_line(argv: list[str]) -> None:
    """Compose and check the config the way the Hydra app will, so that a bad override fails
    with one line before Hydra creates a run directory (and without Hydra's multi-line report).
    """
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            dcfg = compose("train", overrides=argv)
    except HydraException as e:
        raise _hydra_error(e, argv) from e
    _train_config(dcfg, [a for a in argv if not a.startswith(("hydra.", "hydra/"))])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(dcfg: DictConfig) -> None:
    from sngan.train import Interrupted, NonFiniteError, resume_hint, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = _train_config(dcfg, list(HydraConfig.get().overrides.task))
        text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
        print(text, end="", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(text)
        train(cfg, run_dir)
    except Interrupted as e:  # a clean stop: exit as a signal would, 130 (INT) or 143 (TERM)
        print(f"sngan-train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        _fail("sngan-train", f"interrupted; {resume_hint(run_dir)}", 130)
    except checkpoint.CheckpointWriteError as e:  # it names the checkpoint that is intact
        resume = f"; once that is fixed, resume with: sngan-train resume={run_dir}"
        _fail("sngan-train", f"{e}{resume if e.previous else ''}")
    except OSError as e:  # e.g. a full disk while writing logs or samples
        _fail("sngan-train", f"{e}; {resume_hint(run_dir)}")
    except (ConfigError, checkpoint.CheckpointError, NonFiniteError) as e:
        _fail("sngan-train", e)


def train_main() -> None:
    """sngan-train [overrides...]: train with the composed config."""
    argv = sys.argv[1:]
    # Plain overrides are checked here first; with flags (--multirun, --help, --cfg, ...)
    # Hydra reports composition errors itself and the app checks each job's config.
    if not any(a.startswith("-") for a in argv):
        try:
            _check_command_line(argv)
        except (ConfigError, checkpoint.CheckpointError) as e:
            _fail("sngan-train", e)
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
    cfg = saved_config(Path(path), state)
    G, _ = build_networks(cfg)
    key = "G_ema" if ema else "G"
    try:
        G.load_state_dict(state[key])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise checkpoint.CheckpointError(
            f"{path}: its {key} weights do not fit the {cfg.model.name} generator of its own "
            f"config (saved by sngan {state.get('sngan_version')}): {detail[:400]}"
        ) from e
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
    from sngan.metrics import evaluate_with, inception_weights_file
    from sngan.train import load_training_images, reference_name, resolve_device

    args: EvalArgs = _parse("sngan-eval", EvalArgs, sys.argv[1:] if argv is None else argv)
    try:
        device = resolve_device(args.device)
        try:
            inception_weights_file(args.metrics.inception_weights)  # before any other work
        except RuntimeError as e:  # offline, and no copy in torch hub's directory
            raise ConfigError(str(e)) from e
        G, state = _load_generator(args.checkpoint, args.ema, device)
        cfg = saved_config(Path(args.checkpoint), state)
        if args.data_root is not None:
            cfg.data.root = args.data_root
        reference, _ = load_training_images(cfg)
        result = evaluate_with(
            G,
            reference,
            args.metrics,
            reference_name=reference_name(cfg),
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
