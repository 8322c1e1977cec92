"""benchmarks/bench_eval.py --quick on the CPU: every stage timed, the real metrics code, no target.

One subprocess, as a user runs it (step 5 of scripts/gpu_check.sh --cpu-smoke, which the
session runs once): 12 generated and 12 reference images through the paper's ResNet G and
Inception at one thread. Times are checked for being there and sane, not for their values.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from sngan.build import FastPaths
from sngan.config import ModelConfig, TrainConfig

NUM = 12  # --quick: generated and reference images
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
def quick(gpu_check_smoke) -> tuple[dict, str]:
    """gpu_check.sh --cpu-smoke's step 5: `bench_eval.py --quick --device cpu --threads 1 --json`
    (the one run of it in the suite), its JSON and its printed report."""
    _, out, _ = gpu_check_smoke
    return json.loads((out / "5_bench_eval.json").read_text()), (
        out / "5_bench_eval.log"
    ).read_text()


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
