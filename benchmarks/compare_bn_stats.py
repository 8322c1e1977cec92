"""G_ema's BatchNorm statistics, copied from G or recomputed for its own weights: how far apart,
and what the difference does to its samples.

``sngan.train.update_ema`` averages G's parameters into G_ema but copies G's BatchNorm running
statistics, gathered on G's current weights. The alternative ("standing statistics", BigGAN,
StudioGAN) is ``sngan.standing_stats.recompute_batchnorm_statistics`` on G_ema before it is
evaluated. This script trains the real trainer (``sngan.train.train``, its config composed from
configs/ with a preset) on the real CIFAR-10 slice (``data=folder``, 1,000 training images) on
the CPU, once per EMA decay (same seed: the same G in every run; only G_ema differs), with
``optim.ema_start`` low so that G_ema has really averaged, and a checkpoint every
``--checkpoint-every`` iterations. For every checkpoint:

- Statistics. G_ema as saved ("copy") against a copy of it with recomputed statistics ("own",
  ``--standing-batches`` batches of ``--standing-batch-size`` fresh z), per BatchNorm layer:
  ``rel_mean = ||m_copy - m_own|| / ||m_own||``, ``rel_var`` likewise for the variances,
  ``max_z_mean = max_c |m_copy - m_own| / sqrt(v_own + eps)`` and
  ``max_log_var = max_c |log(v_copy / v_own)|`` (``rel_mean`` means little where the own mean
  is near zero, as in the DCGAN's ``bn_in``: read ``max_z_mean`` there). As yardsticks, at the
  last checkpoint the same distances for G's own running statistics against G's recomputed
  ones, and for G_ema's recomputed statistics against a recompute from another seed (the
  recompute's own noise).
- Samples. ``--samples`` images each (same z, eval mode, uint8 as the evaluation makes them) of
  (a) G, (b) G_ema with copied statistics, (c) G_ema with recomputed statistics, compared with
  the 1,000 real training images by Frechet distances that need no Inception network: between
  4x4 average-pooled pixels (8x8x3 = 192-d, ``fd_pixels8``) and between the 256-d features of a
  fixed, seeded random CNN (``fd_random_cnn``; see ``RandomFeatures``), plus per-channel pixel
  mean/std and the fraction of saturated pixels (0 or 255), and the mean absolute pixel
  difference between each pair of (a), (b), (c) on the same z (in [-1, 1] units). The noise
  floors: the same distances between the 1,000 training and the 1,000 test images of the
  slice, and, at the last checkpoint, (b) and (c) again on other z.

The picture (``--image``): the same 16 z through (a) and, per decay, (b) and (c), at the last
checkpoint. The JSON (``--json``): machine, command, every run's config, every number.

    # docs/runs/bn_stats_dcgan.json and bn_stats_dcgan_decay0.99.json (the DCGAN at reduced width):
    python benchmarks/compare_bn_stats.py --model dcgan --iterations 400 model.g_channels=256 \\
        model.d_channels=32
    python benchmarks/compare_bn_stats.py --model dcgan --iterations 400 --decays 0.99 \\
        --json docs/runs/bn_stats_dcgan_decay0.99.json \\
        --image docs/images/bn_stats_dcgan_decay0.99.png model.g_channels=256 model.d_channels=32
    # the ResNet (not run: with n_dis 5 it costs several times the DCGAN's CPU per iteration):
    python benchmarks/compare_bn_stats.py --model resnet --iterations 300 model.g_channels=64 \\
        model.d_channels=64 optim.d_batch_size=32 optim.g_batch_size=32 optim.lr_decay=none
    python benchmarks/compare_bn_stats.py --quick --json /tmp/b.json --image /tmp/b.png
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sngan import benchmarking
from sngan.build import build_networks
from sngan.checkpoint import checkpoint_dir
from sngan.checkpoint import load as load_checkpoint
from sngan.config import to_dict
from sngan.data import load_images
from sngan.metrics import fid_from_features
from sngan.resume import saved_config
from sngan.sample import generate
from sngan.standing_stats import recompute_batchnorm_statistics
from sngan.train import train

GENERATORS = ("G", "G_ema_copy", "G_ema_recompute")
FEATURES = ("pixels8", "random_cnn")
FEATURE_SEED = 1234  # the random CNN's weights
SAMPLE_SEED = 100  # z of the samples; SAMPLE_SEED + 1 for the noise floor
GRID_SEED = 7  # z of the picture
STANDING_SEED = 0  # z of the recompute; STANDING_SEED + 1 for its noise floor


# -- statistics -----------------------------------------------------------------------------------


def batchnorms(G: nn.Module) -> dict[str, _BatchNorm]:
    """G's BatchNorms that keep running statistics, by module name."""
    return {
        name: m
        for name, m in G.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
    }


