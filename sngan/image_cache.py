"""The decode-once cache of training images: uint8 arrays keyed by the files they came from.

A folder of 100,000 images is decoded on its first run only: the images (``.npy``) and their
labels and class names (``.json``) are stored under a key made of every file's name, size and
modification time, the image size and the version of the transform, so any change to the
files or the code misses and decodes again. Entries are written atomically and can be deleted
at any time; a cache that cannot be written or read costs a warning, never the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sngan/images``, or ``~/.cache/sngan/images`` where that is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path("~/.cache").expanduser()
    return base / "sngan" / "images"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` as a path, or the default cache directory for None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def file_signature(base: Path, paths: list[str] | list[Path]) -> list[list]:
    """[name relative to base, size, mtime in ns] per file: what makes a cache entry stale."""
    prefix = os.path.join(str(base), "")
    signature = []
    for path in map(str, paths):
        st = os.stat(path)
        # String slicing, not Path.relative_to: this runs per file on every load, cache hits too.
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, base)
        signature.append([rel.replace(os.sep, "/"), st.st_size, st.st_mtime_ns])
    return signature


def load_cached(
    cache_dir: Path,
    key: dict,
    shape: tuple[int, int, int, int],
    build: Callable[[], tuple[torch.Tensor, torch.Tensor, list[str]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels cached under ``key``; on a miss, ``build()``'s, stored for next time."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    stem = cache_dir / f"{key['source']}-{key['image_size']}px-{digest[:20]}"
    cached = read_cache_entry(stem, digest=digest, shape=shape)
    if cached is not None:
        return cached
    images, labels, classes = build()
    write_cache_entry(stem, digest=digest, images=images, labels=labels, classes=classes)
    return images, labels


def read_cache_entry(
    stem: Path, *, digest: str, shape: tuple[int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry's images and labels, or None when it is absent or cannot be used."""
    images_path, meta_path = _entry_paths(stem)
    try:
        if not meta_path.is_file():  # written last: without it the entry is absent or unfinished
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["format"] != CACHE_FORMAT or meta["key"] != digest:
            raise ValueError(f"written for another key or format ({meta['key']}, {meta['format']})")
        labels = np.asarray(meta["labels"], dtype=np.int64)
        # A plain load, not a memory map: as fast for a whole read (scripts/bench_data.py), and
        # the tensor stays valid whatever later happens to the file.
        images = np.load(images_path, allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != shape or labels.shape != shape[:1]:
            raise ValueError(
                f"holds {images.dtype} images of shape {images.shape} and {labels.shape[0]} "
                f"labels, expected uint8 {shape}"
            )
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        # Damaged or foreign entries cost a decode, never the run; the rewrite replaces them.
        warnings.warn(
            f"ignoring image cache entry {images_path} ({type(err).__name__}: {err}); "
            "decoding the images again",
            stacklevel=5,  # the caller of load_images
        )
        return None
    return torch.from_numpy(images), torch.from_numpy(labels)


def write_cache_entry(
    stem: Path,
    *,
    digest: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
) -> None:
    """Store images (.npy) and labels and class names (.json); warn, never raise, on failure."""
    images_path, meta_path = _entry_paths(stem)
    meta = {
        "format": CACHE_FORMAT,
        "key": digest,
        "shape": list(images.shape),
        "classes": classes,
        "labels": labels.tolist(),
    }
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        # The .npy first, the .json last: a reader takes an entry only once its .json is there.
        _write_atomically(images_path, lambda f: np.save(f, images.numpy(), allow_pickle=False))
        _write_atomically(meta_path, lambda f: f.write(json.dumps(meta).encode("utf-8")))
    except OSError as err:
        warnings.warn(
            f"could not write the image cache in {stem.parent} ({type(err).__name__}: {err}); "
            "the images are loaded, but the next run will decode them again",
            stacklevel=5,  # the caller of load_images
        )


def _entry_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def _write_atomically(path: Path, write: Callable) -> None:
    # A unique temporary name, fsynced, then renamed over the entry: a killed process or a full
    # disk leaves at most a hidden .tmp file that no reader opens, and two processes that fill
    # the same entry at once each replace it with a whole, identical file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
