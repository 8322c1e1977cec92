"""The console scripts, run in subprocesses the way a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_events
from PIL import Image

BIN = Path(sys.executable).parent


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of the real sngan-train console script on the synthetic source."""
    tmp = tmp_path_factory.mktemp("cli")
    run_dir = tmp / "run"
    run("sngan-train", *TINY, "model.num_classes=10", f"hydra.run.dir={run_dir}", cwd=tmp)
    return run_dir


def test_train_writes_config_events_checkpoint_and_samples(trained):
    assert "num_classes: 10" in (trained / "config.yaml").read_text()
    acc = read_events(trained)
    tags = set(acc.Tags()["scalars"])
    expected = {
        "loss/d",
        "loss/g",
        "d/real",
        "d/fake",
        "lr/g",
        "lr/d",
        "grad_norm/d",
        "grad_norm/g",
        "perf/it_per_s",
        "perf/img_per_s",
    }
    assert expected <= tags
    assert any(t.startswith("sigma/") for t in tags)
    assert any(t.startswith("sigma_exact/") for t in tags)
    assert set(acc.Tags()["images"]) == {"samples/G", "samples/G_ema"}
    assert (trained / "checkpoints" / "latest.pt").is_file()
    grid = Image.open(trained / "samples" / "G_ema_0000004.png")
    # make_grid with 2-pixel padding: 8 columns of z, one row per class of the 10.
    assert grid.size == (8 * 32 + 9 * 2, 10 * 32 + 11 * 2)


def test_sample_writes_a_grid_and_files(trained, tmp_path):
    ckpt = trained / "checkpoints" / "latest.pt"
    out = run(
        "sngan-sample", f"checkpoint={ckpt}", "n=16", f"out={tmp_path / 'g.png'}", cwd=tmp_path
    )
    assert "iteration 4" in out.stdout
    assert Image.open(tmp_path / "g.png").size == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2)
    run("sngan-sample", f"checkpoint={ckpt}", "n=5", f"out={tmp_path / 'files'}", cwd=tmp_path)
    files = sorted((tmp_path / "files").glob("*.png"))
    assert len(files) == 5 and Image.open(files[0]).size == (32, 32)


def test_multirun_gives_each_job_its_own_run_dir(tmp_path):
    sweep = tmp_path / "sweep"
    run(
        "sngan-train",
        "-m",
        *TINY,
        "iterations=2",
        "optim.n_dis=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    for job, n_dis in (("0", 1), ("1", 2)):
        state = torch.load(sweep / job / "checkpoints" / "latest.pt", weights_only=True)
        assert state["config"]["optim"]["n_dis"] == n_dis
        assert state["iteration"] == 2


def test_version(tmp_path):
    out = run("sngan", "--version", cwd=tmp_path)
    from sngan import __version__

    assert out.stdout.strip() == f"sngan {__version__}"


def test_bad_override_fails_before_training(tmp_path):
    proc = subprocess.run(
        [str(BIN / "sngan-train"), *TINY, "optim.n_dis=0", f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "sngan-train: error: optim.n_dis=0 is not valid: must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()
