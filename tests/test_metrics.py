"""sngan.metrics: the protocols, FID's arithmetic against scipy, evaluate() through torch-fidelity.

End-to-end tests run the real torch-fidelity pipeline with an Inception file of the right format
and random values (the real one cannot be downloaded here), so they check plumbing, keys and
bookkeeping, not the values of the metrics. Inception at 299x299 is slow on a CPU: every image
counts, hence a dozen reference images and a handful of generated ones.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torch_fidelity.utils
import torchvision
from PIL import Image
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from sngan import extractor_weights, metrics, protocols
from sngan.data import load_images

NUM_REAL = 10
OFFICIAL_FILE = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + OFFICIAL_FILE
KEYS = {"metrics/is", "metrics/is_std", "metrics/fid", "metrics/num_fake", "metrics/num_fake_is"}
KEYS |= {"metrics/num_real"}


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reference-statistics cache shared by the tests that do not check caching itself."""
    return str(tmp_path_factory.mktemp("fidelity_cache"))


@pytest.fixture(scope="session")
def reference(cifar10_root: Path) -> torch.Tensor:
    """The first NUM_REAL training images of the CIFAR-format fixture, (N, 3, 32, 32) uint8."""
    images, _ = load_images("cifar10", root=cifar10_root, download=False)
    return images[:NUM_REAL]


class TinyGenerator(nn.Module):
    """z (B, z_dim) [and y (B,)] -> (B, 3, 32, 32) in [-1, 1], through a BatchNorm to watch."""

    def __init__(self, z_dim: int = 8, num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes > 0 else None
        self.fc = nn.Linear(z_dim, 3 * 4 * 4)
        self.bn = nn.BatchNorm1d(3 * 4 * 4)
        self.noise_seen: list[torch.Tensor] = []
        self.precision_seen: set[tuple[bool, bool, bool]] = set()
        self.labels_seen: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.noise_seen.append(z.cpu())
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        self.precision_seen.add((torch.is_autocast_enabled(z.device.type), *tf32))
        if self.embed is not None:
            self.labels_seen.append(y.cpu())
            z = z + self.embed(y)
        x = self.bn(self.fc(z)).view(-1, 3, 4, 4)
        return torch.tanh(2 * F.interpolate(x, size=32, mode="bilinear", align_corners=False))


class ReplayGenerator(nn.Module):
    """Replays given uint8 images, in order, as a generator's [-1, 1] output (ignores z)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.z_dim = 8
        self.num_classes = 0
        self.images = images
        self.next = 0

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        batch = self.images[self.next : self.next + len(z)]
        self.next += len(z)
        return batch.double() / 127.5 - 1


class UnusedGenerator(nn.Module):
    """A generator for tests that must fail before any sample is drawn."""

    z_dim = 8
    num_classes = 0

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise AssertionError("evaluate() generated samples before checking its inputs")


@pytest.fixture
def reference_extractions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the datasets (reference sets) that torch-fidelity pushes through Inception."""
    sizes: list[int] = []
    extract = torch_fidelity.utils.get_featuresdict_from_dataset

    def spy(input, *args, **kwargs):
        sizes.append(len(input))
        return extract(input, *args, **kwargs)

    monkeypatch.setattr(torch_fidelity.utils, "get_featuresdict_from_dataset", spy)
    return sizes


@pytest.fixture
def image_saves(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every PIL image write (torchvision's save_image goes through it too)."""
    saves: list[object] = []
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: saves.append(fp))
    return saves


def offline(monkeypatch: pytest.MonkeyPatch, hub: Path) -> list[str]:
    """Point torch hub at ``hub`` and make every download fail; returns the URLs tried."""
    tried: list[str] = []

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        tried.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tried


def test_protocols_are_the_papers_and_todays():
    assert protocols.PROTOCOLS == ("standard", "paper")
    standard = protocols.protocol("standard")
    assert (standard.num_fake, standard.num_real, standard.isc_splits) == (50_000, None, 10)
    assert standard.num_fake_is is None  # IS on the same 50,000 images
    # Appendix B.1: FID of 5,000 generated vs 10,000 real; IS over 10 sets of 5,000 generated.
    paper = protocols.protocol("paper")
    assert (paper.num_fake, paper.num_real, paper.isc_splits, paper.num_fake_is) == (
        5_000,
        10_000,
        10,
        50_000,
    )

    assert protocols.protocol("standard", num_samples=20).num_fake == 20
    smoke = protocols.protocol("paper", num_samples=20)
    assert (smoke.num_fake, smoke.num_fake_is, smoke.num_real) == (20, 200, 10_000)


def test_protocol_errors():
    with pytest.raises(ValueError, match=r"'fid50k'.*standard.*paper"):
        protocols.protocol("fid50k")
    with pytest.raises(ValueError, match="10 splits"):
        protocols.protocol("standard", num_samples=5)
    with pytest.raises(ValueError, match="at least 2"):
        protocols.protocol("paper", num_samples=1)


def test_fid_of_images_is_zero_against_themselves_and_large_against_a_brighter_copy(cifar10_root):
    # The plumbing without Inception: (N, 3, 32, 32) uint8 -> 8x8-pooled pixels, (N, 48).
    images, _ = load_images("cifar10", root=cifar10_root, download=False)
    brighter = (images.int() + 40).clamp(max=255).to(torch.uint8)

    def features(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.double(), 8).flatten(1)

    same = metrics.fid_from_features(features(images), features(images))
    shifted = metrics.fid_from_features(features(images), features(brighter))
    assert abs(same) < 1e-6
    # Uniform pixels brightened by 40 and clipped move every mean by 40 - 820/256 ~ 36.8.
    assert shifted > 48 * 36.8**2 * 0.9


def test_fid_from_features_equals_the_squared_mean_shift_for_equal_covariances():
    features = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    assert metrics.fid_from_features(features, features + 0.5) == pytest.approx(16 * 0.25)


def test_fid_from_features_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(300, 8))
    f2 = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + rng.normal(size=8)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)

    fid = metrics.fid_from_features(torch.from_numpy(f1), torch.from_numpy(f2))
    assert fid == pytest.approx(expected, rel=1e-8)


