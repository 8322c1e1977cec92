"""Training images: a data source turned into uint8 images and labels.

A source (``cifar10``, ``stl10``, ``folder``, ``synthetic``) turns into ``(N, 3, H, W)`` uint8
images and ``(N,)`` int64 labels on the CPU (``sngan.batches`` then serves them). Sources that
must be decoded or resized (``folder``, ``stl10`` below 96 px) are prepared once, in parallel,
into ``sngan.image_store``'s file, which every later run memory-maps: their images tensor is a
view of that map, not a copy in memory.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import PIL
import torch
import torch.nn.functional as F

from sngan import cifar10, image_store
from sngan.image_store import Store, file_signature, resolve_cache_dir

if TYPE_CHECKING:
    import torchvision

# torchvision is imported where a dataset is fetched or read, not here: importing it takes seconds
# (it loads torch._dynamo), and the CLI imports this module to check a config and refuse a bad one.

SOURCES = ("cifar10", "stl10", "folder", "imagenet", "synthetic")
STORE_SOURCES = ("folder", "imagenet", "stl10")  # prepared into an image store (stl10: resized)

DEFAULT_ROOT = Path("~/.cache/sngan/data")
CIFAR10_URL = cifar10.URL
CIFAR10_DIR = cifar10.DIR
CIFAR10_TRAIN_FILES = cifar10.TRAIN_FILES
CIFAR10_TEST_FILES = cifar10.TEST_FILES
CIFAR10_SIZE = cifar10.SIZE
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

# Bump a version whenever the code that makes a source's pixels changes: the store's key holds
# it, so stores made by the old code are never read again (sngan.image_store).
FOLDER_TRANSFORM = "pil-draft+centre-square+resize-bilinear/2"

# ILSVRC2012's CLS-LOC training set: <root>/train/<wnid>/<wnid>_<n>.JPEG, 1,000 synsets, 1,281,167
# images (the tree torchvision.datasets.ImageNet and the peers read; the DET set has 200 synsets
# and other folders, and trains garbage: sngan_projection#12).
IMAGENET_URL = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"
IMAGENET_TRAIN = "train"
IMAGENET_CLASSES = 1000
WNID = re.compile(r"n\d{8}")
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
    workers: int | None = 1,
    progress: bool = False,
    classes: int | None = None,
    store: str | os.PathLike | None = None,
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
    so the shorter side is ``image_size`` and centre-cropped to a square; ``imagenet`` the same of
    ILSVRC2012's CLS-LOC tree ``<root>/train/<wnid>/*.JPEG`` (``classes`` wnid folders, 1,000 by
    default, labels in sorted wnid order as torchvision's). ``synthetic`` makes
    ``num_images`` smooth random images from ``seed``; ``num_images`` and ``seed`` only apply to it.

    ``folder``, ``imagenet`` and resized ``stl10`` images come from their store in ``cache_dir``
    (default ``$XDG_CACHE_HOME/sngan/images``, else ``~/.cache/sngan/images``), prepared first by
    ``workers`` processes (None: every CPU this process may use) if it is not there: see
    ``sngan.image_store``. Their images tensor maps the store's file. ``store``: a prepared
    store's .npy (``data.store``), used as it is; the source's files need not exist.
    """
    # The values are checked once, with the config (sngan.config.validate), not again here.
    prepared = source_store(
        source,
        root=root,
        image_size=image_size,
        download=download,
        split=split,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
        classes=classes,
        store=store,
    )
    if prepared is not None:
        return as_tensors(prepared)
    return read_source(
        source,
        root=root,
        image_size=image_size,
        download=download,
        train=train,
        split=split,
        num_images=num_images,
        seed=seed,
    )


