"""Time sngan's generator iterations against a plain PyTorch reference, side by side.

One generator iteration is what ``sngan.train.train`` runs per iteration, by the same code:
``build_step`` sets up the networks, optimisers, schedules, ``BatchStream``, autocast,
``torch.compile`` and memory format from the real config presets
(``experiment=sngan_resnet``: n_dis 5, D batch 64 real + 64 fake, G batch 128;
``experiment=sngan_dcgan``, the paper's setting C: n_dis 1, batch 64/64), and
``generator_iteration`` runs the ``n_dis`` D steps, the G step (each behind train()'s NaN/inf
check), the EMA of G and the schedules, on synthetic images (CIFAR-10's shape; the values do
not change the timing). The fast-path flags (``--amp``, ``--channels-last``, ...) are the
config keys of the same name; unset, each takes train()'s default on the device.

The reference does the same iterations the way the PyTorch reproductions write them: the
same networks with ``torch.nn.utils.parametrizations.spectral_norm``, fp32, eager, plain
Adam, a ``DataLoader(TensorDataset(cpu float tensor), shuffle=True, drop_last=True)`` with
each batch moved to the device, separate D forwards of the real and the fake batch, D's
parameter gradients computed in the G step too, a loss ``.item()`` per update, and a
per-parameter EMA loop.

The two are timed in interleaved rounds (ours, reference; reference, ours; ...): the ratio
is taken within each round and its median reported. FLOPs are counted once per variant with
``torch.utils.flop_counter.FlopCounterMode`` over one eager iteration (forward+backward).

    python scripts/benchmark.py --json bench.json                  # both models, this device
    python scripts/benchmark.py --models dcgan --no-amp --profile 15
    python scripts/benchmark.py --quick --json /tmp/b.json         # tiny smoke run
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench_spectral_norm import (
    load_average,
    machine,
    paired_ratios,
    resolve_device,
    summary,
    swap_spectral_norm,
    synchronize,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from sngan.config import TrainConfig, validate
from sngan.losses import get_loss
from sngan.train import (
    FastPaths,
    build_networks,
    build_step,
    generator_iteration,
    load_training_images,
)

# Model name -> the config preset holding its official hyperparameters.
PRESETS = {"resnet": "sngan_resnet", "dcgan": "sngan_dcgan"}
# Issue 6: on the CPU, a generator iteration at least this much faster than the reference.
CPU_TARGET_SPEEDUP = 1.3
# --quick: tiny networks and batches, for the smoke test (not a measurement).
QUICK_OVERRIDES = [
    "model.z_dim=16",
    "model.g_channels=16",
    "model.d_channels=8",
    "optim.d_batch_size=4",
    "optim.g_batch_size=8",
]


def compose_config(model: str, overrides: Sequence[str]) -> TrainConfig:
    """The real config (configs/train.yaml) with ``model``'s preset and ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sngan.cli import CONFIG_DIR  # also registers the schema in Hydra's ConfigStore

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        dcfg = compose("train", overrides=[f"experiment={PRESETS[model]}", *overrides])
    cfg: TrainConfig = OmegaConf.to_object(dcfg)
    cfg.optim.betas = tuple(cfg.optim.betas)
    return validate(cfg)


class OursIteration:
    """sngan.train's generator iteration: ``build_step`` and ``generator_iteration``, the code
    ``train()`` runs, with its NaN/inf check (for finite values the check does nothing more)."""

    def __init__(
        self, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device
    ) -> None:
        o = cfg.optim
        self.step = build_step(cfg, images, labels, device)
        self.iteration = 0
        self.images_per_iteration = 2 * o.n_dis * o.d_batch_size + o.g_batch_size

    def _check(self, it: int, phase: str, net: nn.Module) -> Callable[[torch.Tensor], bool]:
        return lambda loss: not self.step.guard.check(it, phase, loss, net)

    def __call__(self, eager: bool = False) -> None:
        generator_iteration(self.step, self.iteration, self._check, eager=eager)
        self.iteration += 1