def test_evaluate_standard_end_to_end_then_from_cached_reference_statistics(
    tmp_path, inception_weights, reference, reference_extractions, image_saves
):
    G = TinyGenerator().train()
    running_mean = G.bn.running_mean.clone()
    cache = tmp_path / "cache"
    kwargs = dict(
        reference_name="cifar10-train",
        num_samples=10,
        batch_size=8,
        inception_weights=str(inception_weights),
        cache_dir=str(cache),
        device="cpu",
    )

    first = metrics.evaluate(G, reference, **kwargs)

    assert set(first) == KEYS
    assert all(type(v) is float and math.isfinite(v) for v in first.values())
    assert first["metrics/num_fake"] == first["metrics/num_fake_is"] == 10.0
    assert first["metrics/num_real"] == float(NUM_REAL)
    assert first["metrics/is"] >= 1.0 - 1e-9  # exp of a mean KL divergence
    assert first["metrics/fid"] > 0.0  # smooth generated images vs uniform-noise reference
    assert G.training and G.bn.training  # mode restored ...
    torch.testing.assert_close(G.bn.running_mean, running_mean)  # ... and BN never updated
    assert reference_extractions == [NUM_REAL]
    cached = sorted(os.listdir(cache))
    assert any("stat-fid-2048" in name for name in cached), cached
    assert all(name.startswith(f"cifar10-train-n{NUM_REAL}-") for name in cached), cached

    # Again, called the way a mixed-precision training loop might call it.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            second = metrics.evaluate(G, reference, **kwargs)
        tf32_after = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32

    assert reference_extractions == [NUM_REAL]  # statistics read back, not recomputed
    assert second == pytest.approx(first)  # same seed, same noise, FP32: same numbers
    assert G.precision_seen == {(False, False, False)}  # no autocast, no TF32 inside ...
    assert tf32_after == (True, True)  # ... and the caller's settings back afterwards
    assert image_saves == []
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} == {".pt"}


def test_evaluate_fid_is_zero_for_the_reference_itself_and_large_for_a_brighter_copy(
    shared_cache, inception_weights, reference
):
    # The same sanity check as above, through generation, uint8 conversion and Inception.
    brighter = (reference.int() + 40).clamp(max=255).to(torch.uint8)
    kwargs = dict(
        reference_name="cifar10-train",
        num_samples=NUM_REAL,
        batch_size=8,
        inception_weights=str(inception_weights),
        cache_dir=shared_cache,
        device="cpu",
    )

    same = metrics.evaluate(ReplayGenerator(reference), reference, **kwargs)["metrics/fid"]
    shifted = metrics.evaluate(ReplayGenerator(brighter), reference, **kwargs)["metrics/fid"]

    assert abs(same) < 1e-3
    assert shifted > 1.0  # a thousand times the tolerance on zero


