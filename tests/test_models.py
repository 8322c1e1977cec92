"""The networks against the paper's parameter counts, its layer specs and short training runs."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as TorchSpectralNorm

from sngan.losses import d_hinge, g_hinge
from sngan.models import (
    DISCRIMINATORS,
    GENERATORS,
    SUPPORTED_SIZES,
    ConditionalBatchNorm2d,
    DCGANDiscriminator,
    DCGANGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_models,
)
from sngan.models.dcgan import D_WIDTHS
from sngan.models.layers import BN_EPS
from sngan.models.resnet import D_LAYOUTS, G_LAYOUTS, OptimizedDBlock
from sngan.spectral_norm import is_spectral_normalized

ARCHS = ["dcgan", "resnet"]
SIZES = [32, 48, 64, 128]  # the paper's CIFAR-10 and STL-10 sizes, mimicry's 64 and 128
# Small widths for the forward and training tests; shapes do not depend on the width.
SMALL = {
    "dcgan": {"g_channels": 64, "d_channels": 8},
    "resnet": {"g_channels": 32, "d_channels": 32},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def published(cls: type[nn.Module], image_size: int) -> nn.Module:
    """A full-width network, built once: the count and width tests only inspect it."""
    return cls(image_size=image_size)


def small_models(
    arch: str, num_classes: int = 0, z_dim: int = 16, image_size: int = 32
) -> tuple[nn.Module, nn.Module]:
    return build_models(
        arch, image_size=image_size, z_dim=z_dim, num_classes=num_classes, **SMALL[arch]
    )


# -- parameter counts ----------------------------------------------------------------------


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def test_dcgan_discriminator_parameter_count() -> None:
    # Table 3: the published 2,935,873, and the same by layer.
    by_layer = (
        conv(3, 64, 3) + conv(64, 64, 4) + conv(64, 128, 3) + conv(128, 128, 4)
        + conv(128, 256, 3) + conv(256, 256, 4) + conv(256, 512, 3) + linear(4 * 4 * 512, 1)
    )  # fmt: skip
    assert by_layer == 2_935_873
    assert n_params(DCGANDiscriminator()) == 2_935_873


def test_dcgan_generator_parameter_count() -> None:
    # Table 3 has 3,812,355; this G adds a BatchNorm2d(512) on the 4x4x512 input (its docstring
    # says why).
    table3 = (
        linear(128, 4 * 4 * 512)
        + conv(512, 256, 4) + 2 * 256 + conv(256, 128, 4) + 2 * 128 + conv(128, 64, 4) + 2 * 64
        + conv(64, 3, 3)
    )  # fmt: skip
    assert table3 == 3_812_355
    assert n_params(DCGANGenerator()) == 3_812_355 + 2 * 512 == 3_813_379


def test_resnet_generator_parameter_count() -> None:
    block = 2 * 256 + conv(256, 256, 3) + 2 * 256 + conv(256, 256, 3) + conv(256, 256, 1)
    assert linear(128, 4 * 4 * 256) + 3 * block + 2 * 256 + conv(256, 3, 3) == 4_276_739
    assert n_params(ResNetGenerator()) == 4_276_739


def test_resnet_discriminator_parameter_count() -> None:
    optimized = conv(3, 128, 3) + conv(128, 128, 3) + conv(3, 128, 1)
    down = 2 * conv(128, 128, 3) + conv(128, 128, 1)
    plain = 2 * conv(128, 128, 3)
    assert optimized + down + 2 * plain + linear(128, 1, bias=False) == 1_053_824
    assert n_params(ResNetDiscriminator()) == 1_053_824


def test_conditional_parameter_counts() -> None:
    k = 10
    # A conditional BN holds 2*k*C (per-class gain and bias) instead of BN's 2*C.
    # ResNet G: two BNs in each of three blocks at 256 channels; the final BN stays plain.
    assert n_params(ResNetGenerator(num_classes=k)) == 4_276_739 + 6 * (2 * k * 256 - 2 * 256)
    # DCGAN G: all four BNs (512, 256, 128, 64 channels) are conditional.
    extra = sum(2 * k * c - 2 * c for c in (512, 256, 128, 64))
    assert n_params(DCGANGenerator(num_classes=k)) == 3_813_379 + extra == 3_830_659
    # Projection D: one embedding of k rows at D's final width.
    assert n_params(ResNetDiscriminator(num_classes=k)) == 1_053_824 + k * 128
    assert n_params(DCGANDiscriminator(num_classes=k)) == 2_935_873 + k * 512


def test_registry_builds_the_default_widths() -> None:
    assert set(GENERATORS) == set(DISCRIMINATORS) == {"dcgan", "resnet"}
    G, D = build_models(
        "dcgan", image_size=32, z_dim=128, g_channels=512, d_channels=64, num_classes=0
    )
    assert isinstance(G, DCGANGenerator) and isinstance(D, DCGANDiscriminator)
    assert (n_params(G), n_params(D)) == (3_813_379, 2_935_873)
    G, D = build_models(
        "resnet", image_size=32, z_dim=128, g_channels=256, d_channels=128, num_classes=10
    )
    assert isinstance(G, ResNetGenerator) and isinstance(D, ResNetDiscriminator)
    assert (G.z_dim, G.num_classes, D.num_classes) == (128, 10, 10)
    assert n_params(D) == 1_053_824 + 10 * 128


def test_registry_passes_image_size_to_both_dcgan_networks() -> None:
    G, D = build_models("dcgan", image_size=16, z_dim=8, g_channels=16, d_channels=4, num_classes=0)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, 3, 16, 16)
    assert D(x).shape == (3,)


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'sagan'") as info:
        build_models("sagan", image_size=32, z_dim=128, g_channels=1, d_channels=1, num_classes=0)
    assert "dcgan" in str(info.value) and "resnet" in str(info.value)


# -- every image size: parameter counts and widths -----------------------------------------


def g_block(c_in: int, c_out: int) -> int:
    # BN(c_in), conv3x3 c_in -> c_out, BN(c_out), conv3x3 c_out -> c_out, 1x1 shortcut.
    return (
        2 * c_in + conv(c_in, c_out, 3) + 2 * c_out + conv(c_out, c_out, 3) + conv(c_in, c_out, 1)
    )


def d_block(c_in: int, c_out: int, shortcut: bool = True) -> int:
    # conv3x3 c_in -> c_in (the official hidden width), conv3x3 c_in -> c_out, [1x1 shortcut].
    return conv(c_in, c_in, 3) + conv(c_in, c_out, 3) + (conv(c_in, c_out, 1) if shortcut else 0)


def d_optimized(c_out: int) -> int:
    # D's first block on the RGB input: conv3x3 3 -> c_out, conv3x3 c_out -> c_out, 1x1 shortcut.
    return conv(3, c_out, 3) + conv(c_out, c_out, 3) + conv(3, c_out, 1)


def g_out(c: int) -> int:
    return 2 * c + conv(c, 3, 3)  # BN, ReLU, conv3x3 -> RGB, tanh


def test_resnet_stl10_parameter_counts() -> None:
    # The paper's STL-10 ResNet table: G 6x6x512 -> ResBlock up 256 -> up 128 -> up 64 -> BN,
    # ReLU, conv3 -> tanh; D ResBlock down 64 -> down 128 -> down 256 -> down 512 ->
    # ResBlock 1024 -> ReLU, global sum, linear (no bias, as the official snresnet_32.py).
    g = linear(128, 6 * 6 * 512) + g_block(512, 256) + g_block(256, 128) + g_block(128, 64)
    assert g + g_out(64) == 4_878_083
    d = d_optimized(64) + d_block(64, 128) + d_block(128, 256) + d_block(256, 512)
    assert d + d_block(512, 1024) + linear(1024, 1, bias=False) == 10_141_440
    assert n_params(published(ResNetGenerator, 48)) == 4_878_083
    assert n_params(published(ResNetDiscriminator, 48)) == 10_141_440
    # Conditional: both BNs of each block hold 2*k*C instead of 2*C; one embedding row per class.
    k = 10
    extra = sum((2 * k - 2) * (c_in + c_out) for c_in, c_out in [(512, 256), (256, 128), (128, 64)])
    assert n_params(ResNetGenerator(image_size=48, num_classes=k)) == 4_878_083 + extra
    assert n_params(ResNetDiscriminator(image_size=48, num_classes=k)) == 10_141_440 + k * 1024


def test_resnet_64_parameter_counts() -> None:
    # mimicry sngan_64.py (= the official resnet_64.py / snresnet_64.py at ch = 64):
    # G 4x4x1024 -> up 512 -> up 256 -> up 128 -> up 64; D down 64, 128, 256, 512, 1024.
    g = linear(128, 4 * 4 * 1024) + g_block(1024, 512) + g_block(512, 256)
    g += g_block(256, 128) + g_block(128, 64) + g_out(64)
    assert g == 12_220_675
    d = d_optimized(64) + d_block(64, 128) + d_block(128, 256) + d_block(256, 512)
    d += d_block(512, 1024)
    # The 48-pixel D's layers (downsampling in the last block is free), but with a bias on
    # the linear layer: snresnet_64.py's SNLinear(ch * 16, 1, initialW=initializer) keeps
    # Chainer's default bias.
    assert d + linear(1024, 1, bias=False) == 10_141_440
    assert d + linear(1024, 1) == 10_141_441
    assert n_params(published(ResNetGenerator, 64)) == 12_220_675
    assert n_params(published(ResNetDiscriminator, 64)) == 10_141_441


def test_resnet_128_parameter_counts() -> None:
    # mimicry sngan_128.py (= the official ImageNet resnet.py / snresnet.py at ch = 64):
    # G 4x4x1024 -> up 1024 -> up 512 -> up 256 -> up 128 -> up 64;
    # D down 64, 128, 256, 512, 1024, then a plain 1024 block (identity shortcut).
    g = linear(128, 4 * 4 * 1024) + g_block(1024, 1024) + g_block(1024, 512)
    g += g_block(512, 256) + g_block(256, 128) + g_block(128, 64) + g_out(64)
    assert g == 32_150_787
    d = d_optimized(64) + d_block(64, 128) + d_block(128, 256) + d_block(256, 512)
    # snresnet.py's l7 = SNLinear(ch * 16, 1, initialW=initializer): Chainer's default bias.
    d += d_block(512, 1024) + d_block(1024, 1024, shortcut=False) + linear(1024, 1)
    assert d == 29_017_857
    assert n_params(published(ResNetGenerator, 128)) == 32_150_787
    assert n_params(published(ResNetDiscriminator, 128)) == 29_017_857


# Standard CNN (G, "paper" D, "chainer" D) counts; only the dense layers depend on the size.
DCGAN_COUNTS = {
    32: (3_813_379, 2_935_873, 5_860_865),
    48: (5_134_339, 2_946_113, 5_871_105),
    64: (6_983_683, 2_960_449, 5_885_441),
    128: (19_664_899, 3_058_753, 5_983_745),
}


@pytest.mark.parametrize("image_size", SIZES)
def test_dcgan_parameter_counts_at_every_size(image_size: int) -> None:
    bw = image_size // 8  # Table 3: G starts at M/8 x M/8, D's dense layer reads M/8 x M/8 x 512
    g = (
        linear(128, bw * bw * 512) + 2 * 512
        + conv(512, 256, 4) + 2 * 256 + conv(256, 128, 4) + 2 * 128 + conv(128, 64, 4) + 2 * 64
        + conv(64, 3, 3)
    )  # fmt: skip
    paper = (
        conv(3, 64, 3) + conv(64, 64, 4) + conv(64, 128, 3) + conv(128, 128, 4)
        + conv(128, 256, 3) + conv(256, 256, 4) + conv(256, 512, 3) + linear(bw * bw * 512, 1)
    )  # fmt: skip
    # chainer-gan-lib SNDCGANDiscriminator, ch = 512: ch/8, ch/4, ch/4, ch/2, ch/2, ch, ch.
    chainer = (
        conv(3, 64, 3) + conv(64, 128, 4) + conv(128, 128, 3) + conv(128, 256, 4)
        + conv(256, 256, 3) + conv(256, 512, 4) + conv(512, 512, 3) + linear(bw * bw * 512, 1)
    )  # fmt: skip
    assert (g, paper, chainer) == DCGAN_COUNTS[image_size]
    assert n_params(published(DCGANGenerator, image_size)) == g
    assert n_params(published(DCGANDiscriminator, image_size)) == paper
    assert n_params(DCGANDiscriminator(image_size=image_size, widths="chainer")) == chainer


def test_dcgan_discriminator_width_tables() -> None:
    def layout(D: DCGANDiscriminator) -> list[tuple[int, int, int, int]]:
        return [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in D.convs]

    chainer = DCGANDiscriminator(widths="chainer")
    assert [c.out_channels for c in chainer.convs] == [64, 128, 128, 256, 256, 512, 512]
    assert layout(chainer) == [
        (3, 64, 3, 1), (64, 128, 4, 2), (128, 128, 3, 1), (128, 256, 4, 2),
        (256, 256, 3, 1), (256, 512, 4, 2), (512, 512, 3, 1),
    ]  # fmt: skip
    assert [c.out_channels for c in DCGANDiscriminator().convs] == [64, 64, 128, 128, 256, 256, 512]
    assert set(D_WIDTHS) == {"paper", "chainer"}
    assert chainer.widths == "chainer" and DCGANDiscriminator().widths == "paper"


# mimicry's published stage widths (ngf / ndf semantics) and G's bottom width per size.
RESNET_WIDTHS = {
    32: ([256, 256, 256, 256], [128, 128, 128, 128], 4),
    48: ([512, 256, 128, 64], [64, 128, 256, 512, 1024], 6),
    64: ([1024, 512, 256, 128, 64], [64, 128, 256, 512, 1024], 4),
    128: ([1024, 1024, 512, 256, 128, 64], [64, 128, 256, 512, 1024, 1024], 4),
}


def _resnet_stage_widths(G: ResNetGenerator, D: ResNetDiscriminator) -> tuple[list, list]:
    # Read the widths off the layers, not off the widths attribute.
    g = [G.linear.out_features // G.bottom_width**2] + [b.conv2.out_channels for b in G.blocks]
    d = [block.conv2.out_channels for block in D.blocks]
    assert g[-1] == G.bn_out.num_features == G.conv_out.in_channels
    assert d[-1] == D.linear.in_features
    return g, d


@pytest.mark.parametrize("image_size", SIZES)
def test_resnet_published_widths_per_size(image_size: int) -> None:
    G, D = published(ResNetGenerator, image_size), published(ResNetDiscriminator, image_size)
    g_widths, d_widths, bottom_width = RESNET_WIDTHS[image_size]
    assert _resnet_stage_widths(G, D) == (g_widths, d_widths)
    assert (G.bottom_width, G.image_size, D.image_size) == (bottom_width, image_size, image_size)
    assert (G.channels, D.channels) == (g_widths[0], d_widths[-1])  # ngf, ndf
    assert bottom_width * 2 ** len(G.blocks) == image_size
    # Where D downsamples: 32 ends at 8x8 (Table 4), 48 at 3x3, 64 at 2x2, 128 at 4x4.
    downsampling = [isinstance(b, OptimizedDBlock) or b.downsample for b in D.blocks]
    assert image_size // 2 ** sum(downsampling) == {32: 8, 48: 3, 64: 2, 128: 4}[image_size]


def test_resnet_given_channels_scale_the_table() -> None:
    G = ResNetGenerator(channels=64, image_size=48)
    D = ResNetDiscriminator(channels=64, image_size=48)
    assert _resnet_stage_widths(G, D) == ([64, 32, 16, 8], [4, 8, 16, 32, 64])
    assert (G.channels, D.channels) == (64, 64)
    # At 32 a given width is every block's width, as the paper's channels=256 / 128.
    G, D = ResNetGenerator(channels=32), ResNetDiscriminator(channels=48)
    assert _resnet_stage_widths(G, D) == ([32] * 4, [48] * 4)


def test_bottom_width_is_derived_from_the_image_size() -> None:
    for size, bottom_width in {32: 4, 48: 6, 64: 4, 128: 4}.items():
        assert ResNetGenerator(channels=16, image_size=size).bottom_width == bottom_width
    for size in (16, 32, 48, 64, 128):
        G = DCGANGenerator(channels=8, image_size=size)
        D = DCGANDiscriminator(channels=1, image_size=size)
        assert G.bottom_width == D.bottom_width == size // 8
        assert G.image_size == D.image_size == size


def test_supported_sizes_are_exported_per_architecture() -> None:
    assert set(SUPPORTED_SIZES) == set(GENERATORS)
    assert SUPPORTED_SIZES["resnet"] == (32, 48, 64, 128) == tuple(G_LAYOUTS) == tuple(D_LAYOUTS)
    assert set(SIZES) <= set(SUPPORTED_SIZES["dcgan"])
    assert all(size % 8 == 0 for size in SUPPORTED_SIZES["dcgan"])
    for name, sizes in SUPPORTED_SIZES.items():
        for size in (sizes[0], sizes[-1]):
            G, D = build_models(
                name, image_size=size, z_dim=4, g_channels=16, d_channels=16, num_classes=0
            )
            assert (G.image_size, D.image_size) == (size, size)


# -- forward passes ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("batch", [1, 64])
def test_output_shapes_and_range(arch: str, num_classes: int, batch: int) -> None:
    G, D = small_models(arch, num_classes)
    y = torch.randint(0, 10, (batch,)) if num_classes else None
    with torch.no_grad():
        # Large latents drive tanh into saturation: the range check is not vacuous.
        x = G(10 * torch.randn(batch, G.z_dim), y)
        logits = D(x, y)
    assert x.shape == (batch, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert logits.shape == (batch,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_default_widths_forward(arch: str) -> None:
    G, D = GENERATORS[arch](), DISCRIMINATORS[arch]()
    with torch.no_grad():
        x = G(torch.randn(2, 128))
        assert x.shape == (2, 3, 32, 32)
        assert D(x).shape == (2,)


# Tiny widths: the shapes, not the widths, are the point (ResNet widths at 128: 16/16 = 1).
TINY = {
    "dcgan": {"g_channels": 16, "d_channels": 2},
    "resnet": {"g_channels": 16, "d_channels": 16},
}
ARCH_WIDTHS = [("dcgan", "paper"), ("dcgan", "chainer"), ("resnet", "paper")]


@pytest.mark.parametrize(("arch", "d_widths"), ARCH_WIDTHS)
@pytest.mark.parametrize("image_size", SIZES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_network_at_every_size_runs_forward_and_backward(
    arch: str, d_widths: str, image_size: int, num_classes: int
) -> None:
    G, D = build_models(
        arch,
        image_size=image_size,
        z_dim=8,
        num_classes=num_classes,
        d_widths=d_widths,
        **TINY[arch],
    )
    y = torch.tensor([3, 7]) if num_classes else None
    x = G(torch.randn(2, 8), y)
    assert x.shape == (2, 3, image_size, image_size)
    logits = D(x, y)
    assert logits.shape == (2,)
    logits.sum().backward()  # through D into G
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if num_classes:
        # The labels reach both networks: the given classes' rows get gradients.
        assert D.embed.weight_orig.grad[[3, 7]].abs().sum() > 0
        cbn = next(m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d))
        assert cbn.bias.weight.grad[[3, 7]].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_labels_change_the_outputs(arch: str) -> None:
    G, D = small_models(arch, num_classes=10)
    # Conditional BNs start as gain 1, bias 0 for every class; make the classes differ.
    for m in G.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            nn.init.normal_(m.gain.weight, 1.0, 0.5)
            nn.init.normal_(m.bias.weight, 0.0, 0.5)
    z, x = torch.randn(4, G.z_dim), torch.rand(4, 3, 32, 32) * 2 - 1
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        assert not torch.allclose(G(z, y0), G(z, y1))
        assert not torch.allclose(D(x, y0), D(x, y1))


def test_projection_adds_class_embedding_inner_product() -> None:
    # Two classes whose embeddings differ: D(x, 1) - D(x, 0) = <e_1 - e_0, pooled features>.
    D = ResNetDiscriminator(channels=8, num_classes=2).eval()
    x = torch.rand(3, 3, 32, 32)
    feats = {}
    D.blocks[-1].register_forward_hook(lambda m, i, out: feats.update(h=out))
    with torch.no_grad():
        out0 = D(x, torch.zeros(3, dtype=torch.long))
        out1 = D(x, torch.ones(3, dtype=torch.long))
        pooled = torch.relu(feats["h"]).sum(dim=(2, 3))  # (B, C)
        w = D.embed.weight  # normalised (2, C)
    assert torch.allclose(out1 - out0, pooled @ (w[1] - w[0]), atol=1e-4)


def test_conditional_batch_norm_matches_hand_formula() -> None:
    bn = ConditionalBatchNorm2d(num_features=3, num_classes=2)
    assert torch.equal(bn.gain.weight, torch.ones(2, 3))
    assert torch.equal(bn.bias.weight, torch.zeros(2, 3))
    with torch.no_grad():
        bn.gain.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
        bn.bias.weight.copy_(torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]))
    x = torch.randn(4, 3, 5, 5)
    y = torch.tensor([0, 1, 1, 0])
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, over the batch
    x_hat = (x - mean) / torch.sqrt(var + BN_EPS)
    gain = bn.gain.weight[y][:, :, None, None]
    bias = bn.bias.weight[y][:, :, None, None]
    assert torch.allclose(bn(x, y), gain * x_hat + bias, atol=1e-5)
    assert BN_EPS == 2e-5  # Chainer's BatchNormalization default


# -- spectral norm and initialisation ------------------------------------------------------


def _walk_discriminator(D: nn.Module) -> tuple[list[str], list[str]]:
    """Names of D's normalised weights and of its biases; fail on anything else."""
    normalised, biases = [], []
    for mod_name, m in D.named_modules():
        assert not parametrize.is_parametrized(m), f"{mod_name} uses torch's parametrisation"
        assert not any(isinstance(h, TorchSpectralNorm) for h in m._forward_pre_hooks.values())
        for p_name, _ in m.named_parameters(recurse=False):
            qualified = f"{mod_name}.{p_name}"
            if p_name == "bias":
                assert not is_spectral_normalized(m, "bias"), qualified
                biases.append(qualified)
            else:
                assert p_name == "weight_orig", f"{qualified} is a parameter that is not normalised"
                assert is_spectral_normalized(m, "weight"), qualified
                normalised.append(f"{mod_name}.weight")
    return normalised, biases


