"""Every resolution the paper used, and users' own folders: the real CLI end to end at 48 and 64
pixels, and the sizes that cannot work refused in one line before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from PIL import Image

from sngan import checkpoint
from sngan.cli import sample_main, train_main

BIN = Path(sys.executable).parent
# TINY without its data, model and length: the sweeps below set those.
BASE = [
    o
    for o in TINY
    if not o.startswith(
        ("data=", "data.num_images", "model=", "model.g_", "model.d_", "iterations")
    )
]
SMALL = ["model.g_channels=32", "model.d_channels=32", "iterations=4", "sample_every=4"]


def padded(size: int, n: int = 8) -> int:
    """The side of an n-wide make_grid of size x size tiles (2-pixel padding)."""
    return n * size + (n + 1) * 2


def sngan_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "sngan-train"), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Your own images: 16 non-square 80x60 PNGs in two class folders."""
    root = tmp_path_factory.mktemp("folder")
    gen = torch.Generator().manual_seed(0)
    for i in range(16):
        pixels = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8, generator=gen).numpy()
        (root / f"class{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / f"class{i % 2}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, image_folder) -> dict[tuple[str, str, int], Path]:
    """Both architectures at 48 and 64 on synthetic data, and at 48 on a folder: trained to 4
    iterations, then all resumed together to 6. {(model, data, size): run directory}."""
    tmp = tmp_path_factory.mktemp("sizes")
    synthetic, folder = tmp / "synthetic", tmp / "folder"
    sweep = ["-m", *BASE, *SMALL, "model=resnet,dcgan"]
    sngan_train(
        *sweep, "data=synthetic", "data.num_images=16", "data.image_size=48,64",
        f"hydra.sweep.dir={synthetic}", cwd=tmp,
    )  # fmt: skip
    sngan_train(
        *sweep, "data=folder", f"data.root={image_folder}", "data.image_size=48",
        f"hydra.sweep.dir={folder}", cwd=tmp,
    )  # fmt: skip
    runs = {}
    for sweep_dir, data in ((synthetic, "synthetic"), (folder, "folder")):
        for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
            cfg = checkpoint.load(run_dir / "checkpoints" / "latest.pt")["config"]
            runs[(cfg["model"]["name"], data, cfg["data"]["image_size"])] = run_dir
    resumes = ",".join(str(d) for d in runs.values())
    sngan_train("-m", f"resume={resumes}", "iterations=6", f"hydra.sweep.dir={tmp / 'r'}", cwd=tmp)
    return runs


def test_every_architecture_trains_at_48_and_64_and_on_a_folder(sweeps):
    assert set(sweeps) == {(m, "synthetic", s) for m in ("resnet", "dcgan") for s in (48, 64)} | {
        ("resnet", "folder", 48),
        ("dcgan", "folder", 48),
    }
    for (model, _, size), run_dir in sweeps.items():
        grid = Image.open(run_dir / "samples" / "G_ema_0000004.png")
        assert grid.size == (padded(size), padded(size)), (model, size)  # tiles of that size
        state = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
        # The resume continued the run in its own directory, to the new iteration count.
        assert state["iteration"] == state["config"]["iterations"] == 6, run_dir
        assert (run_dir / "samples" / "G_ema_0000006.png").is_file()


def test_the_published_widths_follow_the_image_size(tmp_path):
    from conftest import compose_config

    cfg = compose_config("experiment=sngan_stl10_resnet", tiny=False)
    assert (cfg.data.source, cfg.data.image_size) == ("stl10", 48)
    assert (cfg.model.g_channels, cfg.model.d_channels) == (512, 1024)  # the paper's STL-10 table
    dcgan = compose_config("experiment=sngan_stl10_dcgan", tiny=False)
    assert (dcgan.model.name, dcgan.data.image_size, dcgan.model.g_channels) == ("dcgan", 48, 512)
    assert (dcgan.optim.n_dis, dcgan.optim.betas, dcgan.loss.name) == (
        1,
        (0.5, 0.999),
        "nonsaturating",
    )


def test_sngan_sample_writes_images_of_the_runs_size(sweeps, tmp_path):
    for (model, data, size), run_dir in sweeps.items():
        out = tmp_path / f"{model}-{data}-{size}"
        ckpt = run_dir / "checkpoints" / "latest.pt"
        sample_main([f"checkpoint={ckpt}", "n=3", f"out={out}", "device=cpu"])
        files = sorted(out.glob("*.png"))
        assert len(files) == 3 and {Image.open(f).size for f in files} == {(size, size)}


def cli_error(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    with pytest.raises(SystemExit) as exit_:
        train_main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("sngan-train: error: ").rstrip("\n")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data=synthetic", "data.image_size=40"],
            "data.image_size=40 is not valid: model.name=resnet is built for 32, 48, 64, 128 "
            "pixels",
        ),
        (
            ["data=synthetic", "data.image_size=44", "model=dcgan"],
            "data.image_size=44 is not valid: model.name=dcgan is built for 8, 16, 24, 32, 40, 48, "
            "56, 64, 72, 80, 88, 96, 104, 112, 120, 128 pixels",
        ),
        (
            ["data=cifar10", "data.image_size=64"],
            "data.image_size=64 is not valid: CIFAR-10's images are 32x32 (data=stl10 or "
            "data=folder resize images to other sizes)",
        ),
        (
            ["data=synthetic", "data.image_size=48", "model.d_channels=24"],
            "model.d_channels=24 is not valid: channels must be a multiple of 16 for the ResNet D "
            "at image_size 48 (its stage widths are channels /16, /8, /4, /2, /1), got 24 "
            "(model.name=resnet, data.image_size=48)",
        ),
        (
            ["data=synthetic", "model.d_widths=chainer"],
            "model.d_widths='chainer' is not valid: choose paper for model.name=resnet",
        ),
        (
            ["data=stl10", "model.num_classes=10"],
            "model.num_classes=10 is not valid: data.source=stl10 has unlabeled images (label -1): "
            "a conditional model cannot train on it",
        ),
        (
            ["model.bottom_width=3"],
            "unknown config key 'model.bottom_width': model has name, z_dim, g_channels, "
            "d_channels, d_widths, num_classes, conditioning",
        ),
    ],
)
def test_sizes_that_cannot_work_fail_in_one_line_before_a_run_directory(
    overrides, message, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    err = cli_error(monkeypatch, capsys, *BASE, *overrides, f"hydra.run.dir={run_dir}")
    assert err == message
    assert not run_dir.exists()


def test_a_conditional_model_needs_labels_the_data_has(tmp_path, monkeypatch, capsys):
    # The data's labels are known once it is loaded: before any network is built.
    run_dir = tmp_path / "run"
    args = [*BASE, "data=synthetic", "data.num_images=16", "model.num_classes=3"]
    err = cli_error(monkeypatch, capsys, *args, f"hydra.run.dir={run_dir}")
    assert err == (
        "model.num_classes=3 is not valid for this data: its labels run from 0 to 9 (a "
        "conditional model needs labels 0..num_classes-1)"
    )
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tb").exists()
