"""Inception Score, FID and KID of a generator, computed by torch-fidelity under a named protocol.

Published SN-GAN numbers disagree mostly because of how they were computed, so every number here
is computed one way and returned next to the sample counts that define it.

How each number is computed (torch-fidelity's ``inception-v3-compat`` network, a port of the
TensorFlow Inception graph of 2015-12-05 that the original IS and FID code used; images are
resized to 299x299 the way TensorFlow 1 did; generation and Inception run in plain FP32, with
TF32 and autocast switched off for the duration whatever the caller had set):

- Generated images: ``G`` in eval mode (BatchNorm uses its running statistics and does not update
  them; every module's mode is restored afterwards), ``z ~ N(0, I)`` from torch-fidelity's noise
  source seeded with ``seed``, class labels uniform over ``G.num_classes`` from a generator seeded
  with ``seed``, outputs in [-1, 1] turned into uint8 as ``round((x + 1) * 127.5)`` clamped to
  [0, 255]. They go to torch-fidelity batch by batch; nothing is written to disk.
- ``metrics/is``, ``metrics/is_std``: softmax of Inception's 1008 logits (without the bias, as in
  the original code) for ``num_fake_is`` generated images, shuffled with ``seed`` and cut into 10
  equal splits; per split ``exp(mean_x KL(p(y|x) || p(y)))``; mean and population std over splits.
- ``metrics/fid``: mean and covariance (``np.cov``, unbiased) of the 2048-d pool features of
  ``num_fake`` generated and ``num_real`` reference images;
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.
- ``metrics/kid`` (optional): unbiased MMD^2 with the cubic polynomial kernel
  ``(x.y / 2048 + 1)^3`` on the same 2048-d features, averaged over 100 random subsets of
  ``min(1000, num_fake, num_real)`` images from each side. Raw value: papers often print KID x 1000.
- ``metrics/num_fake``, ``metrics/num_fake_is``, ``metrics/num_real``: the sample counts actually
  used (after ``num_samples`` overrides and after capping at the size of the reference set).

Protocols (``sngan.protocols``): ``standard`` and ``paper``, IS the same in both.

``standard`` is what current PyTorch reproductions report (50k generated against the 50k CIFAR-10
training images). ``paper`` follows appendix B.1 of Miyato et al. (2018) and the official Chainer
code (pfnet-research/sngan_projection, ``evaluation.py``: IS over 50,000 images in 10 splits, FID
over 5,000 generated images against precomputed statistics of real ones). Which 10,000 real images
the paper used is not recorded; here they are the first 10,000 of ``reference`` in the order given,
which for ``sngan.data.load_images("cifar10")`` (the training set in its on-disk order) is
``data_batch_1``. The 5,000 FID images of ``paper`` are made from the first 5,000 noise vectors of
the IS images.

Comparing with published tables: FID is biased upwards with fewer samples, so ``paper`` FIDs are
several points higher than ``standard`` FIDs of the same generator; compare the paper's CIFAR-10
numbers (e.g. IS 8.22, FID 21.7 for the ResNet SN-GAN) with ``paper``, and current reproductions
(mimicry, StudioGAN and the like, 50k against the training set) with ``standard``. The Inception
port, the resize and the float precision differ slightly from the paper's Chainer pipeline, so
matching numbers agree to within a few tenths, not bit for bit.

Reference statistics are cached by torch-fidelity in ``cache_dir`` under a name made of
``reference_name``, the number of real images, a hash of their pixels and a hash of the Inception
weights, so a later evaluation reuses them and a changed reference or weights file never picks up
stale ones. The first evaluation needs torch-fidelity's Inception weights: downloaded to torch
hub's checkpoint directory, or given as a file (``metrics.inception_weights=<file>``) offline.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.generative_model_base import GenerativeModelBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from sngan.protocols import protocol as get_protocol

INCEPTION_URL = URL_INCEPTION_V3
INCEPTION_FILE = os.path.basename(urlparse(URL_INCEPTION_V3).path)

KID_SUBSET_SIZE = 1000


def fid_from_features(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FID between two (N, D) feature sets, through torch-fidelity's own statistics and distance."""
    stats_1 = fid_features_to_statistics(features_1.detach().cpu().double())
    stats_2 = fid_features_to_statistics(features_2.detach().cpu().double())
    out = fid_statistics_to_metric(stats_1, stats_2, verbose=False)
    return float(out[torch_fidelity.KEY_METRIC_FID])


