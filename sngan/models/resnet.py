"""The paper's ResNets ("resnet", Miyato et al. 2018) for 32, 48, 64 and 128-pixel images.

Layer for layer as the official Chainer code (pfnet-research/sngan_projection: the
blocks of gen_models/resblocks.py and dis_models/resblocks.py), including its
initialisation: Xavier (Glorot) uniform with gain sqrt(2) on the residual 3x3 convs and
gain 1 on the shortcut 1x1 convs, the linear layers, the embedding and G's output conv;
biases start at 0.

The stage widths per image size are the tables ``G_LAYOUTS`` and ``D_LAYOUTS``, written as
divisors of ``channels`` with kwotsin/mimicry's ngf / ndf semantics
(torch_mimicry/nets/sngan/sngan_{32,48,64,128}.py), where the published widths are:

* 32 (CIFAR-10, the paper's Table 4): ngf 256 and ndf 128 in every block, as the official
  gen_models/resnet_32.py and dis_models/snresnet_32.py.
* 48 (STL-10, the paper's STL-10 ResNet table): G starts at 6x6 with ngf 512, halved per
  up-block; D blocks ndf/16, /8, /4, /2 (downsampling), then a block at ndf = 1024 that
  keeps the resolution. The official repository has no 48-pixel network.
* 64: ngf = ndf = 1024, i.e. the official gen_models/resnet_64.py and
  dis_models/snresnet_64.py at configs/sn_projection_64.yml's ch = 64 (1024 = 16 ch).
* 128 (the paper's ImageNet network): ngf = ndf = 1024, i.e. the official
  gen_models/resnet.py and dis_models/snresnet.py at configs/sn_projection.yml's ch = 64.

D's linear layer has a bias where the official file has one (``DLayout.linear_bias``):
snresnet_32.py builds it with ``nobias=True``; snresnet_64.py and snresnet.py (128) keep
SNLinear's default bias (one parameter more); 48 has no official file and no bias.

A class-conditional D is a projection D at every size (``conditioning="projection"``), or
at 128 the official SNResNetConcatDiscriminator (``conditioning="concat"``, configs/
sn_concat.yml): a 128-d SN embedding of the class, tiled over H, W and concatenated to the
features after the third block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sngan.models.layers import (
    RESIDUAL_GAIN,
    BatchNorm2d,
    batch_norm,
    check_conditioning,
    check_image_size,
    check_images,
    check_labels,
    check_latents,
    check_num_classes,
    check_positive,
    init_xavier_uniform,
)
from sngan.spectral_norm import spectral_norm

__all__ = [
    "CONCAT_EMBED_DIM",
    "CONDITIONING_SIZES",
    "D_LAYOUTS",
    "G_LAYOUTS",
    "RESNET_SIZES",
    "DBlock",
    "DLayout",
    "GBlock",
    "GLayout",
    "OptimizedDBlock",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "layout_widths",
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


class GLayout(NamedTuple):
    """G at one image size: the bottom width, the published ngf and each stage's divisor."""

    bottom_width: int  # G's first feature map is bottom_width x bottom_width
    channels: int  # the published width (mimicry's ngf)
    divisors: tuple[int, ...]  # linear output, then each up-block's output: channels // d


class DLayout(NamedTuple):
    """D at one image size: the published ndf, its blocks, its head and where concat goes."""

    channels: int  # the published width (mimicry's ndf)
    divisors: tuple[int, ...]  # each block's output width is channels // d
    downsample: tuple[bool, ...]  # the first block (the optimised one) always halves
    linear_bias: bool  # the final SN linear layer has a bias (as the official file)
    # conditioning="concat": the class embedding joins the input of this block (0-based);
    # None: no concat D at this size.
    concat_block: int | None = None


