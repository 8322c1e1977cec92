"""The paper's standard CNN ("dcgan", Miyato et al. 2018, Table 3) for 32x32 images.

Initialisation follows the official Chainer code for these models (pfnet-research/
chainer-gan-lib, common/net.py: ``DCGANGenerator`` and ``SNDCGANDiscriminator``): every
weight is drawn from N(0, 0.02^2) and every bias starts at 0; batch norms start at gain 1,
bias 0. Table 3's leaky-ReLU slope of 0.1 is used (Chainer's ``F.leaky_relu`` defaults to 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sngan.models.layers import (
    batch_norm,
    check_images,
    check_labels,
    check_latents,
    check_num_classes,
    check_positive,
    init_normal,
    init_xavier_uniform,
)
from sngan.spectral_norm import spectral_norm

__all__ = ["DCGANDiscriminator", "DCGANGenerator"]

INIT_STD = 0.02
LEAKY_SLOPE = 0.1


class DCGANGenerator(nn.Module):
    """Table 3's generator: z -> bottom_width^2 x channels, three stride-2 deconvs, conv, tanh.

    Built with a batch norm and ReLU on the reshaped (channels, bottom_width, bottom_width)
    input of the first deconvolution: 3,813,379 parameters at the defaults, not Table 3's
    literal 3,812,355 (no norm or activation between the dense layer and the first deconv).
    The official code that produced the paper's numbers normalises and rectifies there (its
    ``bn0`` + ReLU); without a nonlinearity the dense layer and the first deconv would just
    be one factorised linear map. Per-channel statistics (1,024 parameters) replace the
    official per-feature ``bn0`` over all 4*4*512 units (16,384), as batch norm is done for
    every other conv feature map. With ``num_classes > 0`` all four batch norms are
    conditional (per-class gain and bias).
    """

    def __init__(
        self, z_dim: int = 128, channels: int = 512, bottom_width: int = 4, num_classes: int = 0
    ) -> None:
        super().__init__()
        check_positive(z_dim=z_dim, channels=channels, bottom_width=bottom_width)
        check_num_classes(num_classes)
        if channels % 8 != 0:
            raise ValueError(
                f"channels must be a multiple of 8 (it is halved three times), got {channels}"
            )
        self.z_dim = z_dim
        self.channels = channels
        self.bottom_width = bottom_width
        self.num_classes = num_classes

        widths = [channels, channels // 2, channels // 4, channels // 8]  # 512, 256, 128, 64
        self.linear = init_normal(nn.Linear(z_dim, bottom_width**2 * channels), INIT_STD)
        self.bn_in = batch_norm(channels, num_classes)
        self.deconvs = nn.ModuleList(
            init_normal(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), INIT_STD)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bns = nn.ModuleList(batch_norm(c, num_classes) for c in widths[1:])
        self.conv_out = init_normal(nn.Conv2d(widths[-1], 3, 3, padding=1), INIT_STD)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, z_dim) latents [and (B,) labels] -> (B, 3, 8*bw, 8*bw) images in [-1, 1]."""
        check_latents(z, self.z_dim)
        check_labels(y, z.shape[0], self.num_classes)
        h = self.linear(z)  # (B, C * bottom_width**2)
        h = h.view(-1, self.channels, self.bottom_width, self.bottom_width)  # (B, C, 4, 4)
        h = F.relu(self.bn_in(h, y))
        for deconv, bn in zip(self.deconvs, self.bns, strict=True):
            h = F.relu(bn(deconv(h), y))  # (B, C/2, 2H, 2W)
        return torch.tanh(self.conv_out(h))  # (B, 3, 32, 32)


class DCGANDiscriminator(nn.Module):
    """Table 3's discriminator: seven SN convs with leaky ReLU 0.1, then an SN linear layer.

    ``channels`` is the narrowest width; the convs have channels x (1, 1, 2, 2, 4, 4, 8) and
    every other one halves the resolution, down to ``bottom_width``. 2,935,873 parameters at
    the defaults. With ``num_classes > 0`` it is a projection discriminator (Miyato & Koyama
    2018): an SN class embedding's inner product with the sum-pooled last feature map is
    added to the output.
    """

    def __init__(self, channels: int = 64, bottom_width: int = 4, num_classes: int = 0) -> None:
        super().__init__()
        check_positive(channels=channels, bottom_width=bottom_width)
        check_num_classes(num_classes)
        self.channels = channels
        self.bottom_width = bottom_width
        self.num_classes = num_classes

        c = channels
        # (in, out, kernel, stride): 3x3 stride-1 convs widen, 4x4 stride-2 convs downsample.
        spec = [
            (3, c, 3, 1),
            (c, c, 4, 2),
            (c, 2 * c, 3, 1),
            (2 * c, 2 * c, 4, 2),
            (2 * c, 4 * c, 3, 1),
            (4 * c, 4 * c, 4, 2),
            (4 * c, 8 * c, 3, 1),
        ]
        self.convs = nn.ModuleList(
            spectral_norm(init_normal(nn.Conv2d(i, o, k, stride=s, padding=1), INIT_STD))
            for i, o, k, s in spec
        )
        self.linear = spectral_norm(init_normal(nn.Linear(bottom_width**2 * 8 * c, 1), INIT_STD))
        if num_classes > 0:
            # No official SN-DCGAN projection exists; init as SNEmbedID in snresnet_32.py.
            self.embed = spectral_norm(init_xavier_uniform(nn.Embedding(num_classes, 8 * c)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, 8*bottom_width, 8*bottom_width) images [and (B,) labels] -> (B,) logits."""
        check_images(x, 8 * self.bottom_width)
        check_labels(y, x.shape[0], self.num_classes)
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAKY_SLOPE)  # (B, 8C, 4, 4) after the last
        out = self.linear(h.flatten(1)).squeeze(1)  # (B,)
        if y is not None:
            pooled = h.sum(dim=(2, 3))  # (B, 8C)
            out = out + (self.embed(y) * pooled).sum(dim=1)
        return out
