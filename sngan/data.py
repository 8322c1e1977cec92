"""Training images: a data source turned into one uint8 tensor.

A source (``cifar10``, ``stl10``, ``folder``, ``synthetic``) turns into ``(N, 3, H, W)`` uint8
images and ``(N,)`` int64 labels on the CPU (``sngan.batches.BatchStream`` then serves them on the
training device). Sources that must be decoded or resized (``folder``, ``stl10`` below 96 px) are
worked out once and kept in ``sngan.image_cache``, so a second run or a resume reads one file
instead of decoding 100,000 images again.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

from sngan.image_cache import file_signature, load_cached, resolve_cache_dir

if TYPE_CHECKING:
    import torchvision

# torchvision is imported where a dataset is fetched or read, not here: importing it takes seconds
# (it loads torch._dynamo), and the CLI imports this module to check a config and refuse a bad one.

SOURCES = ("cifar10", "stl10", "folder", "synthetic")

DEFAULT_ROOT = Path("~/.cache/sngan/data")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_SIZE = 32
NUM_SYNTHETIC_CLASSES = 10

# torchvision.datasets.STL10's url and base_folder (tests/test_data.py checks they still are).
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_DIR = "stl10_binary"
STL10_SIZE = 96
# The splits the paper trained on; the 5,000 labelled training images come first, as torchvision
# orders them.
STL10_SPLITS = ("unlabeled", "train+unlabeled")
STL10_FILES = {
    "unlabeled": ("unlabeled_X.bin",),
    "train+unlabeled": ("train_X.bin", "train_y.bin", "unlabeled_X.bin"),
}
# Images resized per step: 28 MB of 96x96 uint8 in flight, whatever the split's size (the whole
# unlabeled split is 2.7 GB, never held as one array, let alone as float).
STL10_CHUNK = 1024

# Bump a version whenever the code that makes a source's pixels changes: the cache key holds it,
# so entries made by the old code are never read again (sngan.image_cache).
FOLDER_TRANSFORM = "pil-resize-shorter-bilinear+centre-crop/1"
STL10_TRANSFORM = "uint8-interpolate-bilinear-antialias/1"


def load_images(
    source: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool = True,
    train: bool = True,
    split: str = "unlabeled",
    num_images: int = 1024,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 images and (N,) int64 labels, on the CPU.

    ``cifar10`` reads ``<root>/cifar-10-batches-py`` (root defaults to ``~/.cache/sngan/data``),
    downloading it there first when missing and ``download`` is true; ``train`` picks the 50,000
    training or the 10,000 test images. ``stl10`` reads ``<root>/stl10_binary`` (same default root,
    same download rule): ``split="unlabeled"`` is the 100,000 unlabelled images, all labelled -1
    (so they cannot feed a conditional model's embedding), ``"train+unlabeled"`` the 5,000
    training images (labels 0..9) followed by those 100,000; the 96x96 images are resized to
    ``image_size`` (antialiased bilinear; 48 in the paper). ``folder`` reads an ImageFolder tree
    ``<root>/<class>/<image>`` (class subfolders in sorted order become labels 0, 1, ...), resized
    so the shorter side is ``image_size`` and centre-cropped to a square. ``synthetic`` makes
    ``num_images`` smooth random images from ``seed``; ``num_images`` and ``seed`` only apply to it.

    ``folder`` and resized ``stl10`` images are cached in ``cache_dir`` (default
    ``$XDG_CACHE_HOME/sngan/images``, else ``~/.cache/sngan/images``), keyed by the files' names,
    sizes and modification times, ``image_size`` and the transform's version: a later call with
    the same files reads the cache instead of decoding. Entries can be deleted at any time; a
    cache that cannot be written costs a warning, never the run.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    if split not in STL10_SPLITS:
        raise ValueError(
            f"unknown split {split!r} (STL-10's training images); valid splits are: "
            f"{', '.join(STL10_SPLITS)}"
        )
    if source == "cifar10":
        if image_size != CIFAR10_SIZE:
            raise ValueError(
                f"CIFAR-10 images are {CIFAR10_SIZE}x{CIFAR10_SIZE}, got image_size={image_size}; "
                f"use image_size={CIFAR10_SIZE}, or source='folder' to resize images of your own"
            )
        root = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        return load_cifar10(root, train=train, download=download)
    if source == "stl10":
        root = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        return load_stl10(
            root, split=split, image_size=image_size, download=download, cache_dir=cache_dir
        )
    if source == "folder":
        return load_folder(root, image_size=image_size, cache_dir=cache_dir)
    if source == "synthetic":
        return make_synthetic(num_images, image_size=image_size, seed=seed)
    raise ValueError(f"unknown data source {source!r}; valid sources are: {', '.join(SOURCES)}")


def torchvision_module() -> ModuleType:
    """torchvision, imported on first use (see the note at the top of this module)."""
    import torchvision

    return torchvision


def fetch_missing(
    dataset: str,
    base: Path,
    names: Sequence[str],
    url: str,
    download: bool,
    fetch: Callable[[], object],
) -> None:
    """Return if every file of ``names`` is in ``base``; else ``fetch()`` them (when
    ``download``), and raise an error naming the files still missing and where they go."""
    missing = [name for name in names if not (base / name).is_file()]
    if not missing:
        return
    reason = "download=False"
    if download:
        try:
            fetch()
            reason = "the download finished without them"
        except (OSError, RuntimeError, tarfile.TarError) as err:  # URLError is an OSError
            reason = f"the download failed: {type(err).__name__}: {err}"
        missing = [name for name in names if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} not found: expected {', '.join(missing)} in {base} ({reason}). "
            f"Download and extract {url} so that {base} exists, or set "
            f"data.root=<dir> to a directory that holds the extracted {base.name}/ folder."
        )


def load_cifar10(
    root: Path, *, train: bool = True, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its python pickles in ``root/cifar-10-batches-py``, downloaded if missing."""
    base = root / CIFAR10_DIR
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    # torchvision only fetches and extracts; reading goes through our own loop below (its md5
    # check and per-item PIL path are not wanted for that).
    fetch_missing(
        "CIFAR-10",
        base,
        names,
        CIFAR10_URL,
        download,
        lambda: torchvision_module().datasets.CIFAR10(str(root), train=train, download=True),
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


def load_stl10(
    root: Path,
    *,
    split: str = "unlabeled",
    image_size: int = 48,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """STL-10's training images from ``root/stl10_binary``, resized, downloaded if missing."""
    if split not in STL10_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(STL10_SPLITS)}")
    base = root / STL10_DIR
    names = STL10_FILES[split]
    # As for CIFAR-10, torchvision only fetches and extracts (and, being torchvision, reads the
    # arrays once, which we drop); our own reader below does the rest.
    fetch_missing(
        "STL-10",
        base,
        names,
        STL10_URL,
        download,
        lambda: torchvision_module().datasets.STL10(str(root), split=split, download=True),
    )

    num_images = sum(
        len(read_stl10_images(base / name)) for name in names if name.endswith("_X.bin")
    )
    if image_size == STL10_SIZE:
        # Nothing to resize: the binaries read as fast as a cache would.
        images, labels, _ = read_stl10(base, split=split, image_size=image_size)
        return images, labels
    key = {
        "source": "stl10",
        "split": split,
        "image_size": image_size,
        "transform": STL10_TRANSFORM,
        "torch": torch.__version__,
        "files": file_signature(base, [base / name for name in names]),
    }
    return load_cached(
        resolve_cache_dir(cache_dir),
        key,
        (num_images, 3, image_size, image_size),
        lambda: read_stl10(base, split=split, image_size=image_size),
    )


def read_stl10_images(path: Path) -> np.ndarray:
    """The images of one STL-10 ``*_X.bin`` as a (N, 3, 96, 96) view of the file (not in memory)."""
    size = path.stat().st_size
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    if size == 0 or size % image_bytes:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of 3x{STL10_SIZE}x{STL10_SIZE} images; "
            "is this STL-10's binary version?"
        )
    data = np.memmap(path, dtype=np.uint8, mode="r")
    # Each channel is stored column by column, so the last two axes on disk are (W, H), as
    # torchvision reads them too.
    return data.reshape(-1, 3, STL10_SIZE, STL10_SIZE).transpose(0, 1, 3, 2)


