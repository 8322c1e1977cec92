"""Checkpoints: one resumable file of plain state dicts, written atomically.

A snapshot is ``run_dir/checkpoints/ckpt_<iteration>.pt``; ``latest.pt`` is a hard link to
the newest and ``best.pt`` a copy of the best-FID one. Every file is written to a temporary
name, fsynced and renamed, so a killed process or a full disk never leaves a half-written
checkpoint where a complete one was. Files are read with ``torch.load(weights_only=True)``:
a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sngan import __version__

FORMAT = "sngan-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the file and why."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def snapshot_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt_{iteration:07d}.pt"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        previous = path if path.exists() else None
        kept = f"; the previous file {previous} is intact" if previous else ""
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}{kept}") from e


def save(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (plain state dicts) to ``path`` atomically, with format metadata."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "sngan_version": __version__}
    payload.update(state)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, write)
    return path


def link(src: Path, name: str) -> Path:
    """Point ``src.parent / name`` at ``src`` atomically (hard link; a copy where links fail)."""
    dst = src.parent / name

    def write(tmp: Path) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                while chunk := fi.read(1 << 24):
                    fo.write(chunk)
                fo.flush()
                os.fsync(fo.fileno())

    _atomic(dst, write)
    return dst


def save_snapshot(state: dict[str, Any], run_dir: str | os.PathLike, keep: int) -> Path:
    """Save the snapshot of ``state["iteration"]``, repoint latest.pt, keep the newest ``keep``."""
    path = save(state, snapshot_path(run_dir, state["iteration"]))
    link(path, LATEST)
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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable sngan checkpoint (truncated or another kind of file): {e}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sngan checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')} "
            f"(written by sngan {state.get('sngan_version')}); this sngan {__version__} reads "
            f"version {FORMAT_VERSION}"
        )
    return state


def find_latest(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a resume of ``run_dir`` starts from."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={run_dir}: no such run directory")
    latest = checkpoint_dir(run_dir) / LATEST
    if latest.is_file():
        return latest
    snapshots = sorted(checkpoint_dir(run_dir).glob("ckpt_*.pt"))
    if snapshots:
        return snapshots[-1]
    raise CheckpointError(
        f"resume={run_dir}: no checkpoint in {checkpoint_dir(run_dir)} "
        f"(expected {LATEST} or ckpt_<iteration>.pt)"
    )
