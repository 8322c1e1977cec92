"""Scaffolding shared by scripts/: what a measurement was made on, interleaved timing, paired
ratios, peak memory, synchronisation, the JSON record.

The benchmark scripts (scripts/benchmark.py, bench_spectral_norm.py, bench_eval.py,
compare_precision.py) measure different things the same way; this module is that way, written
once. Training never imports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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
# The repository checkout this module was imported from (an editable install): its tests/.
REPO_ROOT = Path(__file__).resolve().parents[1]
# Model name -> the config preset holding its official hyperparameters.
PRESETS = {
    "resnet": "sngan_resnet",
    "dcgan": "sngan_dcgan",
    "stl10_resnet": "sngan_stl10_resnet",
    "stl10_dcgan": "sngan_stl10_dcgan",
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


def random_inception_weights(path: str | os.PathLike) -> Path:
    """tests/inception_fixture.py's random Inception weights file, written to ``path``.

    The same network in the real file's format, so the same time and meaningless numbers. The
    fixture is loaded by path from the repository's tests/: this needs the checkout (an
    editable install), not only the installed package.
    """
    fixture = REPO_ROOT / "tests" / "inception_fixture.py"
    if not fixture.is_file():
        raise FileNotFoundError(
            f"{fixture} not found: random Inception weights need the repository checkout "
            "(or give a real weights file)"
        )
    spec = importlib.util.spec_from_file_location("inception_fixture", fixture)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_random_inception_weights(path)


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
