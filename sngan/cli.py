"""Console entry points: sngan-train, sngan-prepare, sngan-eval, sngan-sample, sngan --version.

Argument parsing and error printing only. ``sngan-train`` composes its config once
(``sngan.config.compose_hydra``), takes a resume's saved config (``sngan.resume``), has
``sngan.job`` check everything outside the config before anything is written, and only then
runs the job under Hydra's ``run_job`` (the run directory, ``.hydra/``, the job log) and
``sngan.train.train``. With Hydra's own flags (``--multirun``, ``--help``, ``--cfg``, ...)
Hydra's app composes each job instead, and every job goes the same way from its config on.
``sngan-sample`` and ``sngan-eval`` parse key=value arguments into their schemas.

torch and everything that needs it are imported only once a config has passed, so a typo is
refused in the time Python and Hydra take to start. Every expected failure is one line,
``<prog>: error: <message>``, and exit status 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from sngan import __version__, config, gpu_slots, launchers
from sngan.config import CONFIG_DIR, ConfigError, EvalConfig, SampleConfig, TrainConfig

if TYPE_CHECKING:
    from sngan.job import Job

config.register_with_hydra()
gpu_slots.register_resolvers()  # device=cuda:${gpu_slot:} (+sweep=gpus)
launchers.register_with_hydra()  # hydra/launcher=joblib|slurm without the plugins: pip hint


class SweepJobError(RuntimeError):
    """One job of a sweep failed (its one-line error is already printed)."""


def _fail(prog: str, err: BaseException | str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def _fail_job(err: BaseException | str, code: int = 1, multirun: bool = False) -> NoReturn:
    """_fail for a sngan-train job; in a sweep only this job fails.

    (A SystemExit in a joblib worker ends the whole sweep at once and kills the jobs running
    beside it; an exception marks this job failed and lets the others finish.)
    """
    if multirun:
        print(f"sngan-train: error: {err}", file=sys.stderr)
        raise SweepJobError(str(err)) from None
    _fail("sngan-train", err, code)


@contextlib.contextmanager
def _one_line_errors(run_dir: Callable[[], Path], multirun: bool = False) -> Iterator[None]:
    """Every expected failure of a job as one line; once training may have saved something,
    with the command that resumes it (``run_dir()``: the job's directory as known so far)."""
    from sngan import checkpoint
    from sngan.guard import NonFiniteError
    from sngan.interrupt import Interrupted
    from sngan.resume import resume_hint
    from sngan.runlock import RunLockedError

    try:
        yield
    except Interrupted as e:  # a clean stop: exit as a signal would, 130 (INT) or 143 (TERM)
        if multirun:
            _fail_job(e, multirun=True)
        print(f"sngan-train: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt as e:  # a second Ctrl-C, or one before the loop started
        # While the image store was being prepared, it says how far that got.
        _fail_job(f"interrupted; {str(e) or resume_hint(run_dir())}", 130, multirun)
    except checkpoint.CheckpointWriteError as e:  # it names the checkpoint that is intact
        resume = f"once that is fixed, resume with: sngan-train resume={run_dir()}"
        _fail_job(f"{e}; {resume if e.previous else resume_hint(run_dir())}", multirun=multirun)
    except OSError as e:  # e.g. a full disk while writing logs or samples: names the file
        _fail_job(f"{e}; {resume_hint(run_dir())}", multirun=multirun)
    except (ConfigError, checkpoint.CheckpointError, NonFiniteError, RunLockedError) as e:
        _fail_job(e, multirun=multirun)


def _prepare(cfg: TrainConfig, overrides: list[str], run_dir: Path) -> Job:
    """A job's config (a resume's, or a requeued job's, is the run's own) with everything
    outside it checked, once (``sngan.job.prepare_job``)."""
    from sngan.job import prepare_job
    from sngan.resume import requeued, resumed_config

    if cfg.resume:
        cfg = resumed_config(cfg, overrides)
    elif requeued(run_dir):  # SLURM/submitit started this job again
        cfg = resumed_config(dataclasses.replace(cfg, resume=str(run_dir)), overrides)
    # A resume writes into the run it continues (in a sweep too, where Hydra's directory for
    # the job is a new one).
    return prepare_job(cfg, Path(cfg.resume) if cfg.resume else run_dir)


def _train(job: Job) -> None:
    """Print and save the job's config, then train."""
    from sngan import atomic
    from sngan.config import to_dict
    from sngan.train import train

    text = OmegaConf.to_yaml(OmegaConf.create(to_dict(job.cfg)))
    print(text, end="", flush=True)
    atomic.write_text_atomic(job.run_dir / "config.yaml", text)
    train(job.cfg, job.run_dir, job)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(dcfg: DictConfig) -> None:
    """A job that Hydra composed: a sweep's, or a single run given Hydra's flags."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    job: Job | None = None
    with _one_line_errors(lambda: job.run_dir if job else run_dir, multirun):
        job = _prepare(config.from_hydra(dcfg), list(hydra_cfg.overrides.task), run_dir)
        _train(job)


def train_main() -> None:
    """sngan-train [overrides...]: train with the composed config."""
    argv = sys.argv[1:]
    if any(a.startswith("-") for a in argv):
        # Hydra's flags (--multirun, --help, --cfg, ...): its app parses them and composes.
        _train_app()
        return
    # One composition, checked at once: a bad override fails before anything is imported or
    # written.
    try:
        dcfg = config.compose_hydra(argv, return_hydra_config=True)
        cfg = config.from_hydra(dcfg)
    except ConfigError as e:
        _fail("sngan-train", e)
    run_dir = _pin_run_dir(dcfg)
    job: Job | None = None
    with _one_line_errors(lambda: job.run_dir if job else run_dir):
        job = _prepare(cfg, argv, run_dir)
    _run_hydra_job(dcfg, job)


def _pin_run_dir(dcfg: DictConfig) -> Path:
    """The composed ``hydra.run.dir``, resolved once (``${now:...}``) and fixed in ``dcfg``."""
    run_dir = OmegaConf.select(dcfg, "hydra.run.dir")
    with read_write(dcfg.hydra):
        dcfg.hydra.run.dir = run_dir
        if dcfg.hydra.mode is None:
            dcfg.hydra.mode = RunMode.RUN
    return Path(run_dir)


def _run_hydra_job(dcfg: DictConfig, job: Job) -> None:
    """Train ``job`` inside Hydra's ``run_job``, as ``@hydra.main`` would have: the run
    directory (``job.run_dir``, made and locked already), ``.hydra/``, the job's log."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    with read_write(dcfg.hydra):
        dcfg.hydra.run.dir = str(job.run_dir)  # a resume's own directory

    def task(_: DictConfig) -> None:
        with _one_line_errors(lambda: job.run_dir):
            _train(job)

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        context = HydraContext(GlobalHydra.instance().config_loader(), Callbacks(dcfg))
        result = run_job(task, dcfg, "hydra.run.dir", None, context)
    _ = result.return_value  # a failure that is not an expected one: raised, with its traceback


def prepare_main(argv: list[str] | None = None) -> None:
    """sngan-prepare [overrides...]: prepare the training set's image store ahead of a run (on
    a login node, say); a run with the same data.* settings finds it by its key."""
    from sngan import atomic
    from sngan.build import training_store

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: sngan-prepare [overrides...]  (sngan-train's config keys: data.source, "
            "data.root, data.image_size, data.cache_dir, data.workers, ...)"
        )
        raise SystemExit(0)
    try:
        cfg = config.compose(argv)
        store = training_store(cfg)
    except ConfigError as e:
        _fail("sngan-prepare", e)
    except KeyboardInterrupt as e:  # Ctrl-C: the images prepared so far are kept
        _fail("sngan-prepare", f"interrupted; {e}" if str(e) else "interrupted", 130)
    d = cfg.data
    if store is None:
        print(
            f"sngan-prepare: data={d.source} at {d.image_size} pixels is read as it is: "
            "nothing to prepare"
        )
        return
    n, _, h, w = store.images.shape
    print(
        f"sngan-prepare: {store.path}: {n} images of 3x{h}x{w} "
        f"({atomic.describe_bytes(store.nbytes)}), labels and class names in "
        f"{store.path.with_suffix('.json').name}"
        + (f"; unreadable images left out: {len(store.left_out)}" if store.left_out else "")
    )


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
    from sngan import checkpoint
    from sngan.sample import sample

    argv = sys.argv[1:] if argv is None else argv
    # class is a Python keyword: SampleConfig's field is class_.
    argv = ["class_=" + a[len("class=") :] if a.startswith("class=") else a for a in argv]
    args: SampleConfig = parse_args("sngan-sample", SampleConfig, argv)
    try:
        iteration, written = sample(args)
    except (ConfigError, checkpoint.CheckpointError, OSError) as e:  # OSError: the written file
        _fail("sngan-sample", e)
    except KeyboardInterrupt:  # each image file is whole or absent (sngan.atomic)
        _fail("sngan-sample", "interrupted", 130)
    print(f"sngan-sample: wrote {written} images of iteration {iteration} to {args.out}")


def eval_main(argv: list[str] | None = None) -> None:
    """sngan-eval checkpoint=<file> [metrics.protocol=paper] [metrics.num_samples=N]."""
    from sngan import checkpoint
    from sngan.evaluation import evaluate_checkpoint

    args: EvalConfig = parse_args("sngan-eval", EvalConfig, sys.argv[1:] if argv is None else argv)
    try:
        records = evaluate_checkpoint(args)
    except (ConfigError, checkpoint.CheckpointError, OSError, ValueError) as e:
        _fail("sngan-eval", e)
    except KeyboardInterrupt:
        _fail("sngan-eval", "interrupted; nothing was recorded", 130)
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