@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_dcgan_discriminator_weight_is_normalised(num_classes: int) -> None:
    normalised, biases = _walk_discriminator(DCGANDiscriminator(num_classes=num_classes))
    # Seven convs and the linear layer (with biases), plus the class embedding.
    assert len(normalised) == 8 + (num_classes > 0)
    assert len(biases) == 8


@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_resnet_discriminator_weight_is_normalised(num_classes: int) -> None:
    normalised, biases = _walk_discriminator(ResNetDiscriminator(num_classes=num_classes))
    # 3 + 3 + 2 + 2 convs (with biases), the bias-free linear layer, the class embedding.
    assert len(normalised) == 11 + (num_classes > 0)
    assert len(biases) == 10
    assert "linear.weight" in normalised and "linear.bias" not in biases


# Convs of the ResNet D per size: 3 in the optimised block, 3 in a block with a 1x1 shortcut,
# 2 in one without (32: 3 + 3 + 2 + 2; 48 and 64: 3 + 4 * 3; 128: 3 + 4 * 3 + 2).
RESNET_D_CONVS = {32: 10, 48: 15, 64: 15, 128: 17}
# Whether D's linear layer has a bias: snresnet_32.py says nobias=True, snresnet_64.py and
# snresnet.py (128) keep SNLinear's default bias; 48 has no official file (none, as 32).
RESNET_D_LINEAR_BIAS = {32: False, 48: False, 64: True, 128: True}


