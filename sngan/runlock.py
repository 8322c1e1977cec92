"""One writer per run directory: an exclusive OS lock on ``run_dir/.sngan.lock``.

Two ``sngan-train`` processes training into the same directory would silently interleave
checkpoints, event files and metrics.jsonl. ``RunLock`` takes ``flock(LOCK_EX | LOCK_NB)`` on the
lock file, so the second process fails at once with a message naming the first. The kernel drops
the lock when its holder's last descriptor closes, which includes kill -9, so no stale lock is
left. The holder writes who it is (pid, host, start time, command line) into the locked file as
one JSON line; the file stays after release and the next holder overwrites it.

Linux and macOS only: where ``fcntl`` is missing (Windows), or where the filesystem refuses
``flock`` (e.g. Lustre mounted without ``flock``), locking degrades to nothing with a warning.

For the integrator:

- Take the lock before anything is written to the run directory; ``acquire`` creates the
  directory (with parents) if needed and creates nothing in it but the lock file. Hydra's
  ``run_job`` writes ``.hydra/`` and the job log before the task function runs; only a lock
  taken earlier (a callback's ``on_run_start``, or before the app for ``resume=``) covers those.
- Keep the ``RunLock`` object (and so its descriptor) for the whole run (``hold`` does: it keeps
  every lock the process took until it exits); under torchrun only global rank 0 (``RANK``, not
  ``LOCAL_RANK``: nodes may share the filesystem) takes it.
- flock locks belong to an open file description, not to a process: the same process taking
  the lock of one directory twice conflicts with itself, and the error says so. Forked children
  (DataLoader workers) share the parent's description, so the lock lasts until they exit too.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".sngan.lock"

# A holder() probe holds a shared lock for a few microseconds; an acquire that meets one must
# not report the directory as in use, so it retries for this long before giving up.
_PROBE_GRACE_S = 0.2
# Errors that mean "someone else holds it"; any other OSError means flock is unsupported here.
_HELD_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)

_warned = False


class RunLockedError(RuntimeError):
    """The run directory is locked by another sngan-train (or by this process already)."""

    def __init__(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.holder = record
        super().__init__(_locked_message(run_dir, record))


def _warn_unlocked(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"run directories are not locked: {reason}; two sngan-train processes could "
            "write into the same one",
            RuntimeWarning,
            stacklevel=3,
        )


def _record() -> dict[str, Any]:
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "argv": sys.argv}


def _read_record(fd: int) -> dict[str, Any]:
    """The holder record in the lock file; its keys are None if it is empty or unreadable."""
    unknown: dict[str, Any] = {"pid": None, "host": None, "started": None, "argv": None}
    try:
        data = json.loads(os.pread(fd, 64 * 1024, 0).decode())
    except (OSError, UnicodeDecodeError, ValueError):
        return unknown  # the holder is between flock and its write, or wrote something else
    return {**unknown, **data} if isinstance(data, dict) else unknown


def _command(argv: Any) -> str:
    if not isinstance(argv, list) or not argv:
        return "command unknown"
    words = [Path(str(argv[0])).name, *map(str, argv[1:])]
    # A newline in an argument (python -c "...") must not break the one-line message.
    return shlex.join(words).replace("\n", "\\n")


def _locked_message(run_dir: Path, record: dict[str, Any]) -> str:
    if record.get("pid") is None:
        who = "holder unknown"
    else:
        who = (
            f"pid {record['pid']} on host {record.get('host')}, started "
            f"{record.get('started')}: {_command(record.get('argv'))}"
        )
    if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        return (
            f"{run_dir} is already locked by this process ({who}); a process takes a run "
            "directory's lock once and keeps it for the run"
        )
    return (
        f"{run_dir} is in use by another sngan-train ({who}); wait for it to end, or stop it first"
    )


class RunLock:
    """An exclusive, non-blocking lock on a run directory, held until ``release`` or exit."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the directory) or raise RunLockedError naming the holder."""
        if self._fd is not None:
            raise RunLockedError(self.run_dir, _read_record(self._fd))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            _warn_unlocked("fcntl is not available on this platform")
            return self
        # No O_TRUNC: the current holder's record must survive a failed attempt to read it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = _flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # the filesystem does not do flock (not "someone holds it")
            os.close(fd)
            _warn_unlocked(f"{self.path}: flock failed ({e.strerror})")
            return self
        try:
            if not taken:
                raise RunLockedError(self.run_dir, _read_record(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_record()) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; the lock file stays (its content is only informative)."""
        # Never unlink it: a process waiting on the old file would lock an orphaned inode
        # while a third one locks a new file, and both would think they own the directory.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(fd: int, mode: int) -> bool:
    """flock(mode | LOCK_NB), retried through a holder() probe; False if someone holds it."""
    deadline = time.monotonic() + _PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in _HELD_ERRNOS:
                raise
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.01)


def holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock now (their record), or None if it is free; never blocks.

    The record's values are None while a new holder has not written it yet. Nothing is created.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # A shared lock on its own descriptor: granted only if nobody holds the exclusive one,
        # and dropped at once so that it keeps nobody out for longer than a retry of acquire().
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in _HELD_ERRNOS:
            os.close(fd)
            return None  # flock unsupported on this filesystem: nobody can hold it either
        record = _read_record(fd)
        os.close(fd)
        return record
    os.close(fd)
    return None


# The run directories this process holds, by resolved path: held until the process exits.
_held: dict[Path, RunLock] = {}


def hold(run_dir: str | os.PathLike[str]) -> RunLock:
    """This process's lock of ``run_dir``, taken now unless it is held already (RunLockedError
    if another process holds it). The CLI takes it before Hydra writes into a directory it
    knows, train() before it writes anything; both calls land on the same lock."""
    key = Path(run_dir).resolve()
    if key not in _held:
        _held[key] = RunLock(run_dir).acquire()
    return _held[key]
