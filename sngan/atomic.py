"""Files written whole or not at all, and a full disk as one line: the one writer sngan uses.

``write_atomic(path, write)`` hands ``write`` an open temporary file next to ``path``, then
flushes, fsyncs and renames it over ``path`` (and fsyncs the directory). A reader therefore sees
the old file or the new one, never a part: after a kill -9 at any moment too, when at most a
hidden ``.<name>.tmp-<pid>-<random>`` file is left for the next writer of that directory to clear
(``remove_temporaries``).

Any failure removes the temporary file and becomes one ``WriteError`` naming the path. A full disk
is a ``DiskFullError`` that also gives the free space and, where the caller said how much it will
write (``needed``), that amount; with ``needed`` known the space is checked before the temporary
file is even created. torch.save reports a full disk as a RuntimeError from its zip writer, with
the OSError only in the exception's context: both are recognised.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "DiskFullError",
    "WriteError",
    "as_write_error",
    "describe_bytes",
    "free_bytes",
    "is_disk_full",
    "link_atomic",
    "payload_bytes",
    "remove_temporaries",
    "write_atomic",
    "write_text_atomic",
]

# Errors that mean the filesystem has no room: ENOSPC, and EDQUOT (a user quota) where it exists.
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Room kept free beyond what a write needs (filesystem metadata, the directory entry).
MARGIN = 1 << 20


class WriteError(OSError):
    """A file could not be written; the message names it. No partial file is left behind."""

    def __init__(self, path: Path, reason: str, err: int | None = None) -> None:
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = path, reason
        self.errno = err


class DiskFullError(WriteError):
    """No space left for a file: the message gives the free space, and the needed space if known."""

    def __init__(self, path: Path, free: int | None, needed: int | None) -> None:
        room = [] if free is None else [f"{describe_bytes(free)} free"]
        if needed is not None:
            room.append(f"{describe_bytes(needed)} needed")
        where = f" ({', '.join(room)})" if room else ""
        super().__init__(path, f"no space left on device{where}", errno.ENOSPC)
        self.free, self.needed = free, needed


def describe_bytes(n: int) -> str:
    """``n`` bytes as a short human number: 512 B, 3.4 MB, 58.6 GB (powers of 1000)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def payload_bytes(obj: object) -> int:
    """The bytes of the arrays (tensors, ndarrays) in a nest of dicts, lists and tuples: about
    what saving it will write."""
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(payload_bytes(v) for v in obj)
    return int(getattr(obj, "nbytes", 0))


def free_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use in ``directory``'s filesystem (None: unknown)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (for the free space of a directory to come)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from or during, is the disk being full."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL:
            return True
        current = current.__cause__ or current.__context__
    return False


def check_room(path: str | os.PathLike, needed: int) -> None:
    """Raise DiskFullError now if ``needed`` bytes (and a margin) will not fit beside ``path``."""
    path = Path(path)
    free = free_bytes(_existing_parent(path.parent))
    if free is not None and free < needed + MARGIN:
        raise DiskFullError(path, free, needed)


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], object],
    *,
    needed: int | None = None,
    verify: Callable[[Path], object] | None = None,
    mode: int = 0o644,
    fsync: bool = True,
) -> Path:
    """Write ``path`` through ``write(file)`` so that it is replaced whole or not at all.

    ``needed``: the bytes ``write`` will produce, if known; the space is checked first and the
    error states it. ``verify(temporary_path)`` runs on the written file before it replaces
    ``path`` (e.g. load it back); whatever it raises is passed on, the temporary file removed.
    ``fsync=False`` skips the syncs, for many small files: still whole or absent after a kill of
    the process, though a crash of the machine may lose the newest.
    Raises DiskFullError or WriteError (both OSErrors) with one-line messages naming ``path``.
    """
    path = Path(path)
    if needed is not None:
        check_room(path, needed)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        converted = as_write_error(err, path, needed)
        if converted is err:
            raise
        raise converted from err
    if fsync:
        _fsync_dir(path.parent)
    return path


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Point ``dst`` at ``src``'s file whole or not at all: a hard link, a copy where links fail."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.link(src, tmp)  # no bytes written: cannot fill the disk
        os.replace(tmp, dst)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    else:
        _fsync_dir(dst.parent)
        return dst

    def copy(f: IO[bytes]) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, 1 << 24)

    return write_atomic(dst, copy, needed=src.stat().st_size)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) into ``path``, whole or not at all."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data), needed=len(data))


def as_write_error(err: BaseException, path: Path, needed: int | None = None) -> BaseException:
    """``err`` from writing ``path`` as a one-line WriteError; not a filesystem error: ``err``."""
    if isinstance(err, WriteError):
        return err
    if is_disk_full(err):
        return DiskFullError(path, free_bytes(_existing_parent(path.parent)), needed)
    if isinstance(err, OSError):
        return WriteError(path, err.strerror or str(err), err.errno)
    return err  # a bug, a verify() failure or an interrupt: not a filesystem problem


def _fsync_dir(path: Path) -> None:
    # The rename itself is durable only once the directory is synced; not every filesystem
    # lets a directory be opened for that, which costs durability, never the file.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left in ``directory``; return them.

    Only for a directory this process alone writes (a run directory, under its lock): another
    live writer's temporary file would be taken from under it.
    """
    stale = sorted(Path(directory).glob(".*.tmp-*"))
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale
