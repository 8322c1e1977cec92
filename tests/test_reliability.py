"""Faults during training: kills, signals, a full disk, NaN and inf.

The kill and signal tests run the real ``sngan.cli.train_main`` in subprocesses on the synthetic
source and compare against an uninterrupted subprocess run with the same thread count. There,
``sngan.build.build_evaluator`` gives a cheap deterministic function of the generators' weights
(no Inception network on a 2-core CPU), so ``metrics.jsonl`` and best.pt are exercised too.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_events

import sngan.build
from sngan import atomic, checkpoint
from sngan.cli import train_main
from sngan.config import ConfigError
from sngan.guard import NonFiniteError
from sngan.runlog import truncate_metrics
from sngan.spectral_norm import sigmas
from sngan.train import train

# sngan-train with sngan.metrics stubbed; ``python -c`` passes the remaining arguments on.
LAUNCHER = """
import sys
import torch
import sngan.build as build

class Evaluator:
    def __init__(self, settings, reference, *args, **kwargs):
        self.num_real = len(reference)

    def __call__(self, G, seed=0):
        with torch.no_grad():
            total = sum(p.double().sum() for p in G.parameters())
        return {"metrics/fid": float(total.abs() % 100.0), "metrics/is": float(self.num_real)}

build.build_evaluator = Evaluator
build.checked_weights_files = lambda settings: {}
sys.argv[0] = "sngan-train"
from sngan.cli import train_main
train_main()
"""

ITERATIONS = 24
RUN = [
    *TINY,
    f"iterations={ITERATIONS}",
    "checkpoint_every=4",
    "sample_every=6",
    "log_exact_every=6",
    "metrics.enabled=true",
    "metrics.eval_every=4",
]
# One thread: the same reduction order in every process, and no spinning on a busy CI machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def launch(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=cwd,
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, code: int = 0, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == code, out[-3000:] + err[-3000:]
    return err


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended first:\n{out[-2000:]}\n{err[-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()


def snapshots(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))


def temporary_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob(".*.tmp-*"))


def assert_everything_on_disk_loads(run_dir: Path) -> int:
    """Every checkpoint file loads; return the iteration a resume would start from."""
    for path in (run_dir / "checkpoints").glob("*.pt"):
        checkpoint.load(path)
    return checkpoint.load(checkpoint.find_latest(run_dir))["iteration"]


def state_tensors(path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(path)
    out = {}
    for key in ("G", "D", "G_ema"):
        out.update({f"{key}.{n}": t for n, t in state[key].items()})
    for key in ("opt_g", "opt_d"):
        for i, s in state[key]["state"].items():
            out.update({f"{key}.{i}.{n}": torch.as_tensor(t) for n, t in s.items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = state_tensors(a), state_tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different


def logged(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar (timings aside) and image tag as (step, value) in read order."""
    acc = read_events(run_dir)
    out = {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if not tag.startswith("perf/")
    }
    out.update({tag: [(e.step, 0.0) for e in acc.Images(tag)] for tag in acc.Tags()["images"]})
    return out


