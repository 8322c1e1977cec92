"""The image store: a training set prepared once into one uint8 array on disk, memory-mapped.

A source whose images must be decoded or resized (a folder of image files, STL-10 below 96
pixels, ImageNet) is prepared once, by worker processes in parallel, into one file that every
later run, and every rank of a node, memory-maps: the page cache then holds one copy for all of
them and no process holds the set in its own memory.

On disk, in the cache directory (``data.cache_dir``; default ``$XDG_CACHE_HOME/sngan/images``,
else ``~/.cache/sngan/images``), under a name made of the source, the size and a digest of the key:

- ``<stem>.npy``: the images, uint8 ``(N, 3, H, W)`` in numpy's own format
  (``np.load(path, mmap_mode="r")``); a store is moved by moving its two files.
- ``<stem>.json``: written last, the marker that the store is complete: the key's digest, the
  number of images, their labels, the class names and the images left out.

The key holds every source file's name, size and modification time, the image size and the
version of the transform, so any change to the files or to the code that makes the pixels
prepares a new store; old ones can be deleted at any time.

Preparation (``prepare``) splits the set into chunks of ``CHUNK`` images. Each worker decodes a
chunk and writes its rows straight into the file at their offset (``os.pwrite``: nothing passes
through the parent, and no process keeps the pixels in its memory, so RAM does not grow with
N). The parent records each finished chunk in ``<stem>.partial.done``, one byte per chunk, and
shows images/s and the time left. A killed preparation continues where it stopped when run
again; the array is ``<stem>.partial.npy`` until every chunk is done, then it is synced and
renamed, and the marker written. Before the first image the whole file is allocated, so a disk
without room is refused at once with the bytes needed and free.

A store is never changed in place once complete (preparing it again writes a new file and renames
it over the old one, which mappings of the old file survive): delete it, do not edit it, while a
run maps it.

An image that cannot be read is left out with a warning naming it (all of them are listed in
the marker): the last images of the set move into the gaps, so the store holds every readable
image and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from sngan import atomic

STORE_FORMAT = 2
CHUNK = 256  # images per task: the unit of progress, of resumption and of a worker's write
# A chunk's decode returns its rows and, per image that could not be read, (row, why).
Fill = Callable[[], tuple[np.ndarray, list[tuple[int, str]]]]


class StoreError(OSError):
    """The store cannot be made (no room on its disk); the one-line message says what to do."""


class PreparationInterrupted(KeyboardInterrupt):
    """Ctrl-C while preparing: the message says how far it got and that a re-run continues."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sngan/images``, or ``~/.cache/sngan/images`` where that is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path("~/.cache").expanduser()
    return base / "sngan" / "images"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` as a path, or the default cache directory for None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def file_signature(base: Path, paths: Sequence[str] | Sequence[Path]) -> list[list]:
    """[name relative to base, size, mtime in ns] per file: what makes a store stale."""
    prefix = os.path.join(str(base), "")
    signature = []
    for path in map(str, paths):
        st = os.stat(path)
        # String slicing, not Path.relative_to: this runs per file at every start.
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, base)
        signature.append([rel.replace(os.sep, "/"), st.st_size, st.st_mtime_ns])
    return signature


def store_stem(cache_dir: Path, key: dict) -> tuple[Path, str]:
    """The store's path without suffix, and the key's full digest."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"{key['source']}-{key['image_size']}px-{digest[:20]}", digest


@dataclass(frozen=True)
class Store:
    """A complete store: its images memory-mapped, its labels and class names."""

    path: Path | None  # the .npy file (None: decoded into memory, the cache was not writable)
    images: np.ndarray  # (N, 3, H, W) uint8, a copy-on-write memory map of ``path``
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    left_out: list[str]  # why each unreadable source image is not in the store
    digest: str  # of its key (the files' names, sizes, mtimes; size; transform): its identity

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def _paths(stem: Path) -> dict[str, Path]:
    def named(suffix: str) -> Path:
        return stem.with_name(stem.name + suffix)

    return {
        "npy": named(".npy"),
        "meta": named(".json"),
        "partial": named(".partial.npy"),
        "done": named(".partial.done"),
        "bad": named(".partial.bad"),
    }


# What reading a store's files can raise when they are damaged or foreign.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError)


def open_store(stem: Path, digest: str, shape: tuple[int, int, int, int]) -> Store | None:
    """The complete store at ``stem``, or None when it is absent or cannot be used (a damaged
    or foreign one costs a warning and is prepared again)."""
    p = _paths(stem)
    if not p["meta"].is_file():  # written last: without it the store is absent or unfinished
        return None
    try:
        return _read(p, _meta(p), digest, shape)
    except _UNREADABLE as err:
        warnings.warn(
            f"ignoring image store {p['npy']} ({type(err).__name__}: {err}); preparing it again",
            stacklevel=4,
        )
        return None


def open_prepared(npy: Path, image_size: int) -> Store:
    """The store in ``npy`` and the ``.json`` beside it, as sngan-prepare wrote them, used as
    it is (``data.store``: its source files need not be there). A missing, damaged or
    other-size store is a ValueError with a one-line message."""
    p = _paths(npy.with_suffix(""))
    if not (npy.is_file() and p["meta"].is_file()):
        raise ValueError(
            f"data.store={npy} is not a prepared image store: it needs {npy.name} and "
            f"{p['meta'].name} side by side, as sngan-prepare writes them"
        )
    try:
        meta = _meta(p)
        shape = tuple(int(s) for s in meta["shape"])
        if shape[2:] != (image_size, image_size):
            raise ValueError(
                f"it holds {shape[2]}x{shape[3]} images, and data.image_size={image_size}"
            )
        return _read(p, meta, meta["key"], shape)
    except _UNREADABLE as err:
        raise ValueError(f"data.store={npy} cannot be used: {err}") from err


def _meta(p: dict[str, Path]) -> dict[str, Any]:
    """A store's ``.json``: its key's digest, shape, labels, classes and left-out images."""
    return json.loads(p["meta"].read_text(encoding="utf-8"))


def _read(p: dict[str, Path], meta: dict[str, Any], digest: str, shape: tuple[int, ...]) -> Store:
    """The complete store of ``p``'s files and their ``meta``, checked against the key's
    digest and the shape."""
    if meta["format"] != STORE_FORMAT or meta["key"] != digest:
        raise ValueError(f"written for another key or format ({meta['key']}, {meta['format']})")
    # "c": copy-on-write, so torch may wrap it (read-only maps warn); nothing writes to it.
    images = np.load(p["npy"], mmap_mode="c", allow_pickle=False)
    count = int(meta["count"])
    labels = np.asarray(meta["labels"], dtype=np.int64)
    if images.dtype != np.uint8 or images.shape != shape or labels.shape != (count,):
        raise ValueError(
            f"holds {images.dtype} images of shape {images.shape} and {labels.shape[0]} "
            f"labels, expected uint8 {shape}"
        )
    return Store(
        p["npy"], images[:count], labels, list(meta["classes"]), list(meta["left_out"]), digest
    )


def load_or_prepare(
    cache_dir: Path,
    key: dict,
    *,
    shape: tuple[int, int, int, int],
    labels: np.ndarray,
    classes: list[str],
    fills: Callable[[int, int], Fill],
    workers: int = 1,
    progress: bool = True,
) -> Store:
    """The store of ``key``, prepared first if it is not complete yet.

    ``shape``: (N, 3, H, W) of the whole source; ``labels`` its N labels; ``fills(start,
    stop)``: a picklable function that decodes images ``start:stop``. Where the cache directory
    cannot be written at all (a full disk is a StoreError instead), the images are decoded into
    memory, with a warning, and the Store has no path.
    """
    stem, digest = store_stem(cache_dir, key)
    store = open_store(stem, digest, shape)
    if store is not None:
        return store
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(stem.with_name(f".{stem.name}.lock"), "w")  # noqa: SIM115 (held below)
    except OSError as err:
        warnings.warn(
            f"could not write the image store in {cache_dir} ({type(err).__name__}: {err}); "
            "the images are decoded into memory, and the next run will decode them again",
            stacklevel=4,
        )
        return _in_memory(shape, labels, classes, fills, digest)
    with lock, _holding(lock, stem):
        # Another process (a rank of this node, a run beside this one) may have prepared it
        # while this one waited for the lock.
        store = open_store(stem, digest, shape)
        if store is not None:
            return store
        return prepare(stem, digest, shape, labels, classes, fills, workers, progress)


def _in_memory(
    shape: tuple[int, int, int, int],
    labels: np.ndarray,
    classes: list[str],
    fills: Callable[[int, int], Fill],
    digest: str,
) -> Store:
    """The store's images decoded into memory, in this process: where none can be written."""
    images = np.zeros(shape, dtype=np.uint8)
    bad: dict[int, str] = {}
    for start in range(0, shape[0], CHUNK):
        rows, chunk_bad = fills(start, min(start + CHUNK, shape[0]))()
        images[start : start + len(rows)] = rows
        bad.update((start + i, why) for i, why in chunk_bad)
    kept = _compact(images, labels.copy(), bad)
    return Store(None, images[: len(kept)], kept, classes, _left_out(bad), digest)


@contextlib.contextmanager
def _holding(lock: IO[str], stem: Path) -> Iterator[None]:
    """One preparer per store: an exclusive flock on its ``.<stem>.lock``; the others wait."""
    import fcntl

    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"sngan: waiting for another process preparing {stem.name}.npy", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:  # a filesystem without flock: nothing to coordinate with
        pass
    yield


def prepare(
    stem: Path,
    digest: str,
    shape: tuple[int, int, int, int],
    labels: np.ndarray,
    classes: list[str],
    fills: Callable[[int, int], Fill],
    workers: int,
    progress: bool,
) -> Store:
    """Fill the store chunk by chunk (continuing a killed preparation), then mark it complete."""
    from tqdm import tqdm

    p = _paths(stem)
    n = shape[0]
    chunks = [(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]
    offset, new = _allocate(p["partial"], p["npy"], shape)
    done = _done_record(p["done"], len(chunks), new)
    todo = [i for i, flag in enumerate(done) if not flag]
    row_bytes = int(np.prod(shape[1:]))
    prepared = sum(chunks[i][1] - chunks[i][0] for i in range(len(chunks)) if done[i])
    bar = tqdm(
        total=n,
        initial=prepared,
        unit="img",
        desc=f"preparing {p['npy'].name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    tasks = (
        partial(_write_chunk, p["partial"], offset + start * row_bytes, fills(start, stop))
        for start, stop in (chunks[i] for i in todo)
    )
    with bar, open(p["done"], "r+b") as record:
        try:
            for i, bad in zip(todo, _run(tasks, min(workers, len(todo))), strict=True):
                start, stop = chunks[i]
                if bad:
                    with open(p["bad"], "a", encoding="utf-8") as f:
                        f.writelines(json.dumps([start + j, why]) + "\n" for j, why in bad)
                os.pwrite(record.fileno(), b"\x01", i)  # after its rows and left-out images
                prepared += stop - start
                bar.update(stop - start)
        except OSError as err:  # a worker's write (a full disk where nothing was allocated)
            raise atomic.as_write_error(err, p["partial"]) from err
        except KeyboardInterrupt:  # the finished chunks are recorded: a re-run continues
            raise PreparationInterrupted(
                f"preparing {p['npy']} stopped at {prepared:,} of {n:,} images, which are kept: "
                "the same command continues from there"
            ) from None
    return _finish(p, digest, shape, labels, classes)


def _allocate(path: Path, final: Path, shape: tuple[int, int, int, int]) -> tuple[int, bool]:
    """Create (or reopen) the partial array with all its bytes allocated: its data offset, and
    whether it was created now.

    The free space is checked and the whole file allocated before the first image, so a disk
    without room is one clear error now, instead of a failed write (or a SIGBUS in a memory map)
    hours later.
    """
    new = not path.is_file()
    have = 0 if new else path.stat().st_blocks * 512  # a continued preparation has some already
    needed = int(np.prod(shape)) + 4096 - have  # the rows, and numpy's header (< 4 kB)
    free = atomic.free_bytes(path.parent)

    def no_room() -> StoreError:
        return StoreError(
            f"not enough space for the image store {final}: it needs "
            f"{atomic.describe_bytes(max(needed, 0))} more, {atomic.describe_bytes(free or 0)} "
            f"are free in {path.parent}; free some space, or put the store on a larger disk "
            "with data.cache_dir=<dir>"
        )

    if free is not None and free < needed:
        raise no_room()
    try:
        if new:
            header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
            del header  # the header is written, the file sized; pwrite fills the rows
        array = np.load(path, mmap_mode="r")
        offset, size = array.offset, array.offset + array.nbytes
        del array
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if atomic.is_disk_full(err):
                raise no_room() from err
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here
                raise
        finally:
            os.close(fd)
    except BaseException:
        if new:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return offset, new


def _done_record(path: Path, chunks: int, new: bool) -> bytearray:
    """Which chunks are done (one byte each), read from ``path`` or started empty (always for a
    new array: a record without its array is worthless)."""
    if not new and path.is_file() and path.stat().st_size == chunks:
        return bytearray(path.read_bytes())
    path.write_bytes(bytes(chunks))
    return bytearray(chunks)


def _write_chunk(path: Path, at: int, fill: Fill) -> list[tuple[int, str]]:
    """Decode one chunk and write its rows at byte ``at`` of the array; its unreadable images."""
    rows, bad = fill()
    data = np.ascontiguousarray(rows).data
    fd = os.open(path, os.O_WRONLY)
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], at + written)
    finally:
        os.close(fd)
    return bad


def _run(tasks: Iterator[Callable[[], list]], workers: int) -> Iterator[list]:
    """Each task's result, in order: in this process for one worker, else in a pool of spawned
    processes with a bounded number of tasks in flight (the queue does not grow with N)."""
    if workers <= 1:
        for task in tasks:
            yield task()
        return
    # spawn, not fork: the parent may hold torch's thread pools, which a fork would copy broken.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending = []
        for task in tasks:
            pending.append(pool.submit(task))
            while len(pending) >= 4 * workers:
                wait(pending[:1], return_when=FIRST_COMPLETED)
                while pending and pending[0].done():
                    yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _finish(
    p: dict[str, Path],
    digest: str,
    shape: tuple[int, int, int, int],
    labels: np.ndarray,
    classes: list[str],
) -> Store:
    """Close the gaps of unreadable images, sync, rename and write the marker."""
    bad: dict[int, str] = {}
    if p["bad"].is_file():
        for line in p["bad"].read_text(encoding="utf-8").splitlines():
            index, why = json.loads(line)
            bad[int(index)] = why
    images = np.load(p["partial"], mmap_mode="r+")
    kept = _compact(images, labels.copy(), bad)
    if len(kept) == 0:
        raise StoreError(f"none of the {shape[0]} images could be read: {next(iter(bad.values()))}")
    images.flush()
    del images
    with open(p["partial"], "rb") as f:
        os.fsync(f.fileno())
    os.replace(p["partial"], p["npy"])
    left_out = _left_out(bad)
    meta = {
        "format": STORE_FORMAT,
        "key": digest,
        "count": len(kept),
        "shape": list(shape),
        "labels": kept.tolist(),
        "classes": classes,
        "left_out": left_out,
    }
    atomic.write_text_atomic(p["meta"], json.dumps(meta))
    for name in ("done", "bad"):
        with contextlib.suppress(OSError):
            p[name].unlink()
    store = open_store(p["npy"].with_suffix(""), digest, shape)
    assert store is not None
    return store


def _left_out(bad: dict[int, str]) -> list[str]:
    """The reasons, in the source's order, each also as a warning (the first ten, then a count)."""
    left_out = [bad[i] for i in sorted(bad)]
    for why in left_out[:10]:
        warnings.warn(f"left out of the training set: {why}", stacklevel=3)
    if len(left_out) > 10:
        warnings.warn(
            f"left out {len(left_out)} unreadable images in all; the store's .json lists them",
            stacklevel=3,
        )
    return left_out


def _compact(images: np.ndarray, labels: np.ndarray, bad: dict[int, str]) -> np.ndarray:
    """Move the last good rows (and labels) into the rows of unreadable images, in place;
    the labels of the ``N - len(bad)`` rows kept."""
    keep = len(images) - len(bad)
    tail = [i for i in range(keep, len(images)) if i not in bad]
    for hole, source in zip(sorted(h for h in bad if h < keep), tail, strict=True):
        images[hole] = images[source]
        labels[hole] = labels[source]
    return labels[:keep]


# -- decoding -------------------------------------------------------------------------------------


def decode_image(path: str, size: int) -> np.ndarray:
    """One image file as (3, size, size) uint8: the centre square of its shorter side, resized.

    JPEG files are decoded at a reduced DCT scale first (Pillow's ``draft``: 1/2, 1/4 or 1/8,
    while both sides stay at least ``size``), so a 500x375 photo is not fully decoded to make a
    128x128 one. The crop and the (antialiased, bilinear) resize are one ``Image.resize``.
    """
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        rgb.load()
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(square).transpose(2, 0, 1)


def decode_files(paths: Sequence[str], size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``decode_image`` of each path; a file that cannot be read is a zero row and its reason."""
    rows = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    bad = []
    for i, path in enumerate(paths):
        try:
            rows[i] = decode_image(path, size)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            bad.append((i, f"cannot read image {path}: {err}"))
    return rows, bad
