"""Evaluation as training and sngan-eval run it: a run's config mapped onto ``sngan.metrics``.

``sngan.metrics`` computes IS/FID/KID of a generator against reference images and knows nothing
of configs; this module picks the reference (the images the run trained on), names its cached
statistics, and checks before any training that the Inception weights are there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sngan import metrics
from sngan.config import ConfigError, MetricsConfig, TrainConfig


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


def check_inception(settings: MetricsConfig) -> None:
    """The Inception weights are there (or fetched now); otherwise a ConfigError saying how."""
    try:
        metrics.inception_weights_file(settings.inception_weights)
    except (OSError, RuntimeError) as e:  # missing file; offline without a cached copy
        raise ConfigError(str(e)) from e


def evaluate(
    G: torch.nn.Module,
    reference: torch.Tensor,
    settings: MetricsConfig,
    *,
    reference_name: str,
    device: torch.device | str | None,
    seed: int,
) -> dict[str, float]:
    """``sngan.metrics.evaluate`` with the settings of a ``metrics`` config section."""
    return metrics.evaluate(
        G,
        reference,
        reference_name=reference_name,
        protocol=settings.protocol,
        num_samples=settings.num_samples,
        batch_size=settings.batch_size,
        kid=settings.kid,
        inception_weights=settings.inception_weights,
        cache_dir=settings.cache_dir,
        device=device,
        seed=seed,
    )
