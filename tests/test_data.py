"""Data sources and the device-side batch stream, checked against the files they read."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import CIFAR10_CLASSES, compose_config, write_cifar10
from PIL import Image
from stl10_fixture import STL10_CLASSES, stl10_arrays, write_stl10

import sngan.data
import sngan.image_store
from sngan.batches import BatchStream
from sngan.data import SOURCES, load_images


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test's default image cache is its own, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


# --- cifar10 -------------------------------------------------------------------------------


def read_pickled(root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The fixture's rows and labels, read straight from its pickles."""
    rows, labels = [], []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        rows.append(entry["data"])
        labels += entry["labels"]
    return np.concatenate(rows), np.array(labels)


@pytest.mark.parametrize(
    ("train", "names"),
    [(True, [f"data_batch_{i}" for i in range(1, 6)]), (False, ["test_batch"])],
)
def test_cifar10_matches_pickled_rows(cifar10_root: Path, train: bool, names: list[str]) -> None:
    images, labels = load_images("cifar10", root=str(cifar10_root), train=train, download=False)
    rows, expected_labels = read_pickled(cifar10_root, names)
    assert images.shape == (20 * len(names), 3, 32, 32)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    # A row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    for n in (0, 7, len(rows) - 1):
        for c in range(3):
            plane = rows[n, c * 1024 : (c + 1) * 1024].reshape(32, 32)
            assert np.array_equal(images[n, c].numpy(), plane)
    assert np.array_equal(images.reshape(len(rows), -1).numpy(), rows)
    assert labels.tolist() == expected_labels.tolist()