def test_evaluate_paper_protocol_conditional_with_kid_and_weights_in_torch_hub(
    tmp_path, monkeypatch, shared_cache, inception_weights, reference, image_saves
):
    # A user who copied the official file into torch hub's checkpoint dir needs no network.
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / OFFICIAL_FILE).symlink_to(inception_weights)
    downloads = offline(monkeypatch, hub)
    G = TinyGenerator(num_classes=3).eval()

    with pytest.warns(UserWarning, match="10000 real images"):
        out = metrics.evaluate(
            G,
            reference,
            reference_name="cifar10-train",
            protocol="paper",
            num_samples=3,
            batch_size=8,
            kid=True,
            cache_dir=shared_cache,
            device="cpu",
            seed=1,
        )

    assert downloads == []
    assert set(out) == KEYS | {"metrics/kid"}
    assert all(type(v) is float and math.isfinite(v) for v in out.values())
    # FID and KID on 3 generated images; IS over 10 independent sets of 3; all real images.
    assert (out["metrics/num_fake"], out["metrics/num_fake_is"]) == (3.0, 30.0)
    assert out["metrics/num_real"] == float(NUM_REAL)
    assert out["metrics/is"] >= 1.0 - 1e-9
    assert not G.training
    labels = torch.cat(G.labels_seen)
    assert labels.dtype == torch.int64 and len(labels) == 30 + 3
    assert labels.min() >= 0 and labels.max() < 3
    # The FID images (drawn last) repeat the first noise vectors and labels of the IS images.
    noise = torch.cat(G.noise_seen)
    assert torch.equal(noise[30:], noise[:3]) and torch.equal(labels[30:], labels[:3])
    assert image_saves == []


def test_evaluate_rejects_an_unknown_protocol(reference):
    with pytest.raises(ValueError, match="standard.*paper"):
        metrics.evaluate(UnusedGenerator(), reference, reference_name="x", protocol="fid50k")


def test_evaluate_rejects_a_reference_that_is_not_uint8_images(reference, inception_weights):
    with pytest.raises(ValueError, match="uint8"):
        metrics.evaluate(
            UnusedGenerator(),
            reference.float() / 127.5 - 1,
            reference_name="x",
            num_samples=10,
            inception_weights=str(inception_weights),
        )


def test_evaluate_names_a_missing_weights_file(tmp_path, reference):
    missing = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        metrics.evaluate(
            UnusedGenerator(),
            reference,
            reference_name="x",
            num_samples=10,
            inception_weights=str(missing),
        )


def test_evaluate_offline_without_weights_says_which_file_and_where(
    tmp_path, monkeypatch, reference
):
    hub = tmp_path / "hub"
    downloads = offline(monkeypatch, hub)

    with pytest.raises(RuntimeError) as info:
        metrics.evaluate(UnusedGenerator(), reference, reference_name="x", num_samples=10)

    message = str(info.value)
    assert downloads == [OFFICIAL_URL]
    assert OFFICIAL_URL in message  # which file, and where it comes from
    assert "metrics.inception_weights=<file>" in message  # one fix
    assert str(hub / "checkpoints" / OFFICIAL_FILE) in message  # the other
    assert "URLError" in message
    assert not (hub / "checkpoints" / OFFICIAL_FILE).exists()


@pytest.mark.gpu
def test_evaluate_on_cuda(tmp_path, inception_weights, reference):
    G = TinyGenerator(num_classes=3)  # on the CPU: generated on the GPU, then moved back
    kwargs = dict(
        reference_name="cifar10-train",
        num_samples=20,
        batch_size=10,
        kid=True,
        inception_weights=str(inception_weights),
        cache_dir=str(tmp_path / "cache"),
    )

    tf32 = torch.backends.cudnn.allow_tf32
    out = metrics.evaluate(G, reference, device="cuda", **kwargs)

    assert set(out) == KEYS | {"metrics/kid"}
    assert all(math.isfinite(v) for v in out.values())
    assert next(G.parameters()).device.type == "cpu"
    assert G.training
    assert torch.backends.cudnn.allow_tf32 == tf32  # switched off during evaluation only
    # Same noise and labels on either device, FP32 on both: the same numbers up to rounding.
    on_cpu = metrics.evaluate(G, reference, device="cpu", **kwargs)
    assert out["metrics/fid"] == pytest.approx(on_cpu["metrics/fid"], rel=1e-3, abs=1e-4)
    assert out["metrics/is"] == pytest.approx(on_cpu["metrics/is"], rel=1e-4)