@pytest.mark.parametrize("image_size", SIZES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_discriminator_weight_is_normalised_at_every_size(
    image_size: int, num_classes: int
) -> None:
    D = ResNetDiscriminator(channels=16, image_size=image_size, num_classes=num_classes)
    normalised, biases = _walk_discriminator(D)
    n_convs, linear_bias = RESNET_D_CONVS[image_size], RESNET_D_LINEAR_BIAS[image_size]
    assert len(normalised) == n_convs + 1 + (num_classes > 0)  # convs, linear, embedding
    assert len(biases) == n_convs + linear_bias
    assert "linear.weight" in normalised
    assert ("linear.bias" in biases) == (D.linear.bias is not None) == linear_bias
    for widths in D_WIDTHS:
        D = DCGANDiscriminator(
            channels=2, image_size=image_size, num_classes=num_classes, widths=widths
        )
        normalised, biases = _walk_discriminator(D)
        assert len(normalised) == 8 + (num_classes > 0)  # seven convs, linear, embedding
        assert len(biases) == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_discriminator_weights_have_spectral_norm_one(arch: str) -> None:
    D = DISCRIMINATORS[arch](channels=8, num_classes=3).eval()
    for name, m in D.named_modules():
        if is_spectral_normalized(m):
            w = m.weight.detach()
            dim = 1 if isinstance(m, nn.ConvTranspose2d) else 0
            sigma = torch.linalg.matrix_norm(w.movedim(dim, 0).flatten(1), ord=2)
            assert sigma.item() == pytest.approx(1.0, abs=0.02), name


def test_generators_are_not_spectrally_normalised() -> None:
    for G in (DCGANGenerator(channels=16), ResNetGenerator(channels=8)):
        assert not any(is_spectral_normalized(m) for m in G.modules())


def _xavier_bound(w: torch.Tensor, gain: float) -> float:
    # Chainer's GlorotUniform(scale): U(-s, s), s = scale * sqrt(6 / (fan_in + fan_out)),
    # fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field.
    receptive = w[0, 0].numel() if w.ndim > 2 else 1
    return gain * math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * receptive))


