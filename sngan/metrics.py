"""IS, FID, KID and precision/recall of generators, by torch-fidelity, under a named protocol.

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

- ``metrics/precision``, ``metrics/recall`` (optional, Kynkaanniemi et al. 2019): torch-fidelity's
  ``prc`` on VGG16 ``fc2_relu`` features of ``num_fake`` generated and ``num_real`` reference
  images, k = 3 nearest neighbours: the fraction of generated images inside the real images'
  manifold, and of real images inside the generated ones'.

``Evaluator`` holds one reference set under one protocol: its networks are built once, the
reference features are computed once (then cached on disk), and each call scores a generator, so
training and ``sngan-eval`` score G and G_ema without loading Inception twice. It uses
torch-fidelity's own pieces (its feature extractors, sample loop, IS, FID, KID and PRC functions)
rather than ``calculate_metrics``, which rebuilds the network and re-reads the cache every call.

Reference features and statistics are cached in ``cache_dir`` (default torch-fidelity's,
``$TORCH_HOME/fidelity_cache``) under a name made of ``reference_name``, the number of real
images, a hash of their pixels and a hash of the weights file, so a later evaluation reuses them
and a changed reference or weights file never picks up stale ones. sngan writes them as plain
tensors and reads them with ``torch.load(weights_only=True)``: a planted cache file cannot run
code. The weights reach torch-fidelity only as copies sngan re-saved after checking them
(``sngan.extractor_weights``); offline, give the files as ``metrics.inception_weights=<file>``
(and ``metrics.prc_weights=<file>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
import torch_fidelity.utils
from torch.utils.data import Dataset
from torch_fidelity.generative_model_base import GenerativeModelBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from sngan import atomic
from sngan.extractor_weights import INCEPTION, VGG16, CheckedWeights, Network, checked_weights
from sngan.fp32 import full_precision
from sngan.protocols import Protocol
from sngan.protocols import protocol as get_protocol

KID_SUBSET_SIZE = 1000
# A reference larger than this many images has its FID statistics computed chunk by chunk.
STATISTICS_CHUNK = 50_000
FID_DIMS = 2048
# The layers each metric reads: Inception's pool features (FID, KID), its logits without the
# bias (IS, as the original code), VGG16's second fully connected layer after ReLU (PRC).
FID_LAYER, IS_LAYER, PRC_LAYER = "2048", "logits_unbiased", "fc2_relu"


def fid_from_features(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FID between two (N, D) feature sets, through torch-fidelity's own statistics and distance."""
    stats_1 = fid_features_to_statistics(features_1.detach().cpu().double())
    stats_2 = fid_features_to_statistics(features_2.detach().cpu().double())
    out = fid_statistics_to_metric(stats_1, stats_2, verbose=False)
    return float(out[torch_fidelity.KEY_METRIC_FID])


