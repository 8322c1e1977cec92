"""The paper's networks and a registry that turns an architecture name into G and D.

An architecture is one ``ARCHITECTURES`` entry; the tables other modules read
(``GENERATORS``, ``DISCRIMINATORS``, ``SUPPORTED_SIZES``, ``D_WIDTH_CHOICES``) and the
checks config validation runs (``default_widths``, ``width_error``, ``conditioning_error``)
are derived from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from sngan.models.layers import CONDITIONINGS, ConditionalBatchNorm2d, check_conditioning
from sngan.models.resnet import (
    CONDITIONING_SIZES,
    D_LAYOUTS,
    G_LAYOUTS,
    RESNET_SIZES,
    ResNetDiscriminator,
    ResNetGenerator,
    layout_widths,
)

__all__ = [
    "ARCHITECTURES",
    "CONDITIONINGS",
    "DISCRIMINATORS",
    "D_WIDTH_CHOICES",
    "GENERATORS",
    "SUPPORTED_SIZES",
    "Architecture",
    "ConditionalBatchNorm2d",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_models",
    "conditioning_error",
    "default_widths",
    "width_error",
]


@dataclass(frozen=True)
class Architecture:
    """One architecture family: its networks and what they can be built with."""

    title: str  # how error messages name it
    generator: type[nn.Module]
    discriminator: type[nn.Module]
    sizes: tuple[int, ...]  # the image sizes G and D build for
    # image_size -> the published (G, D) widths: what a null width becomes.
    default_widths: Callable[[int], tuple[int, int]]
    # (net "G"/"D", image_size, channels) -> raises ValueError if that width cannot build.
    check_width: Callable[[str, int, int], object]
    # Each conditioning the D takes -> the image sizes at which it takes it.
    conditionings: dict[str, tuple[int, ...]]
    d_widths: tuple[str, ...] = ("paper",)  # D width tables; "paper" (the default) first


def _check_dcgan_width(net: str, image_size: int, channels: int) -> None:
    # Only G's width is constrained (halved three times); D takes any positive width.
    if net == "G":
        check_g_channels(channels)


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture(
        title="standard CNN",
        generator=DCGANGenerator,
        discriminator=DCGANDiscriminator,
        sizes=DCGAN_SIZES,
        default_widths=lambda image_size: (G_CHANNELS, D_CHANNELS),  # the same at every size
        check_width=_check_dcgan_width,
        # The official code has no conditional standard CNN (sngan_projection holds only
        # ResNets): the projection D is sngan's own, and a concat one would be a guess.
        conditionings={"projection": DCGAN_SIZES},
        d_widths=tuple(D_WIDTHS),
    ),
    "resnet": Architecture(
        title="ResNet",
        generator=ResNetGenerator,
        discriminator=ResNetDiscriminator,
        sizes=RESNET_SIZES,
        default_widths=lambda image_size: (
            G_LAYOUTS[image_size].channels,
            D_LAYOUTS[image_size].channels,
        ),
        check_width=layout_widths,
        conditionings=CONDITIONING_SIZES,
    ),
}

GENERATORS: dict[str, type[nn.Module]] = {n: a.generator for n, a in ARCHITECTURES.items()}
DISCRIMINATORS: dict[str, type[nn.Module]] = {n: a.discriminator for n, a in ARCHITECTURES.items()}
# The image sizes each architecture builds for, for config validation to list.
SUPPORTED_SIZES: dict[str, tuple[int, ...]] = {n: a.sizes for n, a in ARCHITECTURES.items()}
# The D width tables each architecture has; "paper" (every D's default) is the first.
D_WIDTH_CHOICES: dict[str, tuple[str, ...]] = {n: a.d_widths for n, a in ARCHITECTURES.items()}


def _architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid names: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def default_widths(name: str, image_size: int) -> tuple[int, int]:
    """(G, D) widths of ``name`` at ``image_size`` as published: what a null width becomes."""
    return _architecture(name).default_widths(image_size)


def width_error(name: str, image_size: int, net: str, channels: int) -> str | None:
    """Why ``channels`` cannot be the width of ``name``'s ``net`` ("G"/"D"); None if it can.

    The constructors' own checks, without building anything (config validation runs them).
    """
    try:
        _architecture(name).check_width(net, image_size, channels)
    except ValueError as e:
        return str(e)
    return None


def conditioning_error(
    name: str, image_size: int, conditioning: str, num_classes: int | None = None
) -> str | None:
    """Why ``name``'s D at ``image_size`` cannot take ``conditioning``; None if it can.

    The constructors' own check, without building anything. ``num_classes`` (if given)
    rejects a conditioning other than the default for an unconditional model. An image
    size the architecture has no networks for is left to the size check's message.
    """
    try:
        arch = _architecture(name)
        # At a size with no networks, say only what is wrong with the conditioning itself.
        size = image_size if image_size in arch.sizes else None
        check_conditioning(conditioning, size, arch.conditionings, arch.title, num_classes)
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
    conditioning: str = "projection",
) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) of architecture ``name`` for ``image_size``; None channels: the defaults.

    The defaults are the published widths for the size (resnet) or 512 / 64 (dcgan).
    ``conditioning`` is how a class-conditional D takes the label (``CONDITIONINGS``).
    """
    arch = _architecture(name)
    if d_widths not in arch.d_widths:
        raise ValueError(
            f"d_widths must be one of {list(arch.d_widths)} for {name!r}, got {d_widths!r}"
        )
    error = conditioning_error(name, image_size, conditioning, num_classes)
    if error is not None:
        raise ValueError(error)
    # Leaving a None width out lets each constructor apply its own default.
    g_kwargs = {} if g_channels is None else {"channels": g_channels}
    d_kwargs = {} if d_channels is None else {"channels": d_channels}
    if d_widths != "paper":  # only a D with a choice of widths gets here
        d_kwargs["widths"] = d_widths
    if conditioning != CONDITIONINGS[0]:  # only a D with a choice of conditionings gets here
        d_kwargs["conditioning"] = conditioning
    G = arch.generator(z_dim=z_dim, image_size=image_size, num_classes=num_classes, **g_kwargs)
    D = arch.discriminator(image_size=image_size, num_classes=num_classes, **d_kwargs)
    return G, D