def _assert_uniform(w: torch.Tensor, bound: float, name: str) -> None:
    assert w.abs().max().item() <= bound + 1e-7, name
    # U(-s, s) has standard deviation s / sqrt(3).
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name


def test_resnet_initialisation_follows_official_code() -> None:
    G, D = ResNetGenerator(), ResNetDiscriminator(num_classes=10)
    residual = ["conv1", "conv2"]
    for net in (G, D):
        for name, m in net.named_modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                continue
            w = m.weight_orig if is_spectral_normalized(m) else m.weight
            gain = math.sqrt(2) if name.split(".")[-1] in residual else 1.0
            if isinstance(m, nn.Embedding) and not is_spectral_normalized(m):
                continue  # conditional BN gains and biases (G is unconditional here anyway)
            _assert_uniform(w.detach(), _xavier_bound(w, gain), f"{type(net).__name__}.{name}")
            if getattr(m, "bias", None) is not None:
                assert torch.count_nonzero(m.bias) == 0, name
    n_residual = sum(1 for n, _ in D.named_modules() if n.split(".")[-1] in residual)
    assert n_residual == 8


def test_dcgan_initialisation_is_normal_002() -> None:
    for net in (DCGANGenerator(), DCGANDiscriminator()):
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                w = (m.weight_orig if is_spectral_normalized(m) else m.weight).detach()
                assert w.std().item() == pytest.approx(0.02, rel=0.1), name
                assert abs(w.mean().item()) < 0.01, name
                assert torch.count_nonzero(m.bias) == 0, name