def endless(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


class ReferenceIteration:
    """The same iteration written as the PyTorch SN-GAN reproductions write it."""

    def __init__(
        self, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device
    ) -> None:
        o = cfg.optim
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        G, D = build_networks(cfg)
        self.G = G.to(device)
        self.D = swap_spectral_norm(D, "torch").to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=o.g_lr, betas=o.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=o.d_lr, betas=o.betas)
        decay = cfg.optim.lr_decay == "linear"
        factor = (lambda it: max(0.0, 1.0 - it / cfg.iterations)) if decay else (lambda it: 1.0)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)
        self.d_loss, self.g_loss = get_loss(cfg.loss.name)
        dataset = TensorDataset(images.float() / 127.5 - 1, labels)  # (N, 3, H, W) in [-1, 1]
        loader = DataLoader(dataset, batch_size=o.d_batch_size, shuffle=True, drop_last=True)
        self.batches = endless(loader)
        self.images_per_iteration = 2 * o.n_dis * o.d_batch_size + o.g_batch_size

    def _z(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.cfg.model
        z = torch.randn(n, m.z_dim, device=self.device)
        y = torch.randint(0, m.num_classes, (n,), device=self.device) if m.num_classes else None
        return z, y

    def __call__(self, eager: bool = True) -> None:
        o = self.cfg.optim
        cond = self.cfg.model.num_classes > 0
        G, D = self.G, self.D
        G.train()
        D.train()
        for _ in range(o.n_dis):
            real, real_y = next(self.batches)
            real = real.to(self.device)
            real_y = real_y.to(self.device) if cond else None
            z, fake_y = self._z(o.d_batch_size)
            with torch.no_grad():
                fake = G(z, fake_y).detach()
            loss_d = self.d_loss(D(real, real_y), D(fake, fake_y))
            self.opt_d.zero_grad()
            loss_d.backward()
            self.opt_d.step()
            loss_d.item()  # logged every step
        z, fake_y = self._z(o.g_batch_size)
        loss_g = self.g_loss(D(G(z, fake_y), fake_y))
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        loss_g.item()
        with torch.no_grad():
            decay = o.ema_decay
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.mul_(decay).add_(p, alpha=1 - decay)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)
        self.sched_g.step()
        self.sched_d.step()


class PeakMemory:
    """Peak memory of a block above what was allocated when it started, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs) above its resident set at the start, after
    freed heap pages are handed back (glibc ``malloc_trim``); None where VmHWM cannot be reset.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0

    def begin(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return
        gc.collect()
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            self.start = _status_kib("VmRSS")
        except OSError:
            self.start = -1

    def end(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        if self.start < 0:
            return None
        return (_status_kib("VmHWM") - self.start) / 1024


def _trim_heap() -> None:
    # glibc keeps freed pages resident; without this, a block that reuses what the previous
    # block freed shows no growth at all.
    with suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def count_flops(iteration: Callable[..., None]) -> int:
    """FLOPs of one eager iteration (forwards and backwards of G and D)."""
    with FlopCounterMode(display=False) as counter:
        iteration(eager=True)
    return counter.get_total_flops()


def profile(name: str, iteration: Callable[[], None], device: torch.device, rows: int) -> str:
    """torch.profiler's table of one iteration, ops sorted by their own time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        iteration()
        synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    return f"--- profile: {name}, one generator iteration ---\n{table}"


def bench_model(
    model: str,
    *,
    device: torch.device,
    overrides: Sequence[str],
    warmup: int,
    iterations: int,
    repeats: int,
    profile_rows: int,
) -> dict[str, Any]:
    """Time ``model``'s generator iteration, ours and the reference, interleaved."""
    cfg = compose_config(model, overrides)
    images, labels = load_training_images(cfg)
    variants: dict[str, Any] = {
        "ours": OursIteration(cfg, images, labels, device),
        "reference": ReferenceIteration(cfg, images, labels, device),
    }
    flops = {name: count_flops(it) for name, it in variants.items()}
    # The first timed-by-itself iteration: includes compilation and cuDNN autotuning.
    first_s = {}
    for name, it in variants.items():
        synchronize(device)
        t0 = time.perf_counter()
        it()
        synchronize(device)
        first_s[name] = time.perf_counter() - t0
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    meter = PeakMemory(device)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            meter.begin()
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(iterations):
                variants[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - t0) / iterations)
            peak = meter.end()
            if peak is not None:
                peaks[name].append(peak)
    speedup = summary(paired_ratios(times, "reference", "ours"))
    out: dict[str, Any] = {
        "fast_paths": asdict(FastPaths.resolve(cfg, device)),
        "config": {
            "preset": f"experiment={PRESETS[model]}",
            "overrides": list(overrides),
            "n_dis": cfg.optim.n_dis,
            "d_batch_size": cfg.optim.d_batch_size,
            "g_batch_size": cfg.optim.g_batch_size,
            "loss": cfg.loss.name,
            "z_dim": cfg.model.z_dim,
            "g_channels": cfg.model.g_channels,
            "d_channels": cfg.model.d_channels,
            "num_classes": cfg.model.num_classes,
            "num_images": len(images),
        },
        "images_per_iteration": variants["ours"].images_per_iteration,
        "variants": {},
        "speedup_vs_reference": speedup,
        "cpu_target_speedup": CPU_TARGET_SPEEDUP,
        "cpu_target_met": speedup["median"] >= CPU_TARGET_SPEEDUP if device.type == "cpu" else None,
    }
    for name in names:
        ms = {k: 1e3 * v if k != "n" else v for k, v in summary(times[name]).items()}
        sec = ms["median"] / 1e3
        out["variants"][name] = {
            "ms_per_iteration": ms,
            "images_per_s": variants[name].images_per_iteration / sec,
            "gflop_per_iteration": flops[name] / 1e9,
            "tflop_per_s": flops[name] / sec / 1e12,
            "peak_memory_mib": max(peaks[name]) if peaks[name] else None,
            "first_iteration_s": first_s[name],
            "raw_s": times[name],
        }
    if profile_rows:
        out["profile"] = {
            name: profile(name, variants[name], device, profile_rows) for name in names
        }
        for table in out["profile"].values():
            print(table)
    return out


