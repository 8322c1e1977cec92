"""Plain FP32 for measurements, whatever the caller's autocast and TF32 settings.

The metrics (``sngan.metrics``) and G_ema's standing statistics (``sngan.standing_stats``) run
inside it, so their numbers do not depend on who called them: the training loop runs under bf16
autocast with TF32 on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Plain FP32 inside, whatever autocast or TF32 the caller (e.g. the training loop) enabled.

    TF32 convolutions (PyTorch's default on Ampere and later) move Inception's features, and so
    FID, by amounts that depend on the GPU; the metrics should not depend on who called them.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
