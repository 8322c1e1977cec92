"""benchmarks/compare_bn_stats.py: its distances by hand, and --quick end to end on the real slice.

The --quick run trains two tiny runs of 10 iterations (EMA from iteration 5, a checkpoint every
5) and evaluates four checkpoints: about 30 s of CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image

from sngan.checkpoint import load as load_checkpoint

DECAYS = ["0.9999", "0.999"]
GENERATORS = ["G", "G_ema_copy", "G_ema_recompute"]
DISTANCES = ["rel_mean", "rel_var", "max_z_mean", "max_log_var"]
DCGAN_NORMS = ["bn_in", "bns.0", "bns.1", "bns.2"]


@pytest.fixture(scope="module")
def script():
    """benchmarks/compare_bn_stats.py as a module."""
    path = REPO_ROOT / "benchmarks" / "compare_bn_stats.py"
    spec = importlib.util.spec_from_file_location("compare_bn_stats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(real_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One --quick run in a subprocess: its JSON, stdout, picture and run directories."""
    tmp = tmp_path_factory.mktemp("bn_stats")
    out, image = tmp / "bn.json", tmp / "bn.png"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "xdg-cache")}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "compare_bn_stats.py"),
            "--quick",
            "--data-root",
            str(real_slice),
            "--workdir",
            str(tmp / "runs"),
            "--json",
            str(out),
            "--image",
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data": json.loads(out.read_text()), "stdout": proc.stdout, "image": image}


