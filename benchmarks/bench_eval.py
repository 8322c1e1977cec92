"""Time one evaluation (IS and FID of 50,000 generated images) with sngan's own metrics code.

What is timed is an ``sngan.metrics.Evaluator`` built as training and ``sngan-eval`` build it, on
the paper's ResNet generator (``sngan.build.build_networks`` of the default config; random
weights, which do not change the time) as ``G_ema`` in eval mode, against synthetic uint8
reference images of CIFAR-10's shape (``data.source=synthetic``, 50,000 by default: the
``standard`` protocol compares 50,000 generated images with the whole training set). Four
stages:

(a) generation alone: ``num_samples`` uint8 images drawn exactly as the metrics draw them
    (torch-fidelity's noise, ``metrics.batch_size`` per batch, G_ema in eval mode, FP32);
(b) the first evaluation, which also builds Inception, runs it over the reference images and
    caches their features and FID statistics;
(c) the evaluation again by the same evaluator, Inception built and the reference's statistics
    in memory: generation + Inception + IS + FID, what every later evaluation during training
    costs and the number the target is about (under 60 s for 50,000 samples on one H200);
(d) FID's arithmetic on the CPU, where torch-fidelity does it with numpy: the statistics
    (``np.cov`` of ``num_samples`` x 2048 features, float64) and the matrix square root
    (``np.linalg.eigvals`` of the 2048 x 2048 product of two covariances).

Stages (b) and (c) are also broken down by wrapping, with timers only, the functions they call
(torch-fidelity's Inception set-up and feature loops; sngan.metrics' cache reads and writes and
the IS, FID statistics and FID square root it takes from torch-fidelity); each part is its
exclusive time.
Memory per stage (``sngan.benchmarking.PeakMemory``): peak CUDA memory allocated
(``torch.cuda.max_memory_allocated``, reset at the start of the stage) on CUDA, and the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) on every device.

Without ``--inception-weights`` the Inception weights are random values in the real file's
format (``sngan.benchmarking.random_inception_weights``; the same network and the same time,
meaningless numbers). Weights and torch-fidelity's cache live in a temporary directory removed at
the end (``--keep-cache`` keeps it).

    python benchmarks/bench_eval.py --json eval_h200.json          # on the GPU: the target
    python benchmarks/bench_eval.py --device cpu --threads 1 --num-samples 2000 --num-real 2000
    python benchmarks/bench_eval.py --quick --device cpu --threads 1  # smoke run, not a measurement
"""

# The thread count has to be in the environment before numpy is imported, hence imports below code.
# ruff: noqa: E402

from __future__ import annotations

import os
import sys