def print_table(results: dict[str, Any]) -> None:
    fast = next(iter(results.values()))["fast_paths"]
    flags = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in fast.items())
    print(f"\ngenerator iterations, median of interleaved rounds (ours: {flags})")
    head = f"{'model':<8}{'variant':<11}{'ms/it':>10}{'img/s':>9}{'GFLOP/it':>10}"
    print(head + f"{'TFLOP/s':>9}{'vs ref':>8}{'peak MiB':>10}")
    for model, r in results.items():
        for name, v in r["variants"].items():
            ratio = r["speedup_vs_reference"]["median"] if name == "ours" else 1.0
            peak = v["peak_memory_mib"]
            print(
                f"{model:<8}{name:<11}{v['ms_per_iteration']['median']:>10.1f}"
                f"{v['images_per_s']:>9.1f}{v['gflop_per_iteration']:>10.1f}"
                f"{v['tflop_per_s']:>9.3f}{ratio:>7.2f}x"
                f"{'n/a' if peak is None else f'{peak:.0f}':>10}"
            )
        s = r["speedup_vs_reference"]
        met = r["cpu_target_met"]
        verdict = (
            ""
            if met is None
            else f"; CPU target >= {CPU_TARGET_SPEEDUP}x: " + ("met" if met else "NOT met")
        )
        print(
            f"{'':<8}speedup ref/ours per round: median {s['median']:.3f} "
            f"(IQR {s['q1']:.3f}-{s['q3']:.3f}, n={s['n']}){verdict}"
        )
    print(
        "vs ref: reference time / our time, paired within each round; peak MiB: above the "
        "memory held before the iteration (CPU: resident set)"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet,dcgan", help="comma-separated: resnet,dcgan")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="generator iterations per variant per round (default: 1 CPU, 20 CUDA)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed iterations of each variant, after the FLOP count and the first iteration "
        "(default: 0 CPU, 10 CUDA)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds (default: 3 CPU, 5 CUDA)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=50000,
        help="synthetic training images (CIFAR-10 has 50000)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    for flag, what in (
        ("amp", "bf16 autocast"),
        ("compile", "torch.compile of G and D"),
        ("channels-last", "channels_last networks and batches"),
        ("fused-adam", "Adam(fused=True)"),
        ("joint-d-forward", "real and fake through D in one forward"),
    ):
        p.add_argument(
            f"--{flag}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{what} in our step (default: as train() does on the device)",
        )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="also profile one iteration of each variant, print the top ROWS ops",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny networks, batches and counts: a smoke run, not a measurement",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.num_classes=10")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        warmup, iterations, repeats, num_images = 0, 1, 2, 64
    else:
        warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 0)
        iterations = args.iterations or (20 if on_cuda else 1)
        repeats = args.repeats or (5 if on_cuda else 3)
        num_images = args.num_images
    # Each fast-path flag is the config key of the same name, which train() reads.
    switches = ("amp", "compile", "channels_last", "fused_adam", "joint_d_forward")
    fast_overrides = [
        f"{key}={str(getattr(args, key)).lower()}"
        for key in switches
        if getattr(args, key) is not None
    ]
    overrides = [
        "data=synthetic",
        f"data.num_images={num_images}",
        f"device={device}",
        *(QUICK_OVERRIDES if args.quick else []),
        *fast_overrides,
        *args.overrides,
    ]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(PRESETS))
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {', '.join(PRESETS)}")
    if on_cuda:
        # As train() does on CUDA.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    info = machine(device)
    print(
        f"{info['device_name']} | {info['cpu_count']} CPUs, {torch.get_num_threads()} torch "
        f"threads | torch {info['torch']} | {repeats} rounds x {iterations} iteration(s), "
        f"warm-up {warmup}{' | QUICK (not a measurement)' if args.quick else ''}"
    )
    t_start = time.perf_counter()
    results = {
        model: bench_model(
            model,
            device=device,
            overrides=overrides,
            warmup=warmup,
            iterations=iterations,
            repeats=repeats,
            profile_rows=args.profile,
        )
        for model in models
    }
    print_table(results)
    info["load_average_at_end"] = load_average()
    out = {
        "benchmark": "generator_iteration",
        "machine": info,
        "settings": {
            "warmup": warmup,
            "iterations": iterations,
            "repeats": repeats,
            "quick": args.quick,
            "fast_paths": next(iter(results.values()))["fast_paths"],
            "overrides": overrides,
        },
        "results": results,
        "wall_s": time.perf_counter() - t_start,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
