"""Pieces shared by the networks: initialisers, batch norms that take labels, input checks.

The initialisers mirror the official Chainer code's ``initialW`` arguments and return the
layer, so a discriminator layer reads ``spectral_norm(init_xavier_uniform(nn.Conv2d(...)))``:
the weight is initialised first, because ``spectral_norm`` warms up u and v from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "BN_EPS",
    "CONDITIONINGS",
    "RESIDUAL_GAIN",
    "BatchNorm2d",
    "ConditionalBatchNorm2d",
    "batch_norm",
    "check_conditioning",
    "check_image_size",
    "check_images",
    "check_labels",
    "check_latents",
    "check_num_classes",
    "check_positive",
    "init_normal",
    "init_xavier_uniform",
]

# Chainer's BatchNormalization default (torch's is 1e-5); its decay 0.9 is torch's momentum 0.1.
BN_EPS = 2e-5
# GlorotUniform(math.sqrt(2)) of the official residual blocks' 3x3 convolutions.
RESIDUAL_GAIN = math.sqrt(2.0)
# How a class-conditional D takes the label; the first is every D's default. "projection"
# (Miyato & Koyama 2018): <embed(y), pooled features> is added to the output. "concat":
# an embedding of y is tiled over H, W and concatenated to a hidden feature map (the
# official SNResNetConcatDiscriminator, the paper's baseline).
CONDITIONINGS: tuple[str, ...] = ("projection", "concat")

_Layer = nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.Embedding


def init_xavier_uniform(layer: _Layer, gain: float = 1.0) -> _Layer:
    """Chainer's ``GlorotUniform(gain)`` weight and a zero bias, in place; returns ``layer``."""
    # torch's fan computation matches Chainer's for all four layer types (for an Embedding
    # of shape (num_classes, C): fan_in = C, fan_out = num_classes, as for SNEmbedID).
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def init_normal(layer: _Layer, std: float = 0.02) -> _Layer:
    """Chainer's ``Normal(std)`` weight and a zero bias, in place; returns ``layer``."""
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (Chainer's eps) that accepts and ignores labels.

    It lets a generator call every norm as ``bn(h, y)`` whether or not it is conditional,
    while its parameters and state-dict keys stay those of ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=BN_EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm with per-class gain and bias (official CategoricalConditionalBatchNormalization).

    The statistics are shared by all classes (a ``BatchNorm2d`` without affine parameters);
    the gain and bias are rows of two embeddings initialised to 1 and 0, so at
    initialisation every class behaves like a plain batch norm.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        check_positive(num_features=num_features, num_classes=num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=BN_EPS, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("ConditionalBatchNorm2d needs class labels y, got None")
        h = self.bn(x)  # (B, C, H, W)
        gain = self.gain(y)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(y)[:, :, None, None]  # (B, C, 1, 1)
        return gain * h + bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_classes={self.num_classes}"


def batch_norm(num_features: int, num_classes: int) -> BatchNorm2d | ConditionalBatchNorm2d:
    """A generator's batch norm: conditional on the class when ``num_classes > 0``."""
    if num_classes > 0:
        return ConditionalBatchNorm2d(num_features, num_classes)
    return BatchNorm2d(num_features)


def check_positive(**values: int) -> None:
    """Raise ValueError unless every keyword value is an integer >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_image_size(image_size: int, supported: tuple[int, ...], network: str) -> None:
    """Raise ValueError unless ``image_size`` is one of the sizes ``network`` is built for."""
    is_int = isinstance(image_size, int) and not isinstance(image_size, bool)
    if not is_int or image_size not in supported:
        sizes = ", ".join(str(s) for s in supported)
        raise ValueError(f"image_size must be one of {sizes} for the {network}, got {image_size!r}")


def check_conditioning(
    conditioning: str,
    image_size: int | None,
    supported: Mapping[str, tuple[int, ...]],
    network: str,
    num_classes: int | None = None,
) -> None:
    """Raise ValueError unless ``network``'s D takes ``conditioning`` at ``image_size``.

    ``supported`` maps each conditioning the D has to the image sizes it is built for
    (``image_size`` None: no size check). An unconditional D (``num_classes == 0``; None:
    not known) accepts only the default, which it ignores: a concat D without labels would
    have nothing to concatenate.
    """
    if conditioning not in CONDITIONINGS:
        raise ValueError(
            f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}"
        )
    if conditioning not in supported:
        raise ValueError(
            f"conditioning={conditioning!r} is not available for the {network} (the official "
            f"code has no such D); choose {' or '.join(supported)}"
        )
    if num_classes == 0 and conditioning != CONDITIONINGS[0]:
        raise ValueError(
            f"conditioning={conditioning!r} needs a class-conditional D (num_classes > 0); "
            f"an unconditional D takes only the default {CONDITIONINGS[0]!r}"
        )
    sizes = supported[conditioning]
    if image_size is not None and image_size not in sizes:
        raise ValueError(
            f"conditioning={conditioning!r} builds the {network} D only at image_size "
            f"{', '.join(str(s) for s in sizes)} (where the official code has one), "
            f"got {image_size!r}"
        )


def check_num_classes(num_classes: int) -> None:
    """Raise ValueError unless ``num_classes`` is an integer >= 0 (0: unconditional)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(
            f"num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}"
        )


def check_latents(z: torch.Tensor, z_dim: int) -> None:
    """Raise ValueError unless ``z`` is a (B, z_dim) floating-point tensor."""
    if z.ndim != 2 or z.shape[1] != z_dim or not z.is_floating_point():
        raise ValueError(
            f"z must be a float tensor of shape (B, {z_dim}), "
            f"got {z.dtype} of shape {tuple(z.shape)}"
        )


def check_images(x: torch.Tensor, size: int | None = None) -> None:
    """Raise ValueError unless ``x`` is a (B, 3, H, W) float tensor (H = W = ``size`` if given)."""
    ok = x.ndim == 4 and x.shape[1] == 3 and x.is_floating_point()
    if ok and size is not None:
        ok = x.shape[2] == x.shape[3] == size
    if not ok:
        want = f"(B, 3, {size}, {size})" if size is not None else "(B, 3, H, W)"
        raise ValueError(
            f"x must be a float tensor of shape {want}, got {x.dtype} of shape {tuple(x.shape)}"
        )


def check_labels(y: torch.Tensor | None, batch_size: int, num_classes: int) -> None:
    """Raise ValueError unless labels are given exactly when the network is conditional.

    Labels must be a (B,) integer tensor; their range is left to ``nn.Embedding`` (checking
    it here would synchronise with the GPU on every call).
    """
    if num_classes == 0:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes=0); call it without y")
        return
    if y is None:
        raise ValueError(f"this network is class-conditional (num_classes={num_classes}); pass y")
    if y.shape != (batch_size,) or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"y must be an int64 tensor of shape ({batch_size},), "
            f"got {y.dtype} of shape {tuple(y.shape)}"
        )