def read_source(
    source: str,
    *,
    root: str | os.PathLike | None,
    image_size: int,
    download: bool,
    split: str,
    num_images: int,
    seed: int,
    train: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sources read as they are, for which ``source_store`` has no store: cifar10, stl10
    at 96 pixels, synthetic (``load_images`` says what each is)."""
    if source == "cifar10":
        return load_cifar10(_data_root(root), train=train, download=download)
    if source == "stl10":  # at 96 pixels: the binaries as they are
        base = _data_root(root) / STL10_DIR
        parts = [read_stl10_images(base / n) for n in STL10_FILES[split] if n.endswith("_X.bin")]
        labels = stl10_labels(base, split, [len(p) for p in parts])
        return torch.from_numpy(np.concatenate(parts)), torch.from_numpy(labels)
    if source == "synthetic":
        return make_synthetic(num_images, image_size=image_size, seed=seed)
    raise ValueError(f"unknown data source {source!r}; valid sources are: {', '.join(SOURCES)}")


def source_store(
    source: str,
    *,
    root: str | os.PathLike | None,
    image_size: int,
    download: bool,
    split: str,
    cache_dir: str | os.PathLike | None,
    workers: int | None,
    progress: bool,
    classes: int | None = None,
    store: str | os.PathLike | None = None,
) -> Store | None:
    """The image store behind a source, prepared now if it is not complete; None for the
    sources read as they are (cifar10, synthetic, stl10 at 96 pixels). ``store``: a prepared
    store's .npy, used as it is, whatever is at ``root``."""
    if store is not None:
        return image_store.open_prepared(Path(store).expanduser(), image_size)
    if source == "folder":
        return folder_store(
            root, image_size=image_size, cache_dir=cache_dir, workers=workers, progress=progress
        )
    if source == "imagenet":
        return imagenet_store(
            _data_root(root),
            image_size=image_size,
            classes=classes,
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
        )
    if source == "stl10":
        return stl10_store(
            _data_root(root),
            split=split,
            image_size=image_size,
            download=download,
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
        )
    return None


def _data_root(root: str | os.PathLike | None) -> Path:
    return Path(root if root is not None else DEFAULT_ROOT).expanduser()


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
    # torchvision only fetches and extracts (checking the archive's md5); sngan.cifar10 reads.
    fetch_missing(
        "CIFAR-10",
        base,
        names,
        CIFAR10_URL,
        download,
        lambda: torchvision_module().datasets.CIFAR10(str(root), train=train, download=True),
    )

    # Checked against the published md5 sums and read by an unpickler that cannot run code.
    images, labels = cifar10.read_batches(base, names)
    return torch.from_numpy(images), torch.from_numpy(labels)


def stl10_store(
    root: Path,
    *,
    split: str,
    image_size: int,
    download: bool,
    cache_dir: str | os.PathLike | None,
    workers: int | None,
    progress: bool,
) -> Store | None:
    """STL-10 resized to ``image_size``, prepared once into the store (None at 96 pixels)."""
    base = root / STL10_DIR
    names = STL10_FILES[split]
    # As for CIFAR-10, torchvision only fetches and extracts (and, being torchvision, reads the
    # arrays once, which we drop); our own reader does the rest.
    fetch_missing(
        "STL-10",
        base,
        names,
        STL10_URL,
        download,
        lambda: torchvision_module().datasets.STL10(str(root), split=split, download=True),
    )
    if image_size == STL10_SIZE:
        return None
    binaries = [str(base / name) for name in names if name.endswith("_X.bin")]
    labels = stl10_labels(base, split, [len(read_stl10_images(Path(b))) for b in binaries])
    key = {
        "source": "stl10",
        "split": split,
        "image_size": image_size,
        "transform": STL10_TRANSFORM,
        "torch": torch.__version__,
        "files": file_signature(base, [base / name for name in names]),
    }
    return image_store.load_or_prepare(
        resolve_cache_dir(cache_dir),
        key,
        shape=(len(labels), 3, image_size, image_size),
        labels=labels,
        classes=stl10_classes(base),
        fills=lambda start, stop: partial(resize_stl10_rows, binaries, start, stop, image_size),
        workers=_workers(workers),
        progress=progress,
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


def stl10_labels(base: Path, split: str, counts: list[int]) -> np.ndarray:
    """A split's labels: train_y.bin's (0..9) for its training images, -1 for unlabelled ones."""
    labels = []
    if split == "train+unlabeled":
        on_disk = np.fromfile(base / "train_y.bin", dtype=np.uint8)
        if len(on_disk) != counts[0] or not np.isin(on_disk, np.arange(1, 11)).all():
            found = (
                f"{len(on_disk)}, in {on_disk.min()}..{on_disk.max()}" if len(on_disk) else "none"
            )
            raise ValueError(
                f"{base / 'train_y.bin'}: expected {counts[0]} labels in 1..10, one per "
                f"image of train_X.bin; found {found}"
            )
        labels.append(on_disk.astype(np.int64) - 1)  # 1..10 on disk, 0..9 as torchvision has them
    labels.append(np.full(counts[-1], -1, dtype=np.int64))
    return np.concatenate(labels)


def stl10_classes(base: Path) -> list[str]:
    class_file = base / "class_names.txt"
    return class_file.read_text().splitlines() if class_file.is_file() else []


def resize_stl10_rows(
    binaries: list[str], start: int, stop: int, image_size: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Images ``start:stop`` of the binaries read as one sequence, resized to ``image_size``.

    torch's uint8 path (PIL's fixed-point antialiased filter): no float copy, and the same
    pixels as PIL's resize. Runs in a store's worker processes.
    """
    parts = [read_stl10_images(Path(b)) for b in binaries]
    rows, first = [], 0
    for part in parts:
        lo, hi = max(start - first, 0), min(stop - first, len(part))
        if lo < hi:
            rows.append(np.ascontiguousarray(part[lo:hi]))
        first += len(part)
    chunk = torch.from_numpy(np.concatenate(rows))
    if image_size == 1:
        # torch 2.x's uint8 kernel trips an internal assert for a 1x1 output from
        # (N, C, H, W) memory; its channels-last path is fine.
        chunk = chunk.contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(
        chunk, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.contiguous().numpy(), []


def folder_store(
    root: str | os.PathLike | None,
    *,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = 1,
    progress: bool = False,
    source: str = "folder",
) -> Store:
    """Every image of an ImageFolder tree as RGB, its shorter side's centre square resized
    (``sngan.image_store.decode_image``), prepared once into the store."""
    dataset = scan_folder(root)
    paths = [path for path, _ in dataset.samples]
    key = {
        "source": source,
        "image_size": image_size,
        "transform": FOLDER_TRANSFORM,
        "pillow": PIL.__version__,
        "files": file_signature(Path(dataset.root), paths),
    }
    return image_store.load_or_prepare(
        resolve_cache_dir(cache_dir),
        key,
        shape=(len(paths), 3, image_size, image_size),
        labels=np.asarray(dataset.targets, dtype=np.int64),
        classes=list(dataset.classes),
        fills=lambda start, stop: partial(image_store.decode_files, paths[start:stop], image_size),
        workers=_workers(workers),
        progress=progress,
    )


def imagenet_store(
    root: Path,
    *,
    image_size: int,
    classes: int | None,
    cache_dir: str | os.PathLike | None,
    workers: int | None,
    progress: bool,
) -> Store:
    """ILSVRC2012's CLS-LOC training images, prepared once into the store as a folder's are.

    ``root/train`` must hold ``classes`` (default 1,000) folders named by WordNet ids and
    nothing else: a missing tree, the DET set's, or another number of classes is one line
    saying what was found and what is expected, before anything is decoded.
    """
    expected = IMAGENET_CLASSES if classes is None else classes
    train = root / IMAGENET_TRAIN
    if not train.is_dir():
        raise FileNotFoundError(
            f"ImageNet not found: expected ILSVRC2012's CLS-LOC training set as {train}/<wnid>/"
            f"*.JPEG ({expected} class folders). Download ILSVRC2012_img_train.tar from "
            f"{IMAGENET_URL} (registration needed) and extract it there, each n########.tar into "
            "its own folder, or set data.root=<dir> to the directory that holds train/"
        )
    folders = sorted(p.name for p in train.iterdir() if p.is_dir())
    foreign = [name for name in folders if not WNID.fullmatch(name)]
    if foreign or len(folders) != expected:
        shown = ", ".join(foreign[:3]) + (", ..." if foreign[3:] else "")
        what = (
            f"folders that are not WordNet ids ({shown})"
            if foreign
            else f"{len(folders)} class folders"
        )
        det = " (the DET set has 200 synsets: use CLS-LOC's train/)" if len(folders) == 200 else ""
        raise ValueError(
            f"{train} is not ILSVRC2012's CLS-LOC training set: it has {what}, expected "
            f"{expected} folders named n######## of .JPEG images{det}; data.classes=<n> "
            "trains on a subset of that many classes"
        )
    return folder_store(
        train,
        image_size=image_size,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
        source="imagenet",
    )


def as_tensors(store: Store) -> tuple[torch.Tensor, torch.Tensor]:
    """A store's images (a view of its memory map, no copy) and labels as torch tensors."""
    return torch.from_numpy(store.images), torch.from_numpy(store.labels)


def _workers(workers: int | None) -> int:
    """None: every CPU this process may run on."""
    if workers is not None:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


def make_synthetic(
    num_images: int, *, image_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (upsampled 4x4 noise tinted by a per-class colour), same for a seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_SYNTHETIC_CLASSES, (num_images,), generator=g)
    palette = torch.rand(NUM_SYNTHETIC_CLASSES, 3, 1, 1, generator=g)
    blobs = torch.rand(num_images, 3, 4, 4, generator=g)
    blobs = F.interpolate(blobs, size=(image_size, image_size), mode="bicubic", align_corners=False)
    # Half class colour, half blob: structure to learn, and labels a conditional model can use.
    x = 0.5 * palette[labels] + 0.5 * blobs  # (N, 3, H, W) in about [0, 1]
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels
