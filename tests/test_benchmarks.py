"""benchmarks/: the harnesses run with tiny settings and write their JSON (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from torch.nn.utils import parametrize

from sngan.benchmarking import swap_spectral_norm
from sngan.models import DCGANDiscriminator, ResNetDiscriminator
from sngan.spectral_norm import is_spectral_normalized

BENCHMARKS = REPO_ROOT / "benchmarks"
# One torch thread: these share a small CPU with other test processes.
TINY_SN = ["--batch-size", "2", "--repeats", "2", "--warmup", "1", "--threads", "1"]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_machine(machine: dict) -> None:
    for key in ("device", "device_name", "cpu", "cpu_count", "torch_threads", "torch", "date"):
        assert key in machine, key
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] == 1
    assert "--threads 1" in machine["command"]


@pytest.mark.parametrize("D_cls", [DCGANDiscriminator, ResNetDiscriminator])
def test_variants_normalise_the_same_layers(D_cls):
    layers = lambda D: [n for n, m in D.named_modules() if is_spectral_normalized(m)]  # noqa: E731
    sn_names = layers(D_cls(channels=8))
    assert sn_names  # every conv and the linear layer

    none = swap_spectral_norm(D_cls(channels=8), "none")
    assert layers(none) == []
    assert not any(parametrize.is_parametrized(m) for m in none.modules())

    theirs = swap_spectral_norm(D_cls(channels=8), "torch")
    assert layers(theirs) == []
    parametrized = [
        n for n, m in theirs.named_modules() if parametrize.is_parametrized(m, "weight")
    ]
    assert parametrized == sn_names
    # Same networks: the same parameter count once torch's "original" stands for our weight_orig.
    ours = D_cls(channels=8)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    with pytest.raises(ValueError, match="unknown variant"):
        swap_spectral_norm(ours, "legacy")


def test_bench_spectral_norm_writes_json(tmp_path):
    out = tmp_path / "sn.json"
    proc = run_script("bench_spectral_norm.py", *TINY_SN, "--device", "cpu", "--json", str(out))
    assert "ours/none" in proc.stdout
    data = json.loads(out.read_text())
    check_machine(data["machine"])
    assert data["settings"]["batch_size"] == 2
    assert set(data["results"]) == {"dcgan", "resnet"}
    for result in data["results"].values():
        assert set(result["ms"]) == {"none", "ours", "torch"}
        for stats in result["ms"].values():
            assert stats["n"] == 2
            assert 0 < stats["min"] <= stats["median"] <= stats["max"]
        assert set(result["ratio"]) == {"ours/none", "ours/torch"}
        assert set(result["target_met"]) == {"ours/none", "ours/torch"}
        # The ratios are paired per round, from the raw times written alongside.
        raw = result["raw_s"]
        pairs = sorted(a / b for a, b in zip(raw["ours"], raw["none"], strict=True))
        assert result["ratio"]["ours/none"]["min"] == pytest.approx(pairs[0])


def test_benchmark_quick_writes_json(gpu_check_smoke):
    # gpu_check.sh --cpu-smoke's step 4 ran `benchmark.py --quick --threads 1 --device cpu --json`.
    _, out, _ = gpu_check_smoke
    assert "speedup ref/ours" in (out / "4_benchmark.log").read_text()
    data = json.loads((out / "4_benchmark.json").read_text())
    check_machine(data["machine"])
    assert data["settings"]["quick"] is True
    # train()'s defaults on the CPU: channels_last, none of the other CUDA fast paths.
    assert data["settings"]["fast_paths"] == {
        "amp": False,
        "compile": False,
        "channels_last": True,
        "fused_adam": False,
        "joint_d_forward": False,
    }
    assert set(data["results"]) == {"resnet", "dcgan"}
    for model, n_dis in (("resnet", 5), ("dcgan", 1)):
        r = data["results"][model]
        assert r["config"]["n_dis"] == n_dis  # the official preset, only shrunk in width/batch
        assert r["images_per_iteration"] == 2 * n_dis * 4 + 8
        assert set(r["variants"]) == {"ours", "reference"}
        for v in r["variants"].values():
            assert v["ms_per_iteration"]["n"] == 2
            for key in ("images_per_s", "gflop_per_iteration", "tflop_per_s", "first_iteration_s"):
                assert v[key] > 0, key
            assert "peak_memory_mib" in v
        # The reference also computes D's weight gradients in the G step: more FLOPs.
        ours, ref = r["variants"]["ours"], r["variants"]["reference"]
        assert ref["gflop_per_iteration"] > ours["gflop_per_iteration"]
        assert r["speedup_vs_reference"]["n"] == 2
        assert isinstance(r["cpu_target_met"], bool)
