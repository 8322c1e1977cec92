"""The paper's standard CNN ("dcgan", Miyato et al. 2018, Table 3) for M x M images.

Table 3 is written for M = 32 (CIFAR-10) and M = 48 (STL-10): G starts at M/8 x M/8 and
D's dense layer reads D's last M/8 x M/8 feature map, so the network builds for every M
that is a multiple of 8, here from 8 to 128 (``DCGAN_SIZES``).

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
    check_image_size,
    check_images,
    check_labels,
    check_latents,
    check_num_classes,
    check_positive,
    init_normal,
    init_xavier_uniform,
)
from sngan.spectral_norm import spectral_norm

__all__ = [
    "DCGAN_SIZES",
    "D_CHANNELS",
    "D_WIDTHS",
    "G_CHANNELS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "check_g_channels",
]

# The paper's widths (Table 3): G's bottom feature map and D's first conv, at every size.
G_CHANNELS = 512
D_CHANNELS = 64
INIT_STD = 0.02
LEAKY_SLOPE = 0.1
# G and D change the resolution by 2 three times: G starts and D ends at image_size / 8.
DOWNSAMPLING = 8
DCGAN_SIZES: tuple[int, ...] = tuple(range(DOWNSAMPLING, 128 + 1, DOWNSAMPLING))
# D's seven conv widths as multiples of ``channels``; the 4x4 stride-2 convs are the 2nd,
# 4th and 6th. "paper": Table 3 as printed; "chainer": chainer-gan-lib's SNDCGANDiscriminator
# (common/net.py, ch = 8 * channels = 512: ch/8, ch/4, ch/4, ch/2, ch/2, ch, ch).
D_WIDTHS: dict[str, tuple[int, ...]] = {
    "paper": (1, 1, 2, 2, 4, 4, 8),
    "chainer": (1, 2, 2, 4, 4, 8, 8),
}


def check_g_channels(channels: int) -> None:
    """Raise ValueError unless G's width can be halved three times."""
    if channels % 8 != 0:
        raise ValueError(
            f"channels must be a multiple of 8 (it is halved three times), got {channels}"
        )


