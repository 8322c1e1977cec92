"""GPU slots: at most one sngan-train job per GPU of this machine, whoever started it.

A joblib sweep (``sngan-train -m +sweep=gpus ...``) runs its jobs in worker processes that each
take whichever job is next, so a job's number says nothing about which GPU is free:
``cuda:${num % gpus}`` puts two jobs on one GPU as soon as the jobs take different times. Instead
``device: cuda:${gpu_slot:}`` makes the job claim a slot: an exclusive ``flock`` on
``<tmp>/sngan-gpus-<uid>/gpu<i>/.sngan.lock`` (sngan.runlock) for the first free ``i``. The claim
is resolved in the job's own process when its config is read, held while the job trains, and
given back when it ends (the preset's ``ReleaseSlot`` callback; otherwise when the process
exits, kill -9 included). A job that finds every slot taken waits for one and says so once, so
more jobs than GPUs queue instead of sharing a GPU.

The slots are the GPUs torch sees (``CUDA_VISIBLE_DEVICES`` applies), or the first
``$SNGAN_GPU_SLOTS`` of them. They are shared by this user's sngan-train processes on this
machine (two sweeps at once take turns), not by other users'.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from sngan.config import ConfigError
from sngan.runlock import RunLock, RunLockedError, holder

SLOTS_ENV = "SNGAN_GPU_SLOTS"
POLL_S = 1.0  # how often a waiting job looks for a free slot

# This process's slot and its lock while it holds one; the slot it held last (tried first, so
# that a joblib worker stays on the GPU where its CUDA context already is).
_held: tuple[int, RunLock] | None = None
_last: int | None = None


def slot_count() -> int:
    """How many slots this machine has: ``$SNGAN_GPU_SLOTS``, else the GPUs torch sees."""
    import torch

    gpus = torch.cuda.device_count()
    value = os.environ.get(SLOTS_ENV)
    if value is None:
        if gpus == 0:
            raise ConfigError(
                "device=cuda:${gpu_slot:} (+sweep=gpus) gives each job a GPU of its own, but "
                "torch sees no GPU here; on a CPU run jobs side by side with "
                "hydra/launcher=joblib hydra.launcher.n_jobs=N device=cpu"
            )
        return gpus
    if not value.isdigit() or int(value) < 1 or (gpus and int(value) > gpus):
        at_most = f", at most the {gpus} GPUs torch sees here" if gpus else ""
        raise ConfigError(
            f"{SLOTS_ENV}={value} is not valid: it must be a whole number >= 1{at_most}"
        )
    return int(value)


def lock_dir() -> Path:
    """Where the slots' lock files are: one directory per user and machine."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"  # no getuid (Windows): no flock either
    return Path(tempfile.gettempdir()) / f"sngan-gpus-{uid}"


def _slot_dir(slot: int) -> Path:
    # Named by the GPU's own id where CUDA_VISIBLE_DEVICES renumbers them, so that processes
    # that see different subsets still exclude each other on the same physical GPU.
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    name = visible[slot] if slot < len(visible) and visible[slot] else str(slot)
    return lock_dir() / f"gpu{name}"


def claim() -> int:
    """This process's slot: the one it holds, else the first free one (waiting while none is)."""
    global _held, _last
    if _held is not None:
        return _held[0]
    n = slot_count()
    order = sorted(range(n), key=lambda i: i != _last)
    waiting = False
    while True:
        for slot in order:
            try:
                lock = RunLock(_slot_dir(slot)).acquire()
            except RunLockedError:
                continue
            _held, _last = (slot, lock), slot
            if waiting:
                print(f"sngan-train: got GPU slot {slot}", file=sys.stderr, flush=True)
            return slot
        if not waiting:
            waiting = True
            print(
                f"sngan-train: all {n} GPU slots of this machine are taken ({_holders(order)}); "
                "waiting for one to be free",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(POLL_S)


def _holders(slots: list[int]) -> str:
    records = [holder(_slot_dir(i)) or {} for i in slots]
    return ", ".join(f"slot {i}: pid {r.get('pid')}" for i, r in zip(slots, records, strict=True))


def release() -> None:
    """Give this process's slot back (a no-op if it holds none)."""
    global _held
    if _held is None:
        return
    (_, lock), _held = _held, None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        # The job's tensors are garbage now; hand their cached memory back to the GPU, so that
        # the next job there (from another worker) finds it free. The CUDA context stays.
        gc.collect()
        torch.cuda.empty_cache()
    lock.release()


class ReleaseSlot(Callback):
    """Hydra callback (configs/sweep/gpus.yaml): a job's GPU slot is free again when it ends."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        release()


def _one_line(function: Any) -> Any:
    # Raised in a resolver, a ConfigError would reach the user as OmegaConf's multi-line
    # InterpolationResolutionError and a traceback; sngan-train's errors are one line, status 1.
    def resolver() -> Any:
        try:
            return function()
        except ConfigError as e:
            raise SystemExit(f"sngan-train: error: {e}") from None

    return resolver


def register_resolvers() -> None:
    """``${gpu_slot:}`` (claims a slot: its number) and ``${gpu_count:}`` (how many there are)."""
    OmegaConf.register_new_resolver("gpu_slot", _one_line(claim), replace=True, use_cache=False)
    OmegaConf.register_new_resolver(
        "gpu_count", _one_line(slot_count), replace=True, use_cache=False
    )
