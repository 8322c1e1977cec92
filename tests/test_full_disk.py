"""A full disk while sngan writes, through the commands users run.

Once for real: sngan-train's run directory on a small tmpfs that fills up (skipped, saying why,
where tmpfs cannot be mounted), then resumed once space is freed, to the weights of a run that
never stopped. Then each writer on its own, with ENOSPC injected into that one file's write
through the real atomic writer: a checkpoint, a sample grid, metrics.jsonl, the run's
config.yaml, TensorBoard's events, the metrics' weights copy, sngan-sample's grid. Every time:
one line naming the file, no temporary file left, the last checkpoint loads. The metrics' feature
cache is only a cache: sngan-eval warns in that line and still scores.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, mounted_tmpfs, resize_tmpfs
from tensorboard.summary.writer import record_writer

import sngan.build
from sngan import atomic, checkpoint
from sngan.cli import sample_main, train_main
from sngan.train import train

RUN = [*TINY, "iterations=8", "checkpoint_every=2", "threads=1"]


def sngan_train(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """sngan-train in this process: (exit status, the last line on stderr)."""
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    try:
        train_main()
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, (err.strip().splitlines() or [""])[-1]


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp-*"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(path)
    return {f"{net}.{k}": v for net in ("G", "D", "G_ema") for k, v in state[net].items()}


def test_a_full_disk_for_real_then_resume_to_the_same_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 2.5 MB: a few of the tiny run's 1 MB checkpoints, grids and events, not all of them.
    with mounted_tmpfs(tmp_path / "disk", "2500k") as disk:
        run_dir = disk / "run"
        code, line = sngan_train(monkeypatch, capsys, *RUN, f"hydra.run.dir={run_dir}")
        assert code == 1
        assert re.fullmatch(
            rf"sngan-train: error: could not write (checkpoint )?{re.escape(str(run_dir))}/\S+: "
            r"no space left on device \([0-9.]+ [kMG]?B free(, [0-9.]+ [kMG]?B needed)?\); "
            rf".*resume with: sngan-train resume={re.escape(str(run_dir))}",
            line,
        ), line
        assert temporaries(run_dir) == []
        latest = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
        assert 2 <= latest["iteration"] < 8
        # Space again: the printed command continues to the end.
        resize_tmpfs(disk, "64m")
        code, _ = sngan_train(monkeypatch, capsys, *RUN, f"resume={run_dir}")
        assert code == 0
        resumed = weights(run_dir / "checkpoints" / "latest.pt")
    code, _ = sngan_train(monkeypatch, capsys, *RUN, f"hydra.run.dir={tmp_path / 'whole'}")
    assert code == 0
    whole = weights(tmp_path / "whole" / "checkpoints" / "latest.pt")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def fail_writes_of(monkeypatch, name: str, nth: int = 1) -> list[Path]:
    """ENOSPC in the middle of the ``nth`` atomic write of a file named ``name``; returns it."""
    real, failed, seen = atomic.write_atomic, [], []

    def write_atomic(path, write, **kwargs):
        path = Path(path)
        if path.name == name:
            seen.append(path)
        if path.name == name and len(seen) == nth:
            failed.append(path)

            def write_half(f):
                f.write(b"half a file")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            return real(path, write_half, **kwargs)
        return real(path, write, **kwargs)

    monkeypatch.setattr(atomic, "write_atomic", write_atomic)
    return failed


def stub_metrics(monkeypatch) -> None:
    """Evaluations without Inception: a number made from G's weights (metrics.jsonl is written)."""

    def build_evaluator(settings, reference, name, device, weights=None, labels=None, digest=None):
        def evaluate(G, seed=0):
            total = sum(float(p.detach().double().sum()) for p in G.parameters())
            return {"metrics/fid": abs(total) % 100, "metrics/is": 1.0}

        return evaluate

    monkeypatch.setattr(sngan.build, "build_evaluator", build_evaluator)
    monkeypatch.setattr(sngan.build, "checked_weights_files", lambda settings: {})


