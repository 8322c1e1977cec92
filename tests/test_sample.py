"""Sample grids a person looks at: the training grids, sngan-sample's layouts, slerp, its errors.

Every PNG is opened and cut into its tiles, and each tile is compared with G_ema(z, y) computed
here from the checkpoint, with z drawn from the seeded generator the way the docs say.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image

from sngan.cli import sample_main
from sngan.resume import load_generator
from sngan.sample import slerp
from sngan.train import train

SIZE, PAD = 32, 2  # CIFAR-sized tiles; torchvision's make_grid pads by 2 pixels
CLASSES = 10  # data=synthetic has 10 classes: a model with fewer fails on its labels
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    """A tiny class-conditional ResNet run of 2 iterations (checkpoint and grid at 2)."""
    run_dir = tmp_path_factory.mktemp("cond")
    # Conditional BN starts with the same gain and bias for every class, and a class moves only
    # when a G batch holds it: a large learning rate and batches of 64 (every class) make 2
    # steps enough for the classes to look different.
    cfg = compose_config(
        "model=resnet",
        "model.g_channels=16",
        "model.d_channels=16",
        f"model.num_classes={CLASSES}",
        "iterations=2",
        "optim.n_dis=1",
        "optim.g_lr=0.05",
        "optim.g_batch_size=64",
        # The grids are compared with G_ema of the checkpoint as it is: its own statistics.
        "optim.ema_bn_stats=copy",
    )
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory) -> Path:
    """A tiny unconditional standard-CNN run of 2 iterations."""
    run_dir = tmp_path_factory.mktemp("uncond")
    train(compose_config("iterations=2", "optim.n_dis=1", "optim.ema_bn_stats=copy"), run_dir)
    return run_dir


def ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "latest.pt"


def tiles(path: Path, rows: int, cols: int) -> torch.Tensor:
    """A grid PNG as (rows, cols, 3, 32, 32) float tiles, after checking the PNG's size."""
    img = Image.open(path)
    assert img.size == (cols * SIZE + (cols + 1) * PAD, rows * SIZE + (rows + 1) * PAD)
    a = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float()  # (3, H, W)
    out = torch.empty(rows, cols, 3, SIZE, SIZE)
    for r in range(rows):
        for c in range(cols):
            top, left = PAD + r * (SIZE + PAD), PAD + c * (SIZE + PAD)
            out[r, c] = a[:, top : top + SIZE, left : left + SIZE]
    return out


