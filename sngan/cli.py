"""Console entry points: sngan-train, sngan-eval, sngan-sample, sngan --version.

Argument parsing and error printing only. ``sngan-train`` is a Hydra app: its config is
composed and checked by ``sngan.config``, a resume takes the run's saved config
(``sngan.resume``), and ``sngan.train.train`` does the work; ``sngan-sample`` and ``sngan-eval``
parse key=value arguments into their schemas and call ``sngan.sample``. Every expected failure
is one line, ``<prog>: error: <message>``, and exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngan import __version__, checkpoint, config
from sngan.build import resolve_device
from sngan.config import CONFIG_DIR, ConfigError, EvalConfig, SampleConfig, TrainConfig, to_dict
from sngan.resume import resume_hint, resumed_config

config.register_with_hydra()


def _fail(prog: str, err: BaseException | str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


# A plain command line's config, composed and checked before Hydra started (see train_main).
_checked: TrainConfig | None = None


def job_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """The config a sngan-train job runs with: a resume's saved one, on a device that exists."""
    if cfg.resume:
        cfg = resumed_config(cfg, overrides)
    resolve_device(cfg.device)  # a GPU that is not there fails before anything is written
    return cfg


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(dcfg: DictConfig) -> None:
    from sngan.guard import NonFiniteError
    from sngan.interrupt import Interrupted
    from sngan.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = _checked or job_config(
            config.from_hydra(dcfg), list(HydraConfig.get().overrides.task)
        )
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
    global _checked
    argv = sys.argv[1:]
    # Plain overrides are checked here, so that a bad one fails with one line before Hydra
    # creates a run directory; with flags (--multirun, --help, --cfg, ...) Hydra reports
    # composition errors itself and each job's config is checked in the app.
    _checked = None
    if not any(a.startswith("-") for a in argv):
        try:
            _checked = job_config(config.compose(argv), argv)
        except (ConfigError, checkpoint.CheckpointError) as e:
            _fail("sngan-train", e)
    _train_app()


def parse_args(prog: str, schema: type, argv: list[str]) -> Any:
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
        key = getattr(e, "full_key", None)
        _fail(prog, ConfigError(str(e).splitlines()[0] + (f" (key: {key})" if key else "")))


def sample_main(argv: list[str] | None = None) -> None:
    """sngan-sample checkpoint=<file> n=64 [out=grid.png | out=<dir>]."""
    from sngan.sample import sample

    args: SampleConfig = parse_args(
        "sngan-sample", SampleConfig, sys.argv[1:] if argv is None else argv
    )
    try:
        iteration = sample(args)
    except (ConfigError, checkpoint.CheckpointError) as e:
        _fail("sngan-sample", e)
    print(f"sngan-sample: wrote {args.n} images of iteration {iteration} to {args.out}")


def eval_main(argv: list[str] | None = None) -> None:
    """sngan-eval checkpoint=<file> [metrics.protocol=paper] [metrics.num_samples=N]."""
    from sngan.sample import evaluate_checkpoint

    args: EvalConfig = parse_args("sngan-eval", EvalConfig, sys.argv[1:] if argv is None else argv)
    try:
        record = evaluate_checkpoint(args)
    except (ConfigError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        _fail("sngan-eval", e)
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
