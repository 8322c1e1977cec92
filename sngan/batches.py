"""Training batches: the whole training set held on one device, served as shuffled batches.

CIFAR-10's training set is 150 MB as uint8, so holding it on the GPU costs little and removes
worker processes and host-to-device copies from the loop.
"""

from __future__ import annotations

import torch


class BatchStream:
    """Endless shuffled batches from images held on one device (no DataLoader, no host copies).

    Each epoch is a fresh permutation drawn from the stream's own generator (the global RNG is
    left alone); batches are consecutive slices of it. When fewer than ``batch_size`` indices
    remain, the tail is dropped and a new epoch starts, so every batch is full and each image is
    seen at most once per epoch (exactly once, less the dropped tail of fewer than a batch).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (len(images),):
            raise ValueError(
                f"labels must have shape ({len(images)},) to match the images, "
                f"got {tuple(labels.shape)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = labels.to(self.device, torch.int64)
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # Bookkeeping in Python ints so next() never waits on the device.
        self.epoch = 0
        self.pos = 0
        self.perm = self._permutation()

    def __len__(self) -> int:
        return len(self.images)

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self), generator=self.generator, device=self.device)

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 in [-1, 1] and (B,) int64 labels, on the stream's device."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(
                f"batch_size must be in 1..{len(self)} (the number of images), got {batch_size}"
            )
        if self.pos + batch_size > len(self):
            self.perm = self._permutation()
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += batch_size
        x = self.images.index_select(0, idx)  # (B, C, H, W) uint8
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # 0 -> -1 and 255 -> 1 exactly (127.5 and 2.0 are exact in float32).
        x = x.float() / 127.5 - 1
        return x, self.labels.index_select(0, idx)

    def state_dict(self) -> dict:
        """Everything needed to resume the same sequence: generator state, permutation, position."""
        return {
            "num_images": len(self),
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.cpu().clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; the images must be the same set, in the same order."""
        if state["num_images"] != len(self):
            raise ValueError(
                f"stream state is for {state['num_images']} images, this stream holds {len(self)}"
            )
        self.generator.set_state(state["generator"].cpu())
        self.perm = state["perm"].to(self.device, torch.int64)
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
