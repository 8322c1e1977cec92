"""Time sngan's generator iterations against a plain PyTorch reference, side by side.

One generator iteration is what ``sngan.train.train`` runs per iteration, by the same code:
``sngan.build.build_train_state`` sets up the networks, optimisers, schedules,
``BatchStream``, autocast, ``torch.compile`` and memory format from the real config presets
(``experiment=sngan_resnet``: n_dis 5, D batch 64 real + 64 fake, G batch 128;
``experiment=sngan_dcgan``, the paper's setting C: n_dis 1, batch 64/64), and
``sngan.train.generator_iteration`` runs the ``n_dis`` D steps, the G step (each behind
train()'s NaN/inf check), the EMA of G and the schedules, on synthetic images (CIFAR-10's
shape; the values do not change the timing). The fast-path flags (``--amp``,
``--channels-last``, ...) are the config keys of the same name; unset, each takes train()'s
default on the device.

The reference does the same iterations the way the PyTorch reproductions write them: the
same networks with ``torch.nn.utils.parametrizations.spectral_norm``, fp32, eager, plain
Adam, a ``DataLoader(TensorDataset(cpu float tensor), shuffle=True, drop_last=True)`` with
each batch moved to the device, separate D forwards of the real and the fake batch, D's
parameter gradients computed in the G step too, a loss ``.item()`` per update, and a
per-parameter EMA loop.

The two are timed in interleaved rounds (ours, reference; reference, ours; ...): the ratio
is taken within each round and its median reported. FLOPs are counted once per variant with
``torch.utils.flop_counter.FlopCounterMode`` over one eager iteration (forward+backward).

    python benchmarks/benchmark.py --json bench.json               # both models, this device
    python benchmarks/benchmark.py --models dcgan --no-amp --profile 15
    python benchmarks/benchmark.py --quick --json /tmp/b.json      # tiny smoke run
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from sngan import benchmarking
from sngan.build import FastPaths, build_networks, build_train_state, training_images
from sngan.config import TrainConfig
from sngan.losses import get_loss
from sngan.train import generator_iteration

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


def images_per_iteration(cfg: TrainConfig) -> int:
    """Images through D or out of G per generator iteration: n_dis x (real + fake), then G's."""
    o = cfg.optim
    return 2 * o.n_dis * o.d_batch_size + o.g_batch_size


class OursIteration:
    """sngan.train's generator iteration on the state train() builds, with its NaN/inf guard
    (for finite values the guard's policy does nothing)."""

    def __init__(
        self, cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device
    ) -> None:
        self.state = build_train_state(cfg, images, labels, device)
        self.iteration = 0

    def __call__(self, eager: bool = False) -> None:
        generator_iteration(self.state, self.iteration, eager=eager)
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
        self.D = benchmarking.swap_spectral_norm(D, "torch").to(device)
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
        benchmarking.synchronize(device)
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
    cfg = benchmarking.preset_config(model, overrides)
    images, labels = training_images(cfg)
    variants: dict[str, Any] = {
        "ours": OursIteration(cfg, images, labels, device),
        "reference": ReferenceIteration(cfg, images, labels, device),
    }
    flops = {name: count_flops(it) for name, it in variants.items()}
    # The first timed-by-itself iteration: includes compilation and cuDNN autotuning.
    first_s = {name: benchmarking.timed(it, device)[1] for name, it in variants.items()}
    memory: dict[str, list[dict[str, float | None]]] = {}
    times = benchmarking.interleaved_times(
        variants, device=device, warmup=warmup, repeats=repeats, number=iterations, memory=memory
    )
    names = list(variants)
    per_iteration = images_per_iteration(cfg)
    speedup = benchmarking.summary(benchmarking.paired_ratios(times, "reference", "ours"))
    out: dict[str, Any] = {
        "fast_paths": asdict(FastPaths.resolve(cfg, device)),
        "config": {
            "preset": f"experiment={benchmarking.PRESETS[model]}",
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
            "image_size": cfg.data.image_size,
        },
        "images_per_iteration": per_iteration,
        "variants": {},
        "speedup_vs_reference": speedup,
        "cpu_target_speedup": CPU_TARGET_SPEEDUP,
        "cpu_target_met": speedup["median"] >= CPU_TARGET_SPEEDUP if device.type == "cpu" else None,
    }
    for name in names:
        ms = benchmarking.in_ms(benchmarking.summary(times[name]))
        sec = ms["median"] / 1e3
        peaks = [m["peak_above_start_mib"] for m in memory[name]]
        peaks = [p for p in peaks if p is not None]
        out["variants"][name] = {
            "ms_per_iteration": ms,
            "images_per_s": per_iteration / sec,
            "gflop_per_iteration": flops[name] / 1e9,
            "tflop_per_s": flops[name] / sec / 1e12,
            "peak_memory_mib": max(peaks) if peaks else None,
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
    w = max(8, *(len(model) + 2 for model in results))  # imagenet_projection is long
    head = f"{'model':<{w}}{'variant':<11}{'ms/it':>10}{'img/s':>9}{'GFLOP/it':>10}"
    print(head + f"{'TFLOP/s':>9}{'vs ref':>8}{'peak MiB':>10}")
    for model, r in results.items():
        for name, v in r["variants"].items():
            ratio = r["speedup_vs_reference"]["median"] if name == "ours" else 1.0
            peak = v["peak_memory_mib"]
            print(
                f"{model:<{w}}{name:<11}{v['ms_per_iteration']['median']:>10.1f}"
                f"{v['images_per_s']:>9.1f}{v['gflop_per_iteration']:>10.1f}"
                f"{v['tflop_per_s']:>9.3f}{ratio:>7.2f}x"
                f"{benchmarking.fmt(peak, '.0f'):>10}"
            )
        s = r["speedup_vs_reference"]
        met = r["cpu_target_met"]
        verdict = (
            ""
            if met is None
            else f"; CPU target >= {CPU_TARGET_SPEEDUP}x: " + ("met" if met else "NOT met")
        )
        print(
            f"{'':<{w}}speedup ref/ours per round: median {s['median']:.3f} "
            f"(IQR {s['q1']:.3f}-{s['q3']:.3f}, n={s['n']}){verdict}"
        )
    print(
        "vs ref: reference time / our time, paired within each round; peak MiB: above the "
        "memory held before the iteration (CPU: resident set)"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = benchmarking.script_parser(__doc__)
    p.add_argument(
        "--models",
        type=benchmarking.comma_separated(benchmarking.PRESETS),
        default="resnet,dcgan",
        help=f"comma-separated, of {', '.join(benchmarking.PRESETS)} "
        "(stl10_*: 48 px; imagenet_*: 128)",
    )
    benchmarking.add_device_arguments(p)
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

    device = benchmarking.setup_device(args.device, args.threads)  # as train() sets the backends
    on_cuda = device.type == "cuda"
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
    info = benchmarking.machine(device)
    print(
        f"{benchmarking.machine_line(info)} | {repeats} rounds x {iterations} iteration(s), "
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
        for model in args.models
    }
    print_table(results)
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
    return benchmarking.write_record(args.json, out)


if __name__ == "__main__":
    main()
