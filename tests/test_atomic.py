"""sngan.atomic, the one writer: a real full disk, a read-only directory, a kill -9 mid-write.

The full disk and the read-only directory are real filesystems: a small tmpfs mounted for the
test (the tests run as root in CI; elsewhere they are skipped, saying why). Root ignores file
permissions, so a read-only mount is the one way to refuse a write to it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, mounted_tmpfs

from sngan import atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic.write_atomic(path, lambda f: f.write(b"old"))
    atomic.write_atomic(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(atomic.WriteError) as err:
        atomic.write_atomic(path, write)
    assert str(err.value) == f"could not write {path}: Input/output error"
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_a_failed_verify_keeps_the_old_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def verify(tmp: Path) -> None:
        assert tmp.read_bytes() == b"new" and tmp.name.startswith(".file.bin.tmp-")
        raise ValueError("does not load back")

    with pytest.raises(ValueError, match="does not load back"):
        atomic.write_atomic(path, lambda f: f.write(b"new"), verify=verify)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_a_full_disk_for_real(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        path = disk / "file.bin"
        atomic.write_atomic(path, lambda f: f.write(b"x" * 1000))
        free = atomic.free_bytes(disk)
        # Too big, and said so: refused before a byte is written.
        with pytest.raises(atomic.DiskFullError) as err:
            atomic.write_atomic(path, lambda f: f.write(b"y" * 10**7), needed=10**7)
        assert err.value.needed == 10**7 and err.value.free == free
        assert str(err.value) == (
            f"could not write {path}: no space left on device "
            f"({atomic.describe_bytes(free)} free, 10.0 MB needed)"
        )
        # Too big, not said: found out while writing, then cleaned up.
        with pytest.raises(atomic.DiskFullError) as err:
            atomic.write_atomic(path, lambda f: f.write(b"y" * 10**7))
        assert str(err.value).startswith(f"could not write {path}: no space left on device (")
        assert err.value.errno == errno.ENOSPC
        # torch.save reports it as a RuntimeError of its zip writer: recognised all the same.
        with pytest.raises(atomic.DiskFullError):
            atomic.write_atomic(path, lambda f: torch.save(torch.zeros(10**6), f))
        assert path.read_bytes() == b"x" * 1000
        assert [p.name for p in disk.iterdir()] == ["file.bin"]


def test_a_read_only_directory_for_real(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "1m", read_only=True) as disk:
        with pytest.raises(atomic.WriteError) as err:
            atomic.write_atomic(disk / "file.bin", lambda f: f.write(b"x"))
        assert str(err.value) == f"could not write {disk / 'file.bin'}: Read-only file system"
        assert not isinstance(err.value, atomic.DiskFullError)
        assert list(disk.iterdir()) == []


KILLED_WRITER = """
import sys, time
from sngan import atomic

def write(f):
    f.write(b"new, half")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

atomic.write_atomic(sys.argv[1], write)
"""


def test_killed_mid_write_the_old_file_stays_whole(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() == b"old"
    (left,) = [p for p in tmp_path.iterdir() if p != path]
    assert left.name.startswith(".file.bin.tmp-") and left.read_bytes() == b"new, half"
    # The next writer of a directory it owns clears what the killed one left.
    assert atomic.remove_temporaries(tmp_path) == [left]
    assert list(tmp_path.iterdir()) == [path]


def test_describe_bytes():
    assert [atomic.describe_bytes(n) for n in (0, 999, 1000, 3_400_000, 58_600_000_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "3.4 MB",
        "58.6 GB",
    ]


def test_link_atomic_points_at_the_same_bytes(tmp_path):
    src = tmp_path / "a.pt"
    src.write_bytes(b"payload")
    dst = atomic.link_atomic(src, tmp_path / "latest.pt")
    assert dst.read_bytes() == b"payload" and os.path.samefile(src, dst)
    time.sleep(0.01)
    src2 = tmp_path / "b.pt"
    src2.write_bytes(b"second")
    atomic.link_atomic(src2, dst)
    assert dst.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "latest.pt"]
