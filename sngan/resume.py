"""What a checkpoint holds, and what a resume may change.

``snapshot`` and ``restore`` are the two halves of a training checkpoint: every piece of state,
so that a resumed run equals an uninterrupted one bit for bit (networks, optimisers, schedules,
the data order, the z stream, the global RNG, the best FID so far, the skipped-update count).
``load_generators`` rebuilds a checkpoint's generators for sampling and evaluation.
``resumed_config`` is the command line's side: ``sngan-train resume=<run>`` continues with the
run's own saved config, and only the keys in ``RESUMABLE_OVERRIDES`` (and ``metrics.*``) may
differ. ``checkpoint_to_resume`` is the loop's side: the checkpoint and the config it is asked
to continue with must agree. (``sngan.checkpoint`` is the file format underneath.)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sngan import __version__, checkpoint
from sngan.config import (
    ConfigError,
    TrainConfig,
    from_dict,
    from_flat,
    override_value,
    to_dict,
    to_flat,
)

if TYPE_CHECKING:
    from sngan.build import TrainState

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
    "optim.ema_bn_stats",  # how G_ema is evaluated and sampled, not how anything trains
)
# What a checkpoint needs beyond sngan.checkpoint.REQUIRED_KEYS to be resumed.
RESUME_KEYS = ("sched_g", "sched_d", "stream", "rng", "best_fid")


def resumable(key: str) -> bool:
    return key in RESUMABLE_OVERRIDES or key.startswith(("metrics.", "hydra.", "hydra/"))


def snapshot(state: TrainState, iteration: int) -> dict[str, Any]:
    """A resumable checkpoint of ``state`` after ``iteration`` generator iterations."""
    return {
        "iteration": iteration,
        "config": to_dict(state.cfg),
        "G": state.G.state_dict(),
        "D": state.D.state_dict(),
        "G_ema": state.G_ema.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "sched_g": state.sched_g.state_dict(),
        "sched_d": state.sched_d.state_dict(),
        "stream": state.stream.state_dict(),
        "rng": {"z": state.z_gen.get_state(), "torch": torch.get_rng_state()},
        "best_fid": state.best_fid,
        "skipped": state.guard.skipped,
        # The fast paths as resolved on the device (amp, compile: the run's precision), which
        # evaluations of this checkpoint report next to their numbers.
        "fast_paths": dataclasses.asdict(state.fast),
    }


def restore(state: TrainState, saved: dict[str, Any], path: Path) -> int:
    """Load ``saved`` (from ``snapshot``) into ``state``; returns its iteration."""
    try:
        for module, key in ((state.G, "G"), (state.D, "D"), (state.G_ema, "G_ema")):
            module.load_state_dict(saved[key])
        state.opt_g.load_state_dict(saved["opt_g"])
        state.opt_d.load_state_dict(saved["opt_d"])
        state.sched_g.load_state_dict(saved["sched_g"])
        state.sched_d.load_state_dict(saved["sched_d"])
        state.stream.load_state_dict(saved["stream"])
        state.z_gen.set_state(saved["rng"]["z"].cpu())
        torch.set_rng_state(saved["rng"]["torch"].cpu())
    except (KeyError, RuntimeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise checkpoint.CheckpointError(
            f"{path} does not fit the networks and data of its own config "
            f"(saved by sngan {saved.get('sngan_version')}): {detail[:400]}"
        ) from e
    state.guard.skipped = saved.get("skipped", 0)
    state.best_fid = saved["best_fid"]
    return saved["iteration"]


def checkpoint_to_resume(
    cfg: TrainConfig, run_dir: Path, device: torch.device
) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint ``cfg.resume`` continues from, checked against ``cfg``; (None, None) if new.

    A new run refuses a directory that already holds checkpoints, which it would overwrite.
    """
    if not cfg.resume:
        try:
            existing = checkpoint.find_latest(run_dir)
        except checkpoint.CheckpointError:
            return None, None
        raise ConfigError(
            f"{run_dir} already holds the checkpoints of a run ({existing}); continue it with "
            f"resume={run_dir}, or start this run in another directory (hydra.run.dir=...)"
        )
    path = checkpoint.find_latest(cfg.resume)
    state = checkpoint.load(path, map_location=device)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise checkpoint.CheckpointError(
            f"{path} cannot be resumed: it has no {', '.join(missing)} (a checkpoint made for "
            "sampling and evaluation, not by a training run)"
        )
    saved, current = state["config"].get("model", {}), to_dict(cfg)["model"]
    if saved != current:
        keys = [k for k in current if saved.get(k) != current[k]]
        raise checkpoint.CheckpointError(
            f"{path} was saved by model {', '.join(f'{k}={saved.get(k)}' for k in keys)} but the "
            f"config has model {', '.join(f'{k}={current[k]}' for k in keys)}"
        )
    if state["iteration"] > cfg.iterations:
        raise ConfigError(
            f"iterations={cfg.iterations} is not valid: {path} is already at iteration "
            f"{state['iteration']}"
        )
    return state, path


