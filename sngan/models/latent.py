"""The generators' input: latents z ~ N(0, I) and, for conditional models, class labels."""

from __future__ import annotations

import torch


def sample_z(
    n: int, z_dim: int, num_classes: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z of shape (n, z_dim) from ``gen``, and uniform labels (n,) (None if unconditional)."""
    z = torch.randn(n, z_dim, generator=gen, device=device)
    y = torch.randint(0, num_classes, (n,), generator=gen, device=device) if num_classes else None
    return z, y