class CyclicReplay(ReplayGenerator):
    """ReplayGenerator starting over at each pass (precision/recall draws a second pass)."""

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.next %= len(self.images)
        return super().forward(z, y)


class PooledPixels(FeatureExtractorBase):
    """A stand-in for VGG16 in precision/recall: 4x4-pooled pixels as its "fc2_relu" (N, 48)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    def forward(self, x):
        return (F.avg_pool2d(x.float(), 8).flatten(1),)

    @staticmethod
    def get_provided_features_list():
        return ("fc2_relu",)


def test_precision_and_recall_come_from_the_vgg16_features(
    tmp_path, monkeypatch, inception_weights, reference
):
    """metrics.prc: torch-fidelity's precision/recall on the second network's features. With a
    stand-in for VGG16 (its 528 MB weights file is a slow test below): the reference against
    itself lies in its own manifold (1, 1); a much brighter copy lies outside it (0, 0)."""
    vgg = tmp_path / "vgg16.pth"
    vgg.write_bytes(b"stand-in")
    monkeypatch.setattr(extractor_weights, "safe_weights_file", lambda path, network: Path(path))
    create = torch_fidelity.utils.create_feature_extractor

    def extractor(name, layers, **kwargs):
        if name == "vgg16":
            return PooledPixels(name, layers)
        return create(name, layers, **kwargs)

    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", extractor)
    kwargs = dict(
        reference_name="cifar10-train",
        num_samples=NUM_REAL,
        batch_size=8,
        prc=True,
        inception_weights=str(inception_weights),
        prc_weights=str(vgg),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    evaluator = metrics.Evaluator(reference, **kwargs)
    same = evaluator(CyclicReplay(reference))
    assert set(same) == KEYS | {"metrics/precision", "metrics/recall"}
    assert (same["metrics/precision"], same["metrics/recall"]) == (1.0, 1.0)
    brighter = (reference.int() + 120).clamp(max=255).to(torch.uint8)
    far = evaluator(CyclicReplay(brighter))
    assert (far["metrics/precision"], far["metrics/recall"]) == (0.0, 0.0)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(name.endswith("-vgg16-features-fc2_relu.pt") for name in cached), cached


def test_an_evaluator_builds_inception_once_for_every_call(
    tmp_path, monkeypatch, inception_weights, reference, reference_extractions
):
    """Training scores G and G_ema at every evaluation: one network, one reference pass."""
    monkeypatch.setattr(metrics, "_EXTRACTORS", {})  # none built yet by this process
    built: list[str] = []
    create = torch_fidelity.utils.create_feature_extractor

    def counting(name, layers, **kwargs):
        built.append(name)
        return create(name, layers, **kwargs)

    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", counting)
    evaluator = metrics.Evaluator(
        reference,
        reference_name="cifar10-train",
        num_samples=10,
        batch_size=10,
        inception_weights=str(inception_weights),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    G, other = TinyGenerator(), TinyGenerator()
    first = evaluator(G, seed=0)
    evaluator(other, seed=1)
    again = evaluator(G, seed=0)
    assert built == ["inception-v3-compat"] and reference_extractions == [NUM_REAL]
    assert again == first  # the same generator and seed: the same numbers


@pytest.mark.slow
def test_precision_and_recall_through_torchvisions_vgg16(tmp_path, inception_weights, reference):
    """The real VGG16 path with random weights in torchvision's format (a 528 MB file, minutes
    on a CPU: not in the default run)."""
    vgg = tmp_path / "vgg16-random.pth"
    torch.save(torchvision.models.vgg16().state_dict(), vgg)
    out = metrics.evaluate(
        CyclicReplay(reference),
        reference,
        reference_name="cifar10-train",
        num_samples=NUM_REAL,
        batch_size=5,
        prc=True,
        inception_weights=str(inception_weights),
        prc_weights=str(vgg),
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    assert (out["metrics/precision"], out["metrics/recall"]) == (1.0, 1.0)