@pytest.mark.parametrize(
    ("name", "nth"),
    [("ckpt_0000004.pt", 1), ("G_ema_0000004.png", 1), ("metrics.jsonl", 2), ("config.yaml", 1)],
)
def test_a_full_disk_at_each_writer_is_one_line(tmp_path, monkeypatch, capsys, name, nth):
    monkeypatch.chdir(tmp_path)
    stub_metrics(monkeypatch)
    failed = fail_writes_of(monkeypatch, name, nth)
    run_dir = tmp_path / "run"
    code, line = sngan_train(
        monkeypatch,
        capsys,
        *RUN,
        "metrics.enabled=true",
        "metrics.eval_every=2",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 1 and failed, line
    (path,) = failed
    free = atomic.describe_bytes(atomic.free_bytes(path.parent))
    what = "checkpoint " if name.endswith(".pt") else ""
    assert line.startswith(
        f"sngan-train: error: could not write {what}{path}: no space left on device ({free} free"
    ), line
    if name == "config.yaml":  # before training: nothing to resume
        assert line.endswith("; no checkpoint of this run was saved yet; start it again"), line
    else:
        assert line.endswith(f"resume with: sngan-train resume={run_dir}"), line
        checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert temporaries(run_dir) == []


def test_a_full_disk_in_tensorboards_events_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real, calls = record_writer.RecordWriter.write, []

    def write(self, data):
        calls.append(1)
        if len(calls) == 40:  # well into the run
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    run_dir = tmp_path / "run"
    code, line = sngan_train(monkeypatch, capsys, *RUN, f"hydra.run.dir={run_dir}")
    assert code == 1
    free = atomic.describe_bytes(atomic.free_bytes(run_dir))
    assert line.startswith(
        f"sngan-train: error: could not write {run_dir / 'tb'}: no space left on device "
        f"({free} free); "
    ), line
    assert "Traceback" not in capsys.readouterr().err


def test_a_full_disk_while_copying_the_weights_file_is_one_line(
    tmp_path, monkeypatch, capsys, inception_weights
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    real = atomic.write_atomic
    copies: list[Path] = []

    def write_atomic(path, write, **kwargs):
        if Path(path).name.startswith("inception-"):
            copies.append(Path(path))
            raise atomic.DiskFullError(Path(path), 1000, kwargs.get("needed"))
        return real(path, write, **kwargs)

    monkeypatch.setattr(atomic, "write_atomic", write_atomic)
    run_dir = tmp_path / "run"
    code, line = sngan_train(
        monkeypatch,
        capsys,
        *RUN,
        "metrics.enabled=true",
        f"metrics.inception_weights={inception_weights}",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 1
    (copy,) = copies
    assert line == (
        f"sngan-train: error: cannot write the checked copy of Inception weights file "
        f"{inception_weights} to {copy.parent}: no space left on device (1.0 kB free, "
        f"{atomic.describe_bytes(atomic.payload_bytes(torch.load(inception_weights)))} needed)"
    )
    assert not run_dir.exists()  # checked before the run directory was made


def test_a_full_disk_in_sngan_sample_is_one_line(tmp_path, monkeypatch, capsys):
    train(compose_config("iterations=2"), tmp_path / "run")
    failed = fail_writes_of(monkeypatch, "grid.jpg")
    out = tmp_path / "grid.jpg"
    with pytest.raises(SystemExit) as exit_:
        sample_main([f"checkpoint={tmp_path / 'run/checkpoints/latest.pt'}", f"out={out}"])
    assert exit_.value.code == 1 and failed == [out]
    free = atomic.describe_bytes(atomic.free_bytes(tmp_path))
    assert capsys.readouterr().err == (
        f"sngan-sample: error: could not write {out}: no space left on device ({free} free)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sngan_eval_scores_on_when_its_cache_disk_is_full(tmp_path, capsys, inception_weights):
    """The reference features are only a cache: on a full disk sngan-eval warns in one line
    naming the file and still prints its record; nothing is left on that disk."""
    from sngan.cli import eval_main

    train(compose_config("iterations=2"), tmp_path / "run")
    capsys.readouterr()  # what training printed
    with mounted_tmpfs(tmp_path / "full", "64k") as full:
        with pytest.warns(UserWarning) as caught:
            eval_main(
                [
                    f"checkpoint={tmp_path / 'run/checkpoints/latest.pt'}",
                    f"metrics.inception_weights={inception_weights}",
                    f"metrics.cache_dir={full}",
                    "metrics.num_samples=10",
                    "metrics.num_real=10",
                    "generators=[G_ema]",
                    "device=cpu",
                ]
            )
        assert list(full.iterdir()) == []
    (record,) = capsys.readouterr().out.splitlines()
    assert '"metrics/fid": ' in record
    lines = [str(w.message) for w in caught if "not cached" in str(w.message)]
    assert lines  # the features, then the statistics: each a line naming its file
    for line in lines:
        assert re.fullmatch(
            rf"reference features not cached: could not write {full}/\S+\.pt: no space left on "
            r"device \(\d+\.\d kB free, [\d.]+ [kM]B needed\); computed again next time",
            line,
        ), line


def test_ctrl_c_in_sngan_eval_and_sngan_sample_is_one_line(tmp_path, monkeypatch, capsys):
    import sngan.evaluation
    import sngan.sample
    from sngan.cli import eval_main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sngan.evaluation, "evaluate_checkpoint", interrupted)
    monkeypatch.setattr(sngan.sample, "sample", interrupted)
    for main, args, line in (
        (eval_main, ["checkpoint=x.pt"], "sngan-eval: error: interrupted; nothing was recorded"),
        (sample_main, ["checkpoint=x.pt", "out=g.png"], "sngan-sample: error: interrupted"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 130 and capsys.readouterr().err == line + "\n"
