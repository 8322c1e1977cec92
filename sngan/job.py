"""One training job made ready at the edge: every check that needs the outside world, once.

``prepare_job(cfg, run_dir)`` takes a checked config (``sngan.config.compose``; for
``resume=``, the run's own, ``sngan.resume.resumed_config``) and runs, in this order:

1. the device exists (``build.resolve_device``);
2. an existing run directory is locked (rank 0, ``sngan.runlock``): a second process on it fails
   here, before it reads anything;
3. the checkpoint to resume (``resume.checkpoint_to_resume``); a new run refuses a directory
   that holds checkpoints;
4. the metrics' weights files, found and checked (``build.checked_weights_files``), when metrics
   are on;
5. the training data, read or prepared (``build.training_set``), and what only the data can
   tell about the config (``build.check_fits``);
6. a new run directory is made and locked, last.

So a failure at any step is one line and leaves no directory behind, and nothing has been
written yet. The ``Job`` carries what was checked to ``sngan.train.train``, which checks none of
it again. ``sngan-train`` prepares its job before Hydra makes the run directory; ``train(cfg,
run_dir)`` called directly prepares its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sngan import build, distributed, resume, runlock
from sngan.config import TrainConfig

if TYPE_CHECKING:
    from sngan.extractor_weights import CheckedWeights, Network


@dataclass
class Job:
    """A training job whose outside world is checked: what ``train`` needs besides the loop."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    saved: dict[str, Any] | None = None  # the checkpoint to resume from (None: a new run)
    saved_path: Path | None = None
    weights: dict[Network, CheckedWeights] = field(default_factory=dict)  # {}: metrics off
    data: build.TrainingSet | None = None  # None when nothing is left to train

    @property
    def finished(self) -> bool:
        """Whether the checkpoint to resume is at ``cfg.iterations`` already."""
        return self.saved is not None and self.saved["iteration"] == self.cfg.iterations


def prepare_job(cfg: TrainConfig, run_dir: str | Path) -> Job:
    """Check everything ``cfg`` needs outside itself, in the order above; return the Job.

    Raises ConfigError, CheckpointError or RunLockedError with one-line messages.
    """
    run_dir = Path(run_dir)
    main = distributed.launched_as_rank_zero()  # only global rank 0 writes (and locks)
    existing = run_dir.is_dir()
    device = build.resolve_device(cfg.device)
    if main and existing:
        runlock.hold(run_dir)
    saved, saved_path = resume.checkpoint_to_resume(cfg, run_dir, device)
    job = Job(cfg, run_dir, device, saved, saved_path)
    if job.finished:
        return job
    if cfg.metrics.enabled:
        job.weights = build.checked_weights_files(cfg.metrics)
    job.data = build.training_set(cfg)
    build.check_fits(cfg, distributed.Context.from_env(), device, job.data.labels)
    if main and not existing:
        runlock.hold(run_dir)  # makes the directory: only now that everything has passed
    return job
