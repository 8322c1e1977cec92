"""torchrun with the gloo backend on the CPU: replicas stay identical, rank 0 writes alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY, torchrun_two
from torch import nn

from sngan.distributed import Context, replica_mismatches
from sngan.spectral_norm import spectral_norm


def test_torchrun_two_processes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("checkpoint_every")]
    proc = torchrun_two(
        "-m",
        "sngan.cli",
        *overrides,
        "checkpoint_every=100",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # replica_mismatches compared every parameter and buffer (u, v too) with rank 0's.
    assert "G, D and G_ema (u and v included) are identical on 2 ranks" in proc.stdout
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (run_dir / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_0000004.pt"]
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["iteration"] == 4


def test_torchrun_two_nodes_on_localhost(tmp_path):
    """Two torchrun agents ("nodes", one process each) meet at a c10d rendezvous, as on two
    machines; each node is given its own run directory, as if they shared no filesystem."""
    overrides = [o for o in TINY if not o.startswith("checkpoint_every")]
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=sngan-test",
                "-m",
                "sngan.cli",
                *overrides,
                "checkpoint_every=100",
                f"hydra.run.dir={tmp_path / f'node{node}'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (out, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-3000:] + err[-3000:]
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("G, D and G_ema (u and v included) are identical on 2 ranks") == 1
    # One writer: global rank 0 (whichever node the rendezvous made it) has the checkpoints and
    # the lock; the other node's directory is gone (it held only Hydra's files of its start).
    written = [d for d in tmp_path.glob("node*") if (d / "checkpoints").exists()]
    assert len(written) == 1
    (main,) = written
    assert (main / ".sngan.lock").is_file()
    assert [p.name for p in (main / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_0000004.pt"]
    assert len(list((main / "tb").glob("events.out.tfevents.*"))) == 1
    assert [d.name for d in tmp_path.glob("node*")] == [main.name]
    assert torch.load(main / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 4


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