def test_cifar10_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_images("cifar10", root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.root=" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_cifar10_offline_download_gives_the_same_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError) as info:
        load_images("cifar10", root=str(tmp_path), download=True)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.root=" in message
    assert "name resolution" in message  # the cause is kept, in one line


def test_cifar10_downloads_into_root_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_cifar10(Path(root), images_per_batch=3, seed=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    images, labels = load_images("cifar10", root=str(tmp_path), train=True)
    assert calls == [(str(tmp_path), True, True)]
    assert images.shape == (15, 3, 32, 32) and labels.shape == (15,)
    # Files on disk now: no second download.
    load_images("cifar10", root=str(tmp_path), train=True)
    assert len(calls) == 1


def test_cifar10_default_root_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\.cache/sngan/data/cifar-10-batches-py"):
        load_images("cifar10", download=False)


def test_unknown_source_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        load_images("mnist")  # (imagenet was the unknown name here until data=imagenet came)
    assert "mnist" in str(info.value)
    for name in SOURCES:
        assert name in str(info.value)
    assert set(SOURCES) == {"cifar10", "stl10", "folder", "imagenet", "synthetic"}


# --- stl10 ---------------------------------------------------------------------------------


@pytest.fixture
def stl10_root(tmp_path: Path) -> Path:
    """A data root holding a small STL-10 in its binary format (6 train, 12 unlabeled images)."""
    return write_stl10(tmp_path / "data", num_unlabeled=12, num_train=6, seed=0)


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """One (3, H, W) uint8 image resized with PIL's antialiased bilinear filter."""
    resized = Image.fromarray(image.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
    return np.asarray(resized).transpose(2, 0, 1)


def test_stl10_unlabeled_matches_the_written_pixels(stl10_root: Path, tmp_path: Path) -> None:
    images, labels = load_images(
        "stl10", root=stl10_root, image_size=96, download=False, cache_dir=tmp_path / "cache"
    )
    _, _, unlabeled = stl10_arrays(num_unlabeled=12, num_train=6, seed=0)
    assert images.shape == (12, 3, 96, 96) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [-1] * 12
    assert np.array_equal(images.numpy(), unlabeled)
    # The markers, read as rows and columns: a transposed reader would see them swapped.
    assert (images[:, 1, 0, :] == 250).all() and (images[:, 1, 1:, 0] == 5).all()
    assert images[:, 0, 0, 0].tolist() == list(range(12))
    assert not (tmp_path / "cache").exists()  # nothing to resize, nothing cached


def test_stl10_train_plus_unlabeled_is_train_first(stl10_root: Path) -> None:
    images, labels = load_images(
        "stl10", root=stl10_root, image_size=96, split="train+unlabeled", download=False
    )
    train, train_labels, unlabeled = stl10_arrays(num_unlabeled=12, num_train=6, seed=0)
    assert images.shape == (18, 3, 96, 96)
    assert np.array_equal(images.numpy(), np.concatenate([train, unlabeled]))
    assert labels.tolist() == train_labels.tolist() + [-1] * 12
    assert train_labels.min() >= 0 and train_labels.max() <= 9
    on_disk = np.fromfile(stl10_root / "stl10_binary" / "train_y.bin", dtype=np.uint8)
    assert on_disk.tolist() == (train_labels + 1).tolist()  # 1..10 in the file


def test_stl10_location_is_torchvisions():
    # sngan.data names them without importing torchvision; they must stay torchvision's.
    assert torchvision.datasets.STL10.url == sngan.data.STL10_URL
    assert torchvision.datasets.STL10.base_folder == sngan.data.STL10_DIR


def test_checking_a_config_does_not_import_torchvision():
    """The CLI refuses a bad config before the seconds that importing torchvision takes."""
    code = "import sys, sngan.cli; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("split", ["unlabeled", "train+unlabeled"])
def test_stl10_fixture_reads_the_same_in_torchvision(
    stl10_root: Path, split: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision checks the real archive's md5 sums, which a fixture cannot have.
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    reference = torchvision.datasets.STL10(str(stl10_root), split=split, download=False)
    images, labels = load_images(
        "stl10", root=stl10_root, image_size=96, split=split, download=False
    )
    assert np.array_equal(images.numpy(), reference.data)
    assert labels.tolist() == np.asarray(reference.labels, dtype=np.int64).tolist()
    assert reference.classes == STL10_CLASSES
    # And torchvision's PIL image is the image upright: its row 0 is the bright green row.
    img, _ = reference[0]
    assert (np.asarray(img)[0, :, 1] == 250).all()


@pytest.mark.parametrize("image_size", [48, 37, 100, 1])
def test_stl10_resizes_like_pil(stl10_root: Path, image_size: int) -> None:
    images, _ = load_images(
        "stl10", root=stl10_root, image_size=image_size, split="train+unlabeled", download=False
    )
    train, _, unlabeled = stl10_arrays(num_unlabeled=12, num_train=6, seed=0)
    assert images.shape == (18, 3, image_size, image_size) and images.dtype == torch.uint8
    for n, original in [(0, train[0]), (5, train[5]), (6, unlabeled[0]), (17, unlabeled[11])]:
        expected = pil_resize(original, image_size).astype(int)
        assert np.abs(images[n].numpy().astype(int) - expected).max() <= 1


def test_stl10_resizes_the_same_in_chunks(
    stl10_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, _ = load_images(
        "stl10", root=stl10_root, image_size=48, download=False, cache_dir=tmp_path / "a"
    )
    monkeypatch.setattr(sngan.image_store, "CHUNK", 5)  # 12 images: chunks of 5, 5 and 2
    chunked, _ = load_images(
        "stl10", root=stl10_root, image_size=48, download=False, cache_dir=tmp_path / "b"
    )
    assert torch.equal(whole, chunked)


def test_stl10_resized_images_are_cached(
    stl10_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = dict(root=stl10_root, image_size=48, download=False, cache_dir=tmp_path / "cache")
    first, first_labels = load_images("stl10", split="train+unlabeled", **kwargs)

    def no_resize(*args, **kwargs):
        raise AssertionError("resized again: the cache was missed")

    monkeypatch.setattr(F, "interpolate", no_resize)
    second, second_labels = load_images("stl10", split="train+unlabeled", **kwargs)
    assert torch.equal(first, second) and torch.equal(first_labels, second_labels)
    with pytest.raises(AssertionError, match="cache was missed"):  # another split, another key
        load_images("stl10", split="unlabeled", **kwargs)


@pytest.mark.parametrize("split", ["unlabeled", "train+unlabeled"])
def test_stl10_missing_without_download(tmp_path: Path, split: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_images("stl10", root=tmp_path, split=split, download=False)
    message = str(info.value)
    assert str(tmp_path / "stl10_binary") in message
    assert "unlabeled_X.bin" in message and ("train_X.bin" in message) == (split != "unlabeled")
    assert "data.root=" in message and "download=False" in message
    assert "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz" in message


def test_stl10_names_only_the_missing_files(stl10_root: Path) -> None:
    (stl10_root / "stl10_binary" / "train_y.bin").unlink()
    load_images("stl10", root=stl10_root, image_size=96, download=False)  # unlabeled needs none
    with pytest.raises(FileNotFoundError) as info:
        load_images("stl10", root=stl10_root, split="train+unlabeled", download=False)
    assert "expected train_y.bin in" in str(info.value)


def test_stl10_offline_download_gives_the_same_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "STL10", offline)
    with pytest.raises(FileNotFoundError) as info:
        load_images("stl10", root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "stl10_binary") in message and "data.root=" in message
    assert "name resolution" in message


def test_stl10_downloads_into_root_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(root: str, split: str, download: bool) -> None:
        calls.append((root, split, download))
        write_stl10(Path(root), num_unlabeled=4, num_train=2)

    monkeypatch.setattr(torchvision.datasets, "STL10", fake_download)
    images, labels = load_images("stl10", root=tmp_path, image_size=48, split="train+unlabeled")
    assert calls == [(str(tmp_path), "train+unlabeled", True)]
    assert images.shape == (6, 3, 48, 48) and labels.shape == (6,)
    load_images("stl10", root=tmp_path, image_size=48, split="train+unlabeled")
    assert len(calls) == 1  # files on disk now: no second download


def test_stl10_default_root_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\.cache/sngan/data/stl10_binary"):
        load_images("stl10", download=False)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        pytest.param("unlabeled_X.bin", b"\0" * 1000, "not a whole number", id="partial-image"),
        pytest.param("train_y.bin", bytes([1, 2, 3, 4, 5, 0]), r"in 1\.\.10", id="label-0"),
        pytest.param("train_y.bin", bytes([1, 2, 3]), "expected 6 labels", id="too-few-labels"),
    ],
)
def test_stl10_damaged_binaries_are_named(
    stl10_root: Path, name: str, content: bytes, match: str
) -> None:
    (stl10_root / "stl10_binary" / name).write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_images("stl10", root=stl10_root, split="train+unlabeled", download=False)
    assert name in str(info.value)


@pytest.mark.parametrize("source", ["stl10", "cifar10", "folder"])
def test_split_is_validated(tmp_path: Path, source: str) -> None:
    # Checked once, with the config (load_images trusts a checked config).
    with pytest.raises(ValueError) as info:
        compose_config(f"data={source}", f"data.root={tmp_path}", "data.split=train")
    assert "'train'" in str(info.value)
    assert "unlabeled, train+unlabeled" in str(info.value)


# --- folder --------------------------------------------------------------------------------


def test_folder_reads_the_real_slice_pixel_for_pixel(real_slice: Path) -> None:
    images, labels = load_images("folder", root=real_slice / "train")
    npz = np.load(real_slice / "train_1000.npz")
    # ImageFolder order: classes sorted by name (CIFAR-10's order happens to be alphabetical),
    # then files sorted by name; the file name is the image's index in the npz.
    order = [
        int(p.stem)
        for cls in sorted(CIFAR10_CLASSES)
        for p in sorted((real_slice / "train" / cls).iterdir())
    ]
    assert sorted(CIFAR10_CLASSES) == CIFAR10_CLASSES
    assert images.shape == (1000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == npz["labels"][order].tolist()
    assert np.array_equal(images.numpy(), npz["images"][order])
    assert sorted(set(labels.tolist())) == list(range(10))


def square_on_black(width: int, height: int, side: int) -> Image.Image:
    """A black image with a centred green square of the given side."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top : top + side, left : left + side, 1] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("width", "height"), [(64, 48), (48, 64)])
def test_folder_resizes_shorter_side_and_centre_crops(
    tmp_path: Path, width: int, height: int
) -> None:
    (tmp_path / "only").mkdir()
    square_on_black(width, height, side=24).save(tmp_path / "only" / "a.png")
    images, labels = load_images("folder", root=tmp_path, image_size=32)
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [0]
    # Shorter side 48 -> 32 scales by 2/3: the 24-px square becomes 16 px on both axes (aspect
    # kept, not squashed) and stays in the middle (the crop is centred, not from a corner).
    green = images[0, 1] > 127
    rows = torch.nonzero(green.any(dim=1)).flatten()
    cols = torch.nonzero(green.any(dim=0)).flatten()
    height_px, width_px = len(rows), len(cols)
    assert abs(height_px - 16) <= 1 and abs(width_px - 16) <= 1
    assert abs((rows[0] + rows[-1]).item() / 2 - 15.5) <= 1
    assert abs((cols[0] + cols[-1]).item() / 2 - 15.5) <= 1


def test_folder_converts_to_rgb_and_labels_by_sorted_class(tmp_path: Path) -> None:
    for cls in ("zebra", "apple"):
        (tmp_path / cls).mkdir()
    Image.new("L", (32, 32), 200).save(tmp_path / "zebra" / "g.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 255)).save(tmp_path / "apple" / "c.png")
    images, labels = load_images("folder", root=tmp_path)
    assert labels.tolist() == [0, 1]  # apple, zebra
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert images[1, :, 0, 0].tolist() == [200, 200, 200]


def test_folder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_images("folder", root=missing)
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_images("folder", root=None)


@pytest.mark.parametrize("layout", ["empty", "empty_class", "loose_images"])
def test_folder_without_images(tmp_path: Path, layout: str) -> None:
    if layout == "empty_class":
        (tmp_path / "cats").mkdir()
        (tmp_path / "cats" / "notes.txt").write_text("not an image")
    if layout == "loose_images":
        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError) as info:
        load_images("folder", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "<root>/<class>/<image>.png" in message and ".jpg" in message
    if layout == "loose_images":
        assert "subfolder" in message


# --- the image cache (folder) --------------------------------------------------------------


def make_folder(root: Path, seed: int = 0) -> Path:
    """Two classes of random PNGs, three each, of mixed sizes (all need a resize to 24)."""
    rng = np.random.default_rng(seed)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate([(40, 30), (30, 40), (32, 32)]):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every path PIL's Image.open is called with from now on."""
    opened, real_open = [], Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def forbid_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("Image.open called: the cache was missed")

    monkeypatch.setattr(Image, "open", fail)


def cache_files(cache: Path) -> list[str]:
    return sorted(p.suffix for p in cache.iterdir() if not p.name.startswith("."))


def test_folder_second_load_hits_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = make_folder(tmp_path / "images"), tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a miss and a hit are quiet
        first, first_labels = load_images("folder", root=folder, image_size=24, cache_dir=cache)
        assert cache_files(cache) == [".json", ".npy"]
        forbid_decodes(monkeypatch)
        second, second_labels = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    assert first.shape == (6, 3, 24, 24) and first_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(first, second) and torch.equal(first_labels, second_labels)
    assert second.dtype == torch.uint8 and second_labels.dtype == torch.int64
    # What the cache holds is what a decode without it gives, independently of the entry.
    monkeypatch.undo()
    fresh, _ = load_images("folder", root=folder, image_size=24, cache_dir=tmp_path / "other")
    assert torch.equal(second, fresh)


@pytest.mark.parametrize("change", ["touch", "rewrite", "add", "remove", "rename_class"])
def test_folder_cache_misses_when_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    folder, cache = make_folder(tmp_path / "images"), tmp_path / "cache"
    load_images("folder", root=folder, image_size=24, cache_dir=cache)
    target = folder / "dogs" / "1.png"
    if change == "touch":  # same bytes, a new modification time
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    if change == "rewrite":  # other pixels under the same name
        st = target.stat()
        with Image.open(target) as img:
            pixels = np.asarray(img)
        Image.fromarray(255 - pixels).save(target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    if change == "add":
        Image.new("RGB", (24, 24), (1, 2, 3)).save(folder / "cats" / "new.png")
    if change == "remove":
        target.unlink()
    if change == "rename_class":
        (folder / "dogs").rename(folder / "wolves")
    opened = count_decodes(monkeypatch)
    images, labels = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    assert len(opened) == len(images)  # every image decoded again
    fresh, fresh_labels = load_images(
        "folder", root=folder, image_size=24, cache_dir=tmp_path / "x"
    )
    assert torch.equal(images, fresh) and torch.equal(labels, fresh_labels)
    assert len(images) == {"add": 7, "remove": 5}.get(change, 6)


def test_folder_cache_is_per_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = make_folder(tmp_path / "images"), tmp_path / "cache"
    at_24, _ = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    opened = count_decodes(monkeypatch)
    at_16, _ = load_images("folder", root=folder, image_size=16, cache_dir=cache)
    assert len(opened) == 6 and at_16.shape == (6, 3, 16, 16)
    forbid_decodes(monkeypatch)  # both sizes are kept side by side
    assert torch.equal(load_images("folder", root=folder, image_size=24, cache_dir=cache)[0], at_24)
    assert torch.equal(load_images("folder", root=folder, image_size=16, cache_dir=cache)[0], at_16)
    assert cache_files(cache) == [".json", ".json", ".npy", ".npy"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage_header", "bad_json", "no_npy"])
def test_folder_damaged_cache_is_decoded_again_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    folder, cache = make_folder(tmp_path / "images"), tmp_path / "cache"
    expected, expected_labels = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    expected = expected.clone()  # a store's images map its file, damaged in place below
    (npy,) = cache.glob("*.npy")
    (meta,) = cache.glob("*.json")
    if damage == "truncated":
        with open(npy, "r+b") as f:
            f.truncate(npy.stat().st_size // 2)
    if damage == "empty":
        npy.write_bytes(b"")
    if damage == "garbage_header":
        npy.write_bytes(b"\x93NUMPY not a header at all" + npy.read_bytes()[30:])
    if damage == "bad_json":
        meta.write_text('{"format": 1, "labels": [0, 0')
    if damage == "no_npy":
        npy.unlink()
    opened = count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="ignoring image store"):
        images, labels = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    assert len(opened) == 6
    assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
    forbid_decodes(monkeypatch)  # the rewritten entry is whole again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = load_images("folder", root=folder, image_size=24, cache_dir=cache)
    assert torch.equal(again, expected)


def test_folder_unwritable_cache_still_loads(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "images")
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache's parent directory should be")
    for _ in range(2):  # and the next run the same: a warning each time, never an error
        with pytest.warns(UserWarning, match="could not write the image store"):
            images, labels = load_images(
                "folder", root=folder, image_size=24, cache_dir=blocker / "cache"
            )
        assert images.shape == (6, 3, 24, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_cache_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "images")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_images("folder", root=folder, image_size=24)
    assert cache_files(tmp_path / "xdg" / "sngan" / "images") == [".json", ".npy"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load_images("folder", root=folder, image_size=24)
    assert cache_files(tmp_path / "home" / ".cache" / "sngan" / "images") == [".json", ".npy"]


# --- synthetic -----------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed() -> None:
    a, la = load_images("synthetic", num_images=16, seed=3)
    b, lb = load_images("synthetic", num_images=16, seed=3)
    c, lc = load_images("synthetic", num_images=16, seed=4)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.uint8 and la.dtype == torch.int64
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    assert la.min() >= 0 and la.max() <= 9


def test_synthetic_is_smooth_not_noise_and_leaves_global_rng() -> None:
    before = torch.get_rng_state()
    images, _ = load_images("synthetic", num_images=64, image_size=16, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert images.shape == (64, 3, 16, 16)
    # Uniform noise has a mean neighbour difference of about 85; smooth images far less.
    x = images.float()
    assert (x[..., 1:] - x[..., :-1]).abs().mean() < 10
    assert x.std() > 20  # and they are not flat either


@pytest.mark.parametrize("num_images", [0, -5])
def test_synthetic_rejects_bad_count(num_images: int) -> None:
    with pytest.raises(ValueError, match=str(num_images)):  # once, with the config
        compose_config("data=synthetic", f"data.num_images={num_images}")


# --- BatchStream ---------------------------------------------------------------------------


def indexed(n: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is their own index, labels equal to the index."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    return images, torch.arange(n)


def test_stream_maps_0_to_minus_1_and_255_to_1() -> None:
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(4, 3, 16, 16).clone()
    stream = BatchStream(images, torch.zeros(4, dtype=torch.int64))
    x, y = stream.next(4)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 16, 16)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    expected = torch.arange(256, dtype=torch.float64).view(16, 16) / 127.5 - 1
    torch.testing.assert_close(x[0, 0].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("n", "batch_size"), [(48, 8), (50, 8), (7, 7), (10, 1)])
def test_stream_sees_every_image_once_per_epoch(n: int, batch_size: int) -> None:
    images, labels = indexed(n)
    stream = BatchStream(images, labels, seed=1)
    per_epoch = n // batch_size
    epochs = []
    for _ in range(3):
        seen = []
        for _ in range(per_epoch):
            x, y = stream.next(batch_size)
            # Image and label travel together: the pixel value decodes to the label.
            assert torch.equal(torch.round((x[:, 0, 0, 0] + 1) * 127.5).long(), y)
            seen += y.tolist()
        assert len(seen) == len(set(seen)) == per_epoch * batch_size  # no repeats
        assert set(seen) <= set(range(n))
        epochs.append(seen)
    if per_epoch * batch_size == n and n > 1:
        assert all(sorted(e) == list(range(n)) for e in epochs)
        assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_stream_dropped_tail_is_less_than_a_batch() -> None:
    images, labels = indexed(50)
    stream = BatchStream(images, labels)
    seen = [stream.next(8)[1] for _ in range(6)]
    assert len(set(torch.cat(seen).tolist())) == 48  # 2 images wait for the next epoch


def test_stream_state_round_trip_through_a_checkpoint() -> None:
    images, labels = indexed(20)
    a = BatchStream(images, labels, seed=5)
    for _ in range(4):  # 3 batches of 6 per epoch: A is one batch into its second epoch
        a.next(6)
    buffer = io.BytesIO()
    torch.save({"data": a.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["data"]

    b = BatchStream(images, labels, seed=123)  # the state, not the seed, decides what follows
    b.load_state_dict(state)
    for _ in range(8):  # crosses two more epoch boundaries
        xa, ya = a.next(6)
        xb, yb = b.next(6)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stream_state_is_a_snapshot() -> None:
    images, labels = indexed(12)
    a = BatchStream(images, labels)
    state = a.state_dict()
    expected = [a.next(5)[1] for _ in range(5)]
    b = BatchStream(images, labels)
    b.load_state_dict(state)
    assert all(torch.equal(b.next(5)[1], y) for y in expected)


def test_stream_state_for_other_data_is_rejected() -> None:
    state = BatchStream(*indexed(10)).state_dict()
    with pytest.raises(ValueError, match="10 images"):
        BatchStream(*indexed(11)).load_state_dict(state)


def test_stream_channels_last() -> None:
    images, labels = load_images("synthetic", num_images=8, image_size=8)
    plain = BatchStream(images, labels, seed=2)
    cl = BatchStream(images, labels, seed=2, channels_last=True)
    x_plain, _ = plain.next(4)
    x_cl, _ = cl.next(4)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    assert not x_plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x_plain, x_cl)


def test_stream_leaves_global_rng_alone() -> None:
    stream = BatchStream(*indexed(10))
    before = torch.get_rng_state()
    for _ in range(5):
        stream.next(3)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(stream) == 10


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_stream_rejects_bad_batch_size(batch_size: int) -> None:
    stream = BatchStream(*indexed(10))
    with pytest.raises(ValueError, match=rf"batch_size.*{batch_size}"):
        stream.next(batch_size)


@pytest.mark.gpu
def test_stream_on_cuda_does_not_synchronise() -> None:
    images, labels = load_images("synthetic", num_images=64)
    stream = BatchStream(images, labels, device="cuda", channels_last=True)
    assert stream.images.is_cuda
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):  # crosses an epoch boundary
            x, y = stream.next(24)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.is_cuda and y.is_cuda and x.shape == (24, 3, 32, 32)
    b = BatchStream(images, labels, device="cuda")
    b.load_state_dict(stream.state_dict())
    assert torch.equal(b.next(24)[1], stream.next(24)[1])
