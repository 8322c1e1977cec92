"""data=imagenet and the ImageNet 128x128 presets, through the real CLI, on a small ImageNet-like
tree: a few WordNet-id folders of JPEGs of varied sizes and aspect ratios, some smaller than 128
pixels. Also the refusals of trees that are not ILSVRC2012's CLS-LOC, the learning-rate schedule
and dequantisation the presets use, and intra-FID against FID computed class by class by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from PIL import Image

import sngan.build
from sngan import checkpoint
from sngan.batches import BatchStream
from sngan.build import build_train_state, training_images
from sngan.cli import eval_main, sample_main, train_main
from sngan.config import ConfigError

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
# Each preset at reduced width on the CPU: tiny networks, batches, iterations.
SMALL = [
    "data.classes=3",
    "model.g_channels=32",
    "model.d_channels=16",
    "model.z_dim=16",
    "optim.d_batch_size=4",
    "optim.g_batch_size=4",
    "optim.n_dis=1",
    "optim.ema_start=1",
    "optim.lr_decay_start=0",
    "iterations=2",
    "log_every=1",
    "sample_every=2",
    "checkpoint_every=2",
    "metrics.enabled=false",
    "progress=false",
    "device=cpu",
    "data.workers=1",
]


def imagenet_tree(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/train/<wnid>/<wnid>_<i>.JPEG``: photos of 60-400 pixels a side, both orientations."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(60, 401, 2))
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            coarse[..., c] = 250  # a class colour, so the classes differ
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            img.save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return imagenet_tree(tmp_path_factory.mktemp("imagenet"))


def sngan_train(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    train_main()
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("preset", "classes"),
    [
        ("sngan_imagenet128_projection", 3),
        ("sngan_imagenet128_concat", 3),
        ("sngan_imagenet128", 0),
    ],
)
def test_each_preset_prepares_trains_resumes_and_samples(
    tree, tmp_path, monkeypatch, capsys, preset, classes
):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    common = [
        f"experiment={preset}",
        f"data.root={tree}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"model.num_classes={classes}",
        *SMALL,
    ]
    sngan_train(monkeypatch, capsys, *common, f"hydra.run.dir={run_dir}")
    (store,) = (tmp_path / "cache").glob("imagenet-128px-*.npy")
    assert np.load(store, mmap_mode="r").shape == (12, 3, 128, 128)
    out = sngan_train(monkeypatch, capsys, *common, "iterations=4", f"resume={run_dir}")
    assert f"resuming {run_dir}" in out
    state = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert state["iteration"] == 4
    assert state["config"]["model"]["conditioning"] == (
        "concat" if "concat" in preset else "projection"
    )
    assert state["config"]["data"]["dequantize"] is (preset != "sngan_imagenet128")
    grid = tmp_path / "grid.png"
    args = [f"checkpoint={run_dir / 'checkpoints' / 'latest.pt'}", "n=4", "device=cpu"]
    sample_main([*args, f"out={grid}", "ema_bn_stats=copy", *(["class=2"] if classes else [])])
    with Image.open(grid) as img:
        assert img.size == (2 * 128 + 3 * 2,) * 2


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        training_images(compose_config("data=imagenet", *overrides, tiny=False))
    return str(err.value)


def test_a_missing_tree_says_what_to_download_and_where(tmp_path):
    message = error_of(f"data.root={tmp_path}")
    assert message.startswith(
        f"ImageNet not found: expected ILSVRC2012's CLS-LOC training set as {tmp_path}/train/"
        "<wnid>/*.JPEG (1000 class folders). Download ILSVRC2012_img_train.tar from "
    )


def test_a_det_like_tree_or_another_number_of_classes_is_refused(tmp_path, tree):
    train = tmp_path / "det" / "train"
    (train / "ILSVRC2013_train_0000").mkdir(parents=True)
    (train / "n01443537").mkdir()
    message = error_of(f"data.root={tmp_path / 'det'}")
    assert message.startswith(
        f"{train} is not ILSVRC2012's CLS-LOC training set: it has folders that are not "
        "WordNet ids (ILSVRC2013_train_0000), expected 1000 folders named n######## of .JPEG images"
    )
    # The real tree's three classes where 1,000 are expected, and 200 (the DET set's count).
    assert "it has 3 class folders, expected 1000 folders" in error_of(f"data.root={tree}")
    many = tmp_path / "many" / "train"
    for i in range(200):
        (many / f"n{i:08d}").mkdir(parents=True)
    assert "(the DET set has 200 synsets: use CLS-LOC's train/)" in error_of(
        f"data.root={tmp_path / 'many'}"
    )


def test_the_store_holds_the_centre_squares_in_sorted_wnid_order(tree, tmp_path):
    cfg = compose_config(
        "data=imagenet", f"data.root={tree}", "data.classes=3", f"data.cache_dir={tmp_path}"
    )
    images, labels = training_images(cfg)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Class c's colour channel is the bright one of its images.
    means = images.float().mean(dim=(2, 3))  # (N, 3)
    assert means.argmax(dim=1).tolist() == labels.tolist()


def test_the_learning_rate_is_constant_then_decays_linearly_from_lr_decay_start():
    cfg = compose_config("iterations=10", "optim.lr_decay_start=6", "optim.g_lr=0.001")
    s = build_train_state(cfg, *training_images(cfg), torch.device("cpu"))
    seen = []
    for _ in range(10):
        seen.append(s.opt_g.param_groups[0]["lr"])
        s.sched_g.step()
    expected = [0.001] * 7 + [0.001 * (1 - k / 4) for k in (1, 2, 3)]
    assert seen == pytest.approx(expected)


def test_dequantisation_spreads_each_pixel_over_its_bin():
    images = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(256, 3, 2, 2).clone()
    labels = torch.zeros(256, dtype=torch.int64)
    stream = BatchStream(images, labels, seed=0, dequantize=True)
    plain = BatchStream(images, labels, seed=0)
    x, _ = stream.next(256)
    p, _ = plain.next(256)
    pixel = ((p + 1) * 127.5).round()  # the same images, in the same order
    assert torch.all(x >= pixel / 128 - 1) and torch.all(x < (pixel + 1) / 128 - 1)
    assert x.min() >= -1 and x.max() < 1
    # The same noise for the same state: resumable.
    again = BatchStream(images, labels, seed=0, dequantize=True)
    again.load_state_dict(stream.state_dict())
    assert torch.equal(stream.next(64)[0], again.next(64)[0])


# -- intra-FID ------------------------------------------------------------------------------------


class ClassColours(torch.nn.Module):
    """A conditional "generator": class c's images are noise around a class colour."""

    z_dim = 8
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = torch.nn.functional.one_hot(y, 3).float()[:, :, None, None] * 1.6 - 0.8
        noise = z[:, :3, None, None].expand(-1, 3, 16, 16)
        return (base + self.scale * noise).clamp(-1, 1)


