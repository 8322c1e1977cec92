"""Evaluation as training and sngan-eval run it: a run's config mapped onto ``sngan.metrics``.

``sngan.metrics`` computes IS/FID/KID/PR of a generator against reference images and knows
nothing of configs. This module picks the reference (the images the run trained on) and names its
cached features, checks before any training that the weights files are there and sound, decides
which generators are scored (``metrics.generators``: G_ema and the raw G, whose fp32 numbers are
what the paper reports) and with which BatchNorm statistics G_ema runs, and turns each score into
a record that says how it was made.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sngan import distributed, metrics
from sngan.build import resolve_device, training_images
from sngan.config import (
    BN_STATS,
    ConfigError,
    EvalConfig,
    MetricsConfig,
    TrainConfig,
    check_generators,
)
from sngan.extractor_weights import INCEPTION, VGG16, WeightsFileError, find_weights
from sngan.extractor_weights import safe_weights_file as checked_copy
from sngan.resume import saved_config
from sngan.sample import load_generators
from sngan.standing_stats import recompute_batchnorm_statistics

# Standing statistics: this many batches of the G step's size (4,096 images in the official
# config), from a fixed seed (the same z every time, on every rank), as BigGAN's
# accumulate_standing_stats. Why recompute is the default: docs/benchmarks.md (the measurement).
STANDING_BATCHES = 32


def reference_name(cfg: TrainConfig) -> str:
    """A cache key for the reference statistics of the training images."""
    d = cfg.data
    if d.source == "cifar10":
        return "cifar10-train"
    if d.source == "stl10":
        return f"stl10-{d.split}-{d.image_size}"
    if d.source == "folder":
        return "folder-" + "".join(c if c.isalnum() else "_" for c in str(Path(d.root).resolve()))
    return f"synthetic-{cfg.seed}-{d.num_images}-{d.image_size}"


def check_weights_files(settings: MetricsConfig) -> None:
    """The weights files are there (or fetched now) and hold the networks' tensors, checked
    without running code; otherwise a ConfigError naming the file and what is wrong."""
    networks = [(INCEPTION, settings.inception_weights)]
    if settings.prc:
        networks.append((VGG16, settings.prc_weights))
    try:
        for network, path in networks:
            # Checked once per process and file (safe_weights_file remembers): the CLI checks
            # before Hydra starts, train() again, the Evaluator when it loads the network.
            checked_copy(find_weights(path, network), network=network)
    except (OSError, RuntimeError, WeightsFileError) as e:  # missing, offline, damaged, foreign
        raise ConfigError(str(e)) from e


def build_evaluator(
    settings: MetricsConfig, reference: torch.Tensor, name: str, device: torch.device | str | None
) -> metrics.Evaluator:
    """``sngan.metrics.Evaluator`` with the settings of a ``metrics`` config section."""
    return metrics.Evaluator(
        reference,
        reference_name=name,
        protocol=settings.protocol,
        num_samples=settings.num_samples,
        batch_size=settings.batch_size,
        kid=settings.kid,
        prc=settings.prc,
        inception_weights=settings.inception_weights,
        prc_weights=settings.prc_weights,
        cache_dir=settings.cache_dir,
        device=device,
    )


def with_bn_stats(G_ema: nn.Module, mode: str, batch_size: int, seed: int) -> nn.Module:
    """G_ema as it is evaluated and sampled: itself (``copy``: G's statistics, as update_ema
    copies them), or a copy whose BatchNorm statistics are recomputed from its own samples
    (``recompute``). Training, and what checkpoints hold, never see the recomputed copy."""
    if mode == "copy":
        return G_ema
    net = distributed.without_sync_batchnorm(copy.deepcopy(G_ema))  # rank 0 alone runs this
    recompute_batchnorm_statistics(
        net, num_batches=STANDING_BATCHES, batch_size=batch_size, seed=seed
    )
    return net


def evaluate_generators(
    evaluator: metrics.Evaluator,
    generators: dict[str, nn.Module],
    *,
    seed: int,
    how: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One record per generator: its metrics, how they were made (``how_made``) and how long
    they took."""
    records = {}
    for name, G in generators.items():
        t0 = time.perf_counter()
        result = evaluator(G, seed)
        records[name] = {
            "generator": name,
            **how,
            "bn_stats": how["bn_stats"] if name == "G_ema" else "own",
            **result,
            "perf/eval_s": time.perf_counter() - t0,
        }
    return records


def how_made(protocol: str, bn_stats: str, fast_paths: Any) -> dict[str, Any]:
    """What a record says of how its numbers were made: the protocol (the sample counts are in
    the record), G_ema's BatchNorm statistics, and the run's training precision (the metrics
    themselves always run in fp32). ``fast_paths``: a FastPaths or its dict (None: unknown)."""
    fast = fast_paths if isinstance(fast_paths, dict) or fast_paths is None else asdict(fast_paths)
    return {
        "protocol": protocol,
        "bn_stats": bn_stats,
        "amp": None if fast is None else fast["amp"],
        "compile": None if fast is None else fast["compile"],
    }


def evaluate_checkpoint(args: EvalConfig) -> list[dict[str, Any]]:
    """sngan-eval: a record per generator of the checkpoint, scored against the images its
    run trained on (Inception and the reference's features shared between them)."""
    device = resolve_device(args.device)
    names = list(args.generators) if args.generators else ["G_ema" if args.ema else "G"]
    check_generators("generators", names)
    bn_stats = args.ema_bn_stats
    if bn_stats is not None and bn_stats not in BN_STATS:
        raise ConfigError(f"ema_bn_stats={bn_stats!r} is not valid: choose one of copy, recompute")
    nets, state = load_generators(args.checkpoint, names, device)  # the checkpoint, first
    check_weights_files(args.metrics)  # then the weights files, before the data
    cfg = saved_config(Path(args.checkpoint), state)
    if args.data_root is not None:
        cfg.data.root = args.data_root
    bn_stats = bn_stats or cfg.optim.ema_bn_stats
    if "G_ema" in nets:
        nets["G_ema"] = with_bn_stats(nets["G_ema"], bn_stats, cfg.optim.g_batch_size, cfg.seed)
    reference, _ = training_images(cfg)
    evaluator = build_evaluator(args.metrics, reference, reference_name(cfg), device)
    how = how_made(args.metrics.protocol, bn_stats, state.get("fast_paths"))
    records = evaluate_generators(evaluator, nets, seed=args.seed, how=how)
    head = {"checkpoint": str(args.checkpoint), "iteration": state["iteration"]}
    return [{**head, **record} for record in records.values()]