def test_conditional_batch_norms_start_as_identity_affine() -> None:
    for G in (
        DCGANGenerator(channels=16, num_classes=5),
        ResNetGenerator(channels=8, num_classes=5),
    ):
        cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
        assert len(cbns) == (4 if isinstance(G, DCGANGenerator) else 6)
        for m in cbns:
            assert torch.equal(m.gain.weight, torch.ones_like(m.gain.weight))
            assert torch.equal(m.bias.weight, torch.zeros_like(m.bias.weight))


# -- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "named"),
    [
        (DCGANGenerator, {"z_dim": 0}, "z_dim"),
        (DCGANGenerator, {"channels": 12}, "12"),
        (DCGANGenerator, {"image_size": 0}, "image_size"),
        (DCGANGenerator, {"num_classes": -1}, "num_classes"),
        (DCGANDiscriminator, {"channels": 0}, "channels"),
        (DCGANDiscriminator, {"num_classes": -2}, "-2"),
        (ResNetGenerator, {"z_dim": -5}, "-5"),
        (ResNetGenerator, {"channels": 2.5}, "2.5"),
        (ResNetDiscriminator, {"channels": 0}, "channels"),
        (ResNetDiscriminator, {"num_classes": 1.0}, "num_classes"),
    ],
)
def test_bad_constructor_values_raise(cls: type, kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        cls(**kwargs)


@pytest.mark.parametrize("bad", [40, 16, 256, 0, 32.0, True])
def test_unsupported_image_size_raises(bad: object) -> None:
    msg = f"image_size must be one of 32, 48, 64, 128 for the ResNet, got {bad!r}"
    for cls in (ResNetGenerator, ResNetDiscriminator):
        with pytest.raises(ValueError, match=re.escape(msg)):
            cls(image_size=bad)
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_models(
            "resnet", image_size=bad, z_dim=8, g_channels=None, d_channels=None, num_classes=0
        )


@pytest.mark.parametrize("bad", [36, 4, 136, 0, 32.0])
def test_unsupported_image_size_raises_for_the_cnn(bad: object) -> None:
    msg = rf"image_size must be one of 8, 16, 24, .*, 128 for the standard CNN, got {bad!r}"
    for cls in (DCGANGenerator, DCGANDiscriminator):
        with pytest.raises(ValueError, match=msg):
            cls(image_size=bad)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        # The stage widths at 48 are channels / 1, 2, 4, 8 (G) and / 16, 8, 4, 2, 1 (D).
        (ResNetGenerator, {"channels": 20, "image_size": 48}, "channels must be a multiple of 8"),
        (ResNetDiscriminator, {"channels": 24, "image_size": 48}, "multiple of 16 .* got 24"),
        # channels=8 at 128 would give a G stage of 8 // 16 = 0 channels.
        (ResNetGenerator, {"channels": 8, "image_size": 128}, "channels must be a multiple of 16"),
        (ResNetDiscriminator, {"channels": 0, "image_size": 64}, "channels must be an integer"),
        (DCGANDiscriminator, {"widths": "wide"}, r"widths must be one of .*'wide'"),
    ],
)
def test_bad_widths_raise(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_build_models_checks_d_widths() -> None:
    kwargs = {"image_size": 32, "z_dim": 8, "g_channels": None, "d_channels": None}
    with pytest.raises(ValueError, match=r"d_widths must be one of \['paper'\] for 'resnet'"):
        build_models("resnet", num_classes=0, d_widths="chainer", **kwargs)
    with pytest.raises(ValueError, match="d_widths .* got 'wide'"):
        build_models("dcgan", num_classes=0, d_widths="wide", **kwargs)
    # None channels are each network's defaults: the published widths, or 512 / 64.
    G, D = build_models("dcgan", num_classes=0, d_widths="chainer", **kwargs)
    assert (G.channels, D.channels, D.widths) == (512, 64, "chainer")
    assert n_params(D) == 5_860_865


@pytest.mark.parametrize("arch", ARCHS)
def test_discriminator_rejects_another_image_size(arch: str) -> None:
    G32, D32 = small_models(arch, image_size=32)
    G64, D64 = small_models(arch, image_size=64)
    with torch.no_grad():
        x32, x64 = G32(torch.randn(2, 16)), G64(torch.randn(2, 16))
        assert D32(x32).shape == D64(x64).shape == (2,)
        # 64x64 real images against 32x32 fakes (or the reverse) fail at once.
        with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\), got .* \(2, 3, 64, 64\)"):
            D32(x64)
        with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
            D64(x32)


