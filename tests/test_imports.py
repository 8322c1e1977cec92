"""One path from the command line: each outside check runs once, nothing heavy is imported early.

The imports are read in fresh subprocesses (``sys.modules`` of a process that ran sngan-train);
the checks are counted in this one, around the real ``sngan.cli.train_main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, TINY

import sngan.build
import sngan.extractor_weights
from sngan import runlock
from sngan.cli import train_main

# sngan-train, then one JSON line: its exit status and the modules it had imported at its end
# (and, where the spy below is installed, at its first sample grid).
RUN = """
sys.argv = ["sngan-train", *sys.argv[1:]]
from sngan.cli import train_main

try:
    train_main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("MODULES " + json.dumps({"code": code, "end": sorted(sys.modules), "grid": first_grid}))
"""
PLAIN = "import json, sys\nfirst_grid = []\n" + RUN
DRIVER = (
    """
import json, sys
import sngan.runlog

first_grid = []
draw = sngan.runlog.RunLog.sample_grids

def sample_grids(self, *args, **kwargs):
    if not first_grid:
        first_grid.append(sorted(sys.modules))
    return draw(self, *args, **kwargs)

sngan.runlog.RunLog.sample_grids = sample_grids
"""
    + RUN
)

HEAVY = ("torch", "torchvision", "torch_fidelity", "tensorboard", "scipy")


def imported(*args: str, cwd, driver: str = DRIVER) -> dict:
    """sngan-train in a fresh process: its exit status, and the top-level packages it had
    imported at its first sample grid and at its end."""
    proc = subprocess.run(
        [sys.executable, "-c", driver, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES "))
    record = json.loads(line.removeprefix("MODULES "))

    def top(names):
        return {n.split(".")[0] for n in names} & set(HEAVY)

    return {
        "code": record["code"],
        "end": top(record["end"]),
        "grid": top(record["grid"][0]) if record["grid"] else None,
        "stderr": proc.stderr,
    }


def test_a_typo_is_refused_without_importing_torch(tmp_path):
    got = imported("modle=dcgan", cwd=tmp_path, driver=PLAIN)
    assert got["code"] == 1 and "unknown config key 'modle'" in got["stderr"]
    assert got["end"] == set()  # not even torch
    assert list(tmp_path.iterdir()) == []


def test_training_without_metrics_imports_no_torch_fidelity(tmp_path):
    got = imported(*TINY, "iterations=2", "hydra.run.dir=run", cwd=tmp_path)
    assert got["code"] == 0, got["stderr"][-2000:]
    assert "torch_fidelity" not in got["end"] and "scipy" not in got["end"]
    # TensorBoard for the run's logs; torchvision first for the grids, not before them.
    assert got["end"] == {"torch", "tensorboard", "torchvision"}
    assert got["grid"] == {"torch", "tensorboard"}


def count_calls(monkeypatch, module, name: str) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_outside_check_runs_once_per_sngan_train(tmp_path, monkeypatch, inception_weights):
    devices = count_calls(monkeypatch, sngan.build, "resolve_device")
    weights = count_calls(monkeypatch, sngan.extractor_weights, "checked_weights")
    locks = count_calls(monkeypatch, runlock, "hold")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "iterations=2",
        "metrics.enabled=true",
        "metrics.num_samples=10",
        "metrics.batch_size=32",
        f"metrics.inception_weights={inception_weights}",
        f"metrics.cache_dir={tmp_path / 'fid'}",
        f"hydra.run.dir={run_dir}",
    ]
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    train_main()  # trains, and evaluates G_ema and G at its end with the real Evaluator
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2
    assert len(devices) == 1 and len(weights) == 1 and len(locks) == 1
    assert locks[0][0] == run_dir


def test_a_resume_checks_once_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    first = [*TINY, "iterations=2", f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", ["sngan-train", *first])
    train_main()
    devices = count_calls(monkeypatch, sngan.build, "resolve_device")
    locks = count_calls(monkeypatch, runlock, "hold")
    for lock in runlock._held.values():  # as a new process would start
        lock.release()
    monkeypatch.setattr(runlock, "_held", {})
    monkeypatch.setattr(sys, "argv", ["sngan-train", *TINY, "iterations=4", f"resume={run_dir}"])
    train_main()
    assert len(devices) == 1 and len(locks) == 1
