"""Feature extractors' weights: found, checked without running code, handed over safely.

Two networks: torch-fidelity's Inception (``inception-v3-compat``: IS, FID, KID) and torchvision's
VGG16 (precision/recall). torch-fidelity loads either file with ``torch.load(path,
weights_only=False)`` (a file given as ``feature_extractor_weights_path``) or through torch hub
(also ``weights_only=False``), so a file that is not what it claims to be either fails only when
the first FID is computed, hours into a run, with a traceback, or, if crafted, runs code.

- ``find_weights(path, network)``: the file to use, ``path`` or torch hub's copy (downloaded if
  missing).
- ``check_weights(path, network)``: opens it with ``torch.load(weights_only=True)``, which refuses
  any object other than tensors and plain containers without running its code, and checks that
  it holds every tensor (name, shape, dtype) of the network. The expected tensors are read off
  the network's own class, built once on the meta device.
- ``safe_weights_file(path, network)``: the file to pass to torch-fidelity.
- ``checked_weights(path, network)``: all three, once per process at the edge (``sngan.job``);
  the result travels to the ``Evaluator``, which then checks nothing again.

Which file reaches torch-fidelity. Two ways were possible: pass the original once it has passed
``check_weights``, or pass a copy that sngan re-saved from the checked tensors. This module does
the second. torch-fidelity's unrestricted unpickler then only ever reads bytes that sngan's own
``torch.save`` wrote from a dict of plain tensors, so safety does not rest on the restricted and
the unrestricted load paths of ``torch.load`` agreeing on a file somebody else made (they need
not: without ``weights_only`` a TorchScript archive is dispatched to ``torch.jit.load``, and
``add_safe_globals`` changes only the restricted one), nor on the original staying unchanged
between the check and torch-fidelity's load. The copy lives in
``<torch hub>/checkpoints/sngan-checked/`` (or in ``cache_dir``), named by the SHA-256 of the
original, so it is made once per distinct file (Inception: about 95 MB) and re-made only when the
original's content changes; it is written to a temporary name, loaded back and compared tensor
by tensor with what was checked, then renamed into place. Registering a feature extractor of our
own that loads with ``weights_only=True`` was the other way to get there; it would change the
extractor's name, which torch-fidelity writes into its cached statistics, or replace
torch-fidelity's registry entry for ``inception-v3-compat``.

``*.num_batches_tracked`` (94 BatchNorm counters, unused in eval mode) may be absent: torch's
``BatchNorm`` fills them in when it loads a state dict without version metadata, as the re-saved
copy is, and files converted before torch 0.4.1 have none. Every tensor that is there, counters
included, must have exactly the expected shape and dtype.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)

from sngan import atomic

__all__ = [
    "INCEPTION",
    "CheckedWeights",
    "checked_weights",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "VGG16",
    "Network",
    "WeightsFileError",
    "check_weights",
    "expected_tensors",
    "file_digest",
    "find_weights",
    "safe_weights_file",
]

INCEPTION_URL = URL_INCEPTION_V3
INCEPTION_FILE = os.path.basename(urlparse(URL_INCEPTION_V3).path)
CHECKED_DIR = "sngan-checked"


class _ArchitectureOnly(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception with its weight loading skipped: only names, shapes, dtypes."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def _inception_architecture() -> nn.Module:
    # The constructor torch.loads its weights file; give it an empty dict of our own making.
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _ArchitectureOnly("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


@dataclass(frozen=True)
class Network:
    """A feature extractor whose weights file the metrics load."""

    name: str  # torch-fidelity's feature extractor
    label: str  # as messages name it
    owner: str  # whose file it is
    url: str  # where torch hub downloads it from
    key: str  # the config key that gives a local copy
    metrics: str  # what needs it
    architecture: Callable[[], nn.Module]  # the network whose state dict the file must be

    @property
    def file(self) -> str:
        return os.path.basename(urlparse(self.url).path)


INCEPTION = Network(
    "inception-v3-compat",
    "Inception",
    "torch-fidelity",
    INCEPTION_URL,
    "metrics.inception_weights",
    "FID/IS",
    _inception_architecture,
)
# torch-fidelity's vgg16 loads torchvision's ImageNet VGG16 whole, then drops its last layers.
VGG16 = Network(
    "vgg16",
    "VGG16",
    "torchvision",
    torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,
    "metrics.prc_weights",
    "Precision/recall",
    torchvision.models.vgg16,
)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since torch 1.6
# torch.save before 1.6 (and _use_new_zipfile_serialization=False): a protocol-2 pickle of
# torch's magic number 0x1950a86a20f9469cfc6c, which the pickle stores as a 10-byte LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_OPTIONAL_SUFFIX = ".num_batches_tracked"
_LISTED = 3  # names listed in a message before "..."


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the one-line message names it and why."""


