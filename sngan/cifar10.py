"""CIFAR-10's python-version files, read without trusting them.

The batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) are Python pickles: a plain
``pickle.load`` of a planted file runs whatever the file says. So each file is

1. checked against the md5 sum torchvision lists for the published archive's file
   (``MD5``; about 0.3 s for the 170 MB), and
2. read, whatever its md5, by ``SafeUnpickler``: it builds only what CIFAR-10's pickles hold
   (dicts, lists, strings, bytes, numbers and numpy arrays) and refuses every other global by
   name, so no file can run code through it.

A file with another md5 that still reads as a CIFAR-10 batch (the same arrays re-pickled with
another protocol, say) is used with a warning; one that does not read is one line naming the
file, what is wrong, and what to do.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DIR",
    "MD5",
    "SIZE",
    "TEST_FILES",
    "TRAIN_FILES",
    "URL",
    "DatasetFileError",
    "SafeUnpickler",
    "read_batch",
    "read_batches",
]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SIZE = 32
NUM_CLASSES = 10
# The published files' md5 sums, as torchvision.datasets.CIFAR10 lists them (tests/test_data.py
# checks that they still agree).
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


class DatasetFileError(ValueError):
    """A dataset file that cannot be used; the one-line message names it and what to do."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes with protocol <= 2 as _codecs.encode(text, "latin1"): that call
    # is allowed, with that encoding only.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refuses _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, bytes, numbers and numpy arrays only.

    The only globals it resolves are numpy's ndarray reconstruction (``_reconstruct``,
    ``ndarray``, ``dtype``, ``scalar``, protocol 5's ``_frombuffer``, under numpy 1's and 2's
    module names) and latin-1 ``_codecs.encode``; any other global is an UnpicklingError naming
    it, raised before it is looked up, let alone called.
    """

    ALLOWED = frozenset(
        (module, name)
        for core in ("numpy.core", "numpy._core")
        for module, name in (
            (f"{core}.multiarray", "_reconstruct"),
            (f"{core}.multiarray", "scalar"),
            (f"{core}.numeric", "_frombuffer"),
        )
    ) | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to the global {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core under numpy 2
            return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("it refers to a persistent object")


def _fix(path: Path) -> str:
    """What to do about a bad batch file: the published md5, and how to get the file again."""
    return (
        f"it should be the file of {URL} (md5 {MD5[path.name]}): delete {path.parent} and run "
        f"again to download it (data.download=true), or extract that archive there yourself"
    )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """One batch file: (N, 3, 32, 32) uint8 images, (N,) int64 labels, and whether its md5 is
    the published one. DatasetFileError, naming the file, for anything that is not a batch."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetFileError(f"cannot read CIFAR-10 file {path}: {err.strerror or err}") from err
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    published = md5 == MD5.get(path.name)
    try:
        entry = SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        why = str(err)
        if why.startswith(("it refers", "refuses")):  # ours: the file asks for code
            raise DatasetFileError(
                f"CIFAR-10 file {path} is not a CIFAR-10 batch: {why}, which sngan does not "
                f"load (loading it could run code); its md5 is {md5}, {_fix(path)}"
            ) from err
        raise _damaged(path, md5, err) from err
    except Exception as err:  # truncated or random bytes raise EOFError, ValueError, ...
        raise _damaged(path, md5, err) from err
    images, labels = _arrays(path, entry, md5)
    return images, labels, published


def _damaged(path: Path, md5: str, err: Exception) -> DatasetFileError:
    reason = str(err).split("\n")[0] or type(err).__name__
    return DatasetFileError(
        f"CIFAR-10 file {path} is damaged or truncated ({reason}); its md5 is {md5}, {_fix(path)}"
    )


def _arrays(path: Path, entry: object, md5: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's dict as arrays, or DatasetFileError saying what it holds instead."""
    expected = "a dict with 'data' (N, 3072) uint8 and 'labels' (N integers in 0..9)"
    found = None
    if not isinstance(entry, dict):
        found = f"a {type(entry).__name__}"
    elif "data" not in entry or "labels" not in entry:
        found = f"a dict with the keys {sorted(map(str, entry))}"
    else:
        try:
            data = np.asarray(entry["data"])
            labels = np.asarray(entry["labels"])
        except (TypeError, ValueError) as err:
            found = f"entries that are not arrays ({err})"
        else:
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
                found = f"'data' of {data.dtype} {data.shape}"
            elif labels.shape != (len(data),) or labels.dtype.kind not in "iu":
                found = f"'labels' of {labels.dtype} {labels.shape} for {len(data)} images"
            elif len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                found = f"labels from {labels.min()} to {labels.max()}"
    if found is not None:
        raise DatasetFileError(
            f"CIFAR-10 file {path} is not a CIFAR-10 batch: expected {expected}, found {found}; "
            f"its md5 is {md5}, {_fix(path)}"
        )
    # Rows are CHW, 1,024 red values, then green, then blue.
    return data.reshape(-1, 3, SIZE, SIZE), labels.astype(np.int64)


def read_batches(base: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``names`` of ``base``, concatenated; one warning for those whose md5 is not
    the published one but which read as CIFAR-10 batches."""
    images, labels, other = [], [], []
    for name in names:
        x, y, published = read_batch(base / name)
        images.append(x)
        labels.append(y)
        if not published:
            other.append(name)
    if other:
        warnings.warn(
            f"CIFAR-10 files {', '.join(other)} in {base} are not the published ones (their md5 "
            "sums differ); they were read as re-exports by a reader that cannot run code, and "
            "hold CIFAR-10's arrays and labels",
            stacklevel=3,
        )
    return np.concatenate(images), np.concatenate(labels)
