"""Scaffolding shared by benchmarks/: what a measurement was made on, interleaved timing, paired
ratios, peak memory, synchronisation, the arguments and the JSON record.

The measurement harnesses (benchmarks/benchmark.py, bench_spectral_norm.py, bench_eval.py,
bench_data.py, compare_precision.py, compare_bn_stats.py) measure different things the same way;
this module is that way, written once. It also writes random Inception weights in the real file's
format (``random_inception_weights``), which the GPU check and the tests use where the real file
cannot be downloaded. Training never imports it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrizations

from sngan.config import TrainConfig, compose
from sngan.spectral_norm import is_spectral_normalized, remove_spectral_norm

T = TypeVar("T")
MIB = 2**20
# The repository checkout this module was imported from (an editable install): where the
# harnesses' default paths and git stamps point.
REPO_ROOT = Path(__file__).resolve().parents[1]
# The real CIFAR-10 slice next to the checkout: train/ and test/ image folders of 1,000 images.
CIFAR10_SLICE = REPO_ROOT.parent / "shared" / "data" / "cifar10-slice"
# --quick of the harnesses that train: tiny networks and batches, a smoke run (not a measurement).
QUICK_TRAIN_OVERRIDES = (
    "model.z_dim=16",
    "model.g_channels=32",
    "model.d_channels=8",
    "optim.d_batch_size=8",
    "optim.g_batch_size=8",
)
# Model name -> the config preset holding its official hyperparameters.
PRESETS = {
    "resnet": "sngan_resnet",
    "dcgan": "sngan_dcgan",
    "stl10_resnet": "sngan_stl10_resnet",
    "stl10_dcgan": "sngan_stl10_dcgan",
    "imagenet_projection": "sngan_imagenet128_projection",
}
# The spectral norms a discriminator can be timed with (see swap_spectral_norm).
SN_VARIANTS = ("none", "ours", "torch")


# -- what a measurement was made on ---------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was (None where unknown)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: device name, CPU, cores, threads, torch version."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_at_start": load_average(),
    }


def git_state() -> dict[str, Any]:
    """The commit the checkout is at, and its uncommitted changes to the trainer's code."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO_ROOT
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "sngan", "configs").splitlines()
    return {"git_commit": git("rev-parse", "HEAD"), "sngan_uncommitted": changed}


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted by ``spec`` for a table; "n/a" where it is None (not measured here)."""
    return "n/a" if x is None else format(x, spec)


def machine_line(info: dict[str, Any]) -> str:
    """``machine()``'s record in one line, the head of each script's banner."""
    return (
        f"{info['device_name']} | {info['cpu_count']} CPUs, {info['torch_threads']} torch "
        f"threads | torch {info['torch']}"
    )


# -- timing ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device, number: int = 1) -> tuple[T, float]:
    """The last of ``number`` calls of ``fn`` and the wall seconds per call.

    The device is synchronised before and after, so the time covers the work, not its launch.
    """
    if number < 1:
        raise ValueError(f"number must be >= 1, got {number}")
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(number):
        result = fn()
    synchronize(device)
    return result, (time.perf_counter() - t0) / number


def interleaved_times(
    calls: dict[str, Callable[[], object]],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    number: int,
    memory: dict[str, list[dict[str, float | None]]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one list entry per round, rounds interleaved.

    Round r times ``number`` calls of each function in turn, starting at a different one
    each round (A B C, B C A, ...), so slow drift and contention land on all of them.
    ``memory``: where given, each timed block's ``PeakMemory`` record is appended to
    ``memory[name]`` (measured around the timed span, not inside it).
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    meter = PeakMemory(device)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if memory is not None:
                meter.begin()
            _, seconds = timed(calls[name], device, number)
            times[name].append(seconds)
            if memory is not None:
                memory.setdefault(name, []).append(meter.end())
    return times


def paired_ratios(times: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Round-by-round ratios ``times[a] / times[b]`` (each pair measured in the same round)."""
    return [ta / tb for ta, tb in zip(times[a], times[b], strict=True)]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of ``values``."""
    ordered = sorted(values)
    if len(ordered) > 1:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def in_ms(stats: dict[str, float]) -> dict[str, float]:
    """A ``summary`` of seconds in milliseconds (its count ``n`` unchanged)."""
    return {k: 1e3 * v if k != "n" else v for k, v in stats.items()}


# -- peak memory ----------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of a block of code, in MiB, between ``begin()`` and ``end()``.

    ``end()`` returns ``rss_start_mib`` and ``rss_peak_mib``, the process's resident set at
    ``begin()`` and its peak since (VmHWM, reset through /proc/self/clear_refs: Linux; None
    where it cannot be reset); on CUDA also ``gpu_start_allocated_mib``,
    ``gpu_peak_allocated_mib`` and ``gpu_peak_reserved_mib``; and ``peak_above_start_mib``, the
    peak above what was held at ``begin()``: CUDA, ``max_memory_allocated`` less the memory
    allocated at the start; CPU, VmHWM less VmRSS at the start (None where VmHWM cannot be reset).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_start: float | None = None
        self.rss_reset = False
        self.gpu_start = 0

    def begin(self) -> None:
        """Start measuring: the peaks are reset to what is held now."""
        # Garbage not yet collected and freed heap pages glibc keeps resident would count as
        # held at the start: a block that reuses what the previous one freed would show no growth.
        gc.collect()
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.rss_reset = True
        except OSError:
            self.rss_reset = False
        self.rss_start = _status_mib("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.gpu_start = torch.cuda.memory_allocated(self.device)

    def end(self) -> dict[str, float | None]:
        """What was held at ``begin()`` and the peaks since, in MiB (see the class docstring)."""
        rss_peak = _status_mib("VmHWM") if self.rss_reset else None
        out: dict[str, float | None] = {"rss_start_mib": self.rss_start, "rss_peak_mib": rss_peak}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            out["gpu_start_allocated_mib"] = self.gpu_start / MIB
            out["gpu_peak_allocated_mib"] = peak / MIB
            out["gpu_peak_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / MIB
            out["peak_above_start_mib"] = (peak - self.gpu_start) / MIB
        elif rss_peak is None or self.rss_start is None:
            out["peak_above_start_mib"] = None
        else:
            out["peak_above_start_mib"] = rss_peak - self.rss_start
        return out


def _trim_heap() -> None:
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _status_mib(key: str) -> float | None:
    """``key`` (VmRSS, VmHWM) of /proc/self/status in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