def evaluate(
    G: torch.nn.Module,
    reference: torch.Tensor,
    *,
    reference_name: str,
    protocol: str = "standard",
    num_samples: int | None = None,
    batch_size: int = 250,
    kid: bool = False,
    inception_weights: str | None = None,
    cache_dir: str | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """IS, FID (and KID) of ``G``'s samples against ``reference`` (N, 3, H, W) uint8 images.

    See the module docstring for what each number is and what the protocols mean. The first
    ``num_real`` images of ``reference`` are used (all of them for ``standard``); ``reference_name``
    names their cached statistics (e.g. ``cifar10-train``). ``inception_weights`` is a local copy of
    torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``; without it the file is looked
    up in, or downloaded to, torch hub's checkpoint directory. Samples are generated on ``device``
    (CUDA when available), where Inception also runs.
    """
    spec = get_protocol(protocol, num_samples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if reference.dtype != torch.uint8 or reference.dim() != 4 or reference.shape[1] != 3:
        raise ValueError(
            "reference must be (N, 3, H, W) uint8 images, "
            f"got {tuple(reference.shape)} {reference.dtype}"
        )
    num_real = len(reference) if spec.num_real is None else min(spec.num_real, len(reference))
    if num_real < 2:
        raise ValueError(f"FID needs at least 2 reference images, got {len(reference)}")
    if spec.num_real is not None and num_real < spec.num_real:
        warnings.warn(
            f"the {spec.name} protocol compares with {spec.num_real} real images but the reference "
            f"has only {len(reference)}; using all of them (metrics/num_real records it)",
            stacklevel=2,
        )
    device = torch.device(device if device is not None else _default_device())
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"torch-fidelity runs on 'cpu' or 'cuda', got device={device}")

    weights = inception_weights_file(inception_weights)  # fail before any generation
    real = reference[:num_real].cpu().contiguous()
    cache_name = "-".join(
        [_slug(reference_name), f"n{num_real}", tensor_digest(real), f"w{_file_digest(weights)}"]
    )
    options = dict(
        input2=_ImageDataset(real),
        input2_cache_name=cache_name,
        cache_root=cache_dir,
        cuda=device.type == "cuda",
        batch_size=batch_size,
        feature_extractor_weights_path=str(weights),
        rng_seed=seed,
        save_cpu_ram=True,  # no DataLoader workers: indexing an in-memory tensor is free
        verbose=False,
    )
    kid_subset_size = min(KID_SUBSET_SIZE, spec.num_fake, num_real)

    modes = {module: module.training for module in G.modules()}
    first = next(G.parameters(), None)
    home = first.device if first is not None else None
    # torch-fidelity moves things with .cuda(), i.e. to the current CUDA device.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        G.eval().to(device)
        with on_device, full_precision(device):
            if spec.num_fake_is is None:
                # One pass of Inception over the generated images serves IS, FID and KID.
                out = torch_fidelity.calculate_metrics(
                    input1=Samples(G, seed, device),
                    input1_model_num_samples=spec.num_fake,
                    isc=True,
                    isc_splits=spec.isc_splits,
                    fid=True,
                    kid=kid,
                    kid_subset_size=kid_subset_size,
                    **options,
                )
            else:
                out = torch_fidelity.calculate_metrics(
                    input1=Samples(G, seed, device),
                    input1_model_num_samples=spec.num_fake_is,
                    isc=True,
                    isc_splits=spec.isc_splits,
                    **{k: v for k, v in options.items() if not k.startswith("input2")},
                )
                out |= torch_fidelity.calculate_metrics(
                    input1=Samples(G, seed, device),
                    input1_model_num_samples=spec.num_fake,
                    fid=True,
                    kid=kid,
                    kid_subset_size=kid_subset_size,
                    **options,
                )
    finally:
        if home is not None:
            G.to(home)
        for module, training in modes.items():
            module.train(training)

    result = {
        "metrics/is": out[torch_fidelity.KEY_METRIC_ISC_MEAN],
        "metrics/is_std": out[torch_fidelity.KEY_METRIC_ISC_STD],
        "metrics/fid": out[torch_fidelity.KEY_METRIC_FID],
    }
    if kid:
        result["metrics/kid"] = out[torch_fidelity.KEY_METRIC_KID_MEAN]
    result |= {
        "metrics/num_fake": spec.num_fake,
        "metrics/num_fake_is": spec.num_fake_for_is,
        "metrics/num_real": num_real,
    }
    return {k: float(v) for k, v in result.items()}


class Samples(GenerativeModelBase):
    """G as torch-fidelity's generative model: noise (and labels) in, uint8 images out."""

    def __init__(self, G: torch.nn.Module, seed: int, device: torch.device) -> None:
        super().__init__()
        self.G = G
        self.device = device
        self.classes = int(getattr(G, "num_classes", 0))
        self.labels = torch.Generator().manual_seed(seed)

    @property
    def z_size(self) -> int:
        return int(self.G.z_dim)

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        # torch-fidelity 0.4.0 draws labels with np.int, removed in NumPy 1.24; draw them here.
        return 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.device)  # (B, z_dim)
        if self.classes > 0:
            y = torch.randint(self.classes, (len(z),), generator=self.labels).to(self.device)
            x = self.G(z, y)
        else:
            x = self.G(z)
        if x.dim() != 4 or x.shape[:2] != (len(z), 3):
            raise ValueError(f"G must return (B, 3, H, W) images, got {tuple(x.shape)}, B={len(z)}")
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (B, 3, H, W)


