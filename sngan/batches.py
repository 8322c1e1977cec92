"""Training batches: shuffled batches of the training set, held on the device or on the host.

``BatchStream`` holds the whole set on the training device: CIFAR-10's 150 MB cost little there,
and the loop then needs no worker processes and no host-to-device copies. ``HostBatchStream``
serves a set larger than the device (ImageNet at 128 px: 58.6 GiB) from a memory-mapped image
store on the host: a background thread gathers the next batch into pinned memory while the
device works, and the batch is copied over without blocking. Both draw the very same sequence
of batches from the same generator, so a run can resume with the other one (``data.residence``),
and their state in a checkpoint is the same.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

# data.residence=auto keeps the set on the device unless it would take more than this share of
# the device's memory (the networks, their optimisers and activations need the rest).
DEVICE_SHARE = 0.25


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
        dequantize: bool = False,
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
        self.num_images = len(images)
        self.images = self._hold(images)
        self.labels = labels.to(self.device, torch.int64)
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # The dequantisation noise has a generator of its own, so the batches' order is the
        # same with it or without.
        self.noise = (
            torch.Generator(device=self.device).manual_seed(seed + 3) if dequantize else None
        )
        # Bookkeeping in Python ints so next() never waits on the device.
        self.epoch = 0
        self.pos = 0
        self.perm = self._permutation()

    def _hold(self, images: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) uint8, copied once into the device's memory (on the CPU too: a store's
        # images arrive as a memory map of its file, which this stream no longer needs).
        return images.to(self.device, copy=True)

    def __len__(self) -> int:
        return self.num_images

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self), generator=self.generator, device=self.device)

    def _advance(self, batch_size: int) -> tuple[int, int]:
        """The next batch's (epoch, position), starting a new epoch when it would not fit."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(
                f"batch_size must be in 1..{len(self)} (the number of images), got {batch_size}"
            )
        if self.pos + batch_size > len(self):
            self.perm = self._permutation()
            self.pos = 0
            self.epoch += 1
        at = (self.epoch, self.pos)
        self.pos += batch_size
        return at

    def next(
        self, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 in [-1, 1] and (B,) int64 labels, on the stream's device.

        ``shard=(rank, world_size)``: this rank's consecutive slice of the global batch (every
        rank draws the same global batch; only its slice is gathered).
        """
        _, pos = self._advance(batch_size)
        idx = _slice(self.perm[pos : pos + batch_size], shard)
        x = self._gather(idx, pos, batch_size, shard)  # (B, C, H, W) uint8, on the device
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.noise is not None:
            # Each pixel value p spread over its bin: p/128 - 1 + U(0, 1/128), in [-1, 1), as the
            # official ImageNet loader (sngan_projection's datasets/imagenet.py). The noise is
            # drawn for the whole global batch, so it does not depend on the number of ranks.
            shape = (batch_size, *x.shape[1:])
            u = torch.rand(shape, generator=self.noise, device=self.device)
            return (x.float() + _slice(u, shard)) / 128 - 1, self.labels.index_select(0, idx)
        # 0 -> -1 and 255 -> 1 exactly (127.5 and 2.0 are exact in float32).
        x = x.float() / 127.5 - 1
        return x, self.labels.index_select(0, idx)

    def _gather(
        self, idx: torch.Tensor, pos: int, batch_size: int, shard: tuple[int, int]
    ) -> torch.Tensor:
        return self.images.index_select(0, idx)

    def state_dict(self) -> dict:
        """Everything needed to resume the same sequence: generator state, permutation, position."""
        state = {
            "num_images": len(self),
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.cpu().clone(),
            "generator": self.generator.get_state(),
        }
        if self.noise is not None:
            state["noise"] = self.noise.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; the images must be the same set, in the same order."""
        if state["num_images"] != len(self):
            raise ValueError(
                f"stream state is for {state['num_images']} images, this stream holds {len(self)}"
            )
        self.generator.set_state(state["generator"].cpu())
        if self.noise is not None and "noise" in state:
            self.noise.set_state(state["noise"].cpu())
        self.perm = state["perm"].to(self.device, torch.int64)
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])