def metrics_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "perf/eval_s"} for x in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of RUN."""
    cwd = tmp_path_factory.mktemp("reference")
    finish(launch(*RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd))
    return cwd / "run"


def assert_equals_reference(run_dir: Path, reference: Path) -> None:
    assert checkpoint.load(checkpoint.find_latest(run_dir))["iteration"] == ITERATIONS
    assert_same_weights(run_dir / "checkpoints" / "latest.pt", reference / "checkpoints/latest.pt")
    assert_same_weights(run_dir / "checkpoints" / "best.pt", reference / "checkpoints/best.pt")
    # Logs: every step once, in order, with the uninterrupted run's values.
    got, want = logged(run_dir), logged(reference)
    assert got.keys() == want.keys()
    for tag in want:
        assert got[tag] == want[tag], tag
    assert [s for s, _ in want["loss/d"]] == list(range(1, ITERATIONS + 1))
    assert metrics_records(run_dir) == metrics_records(reference)
    # G_ema then G at every evaluation.
    assert [r["iteration"] for r in metrics_records(run_dir)] == [
        i for i in range(4, 25, 4) for _ in "12"
    ]
    assert not temporary_files(run_dir)


def test_killed_at_any_point_resumes_exactly(tmp_path, reference):
    run_dir = tmp_path / "run"
    # Killed between checkpoints, some time after the first one.
    proc = launch(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for(lambda: len(snapshots(run_dir)) >= 1, proc)
    time.sleep(random.uniform(0.0, 0.2))
    kill(proc)
    first = assert_everything_on_disk_loads(run_dir)
    assert first < ITERATIONS

    # Killed while a checkpoint is half written (the test hook holds the file open).
    proc = launch(f"resume={run_dir}", cwd=tmp_path, SNGAN_TEST_SAVE_PAUSE="60")
    wait_for(lambda: temporary_files(run_dir), proc)
    kill(proc)
    assert temporary_files(run_dir)
    assert assert_everything_on_disk_loads(run_dir) == first  # the half-written one is not used

    # Killed again as soon as it starts training (its event file appears), then resumed to the end.
    event_files = len(list((run_dir / "tb").glob("events.*")))
    proc = launch(f"resume={run_dir}", cwd=tmp_path)
    wait_for(lambda: len(list((run_dir / "tb").glob("events.*"))) > event_files, proc)
    kill(proc)
    assert assert_everything_on_disk_loads(run_dir) >= first
    err = finish(launch(f"resume={run_dir}", cwd=tmp_path))
    assert "Traceback" not in err
    assert_equals_reference(run_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_iteration_and_exits_cleanly(tmp_path, reference, sig):
    run_dir = tmp_path / "run"
    proc = launch(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for(lambda: len(snapshots(run_dir)) >= 1, proc)
    proc.send_signal(sig)
    err = finish(proc, 128 + sig)
    saved = checkpoint.load(run_dir / "checkpoints" / "latest.pt")["iteration"]
    assert saved < ITERATIONS
    name = sig.name
    assert err.splitlines()[-2:] == [
        f"sngan-train: {name} received, saving a checkpoint at the end of this iteration "
        "(send it again to stop at once)",
        f"sngan-train: {name} received: saved {run_dir}/checkpoints/ckpt_{saved:07d}.pt at "
        f"iteration {saved}; resume with: sngan-train resume={run_dir}",
    ]
    if sig == signal.SIGTERM:  # the command it prints ends where an uninterrupted run does
        finish(launch(f"resume={run_dir}", cwd=tmp_path))
        assert_equals_reference(run_dir, reference)


@pytest.mark.slow
def test_soak_200_iterations_killed_every_20(tmp_path):
    run = [*TINY, "iterations=200", "checkpoint_every=5", "sample_every=50"]
    run += ["log_exact_every=50", "metrics.enabled=true", "metrics.eval_every=25"]
    finish(launch(*run, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path))
    run_dir = tmp_path / "run"
    proc = launch(*run, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    for target in range(20, 200, 20):
        wait_for(lambda t=target: checkpoint.snapshot_path(run_dir, t).exists(), proc)
        time.sleep(random.uniform(0.0, 0.3))
        kill(proc)
        assert assert_everything_on_disk_loads(run_dir) >= target
        proc = launch(f"resume={run_dir}", cwd=tmp_path)
    finish(proc)
    reference = tmp_path / "reference"
    assert_same_weights(run_dir / "checkpoints/latest.pt", reference / "checkpoints/latest.pt")
    assert logged(run_dir) == logged(reference)
    assert metrics_records(run_dir) == metrics_records(reference)


# In-process faults: a full disk, NaN and inf.


def enospc_on_save(monkeypatch, fail_at: int) -> None:
    """torch.save in sngan.checkpoint writes part of the file, then the disk is full."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)


