"""Checkpoints: one resumable file of plain state dicts, written atomically.

A snapshot is ``run_dir/checkpoints/ckpt_<iteration>.pt``; ``latest.pt`` is a hard link to
the newest and ``best.pt`` a copy of the best-FID one. Every file goes through
``sngan.atomic``, so a killed process or a full disk never leaves a half-written checkpoint
where a complete one was, and a full disk is refused before writing when the tensors will not
fit. Files are read with ``torch.load(weights_only=True)``:
a checkpoint cannot run code.

Tests set ``SNGAN_TEST_SAVE_PAUSE=<seconds>`` to hold every write half done for that long, so
that a process can be killed while a checkpoint is being written.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import IO, Any

import torch

from sngan import __version__, atomic

FORMAT = "sngan-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.pt"
BEST = "best.pt"
LAST_GOOD = "last_good.pt"
# What every file ``save`` writes for a run holds (the train loop's snapshot).
REQUIRED_KEYS = ("iteration", "config", "G", "D", "G_ema", "opt_g", "opt_d")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the file and why."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, read-only directory); earlier ones are kept.

    ``previous`` is the newest checkpoint of the run that is still intact, if there is one.
    """

    def __init__(self, message: str, previous: Path | None = None) -> None:
        super().__init__(message)
        self.previous = previous


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def snapshot_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt_{iteration:07d}.pt"


def _test_pause() -> None:
    seconds = float(os.environ.get("SNGAN_TEST_SAVE_PAUSE", "0"))
    if seconds > 0:
        time.sleep(seconds)


def save(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (plain state dicts) to ``path`` atomically, with format metadata."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "sngan_version": __version__}
    payload.update(state)

    def write(f: IO[bytes]) -> None:
        torch.save(payload, f)
        _test_pause()  # the temporary file may be partly on disk here

    try:
        return atomic.write_atomic(path, write, needed=atomic.payload_bytes(payload))
    except atomic.WriteError as e:
        raise CheckpointWriteError(f"could not write checkpoint {path}: {e.reason}") from e


def link(src: Path, name: str) -> Path:
    """Point ``src.parent / name`` at ``src`` atomically (hard link; a copy where links fail)."""
    dst = src.parent / name
    try:
        return atomic.link_atomic(src, dst)
    except atomic.WriteError as e:
        raise CheckpointWriteError(f"could not write checkpoint {dst}: {e.reason}") from e


def save_snapshot(state: dict[str, Any], run_dir: str | os.PathLike, keep: int) -> Path:
    """Save the snapshot of ``state["iteration"]``, repoint latest.pt, keep the newest ``keep``."""
    previous = _newest_snapshot(run_dir)
    try:
        path = save(state, snapshot_path(run_dir, state["iteration"]))
        link(path, LATEST)
    except CheckpointWriteError as e:
        kept = f"; the previous checkpoint {previous} is intact" if previous else ""
        raise CheckpointWriteError(f"{e}{kept}", previous) from e
    snapshots = sorted(checkpoint_dir(run_dir).glob("ckpt_*.pt"))
    for old in snapshots[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save``; any other file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path} is not an sngan checkpoint: the file is empty")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not an sngan checkpoint: sngan writes zip archives (torch.save), "
            f"this file starts with {head!r}"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged archive raises anything from RuntimeError to KeyError
        raise CheckpointError(f"{path} is not a readable sngan checkpoint: {_why(e)}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sngan checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')} "
            f"(written by sngan {state.get('sngan_version')}); this sngan {__version__} reads "
            f"version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete sngan checkpoint: it has no {', '.join(missing)}"
        )
    return state


def _why(err: Exception) -> str:
    """One line on why torch.load failed (its own messages run to several paragraphs)."""
    text = str(err)
    if "Weights only load failed" in text:
        # The unpickler's reason is the paragraph after its boilerplate, e.g. "Trying to load
        # unsupported GLOBAL posix.system whose module posix is blocked."
        reason = next(
            (p.strip() for p in text.split("\n\n")[1:] if p.strip() and "http" not in p),
            "",
        )
        return (
            "it holds objects that torch.load(weights_only=True) refuses, as loading them could "
            f"run code ({reason.replace(chr(10), ' ')})"
        )
    first = text.split(". ")[0].strip() or type(err).__name__
    return f"truncated or damaged ({first})"


def _newest_snapshot(run_dir: str | os.PathLike) -> Path | None:
    snapshots = sorted(checkpoint_dir(run_dir).glob("ckpt_*.pt"))
    return snapshots[-1] if snapshots else None


def find_latest(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a resume of ``run_dir`` starts from: its newest complete snapshot."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={run_dir}: no such run directory")
    latest = checkpoint_dir(run_dir) / LATEST
    newest = _newest_snapshot(run_dir)
    # Snapshots appear only complete (written under a temporary name, then renamed), but a
    # process killed between writing one and repointing latest.pt leaves latest.pt behind it.
    if newest is not None and not (latest.is_file() and os.path.samefile(latest, newest)):
        return newest
    if latest.is_file():
        return latest
    raise CheckpointError(
        f"resume={run_dir}: no checkpoint in {checkpoint_dir(run_dir)} "
        f"(expected {LATEST} or ckpt_<iteration>.pt)"
    )


def remove_temporary_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the half-written temporary files a killed process left; return their paths."""
    return atomic.remove_temporaries(checkpoint_dir(run_dir))
