"""Multi-process training under torchrun: process group, batch split, rank-0-only output.

``torchrun --nproc_per_node=N -m sngan.cli ...`` sets WORLD_SIZE, RANK and LOCAL_RANK; a
plain ``sngan-train`` runs as a single process and everything here is a no-op.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Context:
        """The ranks torchrun announces (WORLD_SIZE, RANK, LOCAL_RANK), before any process
        group is joined: for checks at a job's start."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's consecutive slice of a global batch (every rank draws the same batch)."""
        return t.chunk(self.world_size)[self.rank] if self.enabled else t


def launched_as_rank_zero() -> bool:
    """Whether this process is torchrun's global rank 0, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join torchrun's process group if there is one; return the context and this rank's device."""
    ctx = Context.from_env()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def main_run_dir(ctx: Context, run_dir: Path) -> Path:
    """Rank 0's run directory on every rank (Hydra names one per process, from the clock)."""
    if not ctx.enabled:
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    main = Path(shared[0])
    if main != run_dir and not (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # only Hydra's files of this rank's start
    return main


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _SyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that accepts and ignores labels, like sngan's BatchNorm2d."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SyncBatchNorm with its state.

    torch's own converter would drop the label argument of sngan's generator norms.
    """
    return _swap_batchnorm(
        module,
        lambda m: isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm),
        _SyncBatchNorm,
    )


class _BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that accepts and ignores labels, like sngan's (and _SyncBatchNorm)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def without_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm in ``module`` (in place) by a BatchNorm2d with its state.

    For a copy that one rank runs alone in train mode (standing statistics of G_ema): a
    SyncBatchNorm there would wait for the other ranks forever.
    """
    return _swap_batchnorm(module, lambda m: isinstance(m, nn.SyncBatchNorm), _BatchNorm2d)


def _swap_batchnorm(
    module: nn.Module, replace: Callable[[nn.Module], bool], new: type[nn.Module]
) -> nn.Module:
    """Every submodule for which ``replace`` holds, in place, by a ``new`` with its state."""
    for name, child in module.named_children():
        if replace(child):
            norm = new(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            norm.load_state_dict(child.state_dict())
            setattr(module, name, norm.to(next(child.buffers()).device))
        else:
            _swap_batchnorm(child, replace, new)
    return module


BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def replica_mismatches(ctx: Context, *modules: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the tensors (parameters and buffers, u and v included) that differ from rank 0.

    ``skip``: name endings not compared (G's BatchNorm statistics are per rank without
    SyncBatchNorm; checkpoints keep rank 0's).
    """
    if not ctx.enabled:
        return []
    bad = []
    for i, module in enumerate(modules):
        for name, tensor in module.state_dict().items():
            if name.endswith(skip):
                continue
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            if not torch.equal(reference, tensor):
                bad.append(f"{i}:{name}")
    flags = torch.tensor([len(bad)], device=next(iter(modules[0].state_dict().values())).device)
    dist.all_reduce(flags)
    return bad if bad or flags.item() == 0 else ["(on another rank)"]
