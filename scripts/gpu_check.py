"""scripts/gpu_check.sh's Python side: the versions, a recorded training run, the summary table.

Three subcommands, each run by the shell script in a process of its own:

- ``versions``: GPU, driver, Python, torch, CUDA, cuDNN, Triton and the four carried packages,
  as JSON (``--require-cuda``: exit 1 where torch sees no GPU).
- ``train``: ``sngan.cli.train_main()`` in this process with the overrides after ``--``, and
  around it what sngan-train does not record: the first iterations' times (synchronised:
  compilation and cuDNN autotuning), the steady rate (1 / the median interval between
  iterations, host side: once the launch queue is full that is the device's rate, and the
  maintenance iterations fall out of the median), the peak CUDA memory (before the first
  evaluation and for the whole process), torch._dynamo's counters (graphs, graph breaks) and
  compile times, the run's newest checkpoint and metrics.jsonl. ``--expect-*``: checks of the
  run's end state; one that fails makes the exit status 1 even where training exited 0.
- ``report``: the summary table of a gpu_check output folder (steps.tsv and each step's JSON);
  standard library only, so it still reports when torch or sngan cannot be imported.

    python scripts/gpu_check.py versions --json out/1_versions.json
    python scripts/gpu_check.py train --json out/3_train_part1.json --run-dir RUN -- \\
        data=synthetic iterations=150 hydra.run.dir=RUN
    python scripts/gpu_check.py report out --budget 540
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 2**20
# The first calls of generator_iteration timed with the device synchronised around them.
FIRST_TIMED = 3
# Intervals left out of the steady rate at the start of a process (the launch queue filling).
STEADY_SKIP = 10
# The official schedule as the default config runs it: 50,000 generator iterations, G_ema and G
# scored at every 5,000th (10 evaluations), on 10,000 samples each (configs/train.yaml).
OFFICIAL_ITERATIONS = 50_000
OFFICIAL_EVALUATIONS = 10
EVAL_GENERATORS = 2
TRAIN_EVAL_SAMPLES = 10_000
BF16_CEILING_TFLOPS = 790.0  # one H200, dense bf16 (a measured 8192^3 matmul: ~790)
SPEEDUP_TARGET = 4.0  # issue: our generator iteration vs the plain PyTorch reference, on CUDA
SCHEDULE_TARGET_MIN = 15.0  # issue: the official schedule, evaluations included
EVAL_TARGET_S = 60.0  # issue 5: one evaluation of 50,000 samples, reference cached
EVAL_TARGET_N = 50_000


# write_json and fmt are this file's own, not sngan.benchmarking's: that module imports torch, and
# `report` must still run where torch or sngan cannot be imported.
def write_json(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- versions -------------------------------------------------------------------------------------


def nvidia_smi() -> dict[str, Any]:
    """nvidia-smi's name, driver, memory, compute capability and clocks (None where absent)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"found": False}
    fields = "name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"found": True, "error": str(e)}
    rows = [
        dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
        for line in out.stdout.splitlines()
        if line.strip()
    ]
    return {"found": True, "returncode": out.returncode, "gpus": rows, "stderr": out.stderr[-500:]}