def find_weights(path: str | os.PathLike | None = None, network: Network = INCEPTION) -> Path:
    """The weights file to load: ``path``, or torch hub's copy, downloaded if missing.

    Raises FileNotFoundError for a missing ``path`` and RuntimeError when the download fails,
    naming the file and both ways to provide it; callers can run it to fail early.
    """
    n = network
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{n.label} weights file not found: {path} ({n.key}). It should be {n.owner}'s "
                f"{n.file}, downloadable from {n.url}"
            )
        return path
    # Where torch hub (torch-fidelity's and torchvision's loaders) looks before it downloads.
    hub_file = _hub_checkpoints() / n.file
    if hub_file.is_file():
        return hub_file
    hub_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(n.url, str(hub_file), progress=False)
    except (OSError, RuntimeError) as err:  # URLError and socket timeouts are OSErrors
        raise RuntimeError(
            f"{n.metrics} need {n.owner}'s {n.label} weights {n.file}, which are not in "
            f"{hub_file.parent} and could not be downloaded from {n.url} "
            f"({type(err).__name__}: {err}). Download that file on a machine with network access, "
            f"then either pass it with {n.key}=<file> or copy it to {hub_file}."
        ) from err
    return hub_file


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@functools.cache
def expected_tensors(
    network: Network = INCEPTION,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in the network's state dict."""
    # On the meta device: millions of parameters neither allocated nor initialised.
    with torch.device("meta"):
        net = network.architecture()
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def check_weights(path: str | os.PathLike, network: Network = INCEPTION) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (on the CPU) if it holds exactly the network's weights.

    Raises WeightsFileError, naming the file, for anything else: not a torch file,
    truncated, holding objects whose loading could run code (refused, never run), not a dict
    of tensors, or tensors missing, extra, or of the wrong shape or dtype.
    """
    path = Path(path)
    name = f"{network.label} weights file {path}"
    if not path.is_file():
        raise WeightsFileError(f"{name} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as err:  # e.g. no permission
        raise WeightsFileError(f"{name} cannot be read: {err.strerror or err}") from err
    if not head:
        raise WeightsFileError(f"{name} is not a torch file: the file is empty")
    if not (head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC):
        raise WeightsFileError(
            f"{name} is not a torch file: it starts with {head[:4]!r}, where torch.save writes "
            f"a zip archive ({_ZIP_MAGIC!r}) or, before torch 1.6, a pickle of torch's magic number"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged archive raises anything from RuntimeError to EOFError
        raise WeightsFileError(f"{name} {_load_failure(err)}") from err
    problem = _state_dict_problem(state, network)
    if problem:
        raise WeightsFileError(f"{name} {problem}")
    return {k: v.detach() for k, v in state.items()}


def _load_failure(err: Exception) -> str:
    """Why torch.load failed, as one line (its own messages run to several paragraphs)."""
    text = str(err)
    if "Weights only load failed" in text:
        # The unpickler's reason follows its marker, e.g. "Unsupported global: GLOBAL getattr
        # was not an allowed global by default."; the rest is advice to load it unsafely.
        match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = match.group(1).split(". ")[0].strip().rstrip(".") if match else "no reason given"
        return (
            "holds objects that torch.load(weights_only=True) refuses, as loading them could "
            f"run code ({reason})"
        )
    first = text.split(". ")[0].strip() or type(err).__name__
    return f"is truncated or damaged ({first})"


def _state_dict_problem(state: object, network: Network) -> str | None:
    """What keeps ``state`` from being the network's state dict, or None."""
    name = network.name
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not the dict of tensors {name} needs"
    expected = expected_tensors(network)
    needed = [k for k in expected if not k.endswith(_OPTIONAL_SUFFIX)]
    problems = []
    missing = [k for k in needed if k not in state]
    if missing:
        problems.append(
            f"is missing {len(missing)} of the {len(needed)} tensors {name} needs "
            f"({_names(missing)})"
        )
    extra = [str(k) for k in state if k not in expected]
    if extra:
        problems.append(
            f"has {_count(extra, 'entry', 'entries')} that {name} does not have ({_names(extra)})"
        )
    not_tensors = [k for k in state if k in expected and not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        problems.append(
            f"has {_count(not_tensors, 'entry', 'entries')} that should be tensors and are not "
            f"({_names(not_tensors)})"
        )
    wrong = [
        f"{k} is {_spec(state[k].shape, state[k].dtype)}, not {_spec(*expected[k])}"
        for k in state
        if k in expected
        and isinstance(state[k], torch.Tensor)
        and (tuple(state[k].shape), state[k].dtype) != expected[k]
    ]
    if wrong:
        problems.append(
            f"has {_count(wrong, 'tensor', 'tensors')} of the wrong shape or dtype "
            f"({_names(wrong)})"
        )
    return "; ".join(problems) or None


def _count(items: list, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (", ..." if len(items) > _LISTED else "")


def _spec(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> str:
    return f"{tuple(shape)} {str(dtype).removeprefix('torch.')}"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the file's bytes, recomputed only when its size or mtime changes."""
    path = Path(path)
    stat = path.stat()
    return _file_digest_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_weights_file(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    network: Network = INCEPTION,
) -> Path:
    """A copy of ``path``'s checked tensors that torch-fidelity may load; made once per content.

    The copy is ``<cache_dir>/<label>-<sha256 of path>.pth`` (default cache_dir: torch hub's
    ``checkpoints/sngan-checked``). An existing copy is reused after ``check_weights`` passes on
    it; otherwise ``path`` is checked and re-saved. Raises WeightsFileError as
    ``check_weights`` does, or when the copy cannot be written.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{network.label} weights file {path} does not exist")
    folder = Path(cache_dir) if cache_dir is not None else _hub_checkpoints() / CHECKED_DIR
    target = folder / f"{network.label.lower()}-{file_digest(path)}.pth"
    reused = False
    if target.is_file():
        # Named after the original's content, so it was made from these very bytes; the check
        # keeps a damaged or planted copy from reaching torch-fidelity's unrestricted load.
        with contextlib.suppress(WeightsFileError):
            check_weights(target, network)
            reused = True
    if not reused:
        _write_checked_copy(check_weights(path, network), path, target, network)
    return target


@dataclass(frozen=True)
class CheckedWeights:
    """A network's weights as the metrics load them: checked once, then passed along."""

    network: Network
    copy: Path  # the re-saved copy torch-fidelity loads (safe_weights_file)
    digest: str  # the first hex digits of the original's SHA-256: names cached features


def checked_weights(path: str | os.PathLike | None, network: Network = INCEPTION) -> CheckedWeights:
    """Find (``find_weights``), check and copy (``safe_weights_file``) one network's weights."""
    original = find_weights(path, network)
    return CheckedWeights(
        network, safe_weights_file(original, network=network), file_digest(original)[:8]
    )


def _write_checked_copy(
    tensors: dict[str, torch.Tensor], source: Path, target: Path, network: Network
) -> None:
    """Save ``tensors`` to ``target`` atomically, after checking they load back unchanged."""

    def loads_back_equal(tmp: Path) -> None:
        copy = check_weights(tmp, network)
        changed = [k for k, v in tensors.items() if not torch.equal(copy[k], v)]
        if changed:
            raise WeightsFileError(
                f"the copy of {network.label} weights file {source} written to {tmp} does not "
                f"load back equal ({_names(changed)} differ)"
            )

    try:
        atomic.write_atomic(
            target,
            lambda f: torch.save(dict(tensors), f),
            needed=atomic.payload_bytes(tensors),
            verify=loads_back_equal,
        )
    except atomic.WriteError as err:
        raise WeightsFileError(
            f"cannot write the checked copy of {network.label} weights file {source} to "
            f"{target.parent}: {err.reason}"
        ) from err
