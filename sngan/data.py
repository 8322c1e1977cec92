"""Training images: whole datasets as one uint8 tensor, and a batch stream on the device.

A source (``cifar10``, ``folder``, ``synthetic``) turns into ``(N, 3, H, W)`` uint8 images and
``(N,)`` int64 labels on the CPU. ``BatchStream`` moves them to the training device once and serves
shuffled float batches in [-1, 1] from there: CIFAR-10's training set is 150 MB as uint8, so holding
it on the GPU costs little and removes worker processes and host-to-device copies from the loop.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

SOURCES = ("cifar10", "folder", "synthetic")

DEFAULT_ROOT = Path("~/.cache/sngan/data")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_SIZE = 32
NUM_SYNTHETIC_CLASSES = 10


def load_images(
    source: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool = True,
    train: bool = True,
    num_images: int = 1024,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 images and (N,) int64 labels, on the CPU.

    ``cifar10`` reads ``<root>/cifar-10-batches-py`` (root defaults to ``~/.cache/sngan/data``),
    downloading it there first when missing and ``download`` is true; ``train`` picks the 50,000
    training or the 10,000 test images. ``folder`` reads an ImageFolder tree
    ``<root>/<class>/<image>`` (class subfolders in sorted order become labels 0, 1, ...), resized
    so the shorter side is ``image_size`` and centre-cropped to a square. ``synthetic`` makes
    ``num_images`` smooth random images from ``seed``; ``num_images`` and ``seed`` only apply to it.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    if source == "cifar10":
        if image_size != CIFAR10_SIZE:
            raise ValueError(
                f"CIFAR-10 images are {CIFAR10_SIZE}x{CIFAR10_SIZE}, got image_size={image_size}; "
                f"use image_size={CIFAR10_SIZE}, or source='folder' to resize images of your own"
            )
        root = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        return load_cifar10(root, train=train, download=download)
    if source == "folder":
        return load_folder(root, image_size=image_size)
    if source == "synthetic":
        return make_synthetic(num_images, image_size=image_size, seed=seed)
    raise ValueError(f"unknown data source {source!r}; valid sources are: {', '.join(SOURCES)}")


def load_cifar10(
    root: Path, *, train: bool = True, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its python pickles in ``root/cifar-10-batches-py``, downloaded if missing."""
    base = root / CIFAR10_DIR
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [name for name in names if not (base / name).is_file()]
    if missing:
        reason = "download=False"
        if download:
            # torchvision only fetches and extracts; reading goes through our own loop below
            # (its md5 check and per-item PIL path are not wanted for that).
            try:
                torchvision.datasets.CIFAR10(str(root), train=train, download=True)
                reason = "the download finished without them"
            except (OSError, RuntimeError, tarfile.TarError) as err:  # URLError is an OSError
                reason = f"the download failed: {type(err).__name__}: {err}"
        missing = [name for name in names if not (base / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 not found: expected {', '.join(missing)} in {base} ({reason}). "
                f"Download and extract {CIFAR10_URL} so that {base} exists, or set "
                f"data.root=<dir> to a directory that holds the extracted {CIFAR10_DIR}/ folder."
            )

    images, labels = [], []
    for name in names:
        with open(base / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * CIFAR10_SIZE * CIFAR10_SIZE:
            raise ValueError(
                f"{base / name}: expected 'data' of shape (N, 3072), got {data.shape}; "
                "is this CIFAR-10's python version?"
            )
        images.append(data.reshape(-1, 3, CIFAR10_SIZE, CIFAR10_SIZE))  # rows are CHW
        labels.append(np.asarray(entry["labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_folder(
    root: str | os.PathLike | None, *, image_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder tree, as RGB, resized and centre-cropped to image_size."""
    if root is None:
        raise FileNotFoundError(
            "source 'folder' needs data.root=<dir>, "
            "a directory laid out as <root>/<class>/<image>.png"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    layout = (
        f"expected images in class subfolders, <root>/<class>/<image>.png, "
        f"with extensions {', '.join(IMG_EXTENSIONS)}"
    )
    try:
        dataset = torchvision.datasets.ImageFolder(str(root))
    except FileNotFoundError as err:
        # ImageFolder's own errors for no class folders / class folders without images.
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
        hint = (
            f"; found {len(loose)} images directly in {root}, move them into a subfolder"
            if loose
            else ""
        )
        raise ValueError(f"no usable images in {root} ({err}); {layout}{hint}") from err

    # Resize on the PIL image (its antialiased filters), then crop; an image already at
    # image_size passes through untouched.
    transform = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])
    images = torch.empty((len(dataset), 3, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(dataset.samples):
        try:
            with Image.open(path) as img:
                images[i] = transform(img.convert("RGB"))
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return images, labels


def make_synthetic(
    num_images: int, *, image_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (upsampled 4x4 noise tinted by a per-class colour), same for a seed."""
    if num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_SYNTHETIC_CLASSES, (num_images,), generator=g)
    palette = torch.rand(NUM_SYNTHETIC_CLASSES, 3, 1, 1, generator=g)
    blobs = torch.rand(num_images, 3, 4, 4, generator=g)
    blobs = F.interpolate(blobs, size=(image_size, image_size), mode="bicubic", align_corners=False)
    # Half class colour, half blob: structure to learn, and labels a conditional model can use.
    x = 0.5 * palette[labels] + 0.5 * blobs  # (N, 3, H, W) in about [0, 1]
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels


class BatchStream:
    """Endless shuffled batches from images held on one device (no DataLoader, no host copies).

    Each epoch is a fresh permutation drawn from the stream's own generator (the global RNG is
    left alone); batches are consecutive slices of it. When fewer than ``batch_size`` indices
    remain, the tail is dropped and a new epoch starts, so every batch is full and each image is
    seen at most once per epoch (exactly once, less the dropped tail of fewer than a batch).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (len(images),):
            raise ValueError(
                f"labels must have shape ({len(images)},) to match the images, "
                f"got {tuple(labels.shape)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = labels.to(self.device, torch.int64)
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # Bookkeeping in Python ints so next() never waits on the device.
        self.epoch = 0
        self.pos = 0
        self.perm = self._permutation()

    def __len__(self) -> int:
        return len(self.images)

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self), generator=self.generator, device=self.device)

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 in [-1, 1] and (B,) int64 labels, on the stream's device."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(
                f"batch_size must be in 1..{len(self)} (the number of images), got {batch_size}"
            )
        if self.pos + batch_size > len(self):
            self.perm = self._permutation()
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += batch_size
        x = self.images.index_select(0, idx)  # (B, C, H, W) uint8
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # 0 -> -1 and 255 -> 1 exactly (127.5 and 2.0 are exact in float32).
        x = x.float() / 127.5 - 1
        return x, self.labels.index_select(0, idx)

    def state_dict(self) -> dict:
        """Everything needed to resume the same sequence: generator state, permutation, position."""
        return {
            "num_images": len(self),
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.cpu().clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; the images must be the same set, in the same order."""
        if state["num_images"] != len(self):
            raise ValueError(
                f"stream state is for {state['num_images']} images, this stream holds {len(self)}"
            )
        self.generator.set_state(state["generator"].cpu())
        self.perm = state["perm"].to(self.device, torch.int64)
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