G_LAYOUTS: dict[int, GLayout] = {
    32: GLayout(bottom_width=4, channels=256, divisors=(1, 1, 1, 1)),
    48: GLayout(bottom_width=6, channels=512, divisors=(1, 2, 4, 8)),
    64: GLayout(bottom_width=4, channels=1024, divisors=(1, 2, 4, 8, 16)),
    128: GLayout(bottom_width=4, channels=1024, divisors=(1, 1, 2, 4, 8, 16)),
}
# The linear bias per size follows the official files: snresnet_32.py's
# ``SNLinear(ch, 1, ..., nobias=True)``, snresnet_64.py's and snresnet.py's
# ``SNLinear(ch * 16, 1, initialW=initializer)`` (Chainer's default: a bias, initialised
# to 0). 48 has no official file; without a bias it keeps the STL-10 table's 10,141,440.
# Concat only at 128: the official code has SNResNetConcatDiscriminator only there
# (dis_models/snresnet.py, snresnet_128.py), with the embedding joining block4's input.
# Elsewhere there is no published place for it (32's last blocks stay at 8x8, 48 and 64 end
# at 3x3 and 2x2), so concat is refused there rather than guessed.
D_LAYOUTS: dict[int, DLayout] = {
    32: DLayout(
        channels=128,
        divisors=(1, 1, 1, 1),
        downsample=(True, True, False, False),
        linear_bias=False,
    ),
    48: DLayout(
        channels=1024,
        divisors=(16, 8, 4, 2, 1),
        downsample=(True, True, True, True, False),
        linear_bias=False,
    ),
    64: DLayout(
        channels=1024,
        divisors=(16, 8, 4, 2, 1),
        downsample=(True,) * 5,
        linear_bias=True,
    ),
    128: DLayout(
        channels=1024,
        divisors=(16, 8, 4, 2, 1, 1),
        downsample=(True, True, True, True, True, False),
        linear_bias=True,
        concat_block=3,  # official block4: block3's 256 channels at 16x16, + 128
    ),
}
RESNET_SIZES: tuple[int, ...] = tuple(G_LAYOUTS)
# The official concat D's embedding width (SNResNetConcatDiscriminator's dim_emb), whatever
# the D's width.
CONCAT_EMBED_DIM = 128
# The image sizes at which the ResNet D takes each conditioning.
CONDITIONING_SIZES: dict[str, tuple[int, ...]] = {
    "projection": RESNET_SIZES,
    "concat": tuple(size for size, d in D_LAYOUTS.items() if d.concat_block is not None),
}


