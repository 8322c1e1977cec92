"""Shared fixtures: data in CIFAR-10's own on-disk format, the real slice, device skips."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# Under pytest-xdist two workers, and the subprocesses they start, share CI's two cores: one
# torch (OpenMP) thread each, so that no thread spins waiting for a core another process holds.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
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


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real filesystem of ``size`` bytes (``2m``...) at ``path``, for a full disk or a read-only
    directory; skips the test, saying why, where tmpfs cannot be mounted (not root, a container
    without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0777" + (",ro" if read_only else "")
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("a real full disk needs mount(8), which this machine does not have")
    if proc.returncode != 0:
        reason = proc.stderr.strip() or f"exit status {proc.returncode}"
        pytest.skip(f"a real full disk needs a tmpfs mount, refused here: {reason}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize_tmpfs(path: Path, size: str) -> None:
    """Give a ``mounted_tmpfs`` room again (or take it away): remount it at ``size``."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


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


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's Inception weights file format and keys, random values."""
    from inception_fixture import write_random_inception_weights

    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "random.pth")


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


# Test files that read the one session run of scripts/gpu_check.sh --cpu-smoke (gpu_check_smoke).
GPU_CHECK_READERS = ("test_gpu_check.py", "test_benchmarks.py", "test_bench_eval.py")
# The files that take longest on CI's two cores, longest first. They are started first, so that
# the two workers end together instead of one finishing a long file alone.
LONGEST_FIRST = (
    "test_reproduce.py",
    *GPU_CHECK_READERS,
    "test_evaluation_in_training.py",
    "test_resolutions.py",
    "test_metrics.py",
    "test_sweeps.py",
    "test_reliability.py",
    "test_distributed.py",
    "test_runlock_cli.py",
    "test_hparams.py",
    "test_cli.py",
)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``-n 2`` runs each test file on one worker (its module fixtures are made once), and the
    readers of the gpu_check smoke run on the same one (the run is made once, not waited for)."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "gpu_check readers" if Path(file).name in GPU_CHECK_READERS else file

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


GPU_CHECK = REPO_ROOT / "scripts" / "gpu_check.sh"


def run_gpu_check(*args: str, out: Path, work: Path, timeout: float):
    """scripts/gpu_check.sh in a subprocess with this Python, as the GPU machine runs it."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "OUT": str(out),
        "GPU_CHECK_WORK": str(work),
        "PYTHON": sys.executable,
        "XDG_CACHE_HOME": str(work / "xdg-cache"),  # torch hub and image caches stay private
    }
    env.pop("GPU_CHECK_BUDGET_S", None)
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=work.parent,
    )


@pytest.fixture(scope="session")
def gpu_check_smoke(tmp_path_factory: pytest.TempPathFactory):
    """One ``gpu_check.sh --cpu-smoke`` run for the session: (process, its OUT, its scratch).

    Its benchmark steps run benchmarks/benchmark.py and benchmarks/bench_eval.py with --quick, so
    the tests of those harnesses read the JSON and logs written here instead of running them again.
    The readers share a worker under pytest-xdist (``pytest_xdist_make_scheduler``); the lock
    in the directory the workers share makes it once per run under any other distribution.
    """
    import fcntl
    import json
    import subprocess

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "gpu_check_smoke"
    out, work, record = root / "out", root / "work", root / "process.json"
    root.mkdir(exist_ok=True)
    with open(shared / "gpu_check_smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            proc = run_gpu_check("--cpu-smoke", out=out, work=work, timeout=1200)
            fields = {k: getattr(proc, k) for k in ("args", "returncode", "stdout", "stderr")}
            record.write_text(json.dumps(fields))
    return subprocess.CompletedProcess(**json.loads(record.read_text())), out, work


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


def torchrun_two(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """``torchrun --nproc_per_node=2 <args>`` on the CPU (gloo; one OpenMP thread a rank), as a
    user launches it; the CompletedProcess, with its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def compose_config(*overrides: str, tiny: bool = True):
    """The real Hydra config (configs/train.yaml) composed with overrides, as a TrainConfig."""
    from sngan.config import compose

    return compose([*(TINY if tiny else []), *overrides])


@pytest.fixture
def tiny_config():
    """compose_config as a fixture: ``tiny_config("optim.n_dis=1")``."""
    return compose_config
