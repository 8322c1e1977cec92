"""The official ImageNet networks at 128x128 (pfnet-research/sngan_projection): G, and D with
projection, concat or no conditioning, against counts derived from the official code."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from sngan.models import (
    ARCHITECTURES,
    CONDITIONINGS,
    D_WIDTH_CHOICES,
    DISCRIMINATORS,
    GENERATORS,
    SUPPORTED_SIZES,
    ConditionalBatchNorm2d,
    DCGANDiscriminator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_models,
    conditioning_error,
)
from sngan.spectral_norm import is_spectral_normalized

K = 1000  # ImageNet's classes: n_classes of configs/sn_projection.yml and sn_concat.yml
SIZE = 128


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(cls: type[nn.Module], **kwargs: object) -> nn.Module:
    # Shapes without storage: a 42M-parameter network builds at once.
    with torch.device("meta"):
        return cls(image_size=SIZE, **kwargs)


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def g_block(c_in: int, c_out: int, bn: int) -> int:
    # gen_models/resblocks.py Block(upsample=True): b1(c_in), c1 3x3, b2(c_out), c2 3x3,
    # c_sc 1x1; ``bn`` parameters per channel of each batch norm.
    return (
        bn * c_in + conv(c_in, c_out, 3) + bn * c_out + conv(c_out, c_out, 3) + conv(c_in, c_out, 1)
    )


def d_block(c_in: int, c_out: int) -> int:
    # dis_models/resblocks.py Block: c1 c_in -> c_in (hidden = in), c2 c_in -> c_out, and
    # c_sc 1x1 when it downsamples or changes the width.
    return (
        conv(c_in, c_in, 3) + conv(c_in, c_out, 3) + (conv(c_in, c_out, 1) if c_in != c_out else 0)
    )


# gen_models/resnet.py at ch = 64: l1 128 -> 4*4*16ch, block2..block6 16ch -> 16ch -> 8ch ->
# 4ch -> 2ch -> ch, b7 BatchNormalization(ch), l7 conv3x3 ch -> 3.
G_BLOCKS = [(1024, 1024), (1024, 512), (512, 256), (256, 128), (128, 64)]


def official_g(bn: int) -> int:
    blocks = sum(g_block(c_in, c_out, bn) for c_in, c_out in G_BLOCKS)
    return 128 * 4 * 4 * 1024 + 4 * 4 * 1024 + blocks + 2 * 64 + conv(64, 3, 3)


# dis_models/snresnet.py at ch = 64: OptimizedBlock(3, ch), block2..block5 down to 16ch,
# block6 16ch -> 16ch without downsampling, l7 SNLinear(16ch, 1) with its default bias.
def official_d(block4_in: int = 256) -> int:
    optimized = conv(3, 64, 3) + conv(64, 64, 3) + conv(3, 64, 1)
    blocks = d_block(64, 128) + d_block(128, 256) + d_block(block4_in, 512)
    blocks += d_block(512, 1024) + d_block(1024, 1024)
    return optimized + blocks + 1024 + 1


def test_generator_parameter_counts() -> None:
    # Unconditional: plain BNs (gain and bias); conditional: CBNs (1000 gains, 1000 biases per
    # channel, no affine of their own); b7 stays a plain BN in both.
    assert official_g(bn=2) == 32_150_787
    assert official_g(bn=2 * K) == 41_996_931
    assert 2 * K * sum(c_in + c_out for c_in, c_out in G_BLOCKS) == 9_856_000
    assert n_params(on_meta(ResNetGenerator)) == 32_150_787
    G = on_meta(ResNetGenerator, num_classes=K)
    assert n_params(G) == 41_996_931
    cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbns) == 10 and sum(n_params(m) for m in cbns) == 9_856_000
    assert not isinstance(G.bn_out, ConditionalBatchNorm2d)


def test_discriminator_parameter_counts() -> None:
    # Projection: l_y = SNEmbedID(1000, 16ch). Concat (SNResNetConcatDiscriminator):
    # l_y = SNEmbedID(1000, dim_emb=128) and block4 = Block(4ch + dim_emb, 8ch).
    assert official_d() == 29_017_857
    assert official_d() + K * 1024 == 30_041_857
    assert official_d(block4_in=256 + 128) + K * 128 == 30_538_625
    assert n_params(on_meta(ResNetDiscriminator)) == 29_017_857
    assert n_params(on_meta(ResNetDiscriminator, num_classes=K)) == 30_041_857
    D = on_meta(ResNetDiscriminator, num_classes=K, conditioning="concat")
    assert n_params(D) == 30_538_625
    assert D.embed.weight.shape == (K, 128)
    # The widened block keeps its input width inside, as every official D block.
    block4 = D.blocks[3]
    assert (block4.conv1.in_channels, block4.conv1.out_channels) == (384, 384)
    assert (block4.conv2.out_channels, block4.shortcut.in_channels) == (512, 384)
    assert D.linear.bias is not None


def test_concat_is_built_by_the_registry() -> None:
    with torch.device("meta"):
        G, D = build_models(
            "resnet",
            image_size=SIZE,
            z_dim=128,
            g_channels=None,
            d_channels=None,
            num_classes=K,
            conditioning="concat",
        )
        _, D_proj = build_models(
            "resnet", image_size=SIZE, z_dim=128, g_channels=None, d_channels=None, num_classes=K
        )
    assert isinstance(D, ResNetDiscriminator) and D.conditioning == "concat"
    assert (n_params(G), n_params(D)) == (41_996_931, 30_538_625)
    assert D_proj.conditioning == "projection" and n_params(D_proj) == 30_041_857


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_forward_and_backward_at_small_width(conditioning: str) -> None:
    G, D = build_models(
        "resnet",
        image_size=SIZE,
        z_dim=16,
        g_channels=64,
        d_channels=64,
        num_classes=10,
        conditioning=conditioning,
    )
    y = torch.tensor([3, 7])
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, 3, SIZE, SIZE)
    logits = D(x, y)
    assert logits.shape == (2,)
    logits.sum().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The labels reach D: the given classes' rows get the lookup's gradient (every row also
    # gets a little through sigma, so the others are not zero).
    grad = D.embed.weight_orig.grad.abs().sum(dim=1)  # (10,)
    assert grad[[3, 7]].min() > 10 * grad[[0, 1, 2, 4, 5, 6, 8, 9]].max()


def test_concat_feeds_the_normalised_embedding_to_block4() -> None:
    D = ResNetDiscriminator(channels=64, image_size=SIZE, num_classes=3, conditioning="concat")
    D.eval()  # fixed u and v: D is a function
    assert is_spectral_normalized(D.embed)
    w_orig = D.embed.weight_orig.detach()
    # The embedding matrix as a whole (3, 128) has spectral norm 1, as SNEmbedID's W_bar.
    sigma = torch.linalg.matrix_norm(w_orig, ord=2)
    w_bar = w_orig / sigma
    assert torch.allclose(D.embed.weight, w_bar, rtol=1e-3, atol=1e-6)

    seen = {}
    D.blocks[2].register_forward_hook(lambda m, i, out: seen.update(block3=out))
    D.blocks[3].register_forward_pre_hook(lambda m, i: seen.update(block4_in=i[0]))
    D.blocks[-1].register_forward_hook(lambda m, i, out: seen.update(last=out))
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    y = torch.tensor([2, 0])
    with torch.no_grad():
        out = D(x, y)
        h3 = seen["block3"]  # (2, 16, 16, 16): ch * 4 at 16x16
        assert h3.shape == (2, 16, 16, 16)
        tiled = w_bar[y][:, :, None, None].expand(2, 128, 16, 16)
        assert torch.allclose(seen["block4_in"], torch.cat([h3, tiled], dim=1), atol=1e-5)
        # No projection term: the output is the linear head of the pooled features alone.
        pooled = torch.relu(seen["last"]).sum(dim=(2, 3))  # (2, 64)
        head = pooled @ D.linear.weight[0] + D.linear.bias[0]
        assert torch.allclose(out, head, atol=1e-4)
        # The class changes the output (only through the concatenated embedding).
        other = D(x, torch.tensor([1, 1]))
    assert not torch.allclose(out, other)


def _assert_glorot_uniform(w: torch.Tensor, fan_in: int, fan_out: int, gain: float = 1.0) -> None:
    # Chainer's GlorotUniform(gain): U(-s, s), s = gain * sqrt(6 / (fan_in + fan_out)).
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    assert w.abs().max().item() <= bound + 1e-7
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # U(-s, s)'s std


def test_concat_initialisation_follows_official_code() -> None:
    D = ResNetDiscriminator(channels=64, image_size=SIZE, num_classes=K, conditioning="concat")
    # SNEmbedID(n_classes, dim_emb, initialW=GlorotUniform()): fans 128 and 1000.
    _assert_glorot_uniform(D.embed.weight_orig.detach(), 128, K)
    # The widened block4 (16 + 128 channels in at channels=64) keeps dis_models/resblocks.py's
    # GlorotUniform(sqrt(2)) on its 3x3 convs; the linear bias starts at 0.
    conv1 = D.blocks[3].conv1.weight_orig.detach()  # (144, 144, 3, 3)
    assert conv1.shape == (144, 144, 3, 3)
    _assert_glorot_uniform(conv1, 144 * 9, 144 * 9, gain=math.sqrt(2))
    assert torch.count_nonzero(D.linear.bias) == 0


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 48, 64])
def test_concat_is_refused_where_the_official_code_has_none(image_size: int) -> None:
    msg = (
        "conditioning='concat' builds the ResNet D only at image_size 128 (where the official "
        f"code has one), got {image_size}"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        ResNetDiscriminator(image_size=image_size, num_classes=10, conditioning="concat")
    assert conditioning_error("resnet", image_size, "concat") == msg
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_models(
            "resnet",
            image_size=image_size,
            z_dim=8,
            g_channels=16,
            d_channels=16,
            num_classes=10,
            conditioning="concat",
        )


def test_concat_is_refused_for_the_standard_cnn() -> None:
    msg = (
        "conditioning='concat' is not available for the standard CNN (the official code has "
        "no such D); choose projection"
    )
    assert conditioning_error("dcgan", 32, "concat") == msg
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_models(
            "dcgan",
            image_size=32,
            z_dim=8,
            g_channels=16,
            d_channels=2,
            num_classes=10,
            conditioning="concat",
        )


def test_unconditional_d_takes_only_the_default() -> None:
    msg = (
        "conditioning='concat' needs a class-conditional D (num_classes > 0); an "
        "unconditional D takes only the default 'projection'"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        on_meta(ResNetDiscriminator, conditioning="concat")
    assert conditioning_error("resnet", SIZE, "concat", num_classes=0) == msg
    assert conditioning_error("resnet", SIZE, "concat") is None  # num_classes not known
    assert conditioning_error("resnet", SIZE, "projection", num_classes=0) is None


def test_unknown_conditioning_lists_the_valid_ones() -> None:
    msg = "conditioning must be one of projection, concat, got 'film'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ResNetDiscriminator(num_classes=10, conditioning="film")
    for name in ("dcgan", "resnet"):
        assert conditioning_error(name, 32, "film") == msg
    # A size without networks is the size check's to report, not the conditioning's.
    assert conditioning_error("resnet", 256, "concat") is None


# -- the registry --------------------------------------------------------------------------


def test_registry_tables_come_from_one_entry_per_architecture() -> None:
    assert CONDITIONINGS == ("projection", "concat")
    for name, arch in ARCHITECTURES.items():
        assert GENERATORS[name] is arch.generator
        assert DISCRIMINATORS[name] is arch.discriminator
        assert SUPPORTED_SIZES[name] == arch.sizes
        assert D_WIDTH_CHOICES[name] == arch.d_widths and arch.d_widths[0] == "paper"
        # Projection (the default) is available wherever the architecture builds.
        assert arch.conditionings["projection"] == arch.sizes
    assert ARCHITECTURES["resnet"].conditionings == {
        "projection": (32, 48, 64, 128),
        "concat": (128,),
    }
    assert set(ARCHITECTURES["dcgan"].conditionings) == {"projection"}
    assert DISCRIMINATORS["dcgan"] is DCGANDiscriminator


@pytest.mark.parametrize("name", ["dcgan", "resnet"])
def test_conditioning_error_is_the_constructors_check(name: str) -> None:
    # conditioning_error (config validation) says None exactly when the networks build.
    for image_size in (32, 64, 128):
        for conditioning in (*CONDITIONINGS, "film"):
            for num_classes in (0, 10):
                error = conditioning_error(name, image_size, conditioning, num_classes)
                kwargs = {"image_size": image_size, "num_classes": num_classes}
                with torch.device("meta"):
                    if error is None:
                        _, D = build_models(
                            name, z_dim=8, g_channels=16, d_channels=16, conditioning=conditioning,
                            **kwargs,
                        )  # fmt: skip
                        assert getattr(D, "conditioning", "projection") == conditioning
                    elif name == "resnet":  # the D's own check, with the same message
                        with pytest.raises(ValueError, match=re.escape(error)):
                            ResNetDiscriminator(channels=16, conditioning=conditioning, **kwargs)