def room(ckpts: Path) -> str:
    """The free and needed space a full disk's message gives for a tiny run's checkpoint."""
    needed = atomic.payload_bytes(checkpoint.load(ckpts / "ckpt_0000002.pt"))
    free = atomic.free_bytes(ckpts)
    return f"{atomic.describe_bytes(free)} free, {atomic.describe_bytes(needed)} needed"


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    run_dir = tmp_path / "run"
    enospc_on_save(monkeypatch, fail_at=2)  # the snapshot of iteration 4
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        train(tiny_config("iterations=6"), run_dir)
    ckpts = run_dir / "checkpoints"
    assert str(err.value) == (
        f"could not write checkpoint {ckpts}/ckpt_0000004.pt: no space left on device "
        f"({room(ckpts)}); the previous checkpoint {ckpts}/ckpt_0000002.pt is intact"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt_0000002.pt", "latest.pt"]
    assert checkpoint.load(ckpts / "latest.pt")["iteration"] == 2
    # With space again, the run continues from there.
    monkeypatch.undo()
    train(tiny_config("iterations=6", f"resume={run_dir}"), run_dir)
    assert checkpoint.load(ckpts / "latest.pt")["iteration"] == 6


def test_disk_full_through_the_cli(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    enospc_on_save(monkeypatch, fail_at=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sngan-train", *TINY, f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as exit_:
        train_main()
    assert exit_.value.code == 1
    ckpts = run_dir / "checkpoints"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"sngan-train: error: could not write checkpoint {ckpts}/ckpt_0000004.pt: no space left "
        f"on device ({room(ckpts)}); the previous checkpoint {ckpts}/ckpt_0000002.pt is intact; "
        f"once that is fixed, resume with: sngan-train resume={run_dir}"
    )


def poison_power_iteration(monkeypatch, at_forward: int) -> list[str]:
    """Make D's first layer's u and sigma NaN in its ``at_forward``-th training forward."""
    build, names = sngan.build.build_networks, []

    def build_networks(cfg):
        G, D = build(cfg)
        layer = next(m for m in D.modules() if hasattr(m, "_sn"))
        names.append(next(k for k in sigmas(D)))  # the first layer's name in sigmas()
        power_iteration, calls = layer._sn_power_iteration, []

        def poisoned(name: str, n: int) -> None:
            power_iteration(name, n)
            calls.append(1)
            if len(calls) == at_forward:
                getattr(layer, name + "_u").fill_(float("nan"))
                getattr(layer, name + "_sigma").fill_(float("nan"))

        layer._sn_power_iteration = poisoned
        return G, D

    monkeypatch.setattr(sngan.build, "build_networks", build_networks)
    return names


# The NaN/inf check runs on the host per update with for-each Adam (the CPU default) and on the
# device, read back at log steps, with fused Adam (the CUDA default): both must act alike.
CHECKS = pytest.mark.parametrize("check", ["fused_adam=false", "fused_adam=true"])


@CHECKS
def test_nan_in_a_sigma_stops_and_saves_the_state_before_that_update(
    tmp_path, tiny_config, monkeypatch, check
):
    # TINY: n_dis=2, so each iteration runs D's forward 3 times; forward 7 = iteration 3, D step 1.
    names = poison_power_iteration(monkeypatch, at_forward=7)
    with pytest.raises(NonFiniteError) as err:
        train(tiny_config("iterations=6", check), tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert str(err.value) == (
        f"non-finite value in iteration 3 (D step 1 of 2): loss/d=nan, grad_norm/d=nan, "
        f"sigma/{names[0]}=nan; the state before this update is saved as {ckpts}/last_good.pt. "
        f"To skip such updates instead: the newest checkpoint is {ckpts}/latest.pt; "
        f"resume with: sngan-train resume={tmp_path} nan_policy=skip"
    )
    # Nothing of iteration 3 was applied: D's u, v and G's BatchNorm statistics included.
    assert_same_weights(ckpts / "last_good.pt", ckpts / "ckpt_0000002.pt")
    assert checkpoint.load(ckpts / "last_good.pt")["iteration"] == 2
    assert checkpoint.load(ckpts / "latest.pt")["iteration"] == 2


def inf_in_g_loss(monkeypatch, at_call: int) -> None:
    get_loss = sngan.build.get_loss

    def patched(name):
        d_loss, g_loss = get_loss(name)
        calls = []

        def g_loss_inf(fake):
            calls.append(1)
            loss = g_loss(fake)
            return loss + float("inf") if len(calls) == at_call else loss

        return d_loss, g_loss_inf

    monkeypatch.setattr(sngan.build, "get_loss", patched)


@CHECKS
def test_inf_in_a_loss_stops_with_the_step_and_the_value(tmp_path, tiny_config, monkeypatch, check):
    inf_in_g_loss(monkeypatch, at_call=2)
    with pytest.raises(NonFiniteError) as err:
        train(tiny_config("checkpoint_every=1", check), tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert str(err.value).startswith(
        f"non-finite value in iteration 2 (G step): loss/g=inf; the state before this update is "
        f"saved as {ckpts}/last_good.pt."
    )
    good, before = checkpoint.load(ckpts / "last_good.pt"), checkpoint.load(ckpts / "latest.pt")
    assert before["iteration"] == 1
    # G's update of iteration 2 is the one refused (its D steps, which move G's BatchNorm
    # statistics through G(z), were good).
    for key in ("G", "G_ema"):
        for name, t in good[key].items():
            bn_statistics = key == "G" and ("running" in name or "num_batches" in name)
            assert torch.equal(t, before[key][name]) or bn_statistics, (key, name)
    assert torch.equal(good["opt_g"]["state"][0]["step"], before["opt_g"]["state"][0]["step"])


@CHECKS
def test_skip_policy_skips_only_that_update(tmp_path, tiny_config, monkeypatch, capsys, check):
    inf_in_g_loss(monkeypatch, at_call=2)
    overrides = ("checkpoint_every=1", "keep_checkpoints=4", "nan_policy=skip", check)
    train(tiny_config(*overrides), tmp_path)
    assert "sngan-train: skipped the update of iteration 2 (G step): loss/g=inf" in (
        capsys.readouterr().err
    )
    ckpts = tmp_path / "checkpoints"
    one, two = (checkpoint.load(ckpts / f"ckpt_000000{i}.pt") for i in (1, 2))
    for name, p in two["G"].items():  # parameters unchanged by iteration 2 (BN stats move)
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(p, one["G"][name]), name
    assert torch.equal(two["opt_g"]["state"][0]["step"], one["opt_g"]["state"][0]["step"])
    latest = state_tensors(ckpts / "latest.pt")
    assert checkpoint.load(ckpts / "latest.pt")["skipped"] == 1
    assert all(torch.isfinite(t.float()).all() for t in latest.values())


# Checkpoint bookkeeping a kill can leave behind.


def test_resume_uses_the_newest_snapshot_when_latest_lags(tmp_path, tiny_config):
    train(tiny_config("iterations=4", "checkpoint_every=2"), tmp_path)
    ckpts = tmp_path / "checkpoints"
    # As if killed between writing ckpt_4 and repointing latest.pt, with a half-written file.
    (ckpts / "latest.pt").unlink()
    os.link(ckpts / "ckpt_0000002.pt", ckpts / "latest.pt")
    (ckpts / ".ckpt_0000006.pt.tmp-12345").write_bytes(b"PK\x03\x04 half")
    assert checkpoint.find_latest(tmp_path) == ckpts / "ckpt_0000004.pt"
    train(tiny_config("iterations=6", "checkpoint_every=2", f"resume={tmp_path}"), tmp_path)
    assert checkpoint.load(ckpts / "latest.pt")["iteration"] == 6
    assert not list(ckpts.glob(".*.tmp-*"))


def test_a_new_run_never_overwrites_a_runs_checkpoints(tmp_path, tiny_config):
    train(tiny_config("iterations=2"), tmp_path)
    before = (tmp_path / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(ConfigError) as err:
        train(tiny_config("iterations=2"), tmp_path)
    assert str(err.value) == (
        f"{tmp_path} already holds the checkpoints of a run ({tmp_path}/checkpoints/latest.pt); "
        f"continue it with resume={tmp_path}, or start this run in another directory "
        "(hydra.run.dir=...)"
    )
    assert (tmp_path / "checkpoints" / "latest.pt").read_bytes() == before


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 2, "metrics/fid": 1.0}\n{"iteration": 4, "metr')
    truncate_metrics(path, 4)
    assert path.read_text() == '{"iteration": 2, "metrics/fid": 1.0}\n'
