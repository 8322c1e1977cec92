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
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngan import __version__, checkpoint, config, distributed, gpu_slots, launchers, runlock
from sngan.build import resolve_device
from sngan.config import CONFIG_DIR, ConfigError, EvalConfig, SampleConfig, TrainConfig, to_dict
from sngan.resume import requeued, resume_hint, resumed_config
from sngan.runlock import RunLockedError

config.register_with_hydra()
gpu_slots.register_resolvers()  # device=cuda:${gpu_slot:} (+sweep=gpus)
launchers.register_with_hydra()  # hydra/launcher=joblib|slurm without the plugins: pip hint


class SweepJobError(RuntimeError):
    """One job of a sweep failed (its one-line error is already printed)."""


def _fail(prog: str, err: BaseException | str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def _fail_job(err: BaseException | str, code: int = 1) -> NoReturn:
    """_fail for a sngan-train job; in a sweep only this job fails.

    (A SystemExit in a joblib worker ends the whole sweep at once and kills the jobs running
    beside it; an exception marks this job failed and lets the others finish.)
    """
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        print(f"sngan-train: error: {err}", file=sys.stderr)
        raise SweepJobError(str(err)) from None
    _fail("sngan-train", err, code)


# A plain command line's config, composed and checked before Hydra started (see train_main).
_checked: TrainConfig | None = None


def job_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """The config a sngan-train job runs with: a resume's saved one, on a device that exists,
    with sound weights files for its metrics (all of it checked before anything is written)."""
    if cfg.resume:
        cfg = resumed_config(cfg, overrides)
    resolve_device(cfg.device)
    if cfg.metrics.enabled:
        from sngan.evaluation import check_weights_files  # torch-fidelity: only when needed

        check_weights_files(cfg.metrics)
    return cfg


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(dcfg: DictConfig) -> None:
    from sngan.guard import NonFiniteError
    from sngan.interrupt import Interrupted
    from sngan.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    try:
        if distributed.launched_as_rank_zero():
            runlock.hold(run_dir)  # before this job writes anything there
        cfg = _checked or job_config(config.from_hydra(dcfg), overrides)
        if not cfg.resume and requeued(run_dir):  # SLURM/submitit started this job again
            cfg = resumed_config(dataclasses.replace(cfg, resume=str(run_dir)), overrides)
        # A resume writes into the run it continues (in a sweep too, where Hydra's directory
        # for the job is a new one).
        run_dir = Path(cfg.resume) if cfg.resume else run_dir
        text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
        print(text, end="", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(text)
        train(cfg, run_dir)
    except Interrupted as e:  # a clean stop: exit as a signal would, 130 (INT) or 143 (TERM)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            _fail_job(e)
        print(f"sngan-train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        _fail_job(f"interrupted; {resume_hint(run_dir)}", 130)
    except checkpoint.CheckpointWriteError as e:  # it names the checkpoint that is intact
        resume = f"; once that is fixed, resume with: sngan-train resume={run_dir}"
        _fail_job(f"{e}{resume if e.previous else ''}")
    except OSError as e:  # e.g. a full disk while writing logs or samples
        _fail_job(f"{e}; {resume_hint(run_dir)}")
    except (ConfigError, checkpoint.CheckpointError, NonFiniteError, RunLockedError) as e:
        _fail_job(e)


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
            cfg = config.compose(argv)
            resolve_device(cfg.device)
            # An existing directory named on the command line is locked before anything reads
            # or writes it (Hydra's .hydra/ and log included): a second process on it touches
            # nothing. (A new one is locked by the app, the moment Hydra has made it.)
            run_dir = _given_run_dir(argv, cfg)
            if run_dir is not None and run_dir.is_dir() and distributed.launched_as_rank_zero():
                runlock.hold(run_dir)
            _checked = job_config(cfg, argv)
        except (ConfigError, checkpoint.CheckpointError, RunLockedError) as e:
            _fail("sngan-train", e)
    _train_app()


def _given_run_dir(argv: list[str], cfg: TrainConfig) -> Path | None:
    """The run directory a command line names: hydra.run.dir=..., else resume=... (or None:
    Hydra will make a new one from the clock)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if given:
        return None if "${" in given[-1] else Path(given[-1])  # ${now:...}: Hydra's to resolve
    return Path(cfg.resume) if cfg.resume else None


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
    """sngan-sample checkpoint=<file> n=64 [out=grid.png | out=<dir>] [class=<k>]
    [grid=per_class] [interpolate=<steps>]."""
    from sngan.sample import sample

    argv = sys.argv[1:] if argv is None else argv
    # class is a Python keyword: SampleConfig's field is class_.
    argv = ["class_=" + a[len("class=") :] if a.startswith("class=") else a for a in argv]
    args: SampleConfig = parse_args("sngan-sample", SampleConfig, argv)
    try:
        iteration, written = sample(args)
    except (ConfigError, checkpoint.CheckpointError) as e:
        _fail("sngan-sample", e)
    print(f"sngan-sample: wrote {written} images of iteration {iteration} to {args.out}")


def eval_main(argv: list[str] | None = None) -> None:
    """sngan-eval checkpoint=<file> [metrics.protocol=paper] [metrics.num_samples=N]."""
    from sngan.evaluation import evaluate_checkpoint

    args: EvalConfig = parse_args("sngan-eval", EvalConfig, sys.argv[1:] if argv is None else argv)
    try:
        records = evaluate_checkpoint(args)
    except (ConfigError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        _fail("sngan-eval", e)
    for record in records:  # one JSON line per generator
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
