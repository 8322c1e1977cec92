"""Time forward+backward of the paper's SN discriminators with three spectral norms.

For each discriminator (the standard CNN of Table 3 and the ResNet of Table 4, at the
paper's widths) three copies of the same network are built: (a) ``none``, sngan's spectral
norm removed with ``remove_spectral_norm`` (the baked ``W / sigma`` becomes a plain weight),
(b) ``ours``, as the constructor builds it, and (c) ``torch``, the same layers with
``torch.nn.utils.parametrizations.spectral_norm`` instead. Each timed call is one
training-mode forward of a (B, 3, 32, 32) batch, a backward of the summed logits and the
``zero_grad`` before it, as in a D step. The three are timed in interleaved rounds (the order
rotates each round), so machine noise hits all three alike; the ratios are taken within each
round and their median is reported.

Targets (issue): ``ours`` within 5 % of ``none`` and no slower than ``torch``.

    python benchmarks/bench_spectral_norm.py --json bench_sn.json
    python benchmarks/bench_spectral_norm.py --device cuda --repeats 30
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from sngan import benchmarking
from sngan.models import DISCRIMINATORS

ARCHITECTURES = ("dcgan", "resnet")
# The targets, as upper bounds on the paired time ratios.
TARGETS = {"ours/none": 1.05, "ours/torch": 1.00}


def build_discriminator(arch: str, variant: str, device: torch.device) -> nn.Module:
    """The paper's unconditional D of ``arch`` at its default width, with ``variant``'s SN."""
    torch.manual_seed(0)  # the same initial weights for every variant
    D = benchmarking.swap_spectral_norm(DISCRIMINATORS[arch](), variant)
    return D.to(device).train()


def forward_backward(D: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        D.zero_grad(set_to_none=True)
        D(x).sum().backward()

    return step


def bench_architecture(
    arch: str, *, device: torch.device, batch_size: int, warmup: int, repeats: int, number: int
) -> dict[str, object]:
    """Time the three variants of ``arch`` side by side; medians in ms and paired ratios."""
    x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    calls = {
        v: forward_backward(build_discriminator(arch, v, device), x)
        for v in benchmarking.SN_VARIANTS
    }
    times = benchmarking.interleaved_times(
        calls, device=device, warmup=warmup, repeats=repeats, number=number
    )
    ratios = {
        key: benchmarking.summary(benchmarking.paired_ratios(times, *key.split("/")))
        for key in TARGETS
    }
    return {
        "ms": {
            v: benchmarking.in_ms(benchmarking.summary(times[v])) for v in benchmarking.SN_VARIANTS
        },
        "ratio": ratios,
        "target_met": {key: ratios[key]["median"] <= bound for key, bound in TARGETS.items()},
        "raw_s": times,
    }


def print_table(results: dict[str, dict], batch_size: int) -> None:
    print(f"\nforward+backward at batch {batch_size}, 32x32 (median of rounds; ms)")
    print(f"{'D':<8}{'none':>10}{'ours':>10}{'torch':>10}{'ours/none':>28}{'ours/torch':>28}")
    for arch, r in results.items():
        ms = [f"{r['ms'][v]['median']:10.2f}" for v in benchmarking.SN_VARIANTS]
        cells = []
        for key, bound in TARGETS.items():
            q = r["ratio"][key]
            flag = "ok" if r["target_met"][key] else f">{bound:.2f}"
            cells.append(f"{q['median']:.3f} ({q['q1']:.3f}-{q['q3']:.3f}) {flag:>5}")
        print(f"{arch:<8}{''.join(ms)}{cells[0]:>28}{cells[1]:>28}")
    print(
        "ratios: median (interquartile range) over rounds of the paired per-round ratio; "
        f"targets ours/none <= {TARGETS['ours/none']}, ours/torch <= {TARGETS['ours/torch']}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    p = benchmarking.script_parser(__doc__)
    benchmarking.add_device_arguments(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--archs",
        type=benchmarking.comma_separated(ARCHITECTURES),
        default=",".join(ARCHITECTURES),
        help="comma-separated: dcgan,resnet",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds (default: 20 on CPU, 30 on CUDA)",
    )
    p.add_argument(
        "--number",
        type=int,
        default=None,
        help="calls per variant per round (default: 1 on CPU, 20 on CUDA)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls of each variant first (default: 2 on CPU, 10 on CUDA)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    device = benchmarking.setup_device(args.device, args.threads)  # as training runs
    on_cuda = device.type == "cuda"
    repeats = args.repeats or (30 if on_cuda else 20)
    number = args.number or (20 if on_cuda else 1)
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 2)
    info = benchmarking.machine(device)
    line = benchmarking.machine_line(info)
    print(f"{line} | repeats {repeats} x {number} call(s), warm-up {warmup}")
    results = {
        arch: bench_architecture(
            arch,
            device=device,
            batch_size=args.batch_size,
            warmup=warmup,
            repeats=repeats,
            number=number,
        )
        for arch in args.archs
    }
    print_table(results, args.batch_size)
    out = {
        "benchmark": "spectral_norm_forward_backward",
        "machine": info,
        "settings": {
            "batch_size": args.batch_size,
            "image_size": 32,
            "repeats": repeats,
            "number": number,
            "warmup": warmup,
            "variants": list(benchmarking.SN_VARIANTS),
            "targets": TARGETS,
        },
        "results": results,
    }
    return benchmarking.write_record(args.json, out)


if __name__ == "__main__":
    main()
