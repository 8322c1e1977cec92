"""The paper's networks and a registry that turns an architecture name into G and D."""

from __future__ import annotations

from torch import nn

from sngan.models.dcgan import (
    D_CHANNELS,
    D_WIDTHS,
    DCGAN_SIZES,
    G_CHANNELS,
    DCGANDiscriminator,
    DCGANGenerator,
    check_g_channels,
)
from sngan.models.layers import ConditionalBatchNorm2d
from sngan.models.resnet import (
    D_LAYOUTS,
    G_LAYOUTS,
    RESNET_SIZES,
    ResNetDiscriminator,
    ResNetGenerator,
    layout_widths,
)

__all__ = [
    "DISCRIMINATORS",
    "D_WIDTH_CHOICES",
    "GENERATORS",
    "SUPPORTED_SIZES",
    "ConditionalBatchNorm2d",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_models",
    "default_widths",
    "width_error",
]

GENERATORS: dict[str, type[nn.Module]] = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "dcgan": DCGANDiscriminator,
    "resnet": ResNetDiscriminator,
}
# The image sizes each architecture builds for, for config validation to list.
SUPPORTED_SIZES: dict[str, tuple[int, ...]] = {"dcgan": DCGAN_SIZES, "resnet": RESNET_SIZES}
# The D width tables each architecture has; "paper" (every D's default) is the first.
D_WIDTH_CHOICES: dict[str, tuple[str, ...]] = {"dcgan": tuple(D_WIDTHS), "resnet": ("paper",)}


def default_widths(name: str, image_size: int) -> tuple[int, int]:
    """(G, D) widths of ``name`` at ``image_size`` as published: what a null width becomes."""
    if name == "resnet":
        return G_LAYOUTS[image_size].channels, D_LAYOUTS[image_size].channels
    return G_CHANNELS, D_CHANNELS


def width_error(name: str, image_size: int, net: str, channels: int) -> str | None:
    """Why ``channels`` cannot be the width of ``name``'s ``net`` ("G"/"D"); None if it can.

    The constructors' own checks, without building anything (config validation runs them).
    """
    try:
        if name == "resnet":
            layout_widths(net, image_size, channels)
        elif net == "G":
            check_g_channels(channels)
    except ValueError as e:
        return str(e)
    return None


def build_models(
    name: str,
    *,
    image_size: int,
    z_dim: int,
    g_channels: int | None,
    d_channels: int | None,
    num_classes: int,
    d_widths: str = "paper",
) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) of architecture ``name`` for ``image_size``; None channels: the defaults.

    The defaults are the published widths for the size (resnet) or 512 / 64 (dcgan).
    """
    if name not in GENERATORS or name not in DISCRIMINATORS:
        raise ValueError(f"unknown architecture {name!r}; valid names: {sorted(GENERATORS)}")
    if d_widths not in D_WIDTH_CHOICES[name]:
        raise ValueError(
            f"d_widths must be one of {list(D_WIDTH_CHOICES[name])} for {name!r}, got {d_widths!r}"
        )
    # Leaving a None width out lets each constructor apply its own default.
    g_kwargs = {} if g_channels is None else {"channels": g_channels}
    d_kwargs = {} if d_channels is None else {"channels": d_channels}
    if d_widths != "paper":  # only a D with a choice of widths gets here
        d_kwargs["widths"] = d_widths
    G = GENERATORS[name](z_dim=z_dim, image_size=image_size, num_classes=num_classes, **g_kwargs)
    D = DISCRIMINATORS[name](image_size=image_size, num_classes=num_classes, **d_kwargs)
    return G, D