@torch.no_grad()
def pixels(G: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """G(z, y) as (n, 3, 32, 32) float pixel values in [0, 255], not yet rounded."""
    return ((G(z, y).float() + 1) * 127.5).clamp(0, 255)


def assert_same_pixels(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1.0  # the PNG's uint8 rounding


def differ(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute pixel difference of two tiles."""
    return (a - b).abs().mean().item()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def G_ema(run_dir: Path) -> torch.nn.Module:
    return load_generator(ckpt(run_dir), ema=True, device=CPU)[0]


# -- the training grids ---------------------------------------------------------------------------


def test_conditional_training_grid_has_one_class_per_row_and_one_z_per_column(cond_run):
    got = tiles(cond_run / "samples" / "G_ema_0000002.png", CLASSES, 8)
    G = G_ema(cond_run)
    # seed + 2 = 2: 8 z, the same in every row; row c is class c.
    z = torch.randn(8, G.z_dim, generator=generator(2))
    for c in range(CLASSES):
        assert_same_pixels(got[c], pixels(G, z, torch.full((8,), c)))
    for j in range(8):  # a column: one z, the labels differ
        assert min(differ(got[c, j], got[c + 1, j]) for c in range(CLASSES - 1)) > 1.0
    for c in range(CLASSES):  # a row: one label, the z differ
        assert min(differ(got[c, j], got[c, j + 1]) for j in range(7)) > 1.0


def test_unconditional_training_grid_is_8x8_of_64_z(uncond_run):
    got = tiles(uncond_run / "samples" / "G_ema_0000002.png", 8, 8)
    G = G_ema(uncond_run)
    z = torch.randn(64, G.z_dim, generator=generator(2))
    assert_same_pixels(got.flatten(0, 1), pixels(G, z, None))


# -- sngan-sample ---------------------------------------------------------------------------------


def test_class_draws_every_image_with_that_label(cond_run, tmp_path, capsys):
    G = G_ema(cond_run)
    args = [f"checkpoint={ckpt(cond_run)}", "n=4", "seed=5", "device=cpu"]
    sample_main([*args, "class=1", f"out={tmp_path / 'one.png'}"])
    assert "wrote 4 images of iteration 2" in capsys.readouterr().out
    one = tiles(tmp_path / "one.png", 2, 2).flatten(0, 1)
    z = torch.randn(4, G.z_dim, generator=generator(5))  # then 4 labels, replaced by class=1
    assert_same_pixels(one, pixels(G, z, torch.full((4,), 1)))

    sample_main([*args, "class=2", f"out={tmp_path / 'two.png'}"])
    two = tiles(tmp_path / "two.png", 2, 2).flatten(0, 1)
    assert_same_pixels(two, pixels(G, z, torch.full((4,), 2)))  # the same z
    assert min(differ(a, b) for a, b in zip(one, two, strict=True)) > 1.0

    sample_main([*args, "class=1", f"out={tmp_path / 'files'}"])
    files = sorted((tmp_path / "files").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(4)]
    for f, tile in zip(files, one, strict=True):
        assert Image.open(f).size == (SIZE, SIZE)
        image = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(image.float(), tile)


def test_per_class_grid_has_row_i_column_j_equal_to_G_of_z_j_and_class_i(cond_run, tmp_path):
    out = tmp_path / "per_class.png"
    sample_main(
        [f"checkpoint={ckpt(cond_run)}", "grid=per_class", "n=3", "seed=7", "device=cpu"]
        + [f"out={out}"]
    )
    got = tiles(out, CLASSES, 3)
    G = G_ema(cond_run)
    z = torch.randn(3, G.z_dim, generator=generator(7))
    for i in range(CLASSES):
        assert_same_pixels(got[i], pixels(G, z, torch.full((3,), i)))
    assert min(differ(got[i, 0], got[i + 1, 0]) for i in range(CLASSES - 1)) > 1.0
    assert min(differ(got[0, j], got[0, j + 1]) for j in range(2)) > 1.0


@pytest.mark.parametrize("label", [None, 2])
def test_interpolate_rows_run_from_one_random_z_to_another(cond_run, tmp_path, label):
    out = tmp_path / "lerp.png"
    extra = [] if label is None else [f"class={label}"]
    sample_main(
        [f"checkpoint={ckpt(cond_run)}", "interpolate=5", "n=2", "seed=3", "device=cpu"]
        + [f"out={out}", *extra]
    )
    got = tiles(out, 2, 5)
    G = G_ema(cond_run)
    # The documented draw order: the rows' start z, their end z, then one label per row.
    gen = generator(3)
    start = torch.randn(2, G.z_dim, generator=gen)
    end = torch.randn(2, G.z_dim, generator=gen)
    y = torch.randint(0, CLASSES, (2,), generator=gen) if label is None else torch.full((2,), 2)
    assert_same_pixels(got[:, 0], pixels(G, start, y))
    assert_same_pixels(got[:, -1], pixels(G, end, y))
    for r in range(2):  # small steps along the way, compared with the whole way
        steps = [differ(got[r, k], got[r, k + 1]) for k in range(4)]
        assert max(steps) < differ(got[r, 0], got[r, -1])


def test_interpolate_on_an_unconditional_model(uncond_run, tmp_path):
    out = tmp_path / "lerp.png"
    sample_main(
        [f"checkpoint={ckpt(uncond_run)}", "interpolate=3", "n=1", "device=cpu", f"out={out}"]
    )
    got = tiles(out, 1, 3)
    G = G_ema(uncond_run)
    gen = generator(0)
    start, end = torch.randn(1, G.z_dim, generator=gen), torch.randn(1, G.z_dim, generator=gen)
    assert_same_pixels(got[:, 0], pixels(G, start, None))
    assert_same_pixels(got[:, 2], pixels(G, end, None))


# -- slerp ----------------------------------------------------------------------------------------


def test_slerp_of_orthogonal_unit_vectors_follows_the_quarter_circle():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    # a third of the way: 30 degrees of the 90
    torch.testing.assert_close(slerp(a, b, 1 / 3), torch.tensor([math.sqrt(3) / 2, 0.5, 0.0]))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)


def test_slerp_keeps_the_norm_of_vectors_of_equal_norm():
    a, b = torch.randn(6, 128), torch.randn(6, 128)
    a, b = 3 * a / a.norm(dim=1, keepdim=True), 3 * b / b.norm(dim=1, keepdim=True)
    t = torch.linspace(0, 1, 9)
    z = slerp(a[:, None], b[:, None], t[None, :])  # (6, 9, 128)
    assert z.shape == (6, 9, 128)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((6, 9), 3.0))
    torch.testing.assert_close(z[:, 0], a)
    torch.testing.assert_close(z[:, -1], b)


def test_slerp_of_parallel_or_antiparallel_vectors_is_lerp():
    a = torch.tensor([1.0, 2.0, -2.0])
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)
    torch.testing.assert_close(slerp(a, -a, 0.25), 0.5 * a)
    assert torch.isfinite(slerp(a, a, torch.linspace(0, 1, 4)[:, None])).all()


# -- what out= names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"), [("grid.jpg", "JPEG"), ("g.WEBP", "WEBP"), ("g.png", "PNG")]
)
def test_an_image_name_is_one_grid_in_its_format(uncond_run, tmp_path, capsys, name, fmt):
    out = tmp_path / name
    sample_main([f"checkpoint={ckpt(uncond_run)}", "n=4", "device=cpu", f"out={out}"])
    assert capsys.readouterr().out.endswith(f"wrote 4 images of iteration 2 to {out}\n")
    assert out.is_file()
    with Image.open(out) as img:
        assert (img.format, img.size) == (fmt, (2 * SIZE + 3 * PAD,) * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["frames/", "frames"])
def test_a_slash_or_no_extension_is_a_folder_of_pngs(uncond_run, tmp_path, name):
    sample_main([f"checkpoint={ckpt(uncond_run)}", "n=3", "device=cpu", f"out={tmp_path / name}"])
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]


# -- the G_ema every command draws ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recompute_run(tmp_path_factory) -> Path:
    """A tiny class-conditional run whose G_ema is evaluated with recomputed BN statistics."""
    run_dir = tmp_path_factory.mktemp("recompute")
    cfg = compose_config(
        f"model.num_classes={CLASSES}",
        "iterations=3",
        "optim.n_dis=1",
        "optim.g_lr=0.02",
        "optim.ema_start=0",
        "optim.ema_decay=0.5",
    )
    assert cfg.optim.ema_bn_stats == "recompute"  # the default
    train(cfg, run_dir)
    return run_dir


def test_sngan_sample_draws_the_g_ema_that_evaluation_scores(recompute_run, tmp_path, monkeypatch):
    """The network sngan-eval hands to the evaluator, run on sngan-sample's z and labels, gives
    sngan-sample's images; the checkpoint's G_ema as stored (G's statistics) does not."""
    import sngan.build
    from sngan.cli import eval_main

    scored = []

    def build_evaluator(settings, reference, name, device, weights=None, labels=None, digest=None):
        def evaluate(G, seed=0):
            scored.append(G)
            return {"metrics/fid": 1.0, "metrics/is": 1.0}

        return evaluate

    monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    monkeypatch.setattr(sngan.build, "checked_weights_files", lambda settings: {})
    eval_main([f"checkpoint={ckpt(recompute_run)}", "device=cpu"])
    (G,) = scored
    out = tmp_path / "files"
    sample_main([f"checkpoint={ckpt(recompute_run)}", "n=6", "seed=4", "device=cpu", f"out={out}"])
    drawn = torch.stack([pixels_of(p) for p in sorted(out.glob("*.png"))])
    gen = generator(4)  # sngan.sample.generate: z, then uniform labels, from the seed
    z = torch.randn(6, G.z_dim, generator=gen)
    y = torch.randint(0, CLASSES, (6,), generator=gen)
    assert_same_pixels(drawn, pixels(G, z, y))
    stored = load_generator(ckpt(recompute_run), ema=True, device=CPU, ema_bn_stats="copy")[0]
    assert (drawn - pixels(stored, z, y)).abs().max() > 1.0


def pixels_of(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()


# -- errors ---------------------------------------------------------------------------------------


def sample_error(capsys, *args: str) -> str:
    """sngan-sample's one error line, after checking exit status 1."""
    with pytest.raises(SystemExit) as exit_:
        sample_main(["device=cpu", *args])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("sngan-sample: error: ")
    return err.rstrip("\n").removeprefix("sngan-sample: error: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["grid=diagonal"], "grid=diagonal is not valid: choose one of square, per_class"),
        (["n=0"], "n=0 is not valid: must be an integer >= 1"),
        (
            ["interpolate=1"],
            "interpolate=1 is not valid: must be 0 (off) or >= 2 images per row",
        ),
        (
            ["interpolate=5", "out=frames"],
            "interpolate=5 draws rows of a grid: give out=<file>.png",
        ),
        (
            ["interpolate=5", "grid=per_class"],
            "interpolate=5 and grid=per_class cannot be combined",
        ),
        (["grid=per_class", "out=frames"], "grid=per_class draws a grid: give out=<file>.png"),
        (["class=1", "grid=per_class"], "class=1 and grid=per_class cannot be combined"),
        (["class=abc"], "class_"),
        (
            ["out=grid.xyz"],
            "out=grid.xyz is not valid: Pillow cannot write .xyz images; end it with .png, .jpg, "
            ".webp for one grid image, or with / for a folder of one PNG per image",
        ),
        (["ema_bn_stats=fresh"], "ema_bn_stats=fresh is not valid: choose one of copy, recompute"),
    ],
)
def test_arguments_that_cannot_work_fail_before_the_checkpoint_is_read(
    capsys, tmp_path, args, message
):
    err = sample_error(capsys, f"checkpoint={tmp_path / 'missing.pt'}", *args)
    assert message in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "run, args, message",
    [
        (
            "uncond_run",
            ["class=0"],
            "class=0 is not valid: the checkpoint's generator is unconditional "
            "(model.num_classes=0)",
        ),
        (
            "uncond_run",
            ["grid=per_class"],
            "grid=per_class is not valid: the checkpoint's generator is unconditional "
            "(model.num_classes=0); use grid=square",
        ),
        (
            "cond_run",
            ["class=10"],
            "class=10 is not valid: the checkpoint's generator has 10 classes: 0..9",
        ),
        (
            "cond_run",
            ["class=-1"],
            "class=-1 is not valid: the checkpoint's generator has 10 classes: 0..9",
        ),
    ],
)
def test_labels_that_the_checkpoint_has_not_fail_in_one_line(
    request, capsys, tmp_path, run, args, message
):
    run_dir = request.getfixturevalue(run)
    out = tmp_path / "never.png"
    err = sample_error(capsys, f"checkpoint={ckpt(run_dir)}", f"out={out}", *args)
    assert err == message
    assert not out.exists()