# -- what is measured -----------------------------------------------------------------------------


def preset_config(model: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The real config (configs/train.yaml) with ``model``'s preset and ``overrides``, checked."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(PRESETS)}")
    preset = f"experiment={PRESETS[model]}"
    # The preset's image size survives data=synthetic (whose own is CIFAR-10's 32) unless the
    # overrides set one: value overrides apply after group choices, later ones win.
    size = compose([preset]).data.image_size
    return compose([preset, f"data.image_size={size}", *overrides])


def swap_spectral_norm(model: nn.Module, variant: str) -> nn.Module:
    """Replace sngan's spectral norm in ``model`` by none or torch's, in place; returns ``model``.

    ``variant``: ``ours`` leaves the model as built; ``none`` bakes each ``W / sigma`` into a
    plain weight; ``torch`` then applies ``torch.nn.utils.parametrizations.spectral_norm`` to
    the same layers (one power iteration per training forward, as ours).
    """
    if variant not in SN_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(SN_VARIANTS)}")
    if variant == "ours":
        return model
    layers = [m for m in model.modules() if is_spectral_normalized(m)]
    for layer in layers:
        remove_spectral_norm(layer)
        if variant == "torch":
            parametrizations.spectral_norm(layer)
    return model


# -- random Inception weights ---------------------------------------------------------------------


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception state dict (every key, shape and dtype), randomly filled.

    torch-fidelity loads its weights file (~92 MB, downloaded) with ``torch.load`` and a strict
    ``load_state_dict`` into ``FeatureExtractorInceptionV3``: a file of this class's own
    ``state_dict()`` goes through the exact same code, at the same cost; only its numbers are
    meaningless.
    """
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe_inception

    # The constructor loads weights itself; skip that to read off the architecture's keys.
    net_cls = fe_inception.FeatureExtractorInceptionV3
    with (
        mock.patch.object(fe_inception, "load_state_dict_from_url", return_value={}),
        mock.patch.object(net_cls, "load_state_dict"),
    ):
        net = net_cls("inception-v3-compat", ["2048"])

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                # He init keeps activations at unit scale through ~90 conv + ReLU layers, so the
                # 2048-d features neither vanish nor blow up.
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                # Eval-mode BN divides by sqrt(running_var + eps): keep it positive and near 1.
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
        # Logits of order one keep Inception's softmax away from one-hot (IS = exp(KL) finite and
        # above 1) and away from underflow (log of a zero marginal would give NaN).
        scale = 1.0 / math.sqrt(net.fc.in_features)
        net.fc.weight.normal_(0.0, scale, generator=gen)
        net.fc.bias.normal_(0.0, 0.1, generator=gen)
    return {k: v.clone() for k, v in net.state_dict().items()}


def random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save random Inception weights to ``path`` where ``feature_extractor_weights_path`` (and
    ``metrics.inception_weights``) can load them; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_inception_state_dict(seed), path)
    return path


# -- arguments ------------------------------------------------------------------------------------


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A harness's parser, described by the first paragraph of its docstring ``doc``."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def add_device_arguments(
    p: argparse.ArgumentParser, threads_help: str = "torch.set_num_threads (CPU)"
) -> None:
    """``--device`` (auto, cpu, cuda, cuda:N) and ``--threads``: read by ``setup_device``."""
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help=threads_help)


def setup_device(name: str, threads: int | None) -> torch.device:
    """The device ``name`` resolves to, with ``threads`` torch threads (where given) and the
    backend settings train() runs with (cuDNN autotuning, TF32)."""
    from sngan.build import configure_backends, resolve_device

    device = resolve_device(name)
    if threads:
        torch.set_num_threads(threads)
    configure_backends(device)
    return device


def comma_separated(choices: Collection[str]) -> Callable[[str], list[str]]:
    """An argparse ``type``: ``"a,b"`` -> ``["a", "b"]``, each one of ``choices``."""

    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = sorted(set(names) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return names

    return parse


def training_parser(
    doc: str,
    *,
    iterations: int,
    data_root: Path,
    data_root_help: str,
    quick_help: str,
    seed_help: str = "the training seed",
    json_help: str = "write the results here",
) -> argparse.ArgumentParser:
    """A parser for a harness that trains on the CPU: ``--model`` (a preset), ``--iterations``,
    ``--seed``, ``--threads`` (1), ``--data-root``, ``--workdir``, ``--quick``, ``--json`` and
    config overrides; the harness adds its own."""
    p = script_parser(doc)
    p.add_argument("--model", choices=sorted(PRESETS), default="dcgan")
    p.add_argument(
        "--iterations", type=int, default=iterations, help="generator iterations per run"
    )
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data-root", type=Path, default=data_root, help=data_root_help)
    p.add_argument("--workdir", type=Path, default=None, help="run dirs go here (default: tmp)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", type=Path, default=None, help=json_help)
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.g_channels=64")
    return p


def cpu_training_overrides(
    root: str | os.PathLike,
    iterations: int,
    *,
    log_every: int,
    checkpoint_every: int,
    quick: bool,
    extra: Sequence[str] = (),
) -> list[str]:
    """Overrides of a training run on the CPU on the image folder ``root``: logs every
    ``log_every`` iterations, one sample grid at the end, no evaluation or progress bar;
    ``quick``: ``QUICK_TRAIN_OVERRIDES``; ``extra`` last (later overrides win)."""
    return [
        "data=folder",
        f"data.root={Path(root).resolve()}",
        f"iterations={iterations}",
        "device=cpu",
        f"log_every={log_every}",
        f"log_exact_every={iterations}",
        f"sample_every={iterations}",
        f"checkpoint_every={checkpoint_every}",
        "metrics.enabled=false",
        "progress=false",
        *(QUICK_TRAIN_OVERRIDES if quick else ()),
        *extra,
    ]


# -- the record -----------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, data: Any, compact_lists: bool = False) -> None:
    """Write ``data`` to ``path`` as indented JSON (parents made) and say so.

    ``compact_lists``: each list of plain values (numbers, null, booleans) on one line, so
    long per-iteration curves stay readable in a diff.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2)
    if compact_lists:
        # A list holding no list, object or string: its items, one space apart.
        text = re.sub(
            r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text
        )
    path.write_text(text + "\n")
    print(f"wrote {path}")


def write_record(
    path: str | os.PathLike | None, record: dict[str, Any], compact_lists: bool = False
) -> dict[str, Any]:
    """``record`` with ``machine.load_average_at_end`` stamped, written to ``path`` where one is
    given (``write_json``); returns ``record``."""
    record["machine"]["load_average_at_end"] = load_average()
    if path is not None:
        write_json(path, record, compact_lists=compact_lists)
    return record