def statistics_distance(
    mean: torch.Tensor, var: torch.Tensor, own_mean: torch.Tensor, own_var: torch.Tensor, eps: float
) -> dict[str, float]:
    """How far (mean, var) are from (own_mean, own_var), all (C,): see the module docstring."""
    mean, var, own_mean, own_var = (t.double() for t in (mean, var, own_mean, own_var))
    return {
        "rel_mean": float((mean - own_mean).norm() / own_mean.norm().clamp_min(1e-12)),
        "rel_var": float((var - own_var).norm() / own_var.norm().clamp_min(1e-12)),
        "max_z_mean": float(((mean - own_mean).abs() / (own_var + eps).sqrt()).max()),
        "max_log_var": float((var.clamp_min(1e-12) / own_var.clamp_min(1e-12)).log().abs().max()),
    }


def compare_statistics(G: nn.Module, own: nn.Module) -> dict[str, dict[str, float]]:
    """``statistics_distance`` of every BatchNorm of ``G`` from the same layer of ``own``."""
    theirs = batchnorms(own)
    return {
        name: statistics_distance(
            bn.running_mean,
            bn.running_var,
            theirs[name].running_mean,
            theirs[name].running_var,
            bn.eps,
        )
        for name, bn in batchnorms(G).items()
    }