def numbers(value: Any) -> list[float]:
    """Every int and float inside ``value`` (bools excluded)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


def test_statistics_distance_by_hand(script) -> None:
    d = script.statistics_distance(
        torch.tensor([1.0, 2.0]),  # copied mean
        torch.tensor([4.0, 1.0]),  # copied var
        torch.tensor([1.0, 0.0]),  # own mean, norm 1
        torch.tensor([1.0, 1.0]),  # own var, norm sqrt(2)
        eps=0.0,
    )
    assert math.isclose(d["rel_mean"], 2.0)
    assert math.isclose(d["rel_var"], 3.0 / math.sqrt(2.0))
    assert math.isclose(d["max_z_mean"], 2.0)
    assert math.isclose(d["max_log_var"], math.log(4.0))
    layers = {"a": {"x": 1.0}, "b": {"x": 3.0}, "c": {"x": 2.0}, "d": {"x": 10.0}}
    assert script.summarize_layers(layers) == {"median_x": 2.5, "max_x": 10.0}


def test_random_features_are_fixed_by_the_seed(script) -> None:
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    a, b = script.RandomFeatures(3)(x), script.RandomFeatures(3)(x)
    assert a.shape == (5, 256) and torch.equal(a, b)
    assert not torch.equal(a, script.RandomFeatures(4)(x))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    f = script.features(images, script.RandomFeatures(3))
    pooled = (images.float() / 127.5 - 1).reshape(5, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    assert torch.allclose(f["pixels8"], pooled.flatten(1), atol=1e-6)


def test_quick_json_has_every_field_and_finite_numbers(quick) -> None:
    data = quick["data"]
    m = data["machine"]
    assert m["torch"] == torch.__version__ and m["torch_threads"] == 1 and m["date"]
    assert len(m["git_commit"]) == 40 and data["commands"] == [m["command"]]
    s = data["settings"]
    assert s["quick"] and s["model"] == "dcgan" and s["preset"] == "experiment=sngan_dcgan"
    assert [str(d) for d in s["decays"]] == DECAYS and s["ema_start"] == 5
    for key in ("data=folder", "metrics.enabled=false", "optim.ema_start=5", "device=cpu"):
        assert key in s["overrides"]
    ref = data["reference"]
    assert ref["real_train"]["n"] == ref["real_test"]["n"] == 1000
    assert all(0 < ref["fd_test_vs_train"][k] < 10 for k in ("fd_pixels8", "fd_random_cnn"))
    assert data["same_G_in_every_run"] is True
    assert all(math.isfinite(x) for x in numbers(data))

    assert list(data["runs"]) == DECAYS
    for decay, run in data["runs"].items():
        cfg = run["config"]
        assert str(cfg["optim"]["ema_decay"]) == decay and cfg["optim"]["ema_start"] == 5
        assert cfg["data"]["source"] == "folder" and cfg["metrics"]["enabled"] is False
        assert [c["iteration"] for c in run["checkpoints"]] == [5, 10]
        for c in run["checkpoints"]:
            assert c["copied_statistics_equal_G"] is True  # update_ema copies the buffers
            assert list(c["copy_vs_own"]["layers"]) == DCGAN_NORMS
            assert all(list(v) == DISTANCES for v in c["copy_vs_own"]["layers"].values())
            assert list(c["samples"]) == GENERATORS
            for g in GENERATORS:
                sample = c["samples"][g]
                assert sample["fd_pixels8"] >= 0 and sample["fd_random_cnn"] >= 0
                assert len(sample["channel_mean"]) == len(sample["channel_std"]) == 3
                assert 0 <= sample["saturated"] <= 1
            assert set(c["mean_abs_diff"]) == {"copy_vs_recompute", "G_vs_copy", "G_vs_recompute"}
        last = run["checkpoints"][-1]
        for key in ("G_running_vs_G_own", "own_vs_own_other_seed"):
            assert list(last[key]["layers"]) == DCGAN_NORMS
        assert list(last["samples_other_z"]) == ["G_ema_copy", "G_ema_recompute"]
    assert "same G in every run: True" in quick["stdout"]


def test_before_ema_start_g_ema_is_g_and_after_it_is_an_average(quick) -> None:
    for run in quick["data"]["runs"].values():
        at_start, after = run["checkpoints"]
        # Until ema_start G_ema is a copy of G: the same weights, statistics and samples.
        assert at_start["weight_rel_distance_ema_vs_G"] == 0.0
        assert at_start["mean_abs_diff"]["G_vs_copy"] == 0.0
        assert at_start["samples"]["G"] == at_start["samples"]["G_ema_copy"]
        assert after["weight_rel_distance_ema_vs_G"] > 0.0
        # Own statistics are not the copied ones, so the samples move.
        assert at_start["mean_abs_diff"]["copy_vs_recompute"] > 0.0


def test_copy_vs_own_numbers_match_an_independent_recompute(quick, script) -> None:
    """Own statistics by hand: BN layers normalise with batch statistics, hooks average them."""
    data = quick["data"]
    run = data["runs"]["0.999"]
    c = run["checkpoints"][-1]
    state = load_checkpoint(c["checkpoint"])
    G, _ = script.build_networks(script.saved_config(Path(c["checkpoint"]), state))
    G.load_state_dict(state["G_ema"])
    G.eval()
    norms = script.batchnorms(G)
    sums: dict[str, list[torch.Tensor]] = {n: [torch.zeros(()), torch.zeros(())] for n in norms}

    def hook(name):
        def record(module, inputs):
            x = inputs[0].double()  # (B, C, H, W)
            sums[name][0] = sums[name][0] + x.mean(dim=(0, 2, 3))
            sums[name][1] = sums[name][1] + x.transpose(0, 1).flatten(1).var(dim=1)  # unbiased

        return record

    for name, bn in norms.items():
        bn.register_forward_pre_hook(hook(name))
        bn.train()  # batch statistics for the forward; the running ones are not read here
    st = data["settings"]["standing"]
    gen = torch.Generator().manual_seed(st["seed"])
    with torch.no_grad():
        for _ in range(st["num_batches"]):
            G(torch.randn(st["batch_size"], G.z_dim, generator=gen))
    for name, key in ((n, n) for n in DCGAN_NORMS):
        own_mean, own_var = (t / st["num_batches"] for t in sums[name])
        saved_mean = state["G_ema"][f"{key}.running_mean"].double()
        saved_var = state["G_ema"][f"{key}.running_var"].double()
        eps = norms[name].eps
        expected = {
            "rel_mean": float((saved_mean - own_mean).norm() / own_mean.norm()),
            "rel_var": float((saved_var - own_var).norm() / own_var.norm()),
            "max_z_mean": float(((saved_mean - own_mean).abs() / (own_var + eps).sqrt()).max()),
            "max_log_var": float((saved_var / own_var).log().abs().max()),
        }
        got = c["copy_vs_own"]["layers"][name]
        for k in DISTANCES:
            assert math.isclose(got[k], expected[k], rel_tol=1e-3, abs_tol=1e-6), (name, k)


def test_recompute_on_a_copy_leaves_the_checkpoints_g_ema_bit_identical(quick, script) -> None:
    c = quick["data"]["runs"]["0.9999"]["checkpoints"][-1]
    path = Path(c["checkpoint"])
    first, second = load_checkpoint(path), load_checkpoint(path)
    nets = script.ema_variants(first, path, num_batches=3, batch_size=8, seed=0)
    copied, own = nets["G_ema_copy"].state_dict(), nets["G_ema_recompute"].state_dict()
    assert list(copied) == list(second["G_ema"])
    for key, value in second["G_ema"].items():
        assert torch.equal(copied[key], value), key  # the module the table calls "copy"
        assert torch.equal(first["G_ema"][key], value), key  # the loaded state dict
        if key.endswith(("running_mean", "running_var")):
            assert not torch.equal(own[key], value), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(own[key], value), key  # the recompute changes statistics only
    assert nets["G_ema_copy"].training is False and nets["G_ema_recompute"].training is False


def test_quick_picture_has_five_labelled_panels_of_16(quick) -> None:
    with Image.open(quick["image"]) as img:
        panel = (4 * 34 + 2) * 2  # make_grid: 4 images of 32 + 2 px padding, scaled 2x
        assert img.size == (5 * panel + 4 * 12, panel + 30)
    assert "noise floor" in quick["stdout"]