class Evaluator:
    """Scores generators against one reference set under one protocol (see the module docstring).

    Every argument is checked, and the weights files found and checked, when it is built, before
    any image is generated. ``reference`` is (N, 3, H, W) uint8; its first ``num_real`` images are
    used (all of them for ``standard``); ``reference_name`` names their cached features, with a
    hash of their pixels, or of ``reference_digest`` where the caller knows their identity (an
    image store's key digest: hashing ImageNet's pixels takes 95 s on a 2-core CPU).
    ``weights``: the networks' weights as ``checked_weights`` returned them, for a caller that
    checked them already; the others are found and checked here, from the paths given.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        *,
        reference_name: str,
        protocol: str = "standard",
        num_samples: int | None = None,
        batch_size: int = 250,
        kid: bool = False,
        prc: bool = False,
        inception_weights: str | None = None,
        prc_weights: str | None = None,
        cache_dir: str | None = None,
        device: torch.device | str | None = None,
        weights: Mapping[Network, CheckedWeights] | None = None,
        num_real: int | None = None,
        labels: torch.Tensor | None = None,
        reference_digest: str | None = None,
        intra_fid: bool = False,
        intra_fid_classes: Sequence[int] | None = None,
        intra_fid_samples: int = 5000,
    ) -> None:
        self.spec: Protocol = get_protocol(protocol, num_samples)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if reference.dtype != torch.uint8 or reference.dim() != 4 or reference.shape[1] != 3:
            raise ValueError(
                "reference must be (N, 3, H, W) uint8 images, "
                f"got {tuple(reference.shape)} {reference.dtype}"
            )
        spec = self.spec
        wanted = num_real if num_real is not None else spec.num_real
        self.num_real = min(wanted or len(reference), len(reference))
        if self.num_real < 2:
            raise ValueError(f"FID needs at least 2 reference images, got {len(reference)}")
        if spec.num_real is not None and self.num_real < spec.num_real:
            warnings.warn(
                f"the {spec.name} protocol compares with {spec.num_real} real images but the "
                f"reference has only {len(reference)}; using all of them (metrics/num_real "
                "records it)",
                stacklevel=2,
            )
        self.device = torch.device(device if device is not None else _default_device())
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"torch-fidelity runs on 'cpu' or 'cuda', got device={self.device}")
        self.batch_size, self.kid, self.prc = batch_size, kid, prc
        self.cache_dir = Path(cache_dir) if cache_dir else _fidelity_cache()
        # The images compared with: the protocol's first num_real (all for standard), or, for
        # metrics.num_real, a fixed random subset (a store lists its images class by class).
        self.real = reference.cpu()  # not copied: a store's images stay a memory map
        self.real_index: torch.Tensor | None = None
        if num_real is not None and self.num_real < len(reference):
            pick = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))
            self.real_index = pick[: self.num_real].sort().values
        elif self.num_real < len(reference):
            self.real_index = torch.arange(self.num_real)
        self.labels = labels.cpu() if labels is not None else None
        if intra_fid and (self.labels is None or len(self.labels) != len(reference)):
            raise ValueError("intra-FID needs the reference's labels, one per image")
        self.intra_fid, self.intra_fid_samples = intra_fid, intra_fid_samples
        self.intra_fid_classes = list(intra_fid_classes) if intra_fid_classes else None
        self.reference_name = reference_name
        self.reference_digest = reference_digest
        # Found and checked now, so that a bad file fails before training, not after it (or
        # checked already: a training job does it at its start, sngan.job).
        given = {INCEPTION: inception_weights, VGG16: prc_weights}
        checked = dict(weights or {})
        self.weights: dict[Network, Path] = {}  # the checked copies torch-fidelity loads
        self.digests: dict[Network, str] = {}  # of the files as given: they name the cache
        for network in (INCEPTION, VGG16) if prc else (INCEPTION,):
            if network not in checked:
                checked[network] = checked_weights(given[network], network)
            self.weights[network] = checked[network].copy
            self.digests[network] = checked[network].digest
        self._reference: dict[str, object] = {}

    def __call__(self, G: torch.nn.Module, seed: int = 0) -> dict[str, float]:
        """The metrics of ``G``'s samples (z and labels from ``seed``), by name, as floats."""
        spec = self.spec
        modes = {module: module.training for module in G.modules()}
        first = next(G.parameters(), None)
        home = first.device if first is not None else None
        # torch-fidelity moves things with .cuda(), i.e. to the current CUDA device.
        cuda = self.device.type == "cuda"
        on_device = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
        try:
            G.eval().to(self.device)
            with on_device, full_precision(self.device):
                reference = self._reference_features()
                fake = self._features(INCEPTION, G, spec.num_fake_for_is, seed)
                out = isc_features_to_metric(fake[IS_LAYER], spec.isc_splits, True, seed)
                if spec.num_fake_is is not None:
                    # IS on its own sets; FID on the first num_fake of the same noise vectors.
                    fake = self._features(INCEPTION, G, spec.num_fake, seed)
                stats = fid_features_to_statistics(fake[FID_LAYER])
                out |= fid_statistics_to_metric(stats, reference["fid"], verbose=False)
                if self.kid:
                    out |= kid_features_to_metric(
                        fake[FID_LAYER],
                        reference[FID_LAYER],
                        kid_subset_size=min(KID_SUBSET_SIZE, spec.num_fake, self.num_real),
                        rng_seed=seed,
                        verbose=False,
                    )
                if self.prc:
                    fake_vgg = self._features(VGG16, G, spec.num_fake, seed)
                    out |= prc_features_to_metric(
                        fake_vgg[PRC_LAYER], reference[PRC_LAYER], save_cpu_ram=True, verbose=False
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
        if self.kid:
            result["metrics/kid"] = out[torch_fidelity.KEY_METRIC_KID_MEAN]
        if self.prc:
            result["metrics/precision"] = out[torch_fidelity.KEY_METRIC_PRECISION]
            result["metrics/recall"] = out[torch_fidelity.KEY_METRIC_RECALL]
        result |= {
            "metrics/num_fake": spec.num_fake,
            "metrics/num_fake_is": spec.num_fake_for_is,
            "metrics/num_real": self.num_real,
        }
        result = {k: float(v) for k, v in result.items()}
        if self.intra_fid:
            by_class = self.intra_fid_by_class(G, seed)
            result["metrics/intra_fid"] = sum(by_class.values()) / len(by_class)
            result["metrics/intra_fid_classes"] = float(len(by_class))
            result["intra_fid_by_class"] = by_class
        return result

    def intra_fid_by_class(self, G: torch.nn.Module, seed: int = 0) -> dict[str, float]:
        """Each class's FID: ``intra_fid_samples`` images of G drawn with that label (z from
        ``seed``) against every reference image of that class, as the projection paper's
        intra-FID (sngan_projection's evaluations/calc_intra_FID.py: 5,000 per class)."""
        assert self.labels is not None
        classes = self.intra_fid_classes or range(int(G.num_classes))
        modes = {module: module.training for module in G.modules()}
        cuda = self.device.type == "cuda"
        on_device = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
        out = {}
        try:
            G.eval()
            with on_device, full_precision(self.device):
                for c in classes:
                    index = torch.nonzero(self.labels == c).flatten()
                    if len(index) < 2:
                        raise ValueError(f"intra-FID: class {c} has {len(index)} reference images")
                    real = self._features_of_class(c, index)
                    fake = self._features(INCEPTION, G, self.intra_fid_samples, seed, label=c)
                    fid = fid_statistics_to_metric(
                        fid_features_to_statistics(fake[FID_LAYER]),
                        fid_features_to_statistics(real),
                        verbose=False,
                    )
                    out[str(c)] = float(fid[torch_fidelity.KEY_METRIC_FID])
        finally:
            for module, training in modes.items():
                module.train(training)
        return out

    def _features_of_class(self, c: int, index: torch.Tensor) -> torch.Tensor:
        """Class ``c``'s reference images ``index``: their features, cached (about 8 kB an image:
        ImageNet's classes take 10.5 GB), so a second intra-FID computes only G's."""
        # The reference's digest covers the images compared with; a class may hold others,
        # whose pixels name its entry too, unless a store's key covers them all.
        pixels = "" if self.reference_digest else f"-{tensor_digest(self.real, index)}"
        name = f"class{c}-n{len(index)}{pixels}-"
        return self._features_of_reference(INCEPTION, FID_LAYER, index, name)

    def _extractor(self, network: Network) -> torch.nn.Module:
        """The network, built on first use and kept for the process (per weights and device):
        a training run, and sngan-eval scoring several generators, load Inception once."""
        key = (network.name, str(self.weights[network]), str(self.device))
        if key not in _EXTRACTORS:
            layers = [FID_LAYER, IS_LAYER] if network is INCEPTION else [PRC_LAYER]
            _EXTRACTORS[key] = torch_fidelity.utils.create_feature_extractor(
                network.name,
                layers,
                cuda=self.device.type == "cuda",
                feature_extractor_weights_path=str(self.weights[network]),
                verbose=False,
            )
        return _EXTRACTORS[key]

    def _features(
        self, network: Network, G: torch.nn.Module, num: int, seed: int, label: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The network's features of ``num`` samples of G (all of class ``label`` if given), by
        layer (CPU tensors)."""
        return torch_fidelity.utils.get_featuresdict_from_generative_model(
            Samples(G, seed, self.device, label),
            self._extractor(network),
            num,
            self.batch_size,
            self.device.type == "cuda",
            seed,
            False,
        )

    def _reference_features(self) -> dict[str, object]:
        """FID statistics (and KID/PRC features) of the reference: memory, else disk, else made."""
        if not self._reference:
            stats = read_cache(self._cache_path(INCEPTION, f"stat-fid-{FID_LAYER}"))
            if not (isinstance(stats, dict) and stats.keys() == {"mu", "sigma"}):
                stats = None
            if self.kid:
                self._reference[FID_LAYER] = self._features_of_reference(INCEPTION, FID_LAYER)
            if stats is None:
                stats = self._reference_statistics()
                write_cache(stats, self._cache_path(INCEPTION, f"stat-fid-{FID_LAYER}"))
            self._reference["fid"] = {k: v.numpy() for k, v in stats.items()}
            if self.prc:
                self._reference[PRC_LAYER] = self._features_of_reference(VGG16, PRC_LAYER)
        return self._reference

    def _reference_statistics(self) -> dict[str, torch.Tensor]:
        """The reference's FID mean and covariance (as ``np.cov``: unbiased), computed once per
        reference, then cached. A reference of up to ``STATISTICS_CHUNK`` images goes through
        torch-fidelity's own statistics; a larger one (ImageNet's 1.28 M) in one streaming pass
        of chunks, summing the features and their outer products in float64, so that its
        features (10 GB for ImageNet) are never held at once."""
        index = self._used()
        if FID_LAYER in self._reference or len(index) <= STATISTICS_CHUNK:
            features = self._reference.get(FID_LAYER)
            if features is None:
                features = self._features_of_reference(INCEPTION, FID_LAYER)  # cached too
            return {k: torch.from_numpy(v) for k, v in fid_features_to_statistics(features).items()}
        from tqdm import tqdm

        total = torch.zeros(FID_DIMS, dtype=torch.float64)
        outer = torch.zeros(FID_DIMS, FID_DIMS, dtype=torch.float64)
        chunks = list(torch.split(index, STATISTICS_CHUNK))
        for chunk in tqdm(chunks, desc="reference statistics", unit="chunk", dynamic_ncols=True):
            features = self._dataset_features(INCEPTION, chunk)[FID_LAYER].double()
            total += features.sum(0)
            outer += features.T @ features
        n = len(index)
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return {"mu": mu, "sigma": sigma}

    def _used(self) -> torch.Tensor:
        """The indices of the reference images compared with."""
        return self.real_index if self.real_index is not None else torch.arange(self.num_real)

    def _dataset_features(self, network: Network, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's features of reference images ``index``, by layer (CPU tensors)."""
        return torch_fidelity.utils.get_featuresdict_from_dataset(
            _ImageDataset(self.real, index),
            self._extractor(network),
            self.batch_size,
            self.device.type == "cuda",
            True,  # save_cpu_ram: no DataLoader workers, indexing an in-memory tensor is free
            False,
        )

    def _features_of_reference(
        self, network: Network, layer: str, index: torch.Tensor | None = None, what: str = ""
    ) -> torch.Tensor:
        """The (len(index), D) features at ``layer`` of the reference images ``index`` (None:
        those compared with), from the cache or computed and cached; ``what`` names a subset."""
        index = self._used() if index is None else index
        path = self._cache_path(network, f"{what}features-{layer}")
        features = read_cache(path)
        if isinstance(features, torch.Tensor) and features.shape[0] == len(index):
            return features
        features = self._dataset_features(network, index)[layer]
        write_cache(features, path)
        return features

    def _digest(self) -> str:
        """A short hash of the images compared with (names their cached statistics), once: of
        their pixels, or of the given ``reference_digest`` (an image store's key, which
        identifies its pixels) and the indices used."""
        if not hasattr(self, "_pixels_digest"):
            if self.reference_digest is None:
                self._pixels_digest = tensor_digest(self.real, self._used())
            else:
                digest = hashlib.blake2b(self.reference_digest.encode(), digest_size=6)
                digest.update(self._used().numpy().tobytes())
                self._pixels_digest = digest.hexdigest()
        return self._pixels_digest

    def _cache_path(self, network: Network, what: str) -> Path:
        """torch-fidelity's cache naming: <reference>-<network>-<what>.pt; the reference's name
        holds its size, a hash of its pixels and of the weights, so nothing stale is read."""
        reference = [_slug(self.reference_name), f"n{self.num_real}", self._digest()]
        name = "-".join([*reference, f"w{self.digests[network]}", network.name, what])
        return self.cache_dir / f"{name}.pt"


def read_cache(path: Path) -> object | None:
    """A cache entry, or None if it is absent, damaged, or not plain tensors (which
    torch.load(weights_only=True) refuses: a planted file cannot run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent, truncated, foreign (torch-fidelity's own numpy pickles)
        return None


def write_cache(item: object, path: Path) -> None:
    """Store a cache entry: whole or absent (a killed write leaves no half file under its name).

    A cache that cannot be written (a full disk, a read-only directory) is a warning: the
    evaluation goes on, and the next one computes the entry again."""
    try:
        atomic.write_atomic(path, lambda f: torch.save(item, f), needed=atomic.payload_bytes(item))
    except OSError as err:  # atomic's WriteError: it names the file and the space
        warnings.warn(
            f"reference features not cached: {err}; computed again next time", stacklevel=2
        )


# The feature extractors this process has built, by (network, weights file, device).
_EXTRACTORS: dict[tuple[str, str, str], torch.nn.Module] = {}


def evaluate(
    G: torch.nn.Module, reference: torch.Tensor, *, seed: int = 0, **settings: Any
) -> dict[str, float]:
    """The metrics of ``G`` against ``reference``: an ``Evaluator(reference, **settings)`` built
    and used once."""
    return Evaluator(reference, **settings)(G, seed)


class Samples(GenerativeModelBase):
    """G as torch-fidelity's generative model: noise (and labels) in, uint8 images out."""

    def __init__(
        self, G: torch.nn.Module, seed: int, device: torch.device, label: int | None = None
    ) -> None:
        super().__init__()
        self.G = G
        self.device = device
        self.classes = int(getattr(G, "num_classes", 0))
        self.labels = torch.Generator().manual_seed(seed)
        self.label = label  # every image of this class (intra-FID); None: uniform labels

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
            if self.label is None:
                y = torch.randint(self.classes, (len(z),), generator=self.labels)
            else:
                y = torch.full((len(z),), self.label, dtype=torch.int64)
            x = self.G(z, y.to(self.device))
        else:
            x = self.G(z)
        if x.dim() != 4 or x.shape[:2] != (len(z), 3):
            raise ValueError(f"G must return (B, 3, H, W) images, got {tuple(x.shape)}, B={len(z)}")
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (B, 3, H, W)


class _ImageDataset(Dataset):
    """Images ``index`` of (N, 3, H, W) uint8 ones, as the Dataset torch-fidelity reads a
    reference set from (one at a time: a memory-mapped store is never copied whole)."""

    def __init__(self, images: torch.Tensor, index: torch.Tensor) -> None:
        self.images, self.index = images, index.tolist()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.index[i]]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fidelity_cache() -> Path:
    return Path(torch.hub.get_dir()).parent / "fidelity_cache"


def _slug(name: str) -> str:
    """``name`` made safe for a file name; the hash keeps distinct names (e.g. paths) apart."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "reference"
    if slug != name:
        slug += "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return slug


def tensor_digest(images: torch.Tensor, index: torch.Tensor | None = None) -> str:
    """A short hash of a uint8 image tensor's bytes (of the images ``index``, if given), read in
    chunks: a memory-mapped store of any size is hashed without being copied whole."""
    digest = hashlib.blake2b(digest_size=6)
    if index is None:
        for chunk in torch.split(images.flatten(), 1 << 28):
            digest.update(chunk.contiguous().numpy().data)
    else:
        for part in torch.split(index, 4096):
            digest.update(images.index_select(0, part).contiguous().numpy().data)
    return digest.hexdigest()
