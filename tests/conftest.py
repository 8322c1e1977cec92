"""Shared fixtures: data in CIFAR-10's own on-disk format, the real slice, device skips."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SLICE = REPO_ROOT.parent / "shared" / "data" / "cifar10-slice"

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def read_events(run_dir: Path) -> EventAccumulator:
    """A run's TensorBoard events (``run_dir/tb``), every record kept."""
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run as (step, value) pairs in the order logged."""
    acc = read_events(run_dir)
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def write_cifar10(root: Path, images_per_batch: int = 20, seed: int = 0) -> Path:
    """Write random images in CIFAR-10's python format under ``root/cifar-10-batches-py``.

    Same file names, pickle keys and array layout as the real archive: five training
    batches and one test batch, each a dict with ``data`` (N, 3072) uint8 in CHW order
    and ``labels`` (list of int), plus ``batches.meta`` with ``label_names``.
    """
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, images_per_batch).tolist(),
            "data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(images_per_batch)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": images_per_batch}, f)
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a small CIFAR-10 in its on-disk format (100 train, 20 test images)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def real_slice() -> Path:
    """The real 1,000 + 1,000 image slice of CIFAR-10 shipped in shared/ (skips when absent)."""
    if not (REAL_SLICE / "train").is_dir():
        pytest.skip(f"the real CIFAR-10 slice is not at {REAL_SLICE}")
    return REAL_SLICE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded-image caches (and torch hub) go to the session's temporary directory, never to
    the user's ~/.cache; subprocesses inherit it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# Overrides that shrink the real config to something a 2-core CPU trains in seconds.
TINY = [
    "data=synthetic",
    "data.num_images=64",
    "model=dcgan",
    "model.g_channels=32",
    "model.d_channels=8",
    "model.z_dim=16",
    "iterations=4",
    "optim.n_dis=2",
    "optim.d_batch_size=8",
    "optim.g_batch_size=8",
    "optim.ema_start=2",
    "log_every=1",
    "log_exact_every=2",
    "sample_every=2",
    "checkpoint_every=2",
    "metrics.enabled=false",
    "progress=false",
    "device=cpu",
]


def compose_config(*overrides: str, tiny: bool = True):
    """The real Hydra config (configs/train.yaml) composed with overrides, as a TrainConfig."""
    from sngan.config import compose

    return compose([*(TINY if tiny else []), *overrides])


@pytest.fixture
def tiny_config():
    """compose_config as a fixture: ``tiny_config("optim.n_dis=1")``."""
    return compose_config
