"""scripts/bench_eval.py --quick on the CPU: every stage timed, the real metrics code, no target.

One subprocess, as a user runs it: 50 generated and 50 reference images through the paper's
ResNet G and Inception at one thread (about 40 s on two idle cores). Times are checked for being
there and sane, not for their values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from conftest import REPO_ROOT

from sngan.build import FastPaths
from sngan.config import ModelConfig, TrainConfig

NUM = 50  # --quick: generated and reference images
STAGES = {"generation", "first_evaluation", "cached_evaluation", "fid_cpu"}


def resnet_g_gflop(z_dim: int, ch: int, bottom: int) -> float:
    """Forward GFLOPs (2 per multiply-add) of the Table 4 ResNet G, counted by hand."""
    flop = 2 * z_dim * ch * bottom**2  # linear z -> (ch, bottom, bottom)
    for r in (2 * bottom, 4 * bottom, 8 * bottom):  # three up-blocks, output r x r
        flop += 2 * (2 * 9 * ch * ch * r * r)  # two 3x3 convs
        flop += 2 * ch * ch * r * r  # 1x1 shortcut conv after the upsample
    flop += 2 * 9 * ch * 3 * (8 * bottom) ** 2  # final 3x3 conv to RGB
    return flop / 1e9


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench_eval") / "eval.json"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_eval.py"), "--quick"]
    cmd += ["--device", "cpu", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def positive_seconds(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_quick_times_every_stage(quick):
    data, stdout = quick
    m, s = data["machine"], data["settings"]
    assert m["torch"] == torch.__version__ and m["torch_fidelity"]
    assert m["torch_threads"] == 1 and "--quick" in m["command"]
    # --threads reaches numpy's BLAS, where FID's np.cov and eigvals run.
    assert set(m["blas_env"].values()) == {"1"}
    assert (s["device"], s["num_samples"], s["num_real"], s["quick"]) == ("cpu", NUM, NUM, True)
    assert s["model"] == asdict(ModelConfig()) and s["model"]["name"] == "resnet"
    # G_ema laid out as train() lays it out on the CPU with the default config.
    assert s["channels_last"] == FastPaths.resolve(TrainConfig(), torch.device("cpu")).channels_last

    st = data["stages"]
    assert set(st) == STAGES
    assert st["generation"]["images"] == NUM
    for name in ("generation", "first_evaluation", "cached_evaluation"):
        assert positive_seconds(st[name]["seconds"]), name
        assert st[name]["images_per_s"] == pytest.approx(NUM / st[name]["seconds"])
        assert st[name]["rss_peak_mib"] >= st[name]["rss_start_mib"] > 0  # CPU: resident set
        assert "gpu_peak_allocated_mib" not in st[name]
    assert all(positive_seconds(t) for t in st["cached_evaluation"]["runs_s"])
    f = st["fid_cpu"]
    assert f["sqrt_shape"] == [2048, 2048] and f["statistics_shape"] == [NUM, 2048]
    assert positive_seconds(f["statistics_s"]) and positive_seconds(f["sqrt_s"])
    assert math.isfinite(f["sqrt_fid_of_random_covariances"])

    # The one number the target is about exists only for 50,000 samples on CUDA.
    assert data["target_s"] == 60 and data["target_met"] is None
    assert "(c) evaluation, ref cached" in stdout and "n/a" in stdout.splitlines()[-2]


def test_quick_runs_the_real_evaluation_and_its_cache(quick):
    data, _ = quick
    first, cached = data["stages"]["first_evaluation"], data["stages"]["cached_evaluation"]
    for result in (first["metrics"], cached["metrics"]):
        assert all(math.isfinite(v) for v in result.values())
        assert result["metrics/is"] >= 1.0  # exp of a mean KL divergence
        assert result["metrics/fid"] >= -1e-6
        counts = (result["metrics/num_fake"], result["metrics/num_fake_is"])
        assert counts + (result["metrics/num_real"],) == (NUM, NUM, NUM)
    # Same G, seed and reference: the cached statistics give the same numbers.
    assert cached["metrics"] == pytest.approx(first["metrics"], rel=1e-6)

    # Only the first evaluation pushed the reference through Inception; both generated once.
    assert first["breakdown_missing"] == [] and cached["breakdown_missing"] == []
    assert first["breakdown_calls"]["reference_features"] == 1
    assert "reference_features" not in cached["breakdown_calls"]
    assert "cache_write" not in cached["breakdown_calls"]
    for stage in (first, cached):
        assert stage["breakdown_calls"]["generated_features"] == 1
        assert stage["breakdown_calls"]["fid_sqrt"] == 1
        # Exclusive times of nested parts never add up to more than the whole.
        parts = stage["breakdown_s"]
        assert all(v >= 0 for k, v in parts.items() if k != "other")
        assert parts["other"] >= -1e-3
        assert sum(parts.values()) == pytest.approx(stage["seconds"])
    names = data["cache_files_after_first_evaluation"]
    assert any(n.endswith("-stat-fid-2048.pt") for n in names)
    assert any(n.endswith("-features-2048.pt") for n in names)


def test_quick_counts_flops_of_the_real_networks(quick):
    g = quick[0]["gflops"]
    cfg = ModelConfig()
    # The published ResNet G at 32x32 (null widths): 256 channels from a 4x4 bottom.
    expected = resnet_g_gflop(cfg.z_dim, 256, 4)
    assert g["generator_gflop_per_image"] == pytest.approx(expected, rel=1e-9)
    # torchvision lists Inception-v3 at 299x299 as 5.71 G multiply-adds.
    assert g["inception_gflop_per_image"] == pytest.approx(2 * 5.71, rel=0.01)