def requeued(run_dir: Path) -> bool:
    """A job that SLURM or submitit started again (its directory holds its own checkpoints).

    A sweep's job directories are new (timestamped), so checkpoints there can only be the
    job's own, from before it was preempted or reached its time limit.
    """
    on_cluster = "SUBMITIT_EXECUTOR" in os.environ or int(os.environ.get("SLURM_RESTART_COUNT", 0))
    try:
        return bool(on_cluster) and checkpoint.find_latest(run_dir) is not None
    except checkpoint.CheckpointError:
        return False


def saved_config(path: Path, state: dict[str, Any]) -> TrainConfig:
    """The config stored in a checkpoint; one this sngan cannot read is a CheckpointError."""
    try:
        return from_dict(state["config"])
    except (ConfigError, TypeError) as e:
        raise checkpoint.CheckpointError(
            f"{path} was written by sngan {state.get('sngan_version')} with a config this "
            f"sngan {__version__} cannot read: {e}"
        ) from e


def resumed_config(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """The saved config of the run ``cfg.resume``, with the overrides a resume may change.

    ``cfg`` is composed from the whole command line. What its other overrides set must equal
    the saved values (so the run's own command line plus resume=... is fine): a difference is
    an error naming the checkpoint, the keys and both values.
    """
    path = checkpoint.find_latest(cfg.resume)
    saved = saved_config(path, checkpoint.load(path))
    current, merged = to_flat(cfg), to_flat(saved)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    touched = set()
    for key in (k for k in keys if not resumable(k)):
        # A key, a section's config group (model=dcgan), or a global preset (experiment=...).
        under = [k for k in current if k == key or k.startswith(key + ".")]
        touched.update(under or current)
    changed = [k for k in current if k in touched and not resumable(k) and current[k] != merged[k]]
    if changed:
        shown = ", ".join(
            f"{k}={override_value(current[k])} (the run has {override_value(merged[k])})"
            for k in changed[:6]
        )
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError(
            f"resume={cfg.resume} continues the run saved in {path} with its own config, "
            f"but this command line changes it: {shown}{more}. A resume may change only "
            f"{', '.join(RESUMABLE_OVERRIDES[1:])} and metrics.*; pass only those with "
            "resume=..., or start a new run in another directory"
        )
    for key in keys:
        if key in current and resumable(key):
            merged[key] = current[key]
    merged["resume"] = cfg.resume
    return from_flat(merged)


def load_generators(
    path: str | Path,
    names: list[str],
    device: torch.device,
    ema_bn_stats: str | None = None,
) -> tuple[dict[str, nn.Module], dict[str, Any], TrainConfig]:
    """G_ema and/or G (``names``) of a checkpoint as evaluation scores them (``generators``),
    the checkpoint, and the config saved in it."""
    state = checkpoint.load(path, map_location="cpu")
    cfg = saved_config(Path(path), state)
    return generators(state, cfg, names, device, ema_bn_stats, path), state, cfg


def generators(
    state: dict[str, Any],
    cfg: TrainConfig,
    names: list[str],
    device: torch.device,
    ema_bn_stats: str | None = None,
    path: str | Path = "the checkpoint",
) -> dict[str, nn.Module]:
    """G_ema and/or G (``names``) of a loaded checkpoint, rebuilt from its config ``cfg``, in
    eval mode on ``device``. G_ema goes through ``standing_stats.as_evaluated`` with
    ``ema_bn_stats`` (None: the run's own ``optim.ema_bn_stats``), as in training's grids and
    evaluations, so every command draws the network that evaluation scores."""
    from sngan.build import build_networks
    from sngan.standing_stats import as_evaluated

    nets = {}
    for key in names:
        G, _ = build_networks(cfg)
        try:
            G.load_state_dict(state[key])
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise checkpoint.CheckpointError(
                f"{path}: its {key} weights do not fit the {cfg.model.name} generator of its own "
                f"config (saved by sngan {state.get('sngan_version')}): {detail[:400]}"
            ) from e
        nets[key] = G.to(device).eval()
    if "G_ema" in nets:
        o = cfg.optim
        mode = ema_bn_stats or o.ema_bn_stats
        nets["G_ema"] = as_evaluated(nets["G_ema"], mode, o.g_batch_size, cfg.seed).eval()
    return nets


def load_generator(
    path: str | Path, ema: bool, device: torch.device, ema_bn_stats: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """G_ema (or G) of a checkpoint as ``load_generators`` gives it, and the checkpoint."""
    key = "G_ema" if ema else "G"
    nets, state, _ = load_generators(path, [key], device, ema_bn_stats)
    return nets[key], state


def resume_hint(run_dir: Path, extra: str = "") -> str:
    """How to continue ``run_dir`` from its newest checkpoint, or that there is none."""
    extra = f" {extra}" if extra else ""
    try:
        path = checkpoint.find_latest(run_dir)
    except checkpoint.CheckpointError:
        return f"no checkpoint of this run was saved yet; start it again{extra and ' with' + extra}"
    return f"the newest checkpoint is {path}; resume with: sngan-train resume={run_dir}{extra}"
