"""Does bf16 + torch.compile change what sngan learns? Loss curves of the real trainer, compared.

Runs ``sngan.train.train`` (the real loop, its config composed from configs/ with a preset,
``experiment=sngan_dcgan`` by default: the paper's setting C, full-size networks, batch 64/64)
on the real CIFAR-10 slice (``data=folder``, 1,000 training images), logging every iteration,
three times:

    fp32       amp=false compile=false  seed S
    bf16       amp=true  compile=true   seed S     (the run under test)
    fp32_seed  amp=false compile=false  seed S+1   (the baseline: two fp32 runs, two seeds)

Every other setting is the same in the three runs, train()'s defaults for the CPU included
(channels_last, fused_adam, joint_d_forward); each run's full config is in the JSON, with the
git commit the trainer was imported from.
It reads ``loss/d``, ``loss/g``, ``d/real`` and ``d/fake`` back from each run's TensorBoard
events (EventAccumulator), smooths each curve into means over non-overlapping windows of
``--window`` iterations (a last, partial window is dropped), and compares two pairs of runs,
bf16 vs fp32 (same seed) and fp32 vs fp32_seed (the baseline), per tag: the Pearson
correlation r of the window means, the mean and the max absolute difference of window means
(mean|d|, max|d|), and the difference of the final window means (final d).

The rule. "Same shape" holds only if every run finished with finite losses and, for every tag,

    r(bf16, fp32)        >= r(fp32, fp32_seed) - R_TOL                     (R_TOL = 0.1)
    mean|d|(bf16, fp32)  <= MARGIN * mean|d|(fp32, fp32_seed)              (MARGIN = 1.5)
    max|d|(bf16, fp32)   <= MARGIN * max|d|(fp32, fp32_seed)
    |final d|(bf16, fp32) <= max|d|(fp32, fp32_seed)

i.e. bf16 + compile moves the curves no further from fp32 than another seed does (with a margin:
each pair is one sample of a noisy process). Per-iteration wall time is 1 / ``perf/it_per_s``
(with log_every=1, the time between two logs); its median over the iterations after the first
``WARMUP`` gives the speedup of bf16 + compile on the real trainer.

    python benchmarks/compare_precision.py --iterations 600 --json docs/runs/precision_dcgan.json
    python benchmarks/compare_precision.py --model resnet --iterations 400 model.g_channels=64 \
        model.d_channels=64 optim.d_batch_size=32 optim.g_batch_size=16 optim.lr_decay=none
    python benchmarks/compare_precision.py --quick --json /tmp/p.json   # tiny smoke run
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sngan import benchmarking
from sngan.config import TrainConfig, to_dict
from sngan.guard import NonFiniteError
from sngan.train import train

TAGS = ("loss/d", "loss/g", "d/real", "d/fake")
R_TOL = 0.1
MARGIN = 1.5
WARMUP = 10  # iterations left out of the median time (compilation happens in the first)


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """Every logged value of TAGS and perf/it_per_s, in step order, from run_dir/tb."""
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    curves = {}
    for tag in (*TAGS, "perf/it_per_s"):
        events = sorted(acc.Scalars(tag), key=lambda e: e.step)
        steps = [e.step for e in events]
        if steps != list(range(1, len(steps) + 1)):
            raise RuntimeError(f"{run_dir}: {tag} is not logged at every step 1..{len(steps)}")
        curves[tag] = [round(e.value, 6) for e in events]
    return curves


def run_one(name: str, cfg: TrainConfig, run_dir: Path, warmup: int) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; its curves, per-iteration seconds and any failure."""
    print(f"--- {name}: seed={cfg.seed} amp={cfg.amp} compile={cfg.compile} -> {run_dir}")
    error = None
    t0 = time.perf_counter()
    try:
        train(cfg, run_dir)
    except NonFiniteError as e:  # the curves up to the failure are still in the events
        error = str(e)
    wall_s = time.perf_counter() - t0
    torch._dynamo.reset()  # the next run compiles (or not) from scratch
    curves = read_curves(run_dir)
    s_per_it = [round(1.0 / v, 5) for v in curves.pop("perf/it_per_s")]
    return {
        "seed": cfg.seed,
        "amp": cfg.amp,
        "compile": cfg.compile,
        "run_dir": str(run_dir),
        "config": to_dict(cfg),
        "iterations_logged": len(s_per_it),
        "error": error,
        "finite": all(math.isfinite(v) for c in curves.values() for v in c),
        "train_wall_s": wall_s,
        "first_iteration_s": s_per_it[0],
        "median_s_per_it": statistics.median(s_per_it[warmup:] or s_per_it),
        "s_per_it": s_per_it,
        "curves": curves,
    }


