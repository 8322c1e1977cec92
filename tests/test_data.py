"""Data sources and the device-side batch stream, checked against the files they read."""

from __future__ import annotations

import io
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import CIFAR10_CLASSES, write_cifar10
from PIL import Image

from sngan.data import SOURCES, BatchStream, load_images

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
        load_images("imagenet")
    assert "imagenet" in str(info.value)
    for name in SOURCES:
        assert name in str(info.value)
    assert set(SOURCES) == {"cifar10", "folder", "synthetic"}


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
    with pytest.raises(ValueError, match=str(num_images)):
        load_images("synthetic", num_images=num_images)


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