class DCGANGenerator(nn.Module):
    """Table 3's generator: z -> bottom_width^2 x channels, three stride-2 deconvs, conv, tanh.

    ``bottom_width`` is ``image_size / 8`` (4 at 32, Table 3's 6 at M = 48). Built with a
    batch norm and ReLU on the reshaped (channels, bottom_width, bottom_width) input of the
    first deconvolution: 3,813,379 parameters at the defaults, not Table 3's
    literal 3,812,355 (no norm or activation between the dense layer and the first deconv).
    The official code that produced the paper's numbers normalises and rectifies there (its
    ``bn0`` + ReLU); without a nonlinearity the dense layer and the first deconv would just
    be one factorised linear map. Per-channel statistics (1,024 parameters) replace the
    official per-feature ``bn0`` over all 4*4*512 units (16,384), as batch norm is done for
    every other conv feature map. Only the dense layer grows with the image size (5,134,339
    parameters at 48). With ``num_classes > 0`` all four batch norms are conditional
    (per-class gain and bias).
    """

    def __init__(
        self,
        z_dim: int = 128,
        channels: int = G_CHANNELS,
        image_size: int = 32,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        check_positive(z_dim=z_dim, channels=channels)
        check_num_classes(num_classes)
        check_image_size(image_size, DCGAN_SIZES, "standard CNN")
        check_g_channels(channels)
        self.z_dim = z_dim
        self.channels = channels
        self.image_size = image_size
        self.bottom_width = bottom_width = image_size // DOWNSAMPLING
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
        """(B, z_dim) latents [and (B,) labels] -> (B, 3, image_size, image_size) in [-1, 1]."""
        check_latents(z, self.z_dim)
        check_labels(y, z.shape[0], self.num_classes)
        bw = self.bottom_width
        h = self.linear(z)  # (B, C * bw * bw)
        h = h.view(-1, self.channels, bw, bw)  # (B, C, bw, bw): 4x4 at 32
        h = F.relu(self.bn_in(h, y))
        for deconv, bn in zip(self.deconvs, self.bns, strict=True):
            h = F.relu(bn(deconv(h), y))  # (B, C/2, 2H, 2W)
        return torch.tanh(self.conv_out(h))  # (B, 3, S, S)


class DCGANDiscriminator(nn.Module):
    """Table 3's discriminator: seven SN convs with leaky ReLU 0.1, then an SN linear layer.

    ``channels`` is the first conv's width; ``widths`` picks the others from ``D_WIDTHS``:
    "paper" (Table 3 as printed: 64, 64, 128, 128, 256, 256, 512 at the default 64;
    2,935,873 parameters at 32x32) or "chainer" (64, 128, 128, 256, 256, 512, 512;
    5,860,865). Every other conv halves the resolution, down to ``image_size / 8``, which the
    linear layer reads whole. With ``num_classes > 0`` it is a projection discriminator
    (Miyato & Koyama 2018): an SN class embedding's inner product with the sum-pooled last
    feature map is added to the output.

    Which one produced the paper's numbers: most likely "chainer". The paper's code link,
    pfnet-research/sngan_projection, holds only the ResNets; the authors' standard CNN is
    in pfnet-research/chainer-gan-lib, whose README lists SN-DCGAN at Inception 7.5 against
    7.41 in its "Inception (Official)" column and whose example.sh trains it as
    ``--architecture sndcgan``: common/net.py's ``SNDCGANDiscriminator`` at ch = 512, the
    "chainer" widths. No discriminator in that file has Table 3's printed widths, which
    are most likely off by one layer (each is the chainer width of the conv before).
    """

    def __init__(
        self,
        channels: int = D_CHANNELS,
        image_size: int = 32,
        num_classes: int = 0,
        widths: str = "paper",
    ) -> None:
        super().__init__()
        check_positive(channels=channels)
        check_num_classes(num_classes)
        check_image_size(image_size, DCGAN_SIZES, "standard CNN")
        if widths not in D_WIDTHS:
            raise ValueError(f"widths must be one of {sorted(D_WIDTHS)}, got {widths!r}")
        self.channels = channels
        self.image_size = image_size
        self.bottom_width = bottom_width = image_size // DOWNSAMPLING
        self.num_classes = num_classes
        self.widths = widths

        outs = [m * channels for m in D_WIDTHS[widths]]
        ins = [3, *outs[:-1]]
        # 3x3 stride-1 convs alternate with 4x4 stride-2 convs, which halve the resolution.
        kernels_strides = [(3, 1), (4, 2), (3, 1), (4, 2), (3, 1), (4, 2), (3, 1)]
        self.convs = nn.ModuleList(
            spectral_norm(init_normal(nn.Conv2d(i, o, k, stride=s, padding=1), INIT_STD))
            for i, o, (k, s) in zip(ins, outs, kernels_strides, strict=True)
        )
        c_last = outs[-1]
        self.linear = spectral_norm(init_normal(nn.Linear(bottom_width**2 * c_last, 1), INIT_STD))
        if num_classes > 0:
            # No official SN-DCGAN projection exists; init as SNEmbedID in snresnet_32.py.
            self.embed = spectral_norm(init_xavier_uniform(nn.Embedding(num_classes, c_last)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, image_size, image_size) images [and (B,) labels] -> (B,) logits."""
        check_images(x, self.image_size)
        check_labels(y, x.shape[0], self.num_classes)
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAKY_SLOPE)  # (B, 8C, S/8, S/8) after the last
        out = self.linear(h.flatten(1)).squeeze(1)  # (B,)
        if y is not None:
            pooled = h.sum(dim=(2, 3))  # (B, 8C)
            out = out + (self.embed(y) * pooled).sum(dim=1)
        return out