def window_means(values: Sequence[float], window: int) -> list[float]:
    """Means of consecutive non-overlapping windows; a last, partial window is dropped."""
    return [
        statistics.fmean(values[i : i + window]) for i in range(0, len(values) - window + 1, window)
    ]


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; nan when either series is constant."""
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return math.nan


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """How far apart two window-mean curves are (over their common length)."""
    n = min(len(a), len(b))
    diff = [x - y for x, y in zip(a[:n], b[:n], strict=True)]
    return {
        "windows": n,
        "r": pearson(a[:n], b[:n]),
        "mean_abs_diff": statistics.fmean(abs(d) for d in diff),
        "max_abs_diff": max(abs(d) for d in diff),
        "final_diff": diff[-1],
        "diff": diff,
    }


def tag_verdict(test: dict[str, Any], base: dict[str, Any]) -> dict[str, bool]:
    """The rule of the module docstring for one tag: test pair against the baseline pair."""
    return {
        "r": test["r"] >= base["r"] - R_TOL,
        "mean_abs_diff": test["mean_abs_diff"] <= MARGIN * base["mean_abs_diff"],
        "max_abs_diff": test["max_abs_diff"] <= MARGIN * base["max_abs_diff"],
        "final_diff": abs(test["final_diff"]) <= base["max_abs_diff"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = benchmarking.training_parser(
        __doc__,
        iterations=600,
        data_root=benchmarking.CIFAR10_SLICE / "train",
        data_root_help="ImageFolder of the slice",
        quick_help="tiny networks, 8 iterations: a smoke run",
        seed_help="S; the baseline run uses S+1",
    )
    p.add_argument("--window", type=int, default=25, help="iterations per window mean")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    iterations, window = (8, 2) if args.quick else (args.iterations, args.window)
    warmup = 1 if args.quick else WARMUP
    overrides = benchmarking.cpu_training_overrides(
        args.data_root,
        iterations,
        log_every=1,
        checkpoint_every=iterations,
        quick=args.quick,
        extra=args.overrides,
    )
    runs_spec = {
        "fp32": (args.seed, False),
        "bf16": (args.seed, True),
        "fp32_seed": (args.seed + 1, False),
    }
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compare_precision_"))
    info = benchmarking.machine(torch.device("cpu"))
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    info["avx512_bf16"] = cpuinfo.exists() and "avx512_bf16" in cpuinfo.read_text()
    info.update(benchmarking.git_state())  # as imported: sngan is read once, before the first run
    print(benchmarking.machine_line(info))

    runs = {}
    for name, (seed, fast) in runs_spec.items():
        flags = [f"seed={seed}", f"amp={str(fast).lower()}", f"compile={str(fast).lower()}"]
        cfg = benchmarking.preset_config(args.model, [*overrides, *flags])
        runs[name] = run_one(name, cfg, workdir / name, warmup)

    windows = {
        name: {tag: window_means(r["curves"][tag], window) for tag in TAGS}
        for name, r in runs.items()
    }
    pairs = {"bf16_vs_fp32": ("bf16", "fp32"), "fp32_vs_fp32_seed": ("fp32", "fp32_seed")}
    comparisons = {
        pair: {tag: compare(windows[a][tag], windows[b][tag]) for tag in TAGS}
        for pair, (a, b) in pairs.items()
    }
    checks = {
        tag: tag_verdict(comparisons["bf16_vs_fp32"][tag], comparisons["fp32_vs_fp32_seed"][tag])
        for tag in TAGS
    }
    healthy = all(r["error"] is None and r["finite"] for r in runs.values())
    same_shape = healthy and all(all(c.values()) for c in checks.values())
    speedup = runs["fp32"]["median_s_per_it"] / runs["bf16"]["median_s_per_it"]

    print(f"\nwindow means of {window} iterations; {iterations} iterations per run")
    print(f"{'tag':<8}{'pair':<19}{'r':>7}{'mean|d|':>9}{'max|d|':>9}{'final d':>9}  rule")
    for tag in TAGS:
        for pair in pairs:
            c = comparisons[pair][tag]
            rule = ""
            if pair == "bf16_vs_fp32":
                rule = " ".join(f"{k}:{'ok' if v else 'FAIL'}" for k, v in checks[tag].items())
            print(
                f"{tag:<8}{pair:<19}{c['r']:>7.3f}{c['mean_abs_diff']:>9.4f}"
                f"{c['max_abs_diff']:>9.4f}{c['final_diff']:>+9.4f}  {rule}"
            )
    for name, r in runs.items():
        print(
            f"{name:<10} first iteration {r['first_iteration_s']:.2f} s, median "
            f"{r['median_s_per_it']:.3f} s/it after {warmup}, train() {r['train_wall_s']:.0f} s"
            + (f", ERROR: {r['error']}" if r["error"] else "")
        )
    print(f"bf16 + compile speedup (median s/it fp32 / bf16): {speedup:.2f}x")
    rule = (
        f"same shape iff all runs finish finite and, per tag, r(bf16,fp32) >= "
        f"r(fp32,fp32_seed) - {R_TOL}, mean|d| and max|d| <= {MARGIN} x the baseline's, "
        f"|final d| <= the baseline's max|d|"
    )
    print(f"verdict: {'SAME SHAPE' if same_shape else 'NOT the same shape'} ({rule})")

    out = {
        "comparison": "precision_loss_curves",
        "machine": info,
        "settings": {
            "model": args.model,
            "preset": f"experiment={benchmarking.PRESETS[args.model]}",
            "iterations": iterations,
            "window": window,
            "warmup": warmup,
            "quick": args.quick,
            "overrides": overrides,
            "tags": list(TAGS),
        },
        "rule": {"text": rule, "r_tol": R_TOL, "margin": MARGIN},
        "runs": runs,
        "window_means": windows,
        "comparisons": comparisons,
        "checks": checks,
        "verdict": {"same_shape": same_shape, "all_runs_healthy": healthy},
        "speedup_bf16_compile": speedup,
    }
    return benchmarking.write_record(args.json, out, compact_lists=True)


if __name__ == "__main__":
    main()
