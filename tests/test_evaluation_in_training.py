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


def test_every_evaluation_is_logged_and_recorded(evaluated_run):
    records = [json.loads(x) for x in (evaluated_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4]
    for r in records:
        assert r["protocol"] == "standard" and r["metrics/num_fake"] == 10
        for key in ("metrics/fid", "metrics/is", "metrics/is_std", "perf/eval_s"):
            assert math.isfinite(r[key]), key
    acc = read_events(evaluated_run)
    logged = {e.step: e.value for e in acc.Scalars("metrics/fid")}
    assert logged == pytest.approx({r["iteration"]: r["metrics/fid"] for r in records})
    assert "perf/eval_s" in acc.Tags()["scalars"]


def test_best_checkpoint_follows_the_lowest_fid(evaluated_run):
    records = [json.loads(x) for x in (evaluated_run / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["metrics/fid"])
    state = checkpoint.load(evaluated_run / "checkpoints" / "best.pt")
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
