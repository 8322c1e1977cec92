"""The paper's ResNet ("resnet", Miyato et al. 2018, Table 4) for 32x32 images.

Layer for layer as the official Chainer code (pfnet-research/sngan_projection:
gen_models/resnet_32.py, dis_models/snresnet_32.py and their resblocks.py), including its
initialisation: Xavier (Glorot) uniform with gain sqrt(2) on the residual 3x3 convs and
gain 1 on the shortcut 1x1 convs, the linear layers, the embedding and G's output conv;
biases start at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sngan.models.layers import (
    RESIDUAL_GAIN,
    BatchNorm2d,
    batch_norm,
    check_images,
    check_labels,
    check_latents,
    check_num_classes,
    check_positive,
    init_xavier_uniform,
)
from sngan.spectral_norm import spectral_norm

__all__ = [
    "DBlock",
    "GBlock",
    "OptimizedDBlock",
    "ResNetDiscriminator",
    "ResNetGenerator",
]


def _upsample(x: torch.Tensor) -> torch.Tensor:
    # Chainer's unpooling_2d(x, 2): nearest neighbour, (B, C, H, W) -> (B, C, 2H, 2W).
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)  # (B, C, H, W) -> (B, C, H/2, W/2)


class GBlock(nn.Module):
    """Up-block: BN, ReLU, 2x upsample, conv3x3, BN, ReLU, conv3x3; shortcut upsample + conv1x1."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.bn1 = batch_norm(in_channels, num_classes)
        self.conv1 = init_xavier_uniform(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN
        )
        self.bn2 = batch_norm(out_channels, num_classes)
        self.conv2 = init_xavier_uniform(
            nn.Conv2d(out_channels, out_channels, 3, padding=1), RESIDUAL_GAIN
        )
        # Always learnable: the block changes the resolution.
        self.shortcut = init_xavier_uniform(nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))  # (B, C_in, H, W)
        h = self.conv1(_upsample(h))  # (B, C_out, 2H, 2W)
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + self.shortcut(_upsample(x))


class DBlock(nn.Module):
    """Pre-activation block: ReLU, conv3x3, ReLU, conv3x3 [, avg-pool]; shortcut [conv1x1, pool]."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        # The official D blocks keep the input width inside (hidden_channels = in_channels).
        self.conv1 = spectral_norm(
            init_xavier_uniform(nn.Conv2d(in_channels, in_channels, 3, padding=1), RESIDUAL_GAIN)
        )
        self.conv2 = spectral_norm(
            init_xavier_uniform(nn.Conv2d(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        )
        self.shortcut = None
        if downsample or in_channels != out_channels:
            self.shortcut = spectral_norm(
                init_xavier_uniform(nn.Conv2d(in_channels, out_channels, 1))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(x))  # (B, C_in, H, W)
        h = self.conv2(F.relu(h))  # (B, C_out, H, W)
        sc = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, sc = _downsample(h), _downsample(sc)  # (B, C_out, H/2, W/2)
        return h + sc


class OptimizedDBlock(nn.Module):
    """D's first block: conv3x3, ReLU, conv3x3, avg-pool; shortcut avg-pool then conv1x1.

    No ReLU on the input (the images), and pooling before the 1x1 shortcut conv is 4x cheaper.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = spectral_norm(
            init_xavier_uniform(nn.Conv2d(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        )
        self.conv2 = spectral_norm(
            init_xavier_uniform(nn.Conv2d(out_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        )
        self.shortcut = spectral_norm(init_xavier_uniform(nn.Conv2d(in_channels, out_channels, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x)))  # (B, C_out, H, W)
        return _downsample(h) + self.shortcut(_downsample(x))  # (B, C_out, H/2, W/2)


class ResNetGenerator(nn.Module):
    """Table 4's G: z -> bottom_width^2 x channels, three up-blocks, BN, ReLU, conv3x3, tanh.

    4,276,739 parameters at the defaults. With ``num_classes > 0`` the blocks' batch norms
    are conditional (per-class gain and bias); the final batch norm stays unconditional, as
    in the official code.
    """

    def __init__(
        self, z_dim: int = 128, channels: int = 256, bottom_width: int = 4, num_classes: int = 0
    ) -> None:
        super().__init__()
        check_positive(z_dim=z_dim, channels=channels, bottom_width=bottom_width)
        check_num_classes(num_classes)
        self.z_dim = z_dim
        self.channels = channels
        self.bottom_width = bottom_width
        self.num_classes = num_classes

        self.linear = init_xavier_uniform(nn.Linear(z_dim, bottom_width**2 * channels))
        self.blocks = nn.ModuleList(GBlock(channels, channels, num_classes) for _ in range(3))
        self.bn_out = BatchNorm2d(channels)
        self.conv_out = init_xavier_uniform(nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, z_dim) latents [and (B,) labels] -> (B, 3, 8*bw, 8*bw) images in [-1, 1]."""
        check_latents(z, self.z_dim)
        check_labels(y, z.shape[0], self.num_classes)
        h = self.linear(z)  # (B, C * bottom_width**2)
        h = h.view(-1, self.channels, self.bottom_width, self.bottom_width)  # (B, C, 4, 4)
        for block in self.blocks:
            h = block(h, y)  # (B, C, 2H, 2W)
        h = F.relu(self.bn_out(h))  # (B, C, 32, 32)
        return torch.tanh(self.conv_out(h))  # (B, 3, 32, 32)


class ResNetDiscriminator(nn.Module):
    """Table 4's D: optimised block, down-block, two plain blocks, ReLU, sum-pool, SN linear.

    No normalisation layers; every conv, the linear layer (no bias) and the class embedding
    are spectrally normalised. 1,053,824 parameters at the defaults. With
    ``num_classes > 0`` it is a projection discriminator (Miyato & Koyama 2018): the inner
    product of an SN class embedding with the pooled features is added to the output.
    """

    def __init__(self, channels: int = 128, num_classes: int = 0) -> None:
        super().__init__()
        check_positive(channels=channels)
        check_num_classes(num_classes)
        self.channels = channels
        self.num_classes = num_classes

        self.blocks = nn.Sequential(
            OptimizedDBlock(3, channels),  # 32 -> 16
            DBlock(channels, channels, downsample=True),  # 16 -> 8
            DBlock(channels, channels),
            DBlock(channels, channels),
        )
        self.linear = spectral_norm(init_xavier_uniform(nn.Linear(channels, 1, bias=False)))
        if num_classes > 0:
            self.embed = spectral_norm(init_xavier_uniform(nn.Embedding(num_classes, channels)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) images [and (B,) labels] -> (B,) logits."""
        check_images(x)
        check_labels(y, x.shape[0], self.num_classes)
        h = F.relu(self.blocks(x))  # (B, C, 8, 8)
        # Global sum pooling (not mean), as in the official code.
        h = h.sum(dim=(2, 3))  # (B, C)
        out = self.linear(h).squeeze(1)  # (B,)
        if y is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out
