"""One writer per run directory, through the console scripts, against a run that is training.

A ``sngan-train`` run is started and frozen (SIGSTOP) just after its first checkpoint: it holds
its directory's lock and is in the middle of its run, and nothing on disk moves while a second
``sngan-train`` (a new run into the directory, or ``resume=``) tries the same directory; those
run the console scripts' functions in this process. sngan-sample and sngan-eval only read, so
they work beside it. Then the run is killed with SIGKILL, and its directory resumes (as a job
that SLURM/submitit started again, then by ``resume=``) to the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from inception_fixture import write_random_inception_weights
from test_reliability import assert_same_weights, snapshots, wait_for

from sngan import checkpoint, runlock
from sngan.cli import eval_main, sample_main, train_main

pytestmark = pytest.mark.skipif(runlock.fcntl is None, reason="needs fcntl (Linux/macOS)")

BIN = Path(sys.executable).parent
ITERATIONS = 12
# 16 images: sngan-eval's reference statistics are Inception features of all of them.
RUN = [*TINY, "data.num_images=16", f"iterations={ITERATIONS}", "checkpoint_every=2"]
RUN += ["sample_every=6"]
# One thread: the same reduction order in every process (the weights are compared bit for bit).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(script: str, *args: str, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / script), *args],
        cwd=cwd,
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, code: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, out[-3000:] + err[-3000:]
    return out, err


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # SIGKILL: works on a stopped process too
        proc.communicate()


def files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``run_dir`` (.hydra/ included): (size, mtime in ns)."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[subprocess.Popen, Path]:
    """An uninterrupted run of RUN, started at once (it trains beside the held run)."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = start("sngan-train", *RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    yield proc, cwd / "run"
    stop(proc)


@pytest.fixture(scope="module")
def held(tmp_path_factory, reference) -> tuple[Path, subprocess.Popen]:
    """A run of RUN frozen (SIGSTOP) right after its first checkpoint, holding its directory."""
    cwd = tmp_path_factory.mktemp("held")
    run_dir = cwd / "run"
    proc = start("sngan-train", *RUN, f"hydra.run.dir={run_dir}", cwd=cwd)
    # The snapshot is renamed into place first, then latest.pt is linked to it: wait for both.
    latest = run_dir / "checkpoints" / "latest.pt"
    wait_for(lambda: len(snapshots(run_dir)) >= 1 and latest.exists(), proc, timeout=300)
    proc.send_signal(signal.SIGSTOP)
    yield run_dir, proc
    stop(proc)


@pytest.mark.parametrize("how", ["new run", "resume"])
def test_a_second_sngan_train_fails_at_once_naming_the_holder_and_touches_nothing(
    held, how, monkeypatch, capsys
):
    run_dir, trainer = held
    assert runlock.holder(run_dir)["pid"] == trainer.pid
    before = files(run_dir)
    assert ".hydra/config.yaml" in before and "checkpoints/latest.pt" in before
    # The console script's own function, in this process (no second torch import to wait for).
    args = [*RUN, f"hydra.run.dir={run_dir}"] if how == "new run" else [f"resume={run_dir}"]
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    assert time.monotonic() - started < 10  # no waiting for the lock
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(
        f"sngan-train: error: {run_dir} is in use by another sngan-train "
        f"(pid {trainer.pid} on host {socket.gethostname()}, started 20"
    )
    assert line.endswith("wait for it to end, or stop it first")
    assert not out  # not even the config: Hydra never ran
    assert files(run_dir) == before
    assert runlock.holder(run_dir)["pid"] == trainer.pid


def test_sample_and_eval_read_the_checkpoint_of_a_run_that_holds_its_directory(
    held, tmp_path, capsys
):
    run_dir, trainer = held
    before = files(run_dir)
    latest = run_dir / "checkpoints" / "latest.pt"
    sample_main([f"checkpoint={latest}", "n=4", f"out={tmp_path / 'g.png'}"])
    assert "sngan-sample: wrote 4 images of iteration" in capsys.readouterr().out
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    eval_main(
        [
            f"checkpoint={latest}",
            "metrics.num_samples=10",
            "metrics.batch_size=10",
            f"metrics.inception_weights={weights}",
            f"metrics.cache_dir={tmp_path / 'fidelity-cache'}",
            "device=cpu",
        ]
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["checkpoint"] == str(latest)
    assert files(run_dir) == before
    assert runlock.holder(run_dir)["pid"] == trainer.pid


def test_after_kill_9_the_run_resumes_with_no_stale_lock_to_the_uninterrupted_weights(
    held, reference, tmp_path
):
    run_dir, trainer = held
    stop(trainer)
    assert runlock.holder(run_dir) is None  # the kernel dropped the lock with the process
    killed_at = checkpoint.load(checkpoint.find_latest(run_dir))["iteration"]
    assert killed_at < ITERATIONS

    # SLURM/submitit starts the job again with its own command line: it resumes the directory
    # (resume.requeued). Killed in turn once it has saved a checkpoint of its own...
    requeued = {"SUBMITIT_EXECUTOR": "local", "PYTHONUNBUFFERED": "1"}  # its output survives kill
    proc = start("sngan-train", *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, **requeued)
    wait_for(lambda: checkpoint.snapshot_path(run_dir, killed_at + 2).exists(), proc, 300)
    proc.kill()
    out, _ = proc.communicate()
    assert f"resuming {run_dir} from " in out
    assert runlock.holder(run_dir) is None

    # ... and resumed to the end by hand.
    out, _ = finish(start("sngan-train", f"resume={run_dir}", cwd=tmp_path))
    assert f"resuming {run_dir} from " in out
    ref_proc, ref_dir = reference
    finish(ref_proc)
    assert checkpoint.load(run_dir / "checkpoints" / "latest.pt")["iteration"] == ITERATIONS
    assert_same_weights(run_dir / "checkpoints" / "latest.pt", ref_dir / "checkpoints/latest.pt")
    assert runlock.holder(run_dir) is None