def _threads_argument(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


# numpy's BLAS (OpenBLAS or MKL), where torch-fidelity computes FID, reads its thread count once,
# when numpy is first imported (torch imports it): --threads reaches it only through these.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if __name__ == "__main__" and (_threads := _threads_argument(sys.argv[1:])):
    for _var in BLAS_THREAD_VARIABLES:
        os.environ[_var] = _threads

import argparse
import contextlib
import copy
import functools
import gc
import importlib.metadata
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch_fidelity
import torch_fidelity.utils
from torch.utils.flop_counter import FlopCounterMode
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import NOISE_SOURCE_REGISTRY

from sngan import benchmarking, evaluation, metrics
from sngan.build import FastPaths, build_evaluator, build_networks, training_images
from sngan.config import DataConfig, MetricsConfig, TrainConfig, validate
from sngan.fp32 import full_precision
from sngan.protocols import protocol

# Issue 5: generation + Inception + IS + FID of 50,000 samples, reference cached, on one H200.
TARGET_S = 60.0
TARGET_NUM_SAMPLES = 50_000
FEATURE_DIM = 2048  # Inception's pool features, what FID's covariances are made of
# --quick: enough images for 10 IS splits and a partial last batch; Inception at 299x299 takes
# 0.1-0.2 s per image on one CPU core, so this takes about half a minute.
QUICK = {"num_samples": 12, "num_real": 12, "batch_size": 8, "sqrt_repeats": 1}

# The torch-fidelity 0.4 functions an evaluation goes through: (module, name, part). Each is
# wrapped with a timer, nothing else; a part's time excludes the parts it calls.
PARTS = (
    (metrics, "tensor_digest", "reference_hash"),  # blake2b of the reference pixels (cache key)
    (torch_fidelity.utils, "create_feature_extractor", "inception_setup"),  # build, load, move
    (torch_fidelity.utils, "get_featuresdict_from_generative_model", "generated_features"),
    (torch_fidelity.utils, "get_featuresdict_from_dataset", "reference_features"),
    (metrics, "read_cache", "cache_read"),
    (metrics, "write_cache", "cache_write"),
    (metrics, "isc_features_to_metric", "is"),
    (metrics, "fid_features_to_statistics", "fid_statistics"),  # np.cov
    (metrics, "fid_statistics_to_metric", "fid_sqrt"),  # np.linalg.eigvals
)


class Parts:
    """Exclusive wall time of each wrapped function: its own time less that of wrapped callees."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._children: list[float] = []  # per open call: time spent in wrapped callees

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._children.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - t0
                own = total - self._children.pop()
                self.seconds[part] = self.seconds.get(part, 0.0) + own
                self.calls[part] = self.calls.get(part, 0) + 1
                if self._children:
                    self._children[-1] += total

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[list[str]]:
        """Wrap every function of PARTS that exists; yields the ``module.name``s that do not."""
        missing = []
        with contextlib.ExitStack() as stack:
            for module, name, part in PARTS:
                if not hasattr(module, name):
                    missing.append(f"{module.__name__}.{name}")
                    continue
                fn = getattr(module, name)
                stack.enter_context(mock.patch.object(module, name, self.wrap(part, fn)))
            yield missing


def build_g_ema(cfg: TrainConfig, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``cfg``'s G, placed as train() places it, copied into an eval-mode G_ema."""
    torch.manual_seed(cfg.seed)
    G, _ = build_networks(cfg)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    G.to(device, memory_format=memory_format)
    return copy.deepcopy(G).eval().requires_grad_(False)


def count_gflops(
    G: torch.nn.Module, weights: Path, z_dim: int, image_size: int
) -> dict[str, float]:
    """Forward GFLOPs per image of G and of Inception (torch's FlopCounterMode, on the CPU)."""
    G_cpu = copy.deepcopy(G).cpu().to(memory_format=torch.contiguous_format)
    inception = FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(weights),
    )
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            G_cpu(torch.zeros(1, z_dim))
        out["generator_gflop_per_image"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            inception(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
        out["inception_gflop_per_image"] = counter.get_total_flops() / 1e9
    return out


def generate(
    G_ema: torch.nn.Module, num_samples: int, batch_size: int, seed: int, device: torch.device
) -> int:
    """Draw ``num_samples`` uint8 images as evaluate() does, and drop them; returns the count.

    The loop is torch-fidelity's (get_featuresdict_from_generative_model) without Inception:
    its noise source seeded with ``seed``, batches of ``batch_size``, sngan's own Samples.
    """
    samples = metrics.Samples(G_ema, seed, device)
    rng = np.random.RandomState(seed)
    batch_size = min(batch_size, num_samples)
    made = 0
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device, full_precision(device), torch.no_grad():
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            z = NOISE_SOURCE_REGISTRY[samples.z_type](rng, (n, samples.z_size))
            made += len(samples(z.to(device, non_blocking=True)))
    benchmarking.synchronize(device)
    return made


def timed_stage(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` once; its result, and its seconds and memory."""
    memory = benchmarking.PeakMemory(device)
    memory.begin()
    result, seconds = benchmarking.timed(fn, device)
    return result, {"seconds": seconds, **memory.end()}


def evaluation_stage(device: torch.device, fn: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """One evaluation: seconds, memory, the metrics it returned and its breakdown into parts."""
    parts = Parts()
    with parts.installed() as missing:
        result, stats = timed_stage(device, fn)
    accounted = sum(parts.seconds.values())
    breakdown = dict(sorted(parts.seconds.items(), key=lambda kv: -kv[1]))
    breakdown["other"] = stats["seconds"] - accounted
    return {
        **stats,
        "metrics": result,
        "breakdown_s": breakdown,
        "breakdown_calls": parts.calls,
        "breakdown_missing": missing,
    }


def fid_cpu_stage(num_samples: int, repeats: int, seed: int) -> dict[str, Any]:
    """Time torch-fidelity's FID arithmetic: np.cov of (N, 2048) features; eigvals at 2048."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(num_samples, FEATURE_DIM, generator=gen)  # float32, as Inception's
    gc.collect()
    t0 = time.perf_counter()
    fid_features_to_statistics(features)
    statistics_s = time.perf_counter() - t0
    del features
    # Full-rank covariances (rank-deficient ones below 2048 samples would flatter eigvals).
    rows = 2 * FEATURE_DIM
    stats = [
        fid_features_to_statistics(torch.randn(rows, FEATURE_DIM, generator=gen) * scale)
        for scale in (1.0, 1.1)
    ]
    sqrt_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fid = fid_statistics_to_metric(*stats, verbose=False)[torch_fidelity.KEY_METRIC_FID]
        sqrt_s.append(time.perf_counter() - t0)
    return {
        "statistics_s": statistics_s,
        "statistics_shape": [num_samples, FEATURE_DIM],
        "sqrt_s": statistics.median(sqrt_s),
        "sqrt_runs_s": sqrt_s,
        "sqrt_shape": [FEATURE_DIM, FEATURE_DIM],
        "sqrt_fid_of_random_covariances": fid,
    }


def cache_files(cache_dir: Path) -> dict[str, int]:
    """Bytes of every file torch-fidelity cached."""
    if not cache_dir.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in sorted(cache_dir.iterdir()) if p.is_file()}


def versions(device: torch.device) -> dict[str, Any]:
    """Library versions and thread settings that the figures depend on."""
    info: dict[str, Any] = {
        "torch_fidelity": importlib.metadata.version("torch-fidelity"),
        "numpy": np.__version__,
        "blas_env": {v: os.environ.get(v) for v in BLAS_THREAD_VARIABLES},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_count": torch.cuda.device_count(),
        }
    return info


def print_report(out: dict[str, Any]) -> None:
    s, st = out["settings"], out["stages"]
    n, n_real = s["num_samples"], s["num_real"]
    for key in ("first_evaluation", "cached_evaluation"):
        m = st[key]["metrics"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in st[key]["breakdown_s"].items())
        print(
            f"{key}: IS {m['metrics/is']:.4g} FID {m['metrics/fid']:.6g} | breakdown (s): {parts}"
        )
    rows = [
        ("(a) generation", st["generation"], f"{n} uint8 images"),
        ("(b) first evaluation", st["first_evaluation"], f"+ reference stats of {n_real}"),
        ("(c) evaluation, ref cached", st["cached_evaluation"], "generation+Inception+IS+FID"),
    ]
    print(f"\nevaluation of {n} samples vs {n_real} reference images on {s['device']}")
    print(f"{'stage':<30}{'seconds':>10}{'img/s':>10}{'GPU MiB':>10}{'RSS MiB':>10}  what")
    for name, r, what in rows:
        img_s = n / r["seconds"]
        gpu = r.get("gpu_peak_allocated_mib")
        print(
            f"{name:<30}{r['seconds']:>10.2f}{img_s:>10.1f}{benchmarking.fmt(gpu, '.0f'):>10}"
            f"{benchmarking.fmt(r['rss_peak_mib'], '.0f'):>10}  {what}"
        )
    f = st["fid_cpu"]
    for name, seconds, what in (
        ("(d) FID statistics (np.cov)", f["statistics_s"], f"{n}x2048, float64, CPU"),
        ("(d) FID sqrt (eigvals)", f["sqrt_s"], "2048x2048, float64, CPU"),
    ):
        print(f"{name:<30}{seconds:>10.2f}{'':>30}  {what}")
    c = st["cached_evaluation"]
    met = out["target_met"]
    verdict = (
        "n/a (only for 50,000 samples vs 50,000 on CUDA)"
        if met is None
        else ("met" if met else "NOT met")
    )
    print(f"target: (c) < {TARGET_S:.0f} s for 50,000 samples: {verdict} ({c['seconds']:.1f} s)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = benchmarking.script_parser(__doc__)
    benchmarking.add_device_arguments(
        p,
        threads_help="torch threads, and numpy's BLAS threads through OMP/OPENBLAS/MKL_NUM_THREADS",
    )
    p.add_argument("--num-samples", type=int, default=TARGET_NUM_SAMPLES, help="generated images")
    p.add_argument(
        "--num-real",
        type=int,
        default=TARGET_NUM_SAMPLES,
        help="synthetic reference images (CIFAR-10's training set has 50000)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=MetricsConfig().batch_size,
        help="metrics.batch_size: generation and Inception batch (default: the config's)",
    )
    p.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="torch-fidelity's Inception weights file (default: random values, same format)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="torch-fidelity's cache (must be empty; default: a temporary directory)",
    )
    p.add_argument("--keep-cache", action="store_true", help="do not delete the temporary files")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of stage (c); the median is reported (default: 3 on CUDA, 1 on the CPU)",
    )
    p.add_argument(
        "--sqrt-repeats", type=int, default=3, help="runs of the FID square root in stage (d)"
    )
    p.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.backends.cudnn.benchmark on CUDA, as train() sets it (default: on)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="G_ema in channels_last (default: as train() holds it with the default config)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny counts ({QUICK['num_samples']} samples, {QUICK['num_real']} real): "
        "a smoke run, not a measurement",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    if args.quick:
        args.num_samples, args.num_real = QUICK["num_samples"], QUICK["num_real"]
        args.batch_size, args.sqrt_repeats = QUICK["batch_size"], QUICK["sqrt_repeats"]
    if args.num_real < 2:
        p.error("--num-real must be at least 2 (FID needs a covariance)")
    # As train() sets the backends (evaluate() itself turns TF32 off while it runs), bar
    # --cudnn-benchmark.
    device = benchmarking.setup_device(args.device, args.threads)
    on_cuda = device.type == "cuda"
    repeats = args.repeats or (3 if on_cuda else 1)
    if on_cuda:
        torch.backends.cudnn.benchmark = args.cudnn_benchmark

    work = Path(tempfile.mkdtemp(prefix="sngan-bench-eval-"))
    cache_dir = args.cache_dir or work / "fidelity_cache"
    if cache_dir.is_dir() and any(cache_dir.iterdir()):
        p.error(f"--cache-dir {cache_dir} is not empty: stage (b) would not be a first evaluation")
    try:
        weights = args.inception_weights
        if weights is None:
            weights = benchmarking.random_inception_weights(work / "inception-random.pth")
        # The default config but for its data (synthetic) and evaluation settings.
        cfg = validate(
            TrainConfig(
                data=DataConfig(source="synthetic", num_images=args.num_real),
                metrics=MetricsConfig(
                    protocol="standard",
                    num_samples=args.num_samples,
                    batch_size=args.batch_size,
                    inception_weights=str(weights),
                    cache_dir=str(cache_dir),
                ),
                seed=args.seed,
            )
        )
        settings = cfg.metrics
        protocol(settings.protocol, settings.num_samples)  # fail before any work
        # The reference as training holds it: the data config's images, on the CPU.
        reference, _ = training_images(cfg)
        default_layout = FastPaths.resolve(cfg, device).channels_last
        channels_last = default_layout if args.channels_last is None else args.channels_last
        G_ema = build_g_ema(cfg, device, channels_last)

        info = benchmarking.machine(device) | versions(device)
        print(
            f"{benchmarking.machine_line(info)}, torch-fidelity {info['torch_fidelity']} | "
            f"{args.num_samples} samples vs {args.num_real} real, batch {args.batch_size}"
            f"{' | QUICK (not a measurement)' if args.quick else ''}"
        )
        print(f"torch-fidelity cache: {cache_dir}; Inception weights: {weights}")
        t_start = time.perf_counter()
        gflops = count_gflops(G_ema, Path(weights), cfg.model.z_dim, cfg.data.image_size)

        # Untimed: CUDA context, cuDNN's choice of G's kernels, oneDNN's primitives.
        warm_s = timed_stage(
            device, lambda: generate(G_ema, args.batch_size, args.batch_size, args.seed, device)
        )[1]["seconds"]

        # One evaluator, as training and sngan-eval hold it: Inception is built and the
        # reference's features computed (and cached) at its first call, (b); later calls, (c),
        # generate and score only.
        evaluator = build_evaluator(settings, reference, evaluation.reference_name(cfg), device)

        def evaluate() -> dict[str, float]:
            return evaluator(G_ema, cfg.seed)

        stages: dict[str, Any] = {}
        print("(a) generation ...", flush=True)
        made, stages["generation"] = timed_stage(
            device, lambda: generate(G_ema, args.num_samples, args.batch_size, args.seed, device)
        )
        stages["generation"]["images"] = made
        stages["generation"]["warmup_s"] = warm_s
        print("(b) first evaluation ...", flush=True)
        stages["first_evaluation"] = evaluation_stage(device, evaluate)
        cached_after_first = cache_files(cache_dir)
        runs = []
        for r in range(repeats):
            print(f"(c) evaluation, reference cached, run {r + 1}/{repeats} ...", flush=True)
            runs.append(evaluation_stage(device, evaluate))
        median_s = statistics.median(run["seconds"] for run in runs)
        median_run = min(runs, key=lambda run: abs(run["seconds"] - median_s))
        stages["cached_evaluation"] = {
            **median_run,
            "seconds": median_s,
            "runs_s": [run["seconds"] for run in runs],
        }
        print("(d) FID arithmetic on the CPU ...", flush=True)
        stages["fid_cpu"] = fid_cpu_stage(args.num_samples, args.sqrt_repeats, args.seed)

        c = stages["cached_evaluation"]
        flop = args.num_samples * (
            gflops["generator_gflop_per_image"] + gflops["inception_gflop_per_image"]
        )
        c["achieved_tflop_per_s"] = flop / 1e3 / c["seconds"]
        for r in (stages["generation"], stages["first_evaluation"], c):
            r["images_per_s"] = args.num_samples / r["seconds"]
        is_target_run = (
            on_cuda
            and args.num_samples == TARGET_NUM_SAMPLES
            and args.num_real == TARGET_NUM_SAMPLES
        )
        out = {
            "benchmark": "evaluation",
            "machine": info,
            "settings": {
                "device": str(device),
                "num_samples": args.num_samples,
                "num_real": args.num_real,
                "batch_size": args.batch_size,
                "protocol": settings.protocol,
                "seed": args.seed,
                "repeats": repeats,
                "sqrt_repeats": args.sqrt_repeats,
                "quick": args.quick,
                "threads": torch.get_num_threads(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "channels_last": channels_last,
                "model": asdict(cfg.model),
                "reference": f"load_images('synthetic', num_images={args.num_real})",
                "reference_name": evaluation.reference_name(cfg),
                "inception_weights": str(
                    args.inception_weights or "random (random_inception_weights)"
                ),
                "cache_dir": str(cache_dir),
                "cache_kept": bool(args.keep_cache or args.cache_dir),
            },
            "gflops": gflops,
            "stages": stages,
            "cache_files_after_first_evaluation": cached_after_first,
            "target_s": TARGET_S,
            "target_met": c["seconds"] < TARGET_S if is_target_run else None,
            "wall_s": time.perf_counter() - t_start,
        }
        print_report(out)
        return benchmarking.write_record(args.json, out)
    finally:
        if not args.keep_cache:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