class _ImageDataset(Dataset):
    """(N, 3, H, W) uint8 images as the Dataset torch-fidelity reads a reference set from."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Plain FP32 inside, whatever autocast or TF32 the caller (e.g. the training loop) enabled.

    TF32 convolutions (PyTorch's default on Ampere and later) move Inception's features, and so
    FID, by amounts that depend on the GPU; the metrics should not depend on who called them.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def inception_weights_file(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file to load: ``path``, or torch hub's copy, downloaded if missing.

    Raises FileNotFoundError for a missing ``path`` and RuntimeError when the download fails,
    naming the file and both ways to provide it; callers can run it to fail early.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file not found: {path} (metrics.inception_weights). It "
                f"should be torch-fidelity's {INCEPTION_FILE}, downloadable from {INCEPTION_URL}"
            )
        return path
    # Where torch-fidelity's load_state_dict_from_url looks before it downloads.
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if hub_file.is_file():
        return hub_file
    hub_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(hub_file), progress=False)
    except (OSError, RuntimeError) as err:  # URLError and socket timeouts are OSErrors
        raise RuntimeError(
            f"FID/IS need torch-fidelity's Inception weights {INCEPTION_FILE}, which are not in "
            f"{hub_file.parent} and could not be downloaded from {INCEPTION_URL} "
            f"({type(err).__name__}: {err}). Download that file on a machine with network access, "
            f"then either pass it with metrics.inception_weights=<file> or copy it to {hub_file}."
        ) from err
    return hub_file


def _slug(name: str) -> str:
    """``name`` made safe for a file name; the hash keeps distinct names (e.g. paths) apart."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "reference"
    if slug != name:
        slug += "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return slug


def tensor_digest(images: torch.Tensor) -> str:
    return hashlib.blake2b(images.numpy().data, digest_size=6).hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:8]