class HostBatchStream(BatchStream):
    """``BatchStream``'s batches gathered on the host from (memory-mapped) images.

    The permutation is drawn on the training device from the same generator as
    ``BatchStream``'s, and copied to the host once per epoch. While the device trains on one
    batch, a background thread gathers the next one (assumed to be of the same size and shard:
    the loop's D steps) into one of two pinned buffers; ``next`` copies it over without
    blocking, and the thread waits for that copy before it refills the buffer. A request the
    thread did not foresee is gathered at once instead, and a prefetch never crosses into a new
    epoch (that would draw the next permutation early), so the batches, and the state a
    checkpoint keeps, are exactly ``BatchStream``'s.
    """

    def _hold(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            raise ValueError(f"a host stream gathers from CPU memory, got {images.device}")
        self._pinned = self.device.type == "cuda"
        self._buffers: dict[int, list[torch.Tensor]] = {}
        self._copied: dict[int, torch.cuda.Event | None] = {}
        self._turn = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sngan-batches")
        self._ahead: tuple[tuple[int, int, int, tuple[int, int]], Future] | None = None
        return images  # not moved: every process of a node maps the same file

    def _permutation(self) -> torch.Tensor:
        perm = super()._permutation()
        self._perm_host = perm.cpu()  # one sync per epoch
        self._ahead = None
        return perm

    def _gather(
        self, idx: torch.Tensor, pos: int, batch_size: int, shard: tuple[int, int]
    ) -> torch.Tensor:
        key = (self.epoch, pos, batch_size, shard)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == key:
            buffer = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # a guess that missed: let it finish before reusing buffers
            buffer = self.gather_into(self._slot(len(idx)), pos, batch_size, shard)
        x = buffer.to(self.device, non_blocking=True)
        if self._pinned:
            event = torch.cuda.Event()
            event.record()  # the thread refills this buffer only after this copy
            self._copied[id(buffer)] = event
        # The next batch, if it is still in this epoch.
        nxt = self.pos
        if nxt + batch_size <= len(self):
            slot = self._slot(len(idx))
            future = self._pool.submit(self.gather_into, slot, nxt, batch_size, shard)
            self._ahead = ((self.epoch, nxt, batch_size, shard), future)
        return x

    def _slot(self, rows: int) -> torch.Tensor:
        """The next of the two buffers for ``rows`` images, in turn."""
        if rows not in self._buffers:
            shape = (rows, *self.images.shape[1:])
            self._buffers[rows] = [
                torch.empty(shape, dtype=torch.uint8, pin_memory=self._pinned) for _ in range(2)
            ]
        self._turn ^= 1
        return self._buffers[rows][self._turn]

    def gather_into(
        self, buffer: torch.Tensor, pos: int, batch_size: int, shard: tuple[int, int]
    ) -> torch.Tensor:
        """Gather images ``perm[pos:pos + batch_size]`` (this shard's) into ``buffer``: the
        host's work per batch, done by the background thread."""
        event = self._copied.pop(id(buffer), None)
        if event is not None:
            event.synchronize()  # the last copy out of this buffer has finished
        idx = _slice(self._perm_host[pos : pos + batch_size], shard)
        return torch.index_select(self.images, 0, idx, out=buffer)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._perm_host = self.perm.cpu()
        self._ahead = None

    def close(self) -> None:
        """Stop the background thread (it holds no state a checkpoint needs)."""
        self._pool.shutdown(wait=True)


def _slice(idx: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    rank, world_size = shard
    return idx.chunk(world_size)[rank] if world_size > 1 else idx


def choose_residence(setting: str, nbytes: int, device: torch.device) -> tuple[str, str | None]:
    """Where the set is held (``device`` or ``host``) for ``data.residence=setting``, and the
    one line that says why when ``auto`` picked the host."""
    if setting != "auto":
        return setting, None
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        if nbytes > DEVICE_SHARE * memory:
            gib = 2**30
            return "host", (
                f"sngan: the training set is {nbytes / gib:.1f} GiB, more than a quarter of "
                f"{device}'s {memory / gib:.1f} GiB: batches are gathered on the host from its "
                "memory map (data.residence=auto; data.residence=device keeps it on the GPU)"
            )
    return "device", None
