"""The training loop, run in-process on the tiny config: logs, checkpoints, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sngan import checkpoint
from sngan.config import ConfigError
from sngan.spectral_norm import sigmas
from sngan.train import build_networks, train


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def images(run_dir) -> list[str]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def test_a_run_writes_logs_samples_and_checkpoints(tmp_path, tiny_config):
    cfg = tiny_config()
    last = train(cfg, tmp_path)
    tags = scalars(tmp_path)
    for tag in (
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
    ):
        assert [s for s, _ in tags[tag]] == [1, 2, 3, 4], tag
    G, D = build_networks(cfg)
    sn_layers = sorted(sigmas(D))
    assert len(sn_layers) == 8  # the standard CNN's 7 convs + 1 linear
    for layer in sn_layers:
        assert f"sigma/{layer}" in tags and f"sigma_exact/{layer}" in tags
    # linear decay: lr after iteration i is lr0 * (1 - i / iterations)
    assert [v for _, v in tags["lr/g"]] == pytest.approx([2e-4 * (1 - i / 4) for i in (1, 2, 3, 4)])
    assert sorted(images(tmp_path)) == ["samples/G", "samples/G_ema"]
    assert (tmp_path / "samples" / "G_ema_0000004.png").is_file()
    state = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")
    assert state["iteration"] == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == [
        "ckpt_0000002.pt",
        "ckpt_0000004.pt",
        "latest.pt",
    ]
    assert last["loss/d"] == pytest.approx(tags["loss/d"][-1][1])


def test_logged_sigmas_against_the_svd_of_the_saved_weights(tmp_path, tiny_config):
    train(tiny_config(), tmp_path)
    tags = scalars(tmp_path)
    D = checkpoint.load(tmp_path / "checkpoints" / "latest.pt")["D"]
    exact = [t for t in tags if t.startswith("sigma_exact/")]
    assert len(exact) == 8
    for tag in exact:
        layer = tag.removeprefix("sigma_exact/")
        w = D[layer + "_orig"]
        svd = torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0].item()
        assert tags[tag][-1] == (4, pytest.approx(svd, rel=1e-5))
        # The estimate lags by the last Adam steps (one power iteration per forward).
        assert tags["sigma/" + layer][-1][1] == pytest.approx(svd, rel=0.1)


def _weights(path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(path)
    return {f"{k}.{n}": t for k in ("G", "D", "G_ema") for n, t in state[k].items()}


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_config):
    full = tmp_path / "full"
    train(tiny_config("iterations=6"), full)
    part = tmp_path / "part"
    train(tiny_config("iterations=6", "checkpoint_every=3"), part)  # snapshots at 3 and 6
    # Pretend it was killed after iteration 3: keep only that snapshot, then resume.
    for p in (part / "checkpoints").glob("*.pt"):
        if p.name != "ckpt_0000003.pt":
            p.unlink()
    train(tiny_config("iterations=6", "checkpoint_every=3", f"resume={part}"), part)
    a, b = (
        _weights(full / "checkpoints" / "latest.pt"),
        _weights(part / "checkpoints" / "latest.pt"),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The TensorBoard curves continue without duplicated steps.
    steps = [s for s, _ in scalars(part)["loss/d"]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_of_another_architecture_is_refused(tmp_path, tiny_config):
    train(tiny_config("iterations=2"), tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="was saved by model"):
        train(
            tiny_config(
                "iterations=4",
                "model=resnet",
                "model.g_channels=8",
                "model.d_channels=8",
                f"resume={tmp_path}",
            ),
            tmp_path,
        )


def test_metrics_jsonl_is_truncated_on_resume(tmp_path, tiny_config):
    train(tiny_config("iterations=2"), tmp_path)
    lines = [{"iteration": i, "metrics/fid": 1.0} for i in (2, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    train(tiny_config("iterations=3", f"resume={tmp_path}"), tmp_path)
    kept = [
        json.loads(x)["iteration"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert kept == [2]


def test_cuda_request_without_cuda_fails_clearly(tmp_path, tiny_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device='cuda' is not valid: torch.cuda.is_available"):
        train(tiny_config("device=cuda"), tmp_path)


def test_conditional_resnet_trains(tmp_path, tiny_config):
    cfg = tiny_config(
        "model=resnet",
        "model.g_channels=16",
        "model.d_channels=16",
        "model.num_classes=10",
        "iterations=2",
    )
    last = train(cfg, tmp_path)
    assert torch.isfinite(torch.tensor(last["loss/d"]))
