"""benchmarks/compare_precision.py: its comparison rule on hand-made curves, and --quick end to end.

The end-to-end test trains three tiny runs, one of them through torch.compile: about 40 s on two
idle cores with an empty inductor cache, minutes on a busy machine, hence ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
TAGS = ["loss/d", "loss/g", "d/real", "d/fake"]
RUNS = ["fp32", "bf16", "fp32_seed"]


@pytest.fixture
def script():
    """benchmarks/compare_precision.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "compare_precision", BENCHMARKS / "compare_precision.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_window_means_and_pair_statistics_by_hand(script) -> None:
    assert script.window_means([1, 2, 3, 4, 5, 6, 7], 3) == [2, 5]  # the partial window is dropped
    a, b = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 4.5]
    c = script.compare(a, b)
    assert c["windows"] == 4 and c["diff"] == [-0.5, 0.0, 1.0, -0.5]
    assert c["mean_abs_diff"] == 0.5 and c["max_abs_diff"] == 1.0 and c["final_diff"] == -0.5
    # Pearson r by hand: centred a = (-1.5, -.5, .5, 1.5), centred b = (-1, -.5, -.5, 2).
    assert math.isclose(c["r"], 4.5 / math.sqrt(5.0 * 5.5))
    assert script.compare([1.0, 2.0, 3.0], [1.0, 2.0])["windows"] == 2  # a run cut short
    assert math.isnan(script.compare([1.0, 1.0], [1.0, 2.0])["r"])  # a constant curve


def test_the_rule_passes_within_the_baseline_and_fails_outside_it(script) -> None:
    base = {"r": 0.8, "mean_abs_diff": 0.10, "max_abs_diff": 0.40, "final_diff": 0.05}
    inside = {"r": 0.71, "mean_abs_diff": 0.15, "max_abs_diff": 0.60, "final_diff": -0.40}
    assert script.R_TOL == 0.1 and script.MARGIN == 1.5
    assert all(script.tag_verdict(inside, base).values())
    outside = {"r": 0.69, "mean_abs_diff": 0.16, "max_abs_diff": 0.61, "final_diff": -0.41}
    assert not any(script.tag_verdict(outside, base).values())
    assert not script.tag_verdict({**inside, "r": math.nan}, base)["r"]
    assert not script.tag_verdict(inside, {**base, "r": math.nan})["r"]


@pytest.mark.slow
def test_quick_writes_curves_comparisons_and_a_verdict_by_the_rule(
    real_slice: Path, tmp_path: Path
) -> None:
    out = tmp_path / "precision.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "compare_precision.py"),
            "--quick",
            "--threads",
            "1",
            "--data-root",
            str(real_slice / "train"),
            "--workdir",
            str(tmp_path / "runs"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())

    m = data["machine"]
    assert m["torch"] == torch.__version__ and m["torch_threads"] == 1 and m["date"]
    assert len(m["git_commit"]) == 40 and isinstance(m["sngan_uncommitted"], list)
    s = data["settings"]
    assert s["quick"] and s["model"] == "dcgan" and s["preset"] == "experiment=sngan_dcgan"
    assert s["tags"] == TAGS
    assert "data=folder" in s["overrides"] and "log_every=1" in s["overrides"]
    assert "metrics.enabled=false" in s["overrides"]
    n, window = s["iterations"], s["window"]

    # Three runs: fp32 and bf16 + compile from one seed, fp32 from another.
    runs = data["runs"]
    assert list(runs) == RUNS
    assert [runs[r]["seed"] for r in RUNS] == [0, 0, 1]
    assert [(runs[r]["amp"], runs[r]["compile"]) for r in RUNS] == [
        (False, False),
        (True, True),
        (False, False),
    ]
    # The three configs differ only in the seed and the two switches under test.
    configs = [dict(runs[r]["config"]) for r in RUNS]
    for cfg in configs:
        assert cfg["iterations"] == n and cfg["log_every"] == 1 and cfg["device"] == "cpu"
        assert cfg["model"]["name"] == "dcgan" and cfg["data"]["source"] == "folder"
        for key in ("seed", "amp", "compile"):
            cfg.pop(key)
    assert configs[0] == configs[1] == configs[2]
    for name in RUNS:
        r = runs[name]
        assert r["error"] is None and r["finite"]
        assert r["iterations_logged"] == n == len(r["s_per_it"])
        assert all(t > 0 and math.isfinite(t) for t in r["s_per_it"])
        assert (Path(r["run_dir"]) / "tb").is_dir()
        for tag in TAGS:
            curve = r["curves"][tag]
            assert len(curve) == n and all(math.isfinite(v) for v in curve)
            # Window means are the means of the logged values, window by window.
            means = data["window_means"][name][tag]
            assert len(means) == n // window
            assert math.isclose(means[0], sum(curve[:window]) / window, rel_tol=1e-12)
    # Same seed, same initial networks and batches: the first logged losses nearly agree.
    first = {r: runs[r]["curves"]["loss/d"][0] for r in RUNS}
    assert abs(first["bf16"] - first["fp32"]) < 0.01
    assert math.isclose(runs["fp32"]["curves"]["loss/d"][0], math.log(4), abs_tol=0.1)

    # The verdict follows the rule stated in the JSON, recomputed here from its numbers.
    rule = data["rule"]
    c = data["comparisons"]
    expected = all(r["error"] is None and r["finite"] for r in runs.values())
    for tag in TAGS:
        test, base = c["bf16_vs_fp32"][tag], c["fp32_vs_fp32_seed"][tag]
        for pair in (test, base):
            assert all(math.isfinite(pair[k]) for k in ("r", "mean_abs_diff", "max_abs_diff"))
            assert pair["windows"] == n // window == len(pair["diff"])
            assert math.isclose(pair["max_abs_diff"], max(abs(d) for d in pair["diff"]))
            assert math.isclose(pair["final_diff"], pair["diff"][-1])
        a, b = data["window_means"]["bf16"][tag], data["window_means"]["fp32"][tag]
        assert math.isclose(test["final_diff"], a[-1] - b[-1], abs_tol=1e-12)
        ok = {
            "r": test["r"] >= base["r"] - rule["r_tol"],
            "mean_abs_diff": test["mean_abs_diff"] <= rule["margin"] * base["mean_abs_diff"],
            "max_abs_diff": test["max_abs_diff"] <= rule["margin"] * base["max_abs_diff"],
            "final_diff": abs(test["final_diff"]) <= base["max_abs_diff"],
        }
        assert data["checks"][tag] == ok
        expected = expected and all(ok.values())
    assert isinstance(data["verdict"]["same_shape"], bool)
    assert data["verdict"]["same_shape"] == expected
    assert math.isclose(
        data["speedup_bf16_compile"],
        runs["fp32"]["median_s_per_it"] / runs["bf16"]["median_s_per_it"],
    )
    assert "verdict:" in proc.stdout and "speedup" in proc.stdout
