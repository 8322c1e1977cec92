"""The training loop, run in-process on the tiny config: logs, checkpoints, exact resume."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext

import pytest
import torch
from conftest import read_events, scalars

from sngan import checkpoint
from sngan.build import FastPaths, build_networks, build_train_state, training_images
from sngan.config import ConfigError
from sngan.losses import get_loss
from sngan.spectral_norm import _SpectralNormMixin, sigmas
from sngan.train import d_step, generator_iteration, train


def images(run_dir) -> list[str]:
    return read_events(run_dir).Tags()["images"]


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


def test_fast_paths_default_per_device_and_follow_the_config(tiny_config):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert FastPaths.resolve(tiny_config(), cpu) == FastPaths(False, False, True, False, False)
    assert FastPaths.resolve(tiny_config(), cuda) == FastPaths(True, True, True, True, True)
    cfg = tiny_config("amp=true", "joint_d_forward=true", "channels_last=false")
    assert FastPaths.resolve(cfg, cpu) == FastPaths(True, False, False, False, True)
    assert FastPaths.resolve(cfg, cuda) == FastPaths(True, True, False, True, True)


@pytest.mark.parametrize("conditional", [False, True])
def test_joint_and_separate_d_forwards_make_the_same_update(tiny_config, conditional, monkeypatch):
    """One D forward of real+fake (GPU default) and two forwards (CPU default) are one update:
    the same loss, the same new weights and u, v; the power iteration runs once per layer."""
    extra = ["model=resnet", "model.num_classes=3"] if conditional else []
    cfg = tiny_config(*extra)
    G, D = build_networks(cfg)
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1
    real_y = torch.randint(0, 3, (8,), generator=gen)
    z = torch.randn(8, cfg.model.z_dim, generator=gen)
    fake_y = torch.randint(0, 3, (8,), generator=gen) if conditional else None
    d_loss = get_loss(cfg.loss.name)[0]
    calls: list[str] = []
    power_iteration = _SpectralNormMixin._sn_power_iteration

    def counting(self, name, n):
        calls.append(name)
        return power_iteration(self, name, n)

    monkeypatch.setattr(_SpectralNormMixin, "_sn_power_iteration", counting)
    results = {}
    for joint in (True, False):
        G_copy, D_copy = copy.deepcopy(G).train(), copy.deepcopy(D).train()
        # SGD: Adam's first step is lr * sign(grad), which float noise flips where grad ~ 0.
        opt = torch.optim.SGD(D_copy.parameters(), lr=0.1)
        calls.clear()
        stats = d_step(
            G_copy, D_copy, opt, d_loss, real, real_y, z, fake_y, nullcontext(), lambda _: True,
            joint=joint,
        )  # fmt: skip
        assert len(calls) == len(sigmas(D)), joint  # once per normalised weight
        results[joint] = (stats, D_copy.state_dict())
    (joint_stats, joint_state), (sep_stats, sep_state) = results[True], results[False]
    for key in ("loss/d", "d/real", "d/fake"):
        torch.testing.assert_close(joint_stats[key], sep_stats[key], rtol=1e-5, atol=1e-6)
    before = D.state_dict()
    for key, value in joint_state.items():
        torch.testing.assert_close(value, sep_state[key], rtol=1e-5, atol=1e-6, msg=key)
        if key.endswith("weight_orig"):  # the step did update D
            assert not torch.equal(value, before[key]), key


def test_threads_sets_torchs_cpu_threads(tmp_path, tiny_config):
    before = torch.get_num_threads()
    try:
        train(tiny_config("threads=1", "iterations=1"), tmp_path / "run")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match=r"threads=0 is not valid: must be an integer >= 1"):
        train(tiny_config("threads=0"), tmp_path / "bad")


def test_compile_mode_is_checked(tmp_path, tiny_config):
    with pytest.raises(
        ConfigError,
        match=r"compile_mode='fast' is not valid: choose one of "
        r"default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    ):
        train(tiny_config("compile_mode=fast"), tmp_path / "bad")


def test_with_fused_adam_an_iteration_reads_no_tensor_on_the_host(tiny_config, monkeypatch):
    """The CPU stand-in for the GPU test below: with fused Adam, no Python code in the
    iteration turns a tensor into a Python value (each such call waits for a GPU)."""
    cfg = tiny_config("fused_adam=true", "data.num_images=512")
    images, labels = training_images(cfg)
    step = build_train_state(cfg, images, labels, torch.device("cpu"))
    generator_iteration(step, 0)
    reads = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, method)

        def spy(self, *args, _original=original, _method=method):
            reads.append(_method)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, method, spy)
    for it in range(1, 4):
        generator_iteration(step, it)
    monkeypatch.undo()
    assert reads == []
    assert step.guard.report() is None  # and reading back afterwards still works


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [(), ("nan_policy=skip", "compile=false")])
def test_generator_iterations_do_not_wait_for_the_gpu(tiny_config, overrides):
    """Issue 6: no host sync inside the loop. With CUDA's defaults (fused Adam: the NaN/inf
    check stays on the device) torch raises at the first synchronising call."""
    cfg = tiny_config("device=cuda", "data.num_images=512", *overrides)
    device = torch.device("cuda")
    images, labels = training_images(cfg)
    step = build_train_state(cfg, images, labels, device)
    assert step.guard.on_device

    for it in range(2):  # compilation and cuDNN autotuning may synchronise
        generator_iteration(step, it)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in range(2, 8):  # 8 x 2 D steps x 8 images: no new epoch (randperm may sync)
            generator_iteration(step, it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.guard.report() is None
