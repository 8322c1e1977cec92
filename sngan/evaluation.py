"""Evaluation as training and sngan-eval run it: a run's config mapped onto ``sngan.metrics``.

``sngan.metrics`` computes IS/FID/KID/PR of a generator against reference images and knows
nothing of configs. This module names the reference's cached features, scores the generators
(``metrics.generators``: G_ema, as ``sngan.standing_stats.as_evaluated`` gives it, and the raw G,
whose fp32 numbers are what the paper reports) and turns each score into a record that says how
it was made. torch-fidelity is imported only when an evaluator is built (``sngan.build``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from sngan import build, checkpoint
from sngan.config import (
    BN_STATS,
    ConfigError,
    EvalConfig,
    TrainConfig,
    check_generators,
    check_intra_fid,
)
from sngan.resume import generators, saved_config

if TYPE_CHECKING:
    from sngan.metrics import Evaluator


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


def evaluate_generators(
    evaluator: Evaluator,
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
    device = build.resolve_device(args.device)
    names = list(args.generators) if args.generators else ["G_ema" if args.ema else "G"]
    check_generators("generators", names)
    bn_stats = args.ema_bn_stats
    if bn_stats is not None and bn_stats not in BN_STATS:
        raise ConfigError(f"ema_bn_stats={bn_stats!r} is not valid: choose one of copy, recompute")
    # The checkpoint first, then the weights files, then the data: nothing is computed until
    # all three are known to be sound.
    state = checkpoint.load(args.checkpoint, map_location="cpu")
    cfg = saved_config(Path(args.checkpoint), state)
    weights = build.checked_weights_files(args.metrics)
    if args.data_root is not None:
        cfg.data.root = args.data_root
    check_intra_fid("metrics", args.metrics, cfg.model.num_classes)
    data = build.training_set(cfg)
    bn_stats = bn_stats or cfg.optim.ema_bn_stats
    nets = generators(state, cfg, names, device, bn_stats, args.checkpoint)
    evaluator = build.build_evaluator(
        args.metrics, data.images, reference_name(cfg), device, weights, data.labels, data.digest
    )
    how = how_made(args.metrics.protocol, bn_stats, state.get("fast_paths"))
    records = evaluate_generators(evaluator, nets, seed=args.seed, how=how)
    head = {"checkpoint": str(args.checkpoint), "iteration": state["iteration"]}
    return [{**head, **record} for record in records.values()]
