"""Small data sets in STL-10's own binary format (``stl10_binary/*.bin``), for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]


def stl10_arrays(
    num_unlabeled: int = 12, num_train: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixture's images, (N, 3, 96, 96) uint8 as (C, row, col): train, its labels 0..9, unlabeled.

    Random pixels, except that pixel (0, 0) of every image's red plane is its index within its
    file mod 256 and its green plane's first row is bright and first column dark: a reader that
    swapped rows and columns, or images, fails on them at once.
    """
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (num_train, 3, 96, 96), dtype=np.uint8)
    labels = rng.integers(0, 10, num_train).astype(np.int64)
    unlabeled = rng.integers(0, 256, (num_unlabeled, 3, 96, 96), dtype=np.uint8)
    for images in (train, unlabeled):
        images[:, 1, 0, :] = 250  # first row of green
        images[:, 1, 1:, 0] = 5  # first column of green, below the corner
        images[:, 0, 0, 0] = np.arange(len(images)) % 256
    return train, labels, unlabeled


def write_stl10(root: Path, num_unlabeled: int = 12, num_train: int = 6, seed: int = 0) -> Path:
    """Write ``stl10_arrays(...)`` under ``root/stl10_binary`` as STL-10 stores it; returns root.

    Same file names and layout as the real archive: ``*_X.bin`` are raw uint8, image after image,
    each channel after channel and each channel column-major (so reading a file as
    (N, 3, 96, 96) gives (C, col, row): torchvision transposes the last two axes back);
    ``train_y.bin`` holds one uint8 label per image, 1..10; ``class_names.txt`` one name a line.
    No test split: the training code never reads it.
    """
    train, labels, unlabeled = stl10_arrays(num_unlabeled, num_train, seed)
    base = Path(root) / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    (base / "train_X.bin").write_bytes(np.ascontiguousarray(train.transpose(0, 1, 3, 2)).tobytes())
    (base / "train_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (base / "unlabeled_X.bin").write_bytes(
        np.ascontiguousarray(unlabeled.transpose(0, 1, 3, 2)).tobytes()
    )
    (base / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return Path(root)