def read_stl10(
    base: Path, *, split: str, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A split's images resized to image_size, its labels (-1: unlabelled) and class names."""
    parts = [
        read_stl10_images(base / name) for name in STL10_FILES[split] if name.endswith("_X.bin")
    ]
    labels = []
    if split == "train+unlabeled":
        on_disk = np.fromfile(base / "train_y.bin", dtype=np.uint8)
        if len(on_disk) != len(parts[0]) or not np.isin(on_disk, np.arange(1, 11)).all():
            found = (
                f"{len(on_disk)}, in {on_disk.min()}..{on_disk.max()}" if len(on_disk) else "none"
            )
            raise ValueError(
                f"{base / 'train_y.bin'}: expected {len(parts[0])} labels in 1..10, one per "
                f"image of train_X.bin; found {found}"
            )
        labels.append(on_disk.astype(np.int64) - 1)  # 1..10 on disk, 0..9 as torchvision has them
    labels.append(np.full(len(parts[-1]), -1, dtype=np.int64))

    images = torch.empty((sum(map(len, parts)), 3, image_size, image_size), dtype=torch.uint8)
    pos = 0
    for part in parts:
        for start in range(0, len(part), STL10_CHUNK):
            chunk = torch.from_numpy(np.ascontiguousarray(part[start : start + STL10_CHUNK]))
            if image_size != STL10_SIZE:
                if image_size == 1:
                    # torch 2.x's uint8 kernel trips an internal assert for a 1x1 output from
                    # (N, C, H, W) memory; its channels-last path is fine.
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                # torch's uint8 path (PIL's fixed-point antialiased filter): no float copy, and
                # the same pixels as PIL's resize.
                chunk = F.interpolate(
                    chunk,
                    size=(image_size, image_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            images[pos : pos + len(chunk)] = chunk
            pos += len(chunk)

    class_file = base / "class_names.txt"
    classes = class_file.read_text().splitlines() if class_file.is_file() else []
    return images, torch.from_numpy(np.concatenate(labels)), classes


def load_folder(
    root: str | os.PathLike | None,
    *,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder tree, as RGB, resized and centre-cropped (decoded once)."""
    dataset = scan_folder(root)
    paths = [path for path, _ in dataset.samples]
    key = {
        "source": "folder",
        "image_size": image_size,
        "transform": FOLDER_TRANSFORM,
        "pillow": PIL.__version__,
        "torchvision": torchvision_module().__version__,
        "files": file_signature(Path(dataset.root), paths),
    }
    return load_cached(
        resolve_cache_dir(cache_dir),
        key,
        (len(paths), 3, image_size, image_size),
        lambda: decode_folder(dataset, image_size=image_size),
    )


def scan_folder(root: str | os.PathLike | None) -> torchvision.datasets.ImageFolder:
    """The ImageFolder listing of ``root`` (nothing decoded yet), or an error that says why not."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

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
        return torchvision_module().datasets.ImageFolder(str(root))
    except FileNotFoundError as err:
        # ImageFolder's own errors for no class folders / class folders without images.
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
        hint = (
            f"; found {len(loose)} images directly in {root}, move them into a subfolder"
            if loose
            else ""
        )
        raise ValueError(f"no usable images in {root} ({err}); {layout}{hint}") from err


def decode_folder(
    dataset: torchvision.datasets.ImageFolder, *, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode, resize and centre-crop every image of the listing: images, labels, class names."""
    from torchvision.transforms import v2

    # Resize on the PIL image (its antialiased filters), then crop; an image already at
    # image_size passes through untouched. A change here needs a new FOLDER_TRANSFORM.
    transform = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])
    images = torch.empty((len(dataset), 3, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(dataset.samples):
        try:
            with Image.open(path) as img:
                images[i] = transform(img.convert("RGB"))
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return images, labels, list(dataset.classes)


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