def toy_reference(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of ``per_class`` uint8 images each, ClassColours' own images."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(per_class)
    images = ClassColours()(torch.randn(len(labels), 8, generator=g), labels)
    return ((images + 1) * 127.5).round().to(torch.uint8), labels


def toy_evaluator(reference, labels, cache, weights, **settings):
    """An intra-FID Evaluator of the toy reference, with the tests' random Inception weights."""
    from sngan import metrics

    return metrics.Evaluator(
        reference,
        reference_name="toy",
        labels=labels,
        intra_fid=True,
        batch_size=12,
        inception_weights=str(weights),
        cache_dir=str(cache),
        device="cpu",
        **settings,
    )


def test_intra_fid_is_each_classes_fid_computed_by_hand(tmp_path, inception_weights):
    """Per class: the Inception features of that class's reference images, taken here by hand
    with the extractor, against those of the samples of that class (Inception on a CPU costs
    about half a second an image: four real and three generated images a class)."""
    from sngan import metrics

    reference, labels = toy_reference(4)
    evaluator = toy_evaluator(
        reference,
        labels,
        tmp_path,
        inception_weights,
        intra_fid_samples=3,
        intra_fid_classes=[0, 2],
    )
    G = ClassColours()
    got = evaluator.intra_fid_by_class(G, seed=1)
    extractor = evaluator._extractor(metrics.INCEPTION)
    by_hand = {}
    for c in (0, 2):
        with torch.no_grad():
            real = extractor(reference[labels == c])[0]  # (4, 2048): the "2048" pool layer
        fake = evaluator._features(metrics.INCEPTION, G, 3, 1, label=c)[metrics.FID_LAYER]
        by_hand[str(c)] = metrics.fid_from_features(fake, real)
    assert got == pytest.approx(by_hand, rel=1e-5)


def test_a_second_intra_fid_reads_each_classes_features_from_the_cache(
    tmp_path, inception_weights, monkeypatch
):
    """Each class's reference features are cached: a second evaluation (another process, the
    same cache) runs Inception on G's samples only, and scores the same."""
    reference, labels = toy_reference(2)
    settings = {"intra_fid_samples": 2, "intra_fid_classes": [0, 2]}
    first = toy_evaluator(reference, labels, tmp_path, inception_weights, **settings)
    expected = first.intra_fid_by_class(ClassColours(), seed=1)
    second = toy_evaluator(reference, labels, tmp_path, inception_weights, **settings)
    real = []
    monkeypatch.setattr(second, "_dataset_features", lambda *args: real.append(args))
    assert second.intra_fid_by_class(ClassColours(), seed=1) == expected and real == []
    assert len(list(tmp_path.glob("*-class[02]-n2-*features-2048.pt"))) == 2


def test_a_record_carries_the_mean_intra_fid_and_the_classes(
    tmp_path, inception_weights, monkeypatch
):

    reference, labels = toy_reference(4)
    evaluator = toy_evaluator(reference, labels, tmp_path, inception_weights, num_samples=10)
    by_class = {"0": 10.0, "1": 20.0, "2": 60.0}
    monkeypatch.setattr(evaluator, "intra_fid_by_class", lambda G, seed: by_class)
    record = evaluator(ClassColours(), seed=1)
    assert record["metrics/intra_fid"] == 30.0 and record["metrics/intra_fid_classes"] == 3.0
    assert record["intra_fid_by_class"] == by_class and "metrics/fid" in record


def test_intra_fid_needs_a_conditional_model():
    with pytest.raises(ConfigError, match="intra-FID scores a class-conditional G"):
        compose_config("metrics.intra_fid=true")
    with pytest.raises(ConfigError, match=r"metrics.intra_fid_classes=\[12\] is not valid"):
        compose_config(
            "model.num_classes=10", "metrics.intra_fid=true", "metrics.intra_fid_classes=[12]"
        )


def test_training_passes_the_labels_to_the_evaluator(monkeypatch, tmp_path):
    seen = []

    def build_evaluator(settings, reference, name, device, weights=None, labels=None, digest=None):
        seen.append((settings.intra_fid, labels))
        return lambda G, seed=0: {"metrics/fid": 1.0, "metrics/is": 1.0}

    monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    monkeypatch.setattr(sngan.build, "checked_weights_files", lambda settings: {})
    from sngan.train import train

    cfg = compose_config("model.num_classes=10", "metrics.enabled=true", "metrics.intra_fid=true")
    train(cfg, tmp_path / "run")
    ((intra, labels),) = seen
    assert intra and torch.equal(labels, training_images(cfg)[1])


def test_a_stores_cached_statistics_are_named_by_its_key_not_by_hashing_its_pixels(
    tmp_path, monkeypatch, inception_weights
):
    """Hashing ImageNet's 58.6 GiB store to name the reference statistics took 95 s at every
    start; the store's key digest names them instead. Training and sngan-eval both hand it to
    the evaluator, and a changed tree (one photo rewritten) is another store: other statistics."""
    from sngan import metrics
    from sngan.train import train

    root = imagenet_tree(tmp_path / "imagenet", per_class=2)
    weights = f"metrics.inception_weights={inception_weights}"
    cfg = compose_config(
        "data=imagenet",
        *SMALL,
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'stores'}",
        "metrics.enabled=true",
        "metrics.eval_every=0",
        weights,
        f"metrics.cache_dir={tmp_path}",
        tiny=False,
    )

    def stats_file(data: sngan.build.TrainingSet) -> str:
        evaluator = real_build_evaluator(
            cfg.metrics, data.images, "imagenet", "cpu", None, data.labels, data.digest
        )
        return evaluator._cache_path(metrics.INCEPTION, "stats").name

    def hashed(*args):
        raise AssertionError("the pixels of a store were hashed")

    monkeypatch.setattr(metrics, "tensor_digest", hashed)
    real_build_evaluator = sngan.build.build_evaluator
    data = sngan.build.training_set(cfg)
    (store,) = (tmp_path / "stores").glob("imagenet-128px-*.npy")
    assert data.digest is not None and store.stem.endswith(data.digest[:20])
    name = stats_file(data)

    seen = []

    def build_evaluator(*args):
        seen.append(args[6])
        return lambda G, seed=0: {"metrics/fid": 1.0, "metrics/is": 1.0}

    monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    run = tmp_path / "run"
    train(cfg, run)
    eval_main([f"checkpoint={run / 'checkpoints' / 'latest.pt'}", weights, "device=cpu"])
    assert seen == [data.digest, data.digest]  # training's evaluator, then sngan-eval's

    photo = next((root / "train" / WNIDS[0]).iterdir())
    Image.new("RGB", (200, 150), (9, 9, 9)).save(photo, quality=90)
    changed = sngan.build.training_set(cfg)
    assert changed.digest != data.digest and stats_file(changed) != name