def _stage_widths(
    channels: int, divisors: tuple[int, ...], image_size: int, net: str
) -> tuple[int, ...]:
    """``channels // d`` for each divisor; ValueError unless every width is a whole number."""
    check_positive(channels=channels)
    # Every stage must get a whole number of channels, so the widest divisor must divide.
    if channels % max(divisors) != 0:
        stages = ", ".join(f"/{d}" for d in divisors)
        raise ValueError(
            f"channels must be a multiple of {max(divisors)} for the ResNet {net} at "
            f"image_size {image_size} (its stage widths are channels {stages}), got {channels}"
        )
    return tuple(channels // d for d in divisors)


def layout_widths(net: str, image_size: int, channels: int | None) -> tuple[int, ...]:
    """The stage widths of the ResNet ``net`` ("G" or "D") at ``image_size`` (None: published)."""
    layout = (G_LAYOUTS if net == "G" else D_LAYOUTS)[image_size]
    return _stage_widths(
        layout.channels if channels is None else channels, layout.divisors, image_size, net
    )


class ResNetGenerator(nn.Module):
    """The paper's ResNet G: z -> bottom_width^2 x C_0, up-blocks, BN, ReLU, conv3x3, tanh.

    ``channels`` is mimicry's ngf (None: the published width for ``image_size``); the stage
    widths and the number of up-blocks come from ``G_LAYOUTS`` (32: three blocks at 256
    from 4x4, Table 4; 48: three from 6x6; 64: four from 4x4; 128: five from 4x4).
    4,276,739 parameters at the defaults (32x32), 4,878,083 at 48, 12,220,675 at 64 and
    32,150,787 at 128. With ``num_classes > 0`` the blocks' batch norms are conditional
    (per-class gain and bias); the final batch norm stays unconditional, as in the official
    code: 41,996,931 parameters at 128 with ImageNet's 1000 classes (official
    gen_models/resnet.py, ch = 64), the same G for the projection and the concat D.
    """

    def __init__(
        self,
        z_dim: int = 128,
        channels: int | None = None,
        image_size: int = 32,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        check_positive(z_dim=z_dim)
        check_num_classes(num_classes)
        check_image_size(image_size, RESNET_SIZES, "ResNet")
        layout = G_LAYOUTS[image_size]
        self.z_dim = z_dim
        self.channels = layout.channels if channels is None else channels
        widths = _stage_widths(self.channels, layout.divisors, image_size, "G")
        self.image_size = image_size
        self.bottom_width = layout.bottom_width
        self.num_classes = num_classes
        self.stage_widths = widths

        self.linear = init_xavier_uniform(nn.Linear(z_dim, self.bottom_width**2 * widths[0]))
        self.blocks = nn.ModuleList(
            GBlock(c_in, c_out, num_classes)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bn_out = BatchNorm2d(widths[-1])
        self.conv_out = init_xavier_uniform(nn.Conv2d(widths[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, z_dim) latents [and (B,) labels] -> (B, 3, image_size, image_size) in [-1, 1]."""
        check_latents(z, self.z_dim)
        check_labels(y, z.shape[0], self.num_classes)
        bw = self.bottom_width
        h = self.linear(z)  # (B, C_0 * bw * bw)
        h = h.view(-1, self.stage_widths[0], bw, bw)  # (B, C_0, bw, bw)
        for block in self.blocks:
            h = block(h, y)  # (B, C_i, H, W) -> (B, C_i+1, 2H, 2W)
        h = F.relu(self.bn_out(h))  # (B, C_last, S, S)
        return torch.tanh(self.conv_out(h))  # (B, 3, S, S)


class ResNetDiscriminator(nn.Module):
    """The paper's ResNet D: optimised block, residual blocks, ReLU, global sum-pool, SN linear.

    ``channels`` is mimicry's ndf (None: the published width for ``image_size``); the block
    widths and which blocks downsample come from ``D_LAYOUTS`` (32: optimised block and
    one down-block at 128, then two plain blocks, Table 4; 48: ndf/16 .. ndf/2 down, then
    a plain block at ndf; 64: five down-blocks; 128: five down-blocks and a plain one).
    No normalisation layers; every conv, the linear layer and the class embedding are
    spectrally normalised; the linear layer has a bias at 64 and 128, as the official files.
    1,053,824 parameters at the defaults (32x32), 10,141,440 at 48, 10,141,441 at 64 and
    29,017,857 at 128.

    With ``num_classes > 0`` the class enters by ``conditioning``: "projection" (Miyato &
    Koyama 2018, every size) adds the inner product of an SN class embedding with the
    pooled features to the output (30,041,857 parameters at 128 with 1000 classes);
    "concat" (128 only, the official SNResNetConcatDiscriminator) concatenates a
    ``CONCAT_EMBED_DIM``-d SN class embedding, tiled over H and W, to the input of the
    fourth block, which is widened to take it (30,538,625 at 128 with 1000 classes).
    """

    def __init__(
        self,
        channels: int | None = None,
        image_size: int = 32,
        num_classes: int = 0,
        conditioning: str = "projection",
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_image_size(image_size, RESNET_SIZES, "ResNet")
        check_conditioning(conditioning, image_size, CONDITIONING_SIZES, "ResNet", num_classes)
        layout = D_LAYOUTS[image_size]
        self.channels = layout.channels if channels is None else channels
        widths = _stage_widths(self.channels, layout.divisors, image_size, "D")
        self.image_size = image_size
        self.num_classes = num_classes
        self.conditioning = conditioning
        self.stage_widths = widths
        # The block whose input gets the tiled class embedding; None: no concat.
        self.concat_block = layout.concat_block if conditioning == "concat" else None

        # Each block's input width; the concat block's (official: ch * 4 + dim_emb) is wider
        # and, as every D block, keeps its input width inside (hidden = in channels).
        ins = [3, *widths[:-1]]
        if self.concat_block is not None:
            ins[self.concat_block] += CONCAT_EMBED_DIM
        blocks: list[nn.Module] = [OptimizedDBlock(ins[0], widths[0])]  # S -> S/2
        for c_in, c_out, down in zip(ins[1:], widths[1:], layout.downsample[1:], strict=True):
            blocks.append(DBlock(c_in, c_out, downsample=down))
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(
            init_xavier_uniform(nn.Linear(widths[-1], 1, bias=layout.linear_bias))
        )
        if num_classes > 0:
            # Official SNEmbedID(n_classes, dim, initialW=GlorotUniform()) for either use.
            dim = CONCAT_EMBED_DIM if self.concat_block is not None else widths[-1]
            self.embed = spectral_norm(init_xavier_uniform(nn.Embedding(num_classes, dim)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, image_size, image_size) images [and (B,) labels] -> (B,) logits."""
        # A fixed size: the blocks would take any size, and a G/D size mismatch must not train.
        check_images(x, self.image_size)
        check_labels(y, x.shape[0], self.num_classes)
        h = x
        for i, block in enumerate(self.blocks):
            if i == self.concat_block:  # (B, C, H, W) -> (B, C + E, H, W)
                emb = self.embed(y)[:, :, None, None]  # (B, E, 1, 1)
                h = torch.cat([h, emb.expand(-1, -1, h.shape[2], h.shape[3])], dim=1)
            h = block(h)
        h = F.relu(h)  # (B, C, 8, 8) at 32; (B, C, 2, 2) at 64
        # Global sum pooling (not mean), as in the official code.
        h = h.sum(dim=(2, 3))  # (B, C)
        out = self.linear(h).squeeze(1)  # (B,)
        if y is not None and self.concat_block is None:  # projection
            out = out + (self.embed(y) * h).sum(dim=1)
        return out