@pytest.mark.parametrize("arch", ARCHS)
def test_labels_required_iff_conditional(arch: str) -> None:
    z, x = torch.randn(2, 16), torch.rand(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    G0, D0 = small_models(arch, num_classes=0)
    G1, D1 = small_models(arch, num_classes=10)
    with pytest.raises(ValueError, match="unconditional"):
        G0(z, y)
    with pytest.raises(ValueError, match="unconditional"):
        D0(x, y)
    with pytest.raises(ValueError, match="num_classes=10"):
        G1(z)
    with pytest.raises(ValueError, match="num_classes=10"):
        D1(x)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        D1(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="float32"):
        G1(z, y.float())


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_input_shapes_raise(arch: str) -> None:
    G, D = small_models(arch)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        G(torch.randn(2, 17))
    with pytest.raises(ValueError, match=r"\(2, 32, 32\)"):
        D(torch.rand(2, 32, 32))
    # Both Ds check the size (the ResNet's blocks would run on any size).
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        D(torch.rand(2, 3, 64, 64))


# -- behaviour under training --------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_hinge_training_separates_then_g_improves(arch: str, num_classes: int) -> None:
    G, D = small_models(arch, num_classes)
    batch = 8
    y = torch.randint(0, num_classes, (batch,)) if num_classes else None
    real = torch.rand(batch, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fake = G(torch.randn(batch, G.z_dim), y)

    # D alone on two fixed batches: hinge loss should drive D(real) above D(fake).
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    for _ in range(30):
        loss_d = d_hinge(D(real, y), D(fake, y))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
    D.eval()  # freeze u and v too: D is now a fixed function
    with torch.no_grad():
        d_real, d_fake = D(real, y), D(fake, y)
    assert d_real.min() > d_fake.max()
    assert d_real.mean() - d_fake.mean() > 2.0  # beyond the hinge's margin of 2
    assert d_hinge(d_real, d_fake) < 0.5

    # G alone against the frozen D: its loss should fall.
    D.requires_grad_(False)
    d_state = {k: v.clone() for k, v in D.state_dict().items()}
    z = torch.randn(batch, G.z_dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
    losses = []
    for _ in range(20):
        loss_g = g_hinge(D(G(z, y), y))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        losses.append(loss_g.item())
    assert losses[-1] < losses[0] - 1.0
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in d_state.items())
