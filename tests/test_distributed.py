"""torchrun with the gloo backend on the CPU: replicas stay identical, rank 0 writes alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY
from torch import nn

from sngan.distributed import Context, replica_mismatches
from sngan.spectral_norm import spectral_norm


def test_torchrun_two_processes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("checkpoint_every")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "sngan.cli",
            *overrides,
            "checkpoint_every=100",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # replica_mismatches compared every parameter and buffer (u, v too) with rank 0's.
    assert "G, D and G_ema (u and v included) are identical on 2 ranks" in proc.stdout
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (run_dir / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_0000004.pt"]
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["iteration"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _perturbed_rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = spectral_norm(nn.Linear(4, 3))
    if rank == 1:
        layer.weight_u.add_(1e-6)
    queue.put((rank, replica_mismatches(Context(rank, 2, rank), layer)))
    dist.destroy_process_group()


def test_the_replica_check_can_fail():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_perturbed_rank, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    results = dict(queue.get(timeout=60) for _ in range(2))
    assert results[1] == ["0:weight_u"]
    assert results[0] == ["(on another rank)"]
