"""RunLock against real processes: one writer per run directory, no stale lock after kill -9."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from sngan import runlock
from sngan.runlock import LOCK_NAME, RunLock, RunLockedError, holder

pytestmark = pytest.mark.skipif(runlock.fcntl is None, reason="needs fcntl (Linux/macOS)")

# Takes the lock, says so on stdout (the parent's handshake), then holds it until killed.
# runlock.py is loaded by its path: importing the sngan package would import torch (seconds).
HOLD = (
    "import importlib.util as u, sys, time; "
    f"s = u.spec_from_file_location('runlock', {runlock.__file__!r}); m = u.module_from_spec(s); "
    "s.loader.exec_module(m); m.RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); time.sleep(600)"
)
# Locks the file without writing a record: a holder caught between flock and its write.
HOLD_SILENT = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
HOLD_SILENT += "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def held(tmp_path):
    """A run directory locked by another process (``sngan-train model=dcgan``-like argv)."""
    run_dir = tmp_path / "runs" / "x"
    proc = _start(HOLD, str(run_dir), "model=dcgan")
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_second_process_fails_at_once_naming_the_holder(held):
    run_dir, proc = held
    start = time.monotonic()
    with pytest.raises(RunLockedError) as info:
        RunLock(run_dir).acquire()
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir} is in use by another sngan-train (pid {proc.pid} ")
    assert f"on host {socket.gethostname()}, started 20" in message
    assert message.endswith(f": -c {run_dir} model=dcgan); wait for it to end, or stop it first")
    assert info.value.holder["pid"] == proc.pid
    # The failed attempt left the holder's record as it was.
    assert holder(run_dir)["pid"] == proc.pid


def test_holder_reports_the_other_process(held):
    run_dir, proc = held
    record = holder(run_dir)
    assert record["pid"] == proc.pid
    assert record["host"] == socket.gethostname()
    assert record["argv"][1:] == [str(run_dir), "model=dcgan"]
    started = time.strptime(record["started"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(time.mktime(started) - time.mktime(time.gmtime())) < 120
    # A probe takes nothing away: the holder still holds it and we still cannot take it.
    with pytest.raises(RunLockedError):
        RunLock(run_dir).acquire()


def test_sigkill_leaves_no_stale_lock(held):
    run_dir, proc = held
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunLock(run_dir) as lock:
        assert lock.locked
        record = holder(run_dir)
        assert record["pid"] == os.getpid()
        assert record["argv"] == sys.argv
    # The record is one JSON line, and it stays after release.
    lines = (run_dir / LOCK_NAME).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["pid"] == os.getpid()


def test_holder_unknown_between_flock_and_write(tmp_path):
    proc = _start(HOLD_SILENT, str(tmp_path / LOCK_NAME))
    try:
        with pytest.raises(
            RunLockedError, match=r"in use by another sngan-train \(holder unknown\)"
        ):
            RunLock(tmp_path).acquire()
        assert holder(tmp_path) == {"pid": None, "host": None, "started": None, "argv": None}
    finally:
        proc.kill()
        proc.wait()


def test_creates_only_the_lock_file_and_reacquires(tmp_path):
    run_dir = tmp_path / "a" / "b"  # made with its parents
    lock = RunLock(run_dir).acquire()
    assert os.listdir(run_dir) == [LOCK_NAME]
    lock.release()
    assert not lock.locked and holder(run_dir) is None
    lock.acquire()
    assert holder(run_dir)["pid"] == os.getpid()
    lock.release()
    lock.release()  # idempotent
    assert os.listdir(run_dir) == [LOCK_NAME]


def test_context_manager_releases_on_exception(tmp_path):
    with pytest.raises(ValueError, match="boom"), RunLock(tmp_path):
        raise ValueError("boom")
    assert holder(tmp_path) is None
    with RunLock(tmp_path):
        pass


def test_same_process_twice_raises_naming_itself(tmp_path):
    with RunLock(tmp_path) as lock:
        # A second open file description conflicts with the first, even in one process.
        for second in (RunLock(tmp_path), lock):
            with pytest.raises(RunLockedError) as info:
                second.acquire()
            message = str(info.value)
            assert message.startswith(f"{tmp_path} is already locked by this process (pid ")
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert lock.locked
    assert holder(tmp_path) is None


def test_holder_of_free_or_missing_directory_is_none_and_creates_nothing(tmp_path):
    assert holder(tmp_path) is None
    assert holder(tmp_path / "missing") is None
    assert os.listdir(tmp_path) == []
    RunLock(tmp_path).acquire().release()
    assert holder(tmp_path) is None
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_acquire_waits_out_a_holder_probe(tmp_path, monkeypatch):
    # holder() holds a shared lock for an instant; an acquire meeting it must still succeed.
    real, calls = runlock.fcntl.flock, []

    def busy_once(fd, op):
        calls.append(op)
        if len(calls) == 1:
            raise BlockingIOError(errno.EWOULDBLOCK, "probe")
        real(fd, op)

    monkeypatch.setattr(runlock.fcntl, "flock", busy_once)
    with RunLock(tmp_path) as lock:
        assert lock.locked and len(calls) == 2


def test_degrades_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "_warned", False)
    monkeypatch.setattr(runlock, "fcntl", None)
    with pytest.warns(RuntimeWarning, match="run directories are not locked"):
        RunLock(tmp_path / "run").acquire()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunLock(tmp_path / "run").acquire()  # warned once per process, not per run
    assert holder(tmp_path / "run") is None
    assert os.listdir(tmp_path / "run") == []


def test_filesystem_without_flock_degrades(tmp_path, monkeypatch):
    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock, "_warned", False)
    monkeypatch.setattr(runlock.fcntl, "flock", unsupported)
    with pytest.warns(RuntimeWarning, match="flock failed"), RunLock(tmp_path) as lock:
        assert not lock.locked
    assert Path(tmp_path / LOCK_NAME).read_text() == ""
