"""The paper's networks and a registry that turns an architecture name into G and D."""

from __future__ import annotations

import inspect

from torch import nn

from sngan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from sngan.models.layers import ConditionalBatchNorm2d
from sngan.models.resnet import ResNetDiscriminator, ResNetGenerator

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "ConditionalBatchNorm2d",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_models",
]

GENERATORS: dict[str, type[nn.Module]] = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan": DCGANDiscriminator,
    "resnet": ResNetDiscriminator,
}


def build_models(
    name: str,
    *,
    z_dim: int,
    g_channels: int,
    d_channels: int,
    bottom_width: int,
    num_classes: int,
) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) of architecture ``name``; a D without ``bottom_width`` is size-agnostic."""
    if name not in GENERATORS or name not in DISCRIMINATORS:
        raise ValueError(f"unknown architecture {name!r}; valid names: {sorted(GENERATORS)}")
    G = GENERATORS[name](
        z_dim=z_dim, channels=g_channels, bottom_width=bottom_width, num_classes=num_classes
    )
    d_cls = DISCRIMINATORS[name]
    d_kwargs = {"channels": d_channels, "num_classes": num_classes}
    if "bottom_width" in inspect.signature(d_cls).parameters:
        d_kwargs["bottom_width"] = bottom_width
    D = d_cls(**d_kwargs)
    return G, D
