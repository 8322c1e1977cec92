"""FID/IS inside training and through sngan-eval, end to end through torch-fidelity.

Inception has torch-fidelity's format and keys but random values (tests/inception_fixture.py),
so the numbers are meaningless but come out of the real pipeline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_events
from inception_fixture import write_random_inception_weights

from sngan import checkpoint
from sngan.train import train


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, weights) -> Path:
    from conftest import compose_config

    run_dir = tmp_path_factory.mktemp("evaluated")
    cfg = compose_config(
        "metrics.enabled=true",
        "metrics.eval_every=2",
        "metrics.num_samples=10",
        "metrics.batch_size=10",
        f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={run_dir / 'fidelity-cache'}",
        "checkpoint_every=100",
    )
    train(cfg, run_dir)
    return run_dir


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_both_generators_are_logged_and_recorded_with_how_they_were_made(evaluated_run):
    records = records_of(evaluated_run)
    # Every evaluation scores G_ema then G (metrics.generators' default order).
    assert [(r["iteration"], r["generator"]) for r in records] == [
        (2, "G_ema"),
        (2, "G"),
        (4, "G_ema"),
        (4, "G"),
    ]
    for r in records:
        assert r["protocol"] == "standard" and r["metrics/num_fake"] == 10
        # G_ema with its own statistics (the default), G with its own; CPU: fp32 eager training.
        assert r["bn_stats"] == ("recompute" if r["generator"] == "G_ema" else "own")
        assert (r["amp"], r["compile"]) == (False, False)
        for key in ("metrics/fid", "metrics/is", "metrics/is_std", "perf/eval_s"):
            assert math.isfinite(r[key]), key
    acc = read_events(evaluated_run)
    for name in ("G_ema", "G"):
        logged = {e.step: e.value for e in acc.Scalars(f"metrics/{name}/fid")}
        want = {r["iteration"]: r["metrics/fid"] for r in records if r["generator"] == name}
        assert logged == pytest.approx(want)
    # The two generators differ (G_ema starts averaging at iteration 2 of this config).
    ema, raw = (next(r for r in records[2:] if r["generator"] == n) for n in ("G_ema", "G"))
    assert ema["metrics/fid"] != raw["metrics/fid"]
    assert "perf/eval_s" in acc.Tags()["scalars"]
    assert not any(t.startswith("metrics/fid") for t in acc.Tags()["scalars"])


def test_best_checkpoint_follows_the_lowest_fid_of_g_ema(evaluated_run):
    records = [r for r in records_of(evaluated_run) if r["generator"] == "G_ema"]
    best = min(records, key=lambda r: r["metrics/fid"])
    state = checkpoint.load(evaluated_run / "checkpoints" / "best.pt")
    assert state["iteration"] == best["iteration"]
    assert state["best_fid"] == pytest.approx(best["metrics/fid"])


def test_best_checkpoint_can_follow_g(tmp_path, weights):
    from conftest import compose_config

    cfg = compose_config(
        "metrics.enabled=true",
        "metrics.eval_every=1",
        "metrics.generators=[G]",
        "metrics.best=G",
        "metrics.num_samples=10",
        "metrics.batch_size=10",
        f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={tmp_path / 'fidelity-cache'}",
        "data.num_images=16",  # the reference: Inception takes ~0.2 s an image on a CPU core
        "iterations=3",
        "checkpoint_every=100",
    )
    train(cfg, tmp_path)
    records = records_of(tmp_path)
    assert {r["generator"] for r in records} == {"G"} and len(records) == 3
    best = min(records, key=lambda r: r["metrics/fid"])
    state = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert state["iteration"] == best["iteration"]
    assert state["best_fid"] == pytest.approx(best["metrics/fid"])


def test_sngan_eval_prints_one_json_line(evaluated_run, weights):
    ckpt = evaluated_run / "checkpoints" / "latest.pt"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "sngan-eval"),
            f"checkpoint={ckpt}",
            "metrics.protocol=standard",
            "metrics.num_samples=10",
            "metrics.batch_size=10",
            f"metrics.inception_weights={weights}",
            f"metrics.cache_dir={evaluated_run / 'fidelity-cache'}",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["iteration"] == 4 and record["protocol"] == "standard"
    assert record["metrics/num_fake"] == 10 and record["metrics/num_real"] == 64
    assert record["generator"] == "G_ema"
    for key in ("metrics/fid", "metrics/is", "metrics/is_std"):
        assert math.isfinite(record[key])
    assert torch.load(ckpt, weights_only=True)["iteration"] == 4
