"""The generators' input: latents z ~ N(0, I) and, for conditional models, class labels;
and the fixed latents of the training grids."""

from __future__ import annotations

import torch


def sample_z(
    n: int, z_dim: int, num_classes: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z of shape (n, z_dim) from ``gen``, and uniform labels (n,) (None if unconditional)."""
    z = torch.randn(n, z_dim, generator=gen, device=device)
    y = torch.randint(0, num_classes, (n,), generator=gen, device=device) if num_classes else None
    return z, y


GRID_COLUMNS = 8  # the training grids: 8 z per row
# A conditional training grid holds at most this many classes (rows): 10 for CIFAR-10, but the
# first 16 of CIFAR-100's 100, whose full grid would be too tall to read in TensorBoard.
GRID_MAX_ROWS = 16


def per_class(z: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every z under every label, row-major: row c is G's class c, column j is ``z[j]``.

    (k, z_dim) z -> (num_classes * k, z_dim) z and (num_classes * k,) labels.
    """
    labels = torch.arange(num_classes, device=z.device).repeat_interleave(len(z))
    return z.repeat(num_classes, 1), labels


def grid_latents(
    z_dim: int, num_classes: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The z (and labels) of the training sample grids, row-major for an 8-wide grid.

    Unconditional: 64 z from ``gen`` (an 8x8 grid). Conditional: 8 z from ``gen``, one row per
    class (the first ``GRID_MAX_ROWS`` classes), the same 8 z in every row: rows differ only in
    the label, columns only in z.
    """
    if not num_classes:
        return sample_z(GRID_COLUMNS**2, z_dim, 0, gen, device)
    z = torch.randn(GRID_COLUMNS, z_dim, generator=gen, device=device)
    return per_class(z, min(num_classes, GRID_MAX_ROWS))