def versions(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"python": platform.python_version(), "nvidia_smi": nvidia_smi()}
    for name in ("hydra-core", "omegaconf", "torch-fidelity", "tensorboard", "triton", "numpy"):
        info[name] = package_version(name)
    rc = 0
    try:
        import torch

        info |= {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {
                "gpu": props.name,
                "gpu_count": torch.cuda.device_count(),
                "capability": f"{props.major}.{props.minor}",
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count,
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        elif args.require_cuda:
            print("gpu_check: torch sees no CUDA device", file=sys.stderr)
            rc = 1
        import sngan  # the checkout on the path, with the carried packages it needs
        import sngan.cli  # noqa: F401  (hydra, omegaconf and the configs)
        import sngan.metrics  # noqa: F401  (torch-fidelity)

        info["sngan"] = sngan.__version__
        info["sngan_path"] = str(Path(sngan.__file__).resolve().parent)
    except Exception as e:  # a missing carried wheel, a broken torch: say which
        traceback.print_exc()
        info["error"] = f"{type(e).__name__}: {e}"
        rc = 1
    print(json.dumps(info, indent=2))
    write_json(args.json, info)
    return rc


# -- train ----------------------------------------------------------------------------------------


class IterationClock:
    """Stands in for ``sngan.train.generator_iteration``: calls it and times the calls."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.first_iteration: int | None = None
        self.first_s: list[float] = []  # the first FIRST_TIMED calls, device synchronised
        self.ends: list[float] = []  # host clock at the end of each call
        self.train_peak: int | None = None  # CUDA bytes, at the end of the last iteration
        # before this process's first evaluation

    def __call__(self, s: Any, it: int, eager: bool = False) -> Any:
        import torch

        if self.first_iteration is None:
            self.first_iteration = it
        cuda = s.device.type == "cuda"
        if it - self.first_iteration < FIRST_TIMED:
            if cuda:
                torch.cuda.synchronize(s.device)
            t0 = time.perf_counter()
            out = self.original(s, it, eager=eager)
            if cuda:
                torch.cuda.synchronize(s.device)
            self.first_s.append(time.perf_counter() - t0)
        else:
            out = self.original(s, it, eager=eager)
        self.ends.append(time.perf_counter())
        done, e = it + 1, s.cfg.metrics
        evaluates = e.enabled and (
            (e.eval_every and done % e.eval_every == 0) or done == s.cfg.iterations
        )
        if cuda and evaluates and self.train_peak is None:
            self.train_peak = torch.cuda.max_memory_allocated(s.device)  # no sync
        return out

    def record(self) -> dict[str, Any]:
        intervals = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        skip = min(STEADY_SKIP, len(intervals) // 2)
        steady = intervals[skip:]
        median = statistics.median(steady) if steady else None
        return {
            "first_iteration": self.first_iteration,
            "iterations_run": len(self.ends),
            "first_iterations_s": self.first_s,
            "steady_intervals": len(steady),
            "steady_ms_per_iteration": None if median is None else 1e3 * median,
            "steady_it_per_s": None if not median else 1.0 / median,
        }


def exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def dynamo_record() -> dict[str, Any] | None:
    """torch._dynamo's counters and compile times, where this process compiled anything."""
    if "torch._dynamo" not in sys.modules:
        return None
    from torch._dynamo import utils

    counters = {k: dict(v) for k, v in utils.counters.items() if v}
    breaks = counters.get("graph_break", {})
    times = {k: sum(v) for k, v in getattr(utils, "compilation_time_metrics", {}).items()}
    return {
        "unique_graphs": counters.get("stats", {}).get("unique_graphs", 0),
        "frames": counters.get("frames", {}),
        "graph_breaks": sum(breaks.values()),
        # A reason's first line names it; the rest is hints.
        "graph_break_reasons": {k.splitlines()[0][:200]: n for k, n in breaks.items()},
        "recompiles": counters.get("recompiles"),  # where this torch counts them
        # Dynamo's whole compilation (tracing, AOT autograd, Inductor), summed over frames.
        "compile_s": next((v for k, v in times.items() if k.endswith("compile_inner")), None),
        "compile_times_s": {k: round(v, 3) for k, v in times.items() if v >= 0.5},
        "counters": counters,
    }


def cuda_record(clock: IterationClock) -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {
        "device_name": torch.cuda.get_device_name(),
        "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
        "max_memory_reserved_mib": torch.cuda.max_memory_reserved() / MIB,
        "train_peak_allocated_mib": None if clock.train_peak is None else clock.train_peak / MIB,
    }


def run_record(run_dir: Path) -> dict[str, Any]:
    """The run directory's newest checkpoint, its checkpoint files, metrics.jsonl, perf curve."""
    from sngan import checkpoint

    out: dict[str, Any] = {"run_dir": str(run_dir)}
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        out["checkpoint_files"] = {
            p.name: p.stat().st_size for p in sorted(ckpt_dir.iterdir()) if p.is_file()
        }
    try:
        latest = checkpoint.find_latest(run_dir)
        out["latest_checkpoint"] = str(latest)
        out["latest_iteration"] = checkpoint.load(latest)["iteration"]
    except checkpoint.CheckpointError as e:
        out["latest_checkpoint_error"] = str(e)
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        out["evaluations"] = [
            json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()
        ]
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        if "perf/it_per_s" in acc.Tags()["scalars"]:
            out["tb_it_per_s"] = [[e.step, e.value] for e in acc.Scalars("perf/it_per_s")]
    except Exception as e:  # the curve is a nicety; the record must still be written
        out["tb_error"] = f"{type(e).__name__}: {e}"
    return out


def checks(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, bool]:
    run, it = record["run"], record["iterations"]
    out = {}
    if args.expect_iteration is not None:
        out["latest_checkpoint_at_iteration"] = run.get("latest_iteration") == args.expect_iteration
    if args.expect_evaluations is not None:
        # One evaluation scores every generator (G_ema and G): count the iterations.
        steps = {r.get("iteration") for r in run.get("evaluations", [])}
        out["evaluations"] = len(steps) == args.expect_evaluations
    if args.expect_resume_from is not None:
        out["resumed_from"] = it["first_iteration"] == args.expect_resume_from
    return out


def train(args: argparse.Namespace) -> int:
    import torch  # noqa: F401

    import sngan.train

    overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
    clock = IterationClock(sngan.train.generator_iteration)
    sngan.train.generator_iteration = clock  # train() looks it up in its module each iteration
    sys.argv = ["sngan-train", *overrides]
    from sngan.cli import train_main

    t0 = time.perf_counter()
    rc = 0
    try:
        weights = args.random_inception_weights
        if weights and not weights.is_file():
            from sngan.benchmarking import random_inception_weights

            random_inception_weights(weights)
        train_main()
    except SystemExit as e:
        rc = exit_code(e.code)
    except BaseException:  # noqa: BLE001 - recorded, and the exit status says so
        traceback.print_exc()
        rc = 1
    record: dict[str, Any] = {
        "returncode": rc,
        "overrides": overrides,
        "wall_s": time.perf_counter() - t0,
        "iterations": clock.record(),
        "cuda": cuda_record(clock),
        "dynamo": dynamo_record(),
        "run": run_record(Path(args.run_dir)),
    }
    record["checks"] = checks(args, record)
    write_json(args.json, record)
    it, cuda, dyn = record["iterations"], record["cuda"] or {}, record["dynamo"] or {}
    print(
        f"gpu_check train: exit {rc}; iterations {it['first_iteration']}.."
        f"{(it['first_iteration'] or 0) + it['iterations_run']}; steady "
        f"{fmt(it['steady_it_per_s'], '.2f')} it/s; first iterations "
        f"{', '.join(f'{s:.2f}' for s in it['first_iterations_s'])} s; peak "
        f"{fmt(cuda.get('max_memory_allocated_mib'), '.0f')} MiB; graphs "
        f"{dyn.get('unique_graphs', 'n/a')}, graph breaks {dyn.get('graph_breaks', 'n/a')}; "
        f"checks {record['checks']}"
    )
    if rc == 0 and not all(record["checks"].values()):
        return 1
    return rc


# -- report ---------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def yes_no(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def read_steps(folder: Path) -> list[dict[str, str]]:
    path = folder / "steps.tsv"
    if not path.is_file():
        return []
    names = ("id", "name", "status", "rc", "seconds", "note")
    with open(path, newline="") as f:
        return [dict(zip(names, row, strict=False)) for row in csv.reader(f, delimiter="\t")]


def junit_counts(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def figure_versions(folder: Path, _: dict) -> tuple[str, str]:
    v = read_json(folder / "1_versions.json") or {}
    gpus = (v.get("nvidia_smi") or {}).get("gpus") or [{}]
    driver = gpus[0].get("driver_version")
    where = v.get("gpu") or "no CUDA device"
    text = (
        f"{where}, driver {driver or 'n/a'}, torch {v.get('torch')}, CUDA {v.get('cuda')}, "
        f"cuDNN {v.get('cudnn')}, triton {v.get('triton')}, Python {v.get('python')}"
    )
    return text, f"CUDA visible: {yes_no(v.get('cuda_available'))}"


def figure_tests(folder: Path, _: dict) -> tuple[str, str]:
    c = junit_counts(folder / "2_gpu_tests.xml")
    if c is None:
        return "no junit XML", "all passed: n/a"
    text = (
        f"{c['passed']} passed, {c['failures']} failed, {c['errors']} errors, "
        f"{c['skipped']} skipped"
    )
    ran = c["passed"] + c["failures"] + c["errors"]
    ok = None if ran == 0 else c["failures"] + c["errors"] == 0
    return text, f"all passed: {yes_no(ok)}"


def train_figures(folder: Path) -> dict[str, Any]:
    parts = [read_json(folder / f"3_train_part{i}.json") or {} for i in (1, 2)]
    out: dict[str, Any] = {"parts": len([p for p in parts if p])}
    rates = [p["iterations"]["steady_it_per_s"] for p in parts if p.get("iterations")]
    rates = [r for r in rates if r]
    out["steady_it_per_s"] = statistics.median(rates) if rates else None
    out["first_iteration_s"] = [
        p["iterations"]["first_iterations_s"][0]
        for p in parts
        if p.get("iterations", {}).get("first_iterations_s")
    ]
    dyn = [p.get("dynamo") or {} for p in parts]
    out["compile_s"] = [d.get("compile_s") for d in dyn if d]
    out["unique_graphs"] = [d.get("unique_graphs") for d in dyn if d]
    out["graph_breaks"] = sum(d.get("graph_breaks", 0) for d in dyn)
    cuda = [p.get("cuda") or {} for p in parts]
    peaks = [c.get("max_memory_allocated_mib") for c in cuda if c.get("max_memory_allocated_mib")]
    train_peaks = [c.get("train_peak_allocated_mib") for c in cuda]
    train_peaks = [t for t in train_peaks if t]
    out["peak_mib"] = max(peaks) if peaks else None
    out["train_peak_mib"] = max(train_peaks) if train_peaks else None
    last = parts[1].get("run", {}) if parts[1] else {}
    out["latest_iteration"] = last.get("latest_iteration")
    out["evaluations"] = [
        {
            k: r.get(k)
            for k in ("iteration", "generator", "metrics/fid", "metrics/is", "perf/eval_s")
        }
        for r in last.get("evaluations", [])
    ]
    out["resumed_from"] = (parts[1].get("iterations") or {}).get("first_iteration")
    out["checks"] = {k: v for p in parts for k, v in (p.get("checks") or {}).items()}
    try:
        log = (folder / "3_train.log").read_text(errors="replace")
        out["recompile_messages"] = len(re.findall(r"Recompiling function", log))
        out["resume_line"] = bool(re.search(r"^resuming .* at iteration \d+", log, re.M))
    except OSError:
        out["recompile_messages"], out["resume_line"] = None, False
    return out


def figure_train(folder: Path, _: dict) -> tuple[str, str]:
    t = train_figures(folder)
    rate = t["steady_it_per_s"]
    evals = ", ".join(
        f"@{e['iteration']} {e.get('generator')} FID {fmt(e['metrics/fid'], '.1f')} "
        f"IS {fmt(e['metrics/is'], '.2f')} "
        f"({fmt(e['perf/eval_s'], '.1f')} s)"
        for e in t["evaluations"]
    )
    compile_s = "/".join(fmt(c, ".0f") for c in t["compile_s"]) or "n/a"
    first = "/".join(f"{s:.1f}" for s in t["first_iteration_s"]) or "n/a"
    peak = t["peak_mib"]
    text = (
        f"steady {fmt(rate, '.1f')} it/s ({fmt(rate and 1e3 / rate, '.1f')} ms/it); "
        f"1st iteration {first} s; compile {compile_s} s; "
        f"peak {fmt(peak and peak / 1024, '.2f')} GiB "
        f"(training {fmt(t['train_peak_mib'] and t['train_peak_mib'] / 1024, '.2f')}); "
        f"graphs {'/'.join(map(str, t['unique_graphs'])) or 'n/a'}, "
        f"graph breaks {t['graph_breaks']}, recompile messages {t['recompile_messages']}; "
        f"resumed @{t['resumed_from']}, ckpt @{t['latest_iteration']}; evals: {evals or 'none'}"
    )
    ok = bool(t["checks"]) and all(t["checks"].values()) and t["resume_line"]
    return text, f"exit 0, resumed, ckpt at end, evals: {yes_no(ok)}"


def bench_figures(path: Path) -> dict[str, dict[str, Any]]:
    data = read_json(path) or {}
    out = {}
    for model, r in data.get("results", {}).items():
        ours, ref = r["variants"]["ours"], r["variants"]["reference"]
        out[model] = {
            "ms": ours["ms_per_iteration"]["median"],
            "ref_ms": ref["ms_per_iteration"]["median"],
            "speedup": r["speedup_vs_reference"]["median"],
            "tflop_per_s": ours["tflop_per_s"],
            "first_iteration_s": ours["first_iteration_s"],
            "peak_mib": ours.get("peak_memory_mib"),
            "fast_paths": r.get("fast_paths"),
        }
    return out


def eval_figures(folder: Path) -> dict[str, Any] | None:
    data = read_json(folder / "5_bench_eval.json")
    if not data:
        return None
    st = data["stages"]
    n = data["settings"]["num_samples"]
    c = st["cached_evaluation"]
    seconds = c["seconds"]
    # What does not grow with the sample count: Inception's set-up and FID's square root.
    fixed = sum(c["breakdown_s"].get(k, 0.0) for k in ("inception_setup", "fid_sqrt"))
    at_target = seconds if n == EVAL_TARGET_N else fixed + (seconds - fixed) * EVAL_TARGET_N / n
    at_train = fixed + (seconds - fixed) * TRAIN_EVAL_SAMPLES / n
    return {
        "num_samples": n,
        "num_real": data["settings"]["num_real"],
        "cached_s": seconds,
        "first_s": st["first_evaluation"]["seconds"],
        "generation_s": st["generation"]["seconds"],
        "fixed_s": fixed,
        "at_50k_s": at_target,
        "at_10k_s": at_train,
        "extrapolated": n != EVAL_TARGET_N,
        "quick": data["settings"].get("quick"),
    }


def projection(folder: Path) -> dict[str, Any] | None:
    """The official schedule from the ResNet's ms/it, its compile and the evaluations' times."""
    resnet = bench_figures(folder / "4_benchmark.json").get("resnet")
    if not resnet:
        return None
    ev = eval_figures(folder)
    # Not measured: the target's 60 s for 50,000 samples, scaled to the training evaluations'.
    eval_s = ev["at_10k_s"] if ev else EVAL_TARGET_S * TRAIN_EVAL_SAMPLES / EVAL_TARGET_N
    # The reference (50,000 training images) goes through Inception once, at the first one.
    ref_extra = (ev["first_s"] - ev["cached_s"]) * (EVAL_TARGET_N / ev["num_real"]) if ev else 0
    train_s = OFFICIAL_ITERATIONS * resnet["ms"] / 1e3
    evaluations_s = OFFICIAL_EVALUATIONS * EVAL_GENERATORS * eval_s
    total = train_s + resnet["first_iteration_s"] + evaluations_s + ref_extra
    return {
        "train_s": train_s,
        "compile_s": resnet["first_iteration_s"],
        "evaluations_s": evaluations_s,
        "reference_stats_s": ref_extra,
        "eval_measured": ev is not None,
        "total_min": total / 60,
        "target_met": total / 60 <= SCHEDULE_TARGET_MIN,
    }


def quick(path: Path) -> str:
    """A prefix for the figures of a --quick run, which are no measurement."""
    return "QUICK: " if (read_json(path) or {}).get("settings", {}).get("quick") else ""


def figure_bench(folder: Path, _: dict) -> tuple[str, str]:
    b = bench_figures(folder / "4_benchmark.json")
    if not b:
        return "no benchmark JSON", "n/a"
    text = quick(folder / "4_benchmark.json") + "; ".join(
        f"{m} {v['ms']:.2f} ms/it (ref {v['ref_ms']:.2f}, {v['speedup']:.2f}x), "
        f"{v['tflop_per_s']:.1f} TFLOP/s = {100 * v['tflop_per_s'] / BF16_CEILING_TFLOPS:.1f}% "
        f"of {BF16_CEILING_TFLOPS:.0f}"
        for m, v in b.items()
    )
    met = ", ".join(f"{m} {yes_no(v['speedup'] >= SPEEDUP_TARGET)}" for m, v in b.items())
    p = projection(folder)
    sched = (
        "n/a"
        if p is None
        else f"{p['total_min']:.1f} min <= {SCHEDULE_TARGET_MIN:.0f}: {yes_no(p['target_met'])}"
    )
    return text, f">= {SPEEDUP_TARGET:.0f}x: {met}; 50k schedule {sched}"


def figure_eval(folder: Path, _: dict) -> tuple[str, str]:
    e = eval_figures(folder)
    if e is None:
        return "no bench_eval JSON", "n/a"
    text = quick(folder / "5_bench_eval.json") + (
        f"(c) {e['cached_s']:.1f} s for {e['num_samples']} vs {e['num_real']} "
        f"(first, reference uncached: {e['first_s']:.1f} s; generation {e['generation_s']:.1f} s)"
    )
    met = yes_no(e["at_50k_s"] < EVAL_TARGET_S)
    if e["extrapolated"]:
        text += f"; extrapolated to 50,000: {e['at_50k_s']:.1f} s (fixed {e['fixed_s']:.1f} s)"
        met += " (extrapolated)"
    return text, f"< {EVAL_TARGET_S:.0f} s at 50k: {met}"


def figure_variant(folder: Path, step: dict) -> tuple[str, str]:
    v = bench_figures(folder / f"6_{step['name']}.json").get("resnet")
    if v is None:
        return "no benchmark JSON", "-"
    base = bench_figures(folder / "4_benchmark.json").get("resnet")
    rel = f", {v['ms'] / base['ms']:.2f}x step 4's all-on time" if base else ""
    prefix = quick(folder / f"6_{step['name']}.json")
    return f"{prefix}resnet {v['ms']:.2f} ms/it{rel}; {v['speedup']:.2f}x the reference", "-"


IMAGENET_ITERATIONS = 450_000  # the official ImageNet schedule (configs/sn_projection.yml)
IMAGENET_GPUS = 4  # ... on four GPUs


def figure_imagenet(folder: Path, _: dict) -> tuple[str, str]:
    """ImageNet 128: ms/it, TFLOP/s, peak memory at one GPU's batches and the global ones; 450K
    iterations on one GPU (the global batches) and on four (one GPU's share each, assuming the
    all-reduce of 72 M gradients hides under the backward, as DDP overlaps it)."""
    part = {
        name: bench_figures(folder / f"7_imagenet_{name}.json").get("imagenet_projection")
        for name in ("gpu", "global")
    }
    if not all(part.values()):
        return "no ImageNet benchmark JSON", "n/a"
    text = quick(folder / "7_imagenet_gpu.json") + "; ".join(
        f"{name} batches {v['ms']:.1f} ms/it, {v['tflop_per_s']:.1f} TFLOP/s, "
        f"peak {fmt(v['peak_mib'], '.0f')} MiB"
        for name, v in part.items()
    )
    one = IMAGENET_ITERATIONS * part["global"]["ms"] / 1e3 / 86400
    four = IMAGENET_ITERATIONS * part["gpu"]["ms"] / 1e3 / 86400
    return text, f"450K iterations: {one:.1f} days on 1 GPU, {four:.1f} on {IMAGENET_GPUS}"


FIGURES = {
    "1": figure_versions,
    "2": figure_tests,
    "3": figure_train,
    "4": figure_bench,
    "5": figure_eval,
    "7": figure_imagenet,
}


def report(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    rows = []
    for step in read_steps(folder):
        figure = FIGURES.get(step["id"], figure_variant if step["id"].startswith("6") else None)
        key, target = "", ""
        if step["status"] == "ok" or step["status"].startswith("FAIL"):
            try:
                key, target = figure(folder, step) if figure else ("", "")
            except Exception as e:  # a JSON of another shape: say so, keep the table
                key, target = f"(figures unreadable: {type(e).__name__}: {e})", "n/a"
        if step.get("note"):
            key = f"{key} [{step['note']}]" if key else f"[{step['note']}]"
        rows.append({**step, "key_figure": key, "target": target})
    summary = {
        "folder": str(folder),
        "budget_s": args.budget,
        "rows": rows,
        "projection": projection(folder),
    }
    lines = [f"== gpu_check summary ({folder}, budget {args.budget} s) =="]
    lines.append(f"{'step':<5}{'status':<15}{'s':>5}  {'what':<20}key figure | target met?")
    for r in rows:
        lines.append(
            f"{r['id']:<5}{r['status']:<15}{r['seconds']:>5}  {r['name']:<20}"
            f"{r['key_figure'] or '-'} | {r['target'] or '-'}"
        )
    p = summary["projection"]
    if p:
        lines.append(
            f"50k schedule: {p['train_s'] / 60:.1f} min of iterations + {p['compile_s']:.0f} s "
            f"compile + {p['evaluations_s'] / 60:.1f} min for {OFFICIAL_EVALUATIONS} evaluations "
            f"of {EVAL_GENERATORS} generators at {TRAIN_EVAL_SAMPLES:,} samples "
            f"({'measured' if p['eval_measured'] else 'assumed at the 60 s target'}) + "
            f"{p['reference_stats_s']:.0f} s reference statistics = {p['total_min']:.1f} min"
            + (" (QUICK: not a measurement)" if quick(folder / "4_benchmark.json") else "")
        )
    text = "\n".join(lines) + "\n"
    write_json(folder / "summary.json", summary)
    (folder / "summary.txt").write_text(text)
    if not args.quiet:
        print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("versions", help="GPU, driver and library versions as JSON")
    v.add_argument("--json", type=Path, required=True)
    v.add_argument("--require-cuda", action="store_true", help="exit 1 where CUDA is not seen")
    t = sub.add_parser("train", help="sngan-train in this process, recorded")
    t.add_argument("--json", type=Path, required=True)
    t.add_argument("--run-dir", type=Path, required=True, help="the run's directory")
    t.add_argument(
        "--random-inception-weights",
        type=Path,
        help="write random Inception weights in the real file's format here first (if missing)",
    )
    t.add_argument("--expect-iteration", type=int, help="the newest checkpoint's iteration")
    t.add_argument(
        "--expect-evaluations", type=int, help="evaluations in metrics.jsonl (of every generator)"
    )
    t.add_argument("--expect-resume-from", type=int, help="the first iteration this process runs")
    t.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then sngan-train overrides")
    r = sub.add_parser("report", help="the summary table of an output folder")
    r.add_argument("folder", type=Path)
    r.add_argument("--budget", type=int, default=None)
    r.add_argument("--quiet", action="store_true", help="write summary.txt/json, print nothing")
    args = p.parse_args(argv)
    return {"versions": versions, "train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
