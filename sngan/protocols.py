"""The evaluation protocols: how many generated and real images an IS/FID number is made of.

Published SN-GAN numbers disagree mostly because of how they were computed, so every number
sngan reports names one of these. IS is the same in both; FID differs:

========== ==================== ======================= ========================================
name       FID generated        FID real                IS
========== ==================== ======================= ========================================
standard   50,000               the whole reference     10 splits of the same 50,000 images
paper      5,000                first 10,000 reference  10 independent sets of 5,000 (50,000)
========== ==================== ======================= ========================================

``standard`` is what current PyTorch reproductions report (50k generated against the 50k CIFAR-10
training images). ``paper`` follows appendix B.1 of Miyato et al. (2018) and the official Chainer
code (pfnet-research/sngan_projection, ``evaluation.py``). ``sngan.metrics`` computes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """What a protocol means, recorded next to the numbers it produced."""

    name: str
    num_fake: int  # generated images for FID and KID
    num_real: int | None  # reference images for FID and KID; None = the whole reference set
    isc_splits: int = 10
    num_fake_is: int | None = None  # generated images for IS; None = the same num_fake images

    @property
    def num_fake_for_is(self) -> int:
        return self.num_fake if self.num_fake_is is None else self.num_fake_is


REGISTRY: dict[str, Protocol] = {
    "standard": Protocol("standard", num_fake=50_000, num_real=None),
    "paper": Protocol("paper", num_fake=5_000, num_real=10_000, num_fake_is=50_000),
}
PROTOCOLS = tuple(REGISTRY)  # the names, for configs and messages


def protocol(name: str, num_samples: int | None = None) -> Protocol:
    """The protocol called ``name``; ``num_samples`` replaces its number of generated images."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metrics protocol {name!r}; valid protocols are: {PROTOCOLS}")
    spec = REGISTRY[name]
    if num_samples is not None:
        # paper's IS is isc_splits independent sets of num_fake images each; keep that shape.
        num_fake_is = None if spec.num_fake_is is None else num_samples * spec.isc_splits
        spec = dataclasses.replace(spec, num_fake=num_samples, num_fake_is=num_fake_is)
    if spec.num_fake < 2:
        raise ValueError(f"FID needs at least 2 generated images, got num_samples={spec.num_fake}")
    if spec.num_fake_for_is < spec.isc_splits:
        raise ValueError(
            f"the {name} protocol computes IS over {spec.isc_splits} splits, so it needs at least "
            f"{spec.isc_splits} generated images, got num_samples={num_samples}"
        )
    return spec
