"""GAN losses as plain functions of D's logits, in (D loss, G loss) pairs named for the config.

Every function takes 1-D (B,) float logits (real and fake batches may differ in size) and
returns a scalar to minimise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "d_hinge",
    "d_nonsaturating",
    "d_wasserstein",
    "g_hinge",
    "g_nonsaturating",
    "g_wasserstein",
    "get_loss",
]


def _check_logits(**logits: torch.Tensor) -> None:
    for name, t in logits.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name} logits must be a non-empty 1-D (B,) tensor, got shape {shape}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} logits must be floating point, got {t.dtype}")


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    _check_logits(real=real, fake=fake)
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for G: -E[D(G(z))]."""
    _check_logits(fake=fake)
    return -fake.mean()


def d_nonsaturating(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Standard GAN loss for D: -E[log sigmoid(D(x))] - E[log(1 - sigmoid(D(G(z))))]."""
    _check_logits(real=real, fake=fake)
    # softplus(-t) = -log sigmoid(t) and softplus(t) = -log(1 - sigmoid(t)), without overflow.
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_nonsaturating(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss for G: -E[log sigmoid(D(G(z)))]."""
    _check_logits(fake=fake)
    return F.softplus(-fake).mean()


def d_wasserstein(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss: E[D(G(z))] - E[D(x)]."""
    _check_logits(real=real, fake=fake)
    return fake.mean() - real.mean()


def g_wasserstein(fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein loss for G: -E[D(G(z))]."""
    _check_logits(fake=fake)
    return -fake.mean()


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, tuple[LossFn, LossFn]] = {
    "hinge": (d_hinge, g_hinge),
    "nonsaturating": (d_nonsaturating, g_nonsaturating),
    "wasserstein": (d_wasserstein, g_wasserstein),
}


def get_loss(name: str) -> tuple[LossFn, LossFn]:
    """The (D loss, G loss) pair called ``name`` in ``LOSSES``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
    return LOSSES[name]