def summarize_layers(layers: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median and max over layers of each distance."""
    out = {}
    for key in next(iter(layers.values())):
        values = sorted(v[key] for v in layers.values())
        out[f"median_{key}"] = (
            values[len(values) // 2]
            if len(values) % 2
            else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        )
        out[f"max_{key}"] = values[-1]
    return out


@torch.no_grad()
def weight_distance(G_ema: nn.Module, G: nn.Module) -> float:
    """||theta_ema - theta|| / ||theta|| over all parameters: how far the average has moved."""
    diff = sum(
        float((a.double() - b.double()).pow(2).sum())
        for a, b in zip(G_ema.parameters(), G.parameters(), strict=True)
    )
    norm = sum(float(b.double().pow(2).sum()) for b in G.parameters())
    return math.sqrt(diff / norm)


def same_buffers(a: nn.Module, b: nn.Module) -> bool:
    """Every BatchNorm buffer of ``a`` equals ``b``'s bit for bit."""
    bb = batchnorms(b)
    return all(
        torch.equal(x, y)
        for name, bn in batchnorms(a).items()
        for x, y in (
            (bn.running_mean, bb[name].running_mean),
            (bn.running_var, bb[name].running_var),
        )
    )


# -- the generators of a checkpoint ---------------------------------------------------------------


def ema_variants(
    state: dict[str, Any], path: Path, *, num_batches: int, batch_size: int, seed: int
) -> dict[str, nn.Module]:
    """(a) G, (b) G_ema as saved, (c) a copy of (b) with recomputed statistics; eval, CPU.

    (b) is left exactly as the checkpoint holds it: the recompute works on a deep copy.
    """
    cfg = saved_config(path, state)
    out = {}
    for name, key in (("G", "G"), ("G_ema_copy", "G_ema")):
        G, _ = build_networks(cfg)
        G.load_state_dict(state[key])
        out[name] = G.to(memory_format=torch.channels_last).eval()
    own = copy.deepcopy(out["G_ema_copy"])
    recompute_batchnorm_statistics(own, num_batches=num_batches, batch_size=batch_size, seed=seed)
    out["G_ema_recompute"] = own
    return out


# -- samples and how far they are from the real images --------------------------------------------


class RandomFeatures(nn.Module):
    """A fixed random CNN: (B, 3, 32, 32) in [-1, 1] -> (B, 256) features.

    conv3x3(3->32), ReLU, avgpool2, conv3x3(32->64), ReLU, avgpool2, conv3x3(64->64), ReLU,
    average-pooled to 2x2: 64 * 4 = 256 features. He-normal weights and zero biases from
    ``seed``: the same network in every run, sensitive to colour, contrast and local texture.
    It is no Inception network and its distances are comparable only with each other.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in ((3, 32), (32, 64), (64, 64))
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(
                    torch.randn(conv.weight.shape, generator=gen) * (2 / fan_in) ** 0.5
                )
                conv.bias.zero_()
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.relu(self.convs[0](x)), 2)  # (B, 32, 16, 16)
        h = F.avg_pool2d(F.relu(self.convs[1](h)), 2)  # (B, 64, 8, 8)
        h = F.adaptive_avg_pool2d(F.relu(self.convs[2](h)), 2)  # (B, 64, 2, 2)
        return h.flatten(1)  # (B, 256)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def features(images: torch.Tensor, net: RandomFeatures) -> dict[str, torch.Tensor]:
    """uint8 images' features: 4x4-pooled pixels (N, 192) and the random CNN's (N, 256)."""
    x = to_unit(images)
    cnn = torch.cat([net(x[i : i + 500]) for i in range(0, len(x), 500)])
    return {"pixels8": F.avg_pool2d(x, 4).flatten(1), "random_cnn": cnn}


def image_statistics(images: torch.Tensor) -> dict[str, Any]:
    """Per-channel mean and std of the pixels in [-1, 1], and the fraction at 0 or 255."""
    x = to_unit(images)
    return {
        "channel_mean": [round(v, 5) for v in x.mean(dim=(0, 2, 3)).tolist()],
        "channel_std": [round(v, 5) for v in x.std(dim=(0, 2, 3)).tolist()],
        "saturated": float(((images == 0) | (images == 255)).float().mean()),
    }


def distances(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> dict[str, float]:
    """Frechet distance of each feature set of ``fake`` from ``real``'s."""
    return {f"fd_{k}": fid_from_features(fake[k], real[k]) for k in FEATURES}


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |a - b| of two uint8 image batches, in [-1, 1] units."""
    return float((to_unit(a) - to_unit(b)).abs().mean())


# -- one checkpoint -------------------------------------------------------------------------------


def evaluate_checkpoint(
    path: Path,
    real: dict[str, torch.Tensor],
    net: RandomFeatures,
    args: argparse.Namespace,
    last: bool,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every number of one checkpoint (and, for the picture, the 16 grid images of each G)."""
    state = load_checkpoint(path)
    t0 = time.perf_counter()
    nets = ema_variants(
        state,
        path,
        num_batches=args.standing_batches,
        batch_size=args.standing_batch_size,
        seed=STANDING_SEED,
    )
    recompute_s = time.perf_counter() - t0
    G, copied, own = (nets[k] for k in GENERATORS)
    layers = compare_statistics(copied, own)
    out: dict[str, Any] = {
        "iteration": state["iteration"],
        "checkpoint": str(path),
        "weight_rel_distance_ema_vs_G": weight_distance(copied, G),
        "copied_statistics_equal_G": same_buffers(copied, G),
        "recompute_s": recompute_s,
        "copy_vs_own": {"layers": layers, "summary": summarize_layers(layers)},
    }
    if last:
        # Yardsticks: G's own running statistics vs G's recomputed ones, and the recompute's noise.
        G_own = copy.deepcopy(G)
        recompute_batchnorm_statistics(
            G_own,
            num_batches=args.standing_batches,
            batch_size=args.standing_batch_size,
            seed=STANDING_SEED,
        )
        own_again = copy.deepcopy(copied)
        recompute_batchnorm_statistics(
            own_again,
            num_batches=args.standing_batches,
            batch_size=args.standing_batch_size,
            seed=STANDING_SEED + 1,
        )
        for key, (a, b) in {
            "G_running_vs_G_own": (G, G_own),
            "own_vs_own_other_seed": (own_again, own),
        }.items():
            layers = compare_statistics(a, b)
            out[key] = {"layers": layers, "summary": summarize_layers(layers)}

    t0 = time.perf_counter()
    images = {
        name: generate(
            net_, args.samples, seed=SAMPLE_SEED, batch_size=250, device=torch.device("cpu")
        )
        for name, net_ in nets.items()
    }
    feats = {name: features(imgs, net) for name, imgs in images.items()}
    out["samples"] = {
        name: {**distances(feats[name], real), **image_statistics(images[name])}
        for name in GENERATORS
    }
    out["mean_abs_diff"] = {
        "copy_vs_recompute": mean_abs_diff(images["G_ema_copy"], images["G_ema_recompute"]),
        "G_vs_copy": mean_abs_diff(images["G"], images["G_ema_copy"]),
        "G_vs_recompute": mean_abs_diff(images["G"], images["G_ema_recompute"]),
    }
    if last:
        # The same distances on other z: how much of a difference the samples' own noise makes.
        out["samples_other_z"] = {}
        for name in ("G_ema_copy", "G_ema_recompute"):
            imgs = generate(
                nets[name],
                args.samples,
                seed=SAMPLE_SEED + 1,
                batch_size=250,
                device=torch.device("cpu"),
            )
            out["samples_other_z"][name] = distances(features(imgs, net), real)
    out["sampling_s"] = time.perf_counter() - t0
    grid = {
        name: generate(net_, 16, seed=GRID_SEED, batch_size=16, device=torch.device("cpu"))
        for name, net_ in nets.items()
    }
    return out, grid


# -- the picture ----------------------------------------------------------------------------------


def write_picture(panels: dict[str, torch.Tensor], path: Path, scale: int = 2) -> None:
    """Labelled 4x4 grids side by side: one panel per generator, the same 16 z in each."""
    tiles = []
    for label, images in panels.items():
        grid = torchvision.utils.make_grid(images, nrow=4, padding=2, pad_value=255)
        img = Image.fromarray(grid.permute(1, 2, 0).numpy())
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        tile = Image.new("RGB", (img.width, img.height + 30), "white")
        tile.paste(img, (0, 30))
        ImageDraw.Draw(tile).text((4, 8), label, fill="black")
        tiles.append(tile)
    gap = 12
    canvas = Image.new(
        "RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height), "white"
    )
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    print(f"wrote {path}")


# -- the table ------------------------------------------------------------------------------------


def print_table(runs: dict[str, Any], floor: dict[str, float]) -> None:
    print(
        "\nstatistics: median (max) over BN layers of ||copy-own||/||own||; samples: Frechet "
        "distances to the 1,000 real images (a G | b G_ema copy | c G_ema recompute)"
    )
    print(
        f"{'decay':>7}{'iter':>6}{'w dist':>8}{'rel mean':>16}{'rel var':>16}{'max z':>7}"
        f"{'FD pix8 a|b|c':>24}{'FD cnn a|b|c':>24}{'|b-c|':>7}{'sat b|c':>13}"
    )
    for decay, run in runs.items():
        for c in run["checkpoints"]:
            s = c["copy_vs_own"]["summary"]
            fd = {
                k: "|".join(f"{c['samples'][g][f'fd_{k}']:.3g}" for g in GENERATORS)
                for k in FEATURES
            }
            sat = "|".join(f"{c['samples'][g]['saturated']:.3f}" for g in GENERATORS[1:])
            print(
                f"{decay:>7}{c['iteration']:>6}{c['weight_rel_distance_ema_vs_G']:>8.3f}"
                f"{s['median_rel_mean']:>8.3f} ({s['max_rel_mean']:5.2f})"
                f"{s['median_rel_var']:>8.3f} ({s['max_rel_var']:5.2f})"
                f"{s['max_max_z_mean']:>7.2f}{fd['pixels8']:>24}{fd['random_cnn']:>24}"
                f"{c['mean_abs_diff']['copy_vs_recompute']:>7.3f}{sat:>13}"
            )
        last = run["checkpoints"][-1]
        for key in ("G_running_vs_G_own", "own_vs_own_other_seed"):
            s = last[key]["summary"]
            print(
                f"{'':>7}{'':>6}  yardstick {key}: rel mean {s['median_rel_mean']:.4f} "
                f"({s['max_rel_mean']:.4f}), rel var {s['median_rel_var']:.4f} "
                f"({s['max_rel_var']:.4f}), max z {s['max_max_z_mean']:.3f}"
            )
        other = last["samples_other_z"]
        print(
            f"{'':>7}{'':>6}  other z: FD pix8 b|c {other['G_ema_copy']['fd_pixels8']:.3g}|"
            f"{other['G_ema_recompute']['fd_pixels8']:.3g}, FD cnn b|c "
            f"{other['G_ema_copy']['fd_random_cnn']:.3g}|"
            f"{other['G_ema_recompute']['fd_random_cnn']:.3g}"
        )
    print(
        f"real train vs real test (noise floor): FD pix8 {floor['fd_pixels8']:.3g}, "
        f"FD cnn {floor['fd_random_cnn']:.3g}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = benchmarking.training_parser(
        __doc__,
        iterations=500,
        data_root=benchmarking.CIFAR10_SLICE,
        data_root_help="holds train/ and test/",
        quick_help="tiny networks, 10 iterations: a smoke run",
        seed_help="the training seed of every run",
        json_help="default: docs/runs/bn_stats_<model>.json",
    )
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--ema-start", type=int, default=50, help="optim.ema_start")
    p.add_argument("--decays", type=float, nargs="+", default=[0.9999, 0.999])
    p.add_argument("--samples", type=int, default=1000, help="images per generator")
    p.add_argument("--standing-batches", type=int, default=50)
    p.add_argument("--standing-batch-size", type=int, default=64)
    p.add_argument("--image", type=Path, default=None, help="docs/images/bn_stats_<model>.png")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.checkpoint_every, args.ema_start = 10, 5, 5
        args.samples, args.standing_batches, args.standing_batch_size = 50, 4, 16
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compare_bn_stats_"))
    suffix = "_quick" if args.quick else ""
    json_path = (
        args.json
        or (workdir if args.quick else benchmarking.REPO_ROOT / "docs" / "runs")
        / f"bn_stats_{args.model}{suffix}.json"
    )
    image_path = (
        args.image
        or (workdir if args.quick else benchmarking.REPO_ROOT / "docs" / "images")
        / f"bn_stats_{args.model}{suffix}.png"
    )

    torch.set_num_threads(args.threads)
    info = benchmarking.machine(torch.device("cpu"))
    info |= benchmarking.git_state()
    print(benchmarking.machine_line(info))
    overrides = benchmarking.cpu_training_overrides(
        args.data_root / "train",
        args.iterations,
        log_every=args.checkpoint_every,
        checkpoint_every=args.checkpoint_every,
        quick=args.quick,
        extra=[
            f"threads={args.threads}",
            f"seed={args.seed}",
            f"optim.ema_start={args.ema_start}",
            "keep_checkpoints=1000",
            *args.overrides,
        ],
    )

    # The references: the training images the runs train on, and the test images as a floor.
    net = RandomFeatures(FEATURE_SEED)
    train_images, _ = load_images("folder", root=args.data_root / "train", image_size=32)
    test_images, _ = load_images("folder", root=args.data_root / "test", image_size=32)
    real = features(train_images, net)
    floor = distances(features(test_images, net), real)
    reference = {
        "real_train": {"n": len(train_images), **image_statistics(train_images)},
        "real_test": {"n": len(test_images), **image_statistics(test_images)},
        "fd_test_vs_train": floor,
    }

    runs: dict[str, Any] = {}
    panels: dict[str, torch.Tensor] = {}
    G_states = []
    for decay in args.decays:
        cfg = benchmarking.preset_config(args.model, [*overrides, f"optim.ema_decay={decay}"])
        run_dir = workdir / f"decay_{decay}"
        print(f"--- ema_decay={decay} -> {run_dir}")
        t0 = time.perf_counter()
        train(cfg, run_dir)
        train_s = time.perf_counter() - t0
        paths = sorted(checkpoint_dir(run_dir).glob("ckpt_*.pt"))
        checkpoints = []
        for i, path in enumerate(paths):
            result, grid = evaluate_checkpoint(path, real, net, args, last=i == len(paths) - 1)
            checkpoints.append(result)
            print(f"  iteration {result['iteration']}: {result['copy_vs_own']['summary']}")
        panels.setdefault("(a) G", grid["G"])
        panels[f"(b) G_ema {decay} copy"] = grid["G_ema_copy"]
        panels[f"(c) G_ema {decay} recompute"] = grid["G_ema_recompute"]
        G_states.append(load_checkpoint(paths[-1])["G"])
        runs[str(decay)] = {
            "ema_decay": decay,
            "run_dir": str(run_dir),
            "config": to_dict(cfg),
            "train_wall_s": train_s,
            "checkpoints": checkpoints,
        }
    # The EMA never feeds back into training: every run must have trained the same G.
    same_G = all(all(torch.equal(s[k], G_states[0][k]) for k in G_states[0]) for s in G_states[1:])

    print_table(runs, floor)
    print(f"same G in every run: {same_G}")
    write_picture(panels, image_path)
    out = {
        "comparison": "bn_statistics_copy_vs_recompute",
        "machine": info,
        "commands": [info["command"]],
        "settings": {
            "model": args.model,
            "preset": f"experiment={benchmarking.PRESETS[args.model]}",
            "iterations": args.iterations,
            "checkpoint_every": args.checkpoint_every,
            "ema_start": args.ema_start,
            "decays": args.decays,
            "samples": args.samples,
            "standing": {
                "num_batches": args.standing_batches,
                "batch_size": args.standing_batch_size,
                "seed": STANDING_SEED,
            },
            "sample_seed": SAMPLE_SEED,
            "grid_seed": GRID_SEED,
            "feature_seed": FEATURE_SEED,
            "features": {
                "pixels8": "4x4 average-pooled pixels in [-1, 1], 192-d",
                "random_cnn": RandomFeatures.__doc__.split("\n\n")[1].replace("\n", " ").strip(),
            },
            "quick": args.quick,
            "overrides": overrides,
            "image": str(image_path),
        },
        "reference": reference,
        "same_G_in_every_run": same_G,
        "runs": runs,
    }
    return benchmarking.write_record(json_path, out, compact_lists=True)


if __name__ == "__main__":
    main()
