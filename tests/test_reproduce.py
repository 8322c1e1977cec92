"""scripts/reproduce.py: the smoke reproduction end to end, its bookkeeping, docs/results.md."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from inception_fixture import write_random_inception_weights

from sngan import checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce.py"
DOCS_RESULTS = REPO / "docs" / "results.md"
NUMBERS = re.compile(r"^\d+\.\d\d ± \d+\.\d\d / \d+\.\d\d$")  # IS ± std / FID

# The paper's Table 1: (learning rate, beta1, beta2, n_dis) of settings A-F.
TABLE_1 = {
    "dcgan_A": (1e-4, 0.5, 0.9, 5),
    "dcgan_B": (1e-4, 0.5, 0.999, 1),
    "dcgan_C": (2e-4, 0.5, 0.999, 1),
    "dcgan_D": (1e-3, 0.5, 0.9, 5),
    "dcgan_E": (1e-3, 0.5, 0.999, 5),
    "dcgan_F": (1e-3, 0.9, 0.999, 5),
}


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reproduce = load_script()


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of each body row of the first table in ``markdown``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [line for line in lines[start:end] if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def run_smoke(tmp: Path, *extra: str) -> tuple[Path, Path, str]:
    weights = write_random_inception_weights(tmp / "inception.pth")
    runs, out = tmp / "runs", tmp / "smoke.md"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--runs", str(runs), "--out", str(out)]
    cmd += ["--eval", f"metrics.inception_weights={weights}", *extra]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return runs, out, done.stdout


# The pipeline at CI's cost: CIFAR-10's ResNet and STL-10's (another sweep, another image size).
# The standard CNN's settings run in test_the_whole_smoke_reproduction below (ten runs and
# twenty evaluations of two generators: minutes on two cores, marked slow); every preset's own
# settings are tests/test_config.py's, and each architecture trains at every size in
# tests/test_resolutions.py.
SMOKE_ONLY = ("sngan_resnet", "sngan_stl10_resnet")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke reproduction of one experiment per sweep, as CI runs it."""
    before = hashlib.sha256(DOCS_RESULTS.read_bytes()).hexdigest()
    runs, out, stdout = run_smoke(tmp_path_factory.mktemp("smoke"), "--only", ",".join(SMOKE_ONLY))
    return runs, out, stdout, before


def check_table(text: str, ran: tuple[str, ...]) -> None:
    """Every row: ours for the experiments that ran, "not run" for the others, the published."""
    assert f"**{reproduce.SMOKE_BANNER}.**" in text.splitlines()[2]
    rows = table_rows(text)
    assert [r[0] for r in rows] == [row.label for row in reproduce.ROWS]
    for cells, row in zip(rows, reproduce.ROWS, strict=True):
        assert (cells[3], cells[6]) == (row.published_standard, row.published_paper)
        ours = (cells[1], cells[2], cells[4], cells[5])  # standard G, G_ema; paper G, G_ema
        if row.experiment in ran:
            assert all(NUMBERS.match(c) for c in ours), cells
        elif row.experiment:
            assert ours == ("not run",) * 4, cells
        else:
            assert ours == ("—",) * 4
    # How each number was made, per experiment.
    how = text.split("How our numbers were made:")[1]
    assert how.count("10 / 10 / 16; G_ema: recompute; amp=false, compile=false") == len(ran)


def test_smoke_writes_a_table_with_every_row(smoke):
    _, out, _, _ = smoke
    check_table(out.read_text(), SMOKE_ONLY)


def check_runs(runs: Path, ran: tuple[str, ...]) -> None:
    """Each experiment that ran in its own directory, trained with its preset's settings."""
    layout = {p.parent.parent.relative_to(runs) for p in runs.glob("*/*/checkpoints/latest.pt")}
    sweeps = {row.experiment: row.sweep for row in reproduce.ROWS if row.experiment}
    assert layout == {Path(sweeps[name]) / name for name in ran}
    for name, (lr, beta1, beta2, n_dis) in TABLE_1.items():
        if name not in ran:
            continue
        state = torch.load(runs / "dcgan" / name / "checkpoints" / "latest.pt", weights_only=True)
        optim = state["config"]["optim"]
        assert (optim["g_lr"], optim["d_lr"], optim["betas"], optim["n_dis"]) == (
            lr,
            lr,
            [beta1, beta2],
            n_dis,
        ), name
        assert state["config"]["model"]["name"] == "dcgan"
        assert state["config"]["loss"]["name"] == "nonsaturating"
        assert state["iteration"] == state["config"]["iterations"] == 2
    for name in {"sngan_stl10_resnet", "sngan_stl10_dcgan"} & set(ran):  # STL-10's 48 pixels
        state = torch.load(runs / "stl10" / name / "checkpoints" / "latest.pt", weights_only=True)
        assert state["config"]["data"]["image_size"] == 48
    for name, classes in (("sngan_resnet", 0), ("sngan_resnet_cond", 10)):
        if name not in ran:
            continue
        state = torch.load(runs / "resnet" / name / "checkpoints" / "latest.pt", weights_only=True)
        assert state["config"]["model"]["name"] == "resnet"
        assert state["config"]["model"]["num_classes"] == classes
        assert state["config"]["loss"]["name"] == "hinge"


def test_smoke_runs_each_experiment_in_its_own_directory(smoke):
    runs, _, _, _ = smoke
    check_runs(runs, SMOKE_ONLY)


def test_smoke_records_what_each_protocol_measured(smoke):
    runs, _, _, _ = smoke
    saved = json.loads((runs / "results.json").read_text())
    assert saved["smoke"] is True
    assert set(saved["results"]) == set(SMOKE_ONLY)
    for name, by_protocol in saved["results"].items():
        # The raw G (the paper's) and G_ema, each record saying which it is.
        for generator in ("G", "G_ema"):
            standard = by_protocol["standard"][generator]
            paper = by_protocol["paper"][generator]
            assert standard["generator"] == paper["generator"] == generator
            latest = runs.glob(f"*/{name}/checkpoints/latest.pt")
            assert standard["checkpoint"] == paper["checkpoint"] == str(next(latest))
            assert (standard["protocol"], paper["protocol"]) == ("standard", "paper")
            # standard: IS and FID on the same N images; paper: FID on N, IS on 10 sets of N.
            assert (standard["metrics/num_fake"], standard["metrics/num_fake_is"]) == (10, 10)
            assert (paper["metrics/num_fake"], paper["metrics/num_fake_is"]) == (2, 20)
            assert standard["metrics/num_real"] == paper["metrics/num_real"] == 16


@pytest.mark.slow
def test_the_whole_smoke_reproduction(tmp_path):
    """All ten experiments (a few minutes on two cores)."""
    runs, out, _ = run_smoke(tmp_path)
    check_table(out.read_text(), reproduce.EXPERIMENTS)
    check_runs(runs, reproduce.EXPERIMENTS)


def test_smoke_leaves_docs_results_alone(smoke):
    *_, before = smoke
    assert hashlib.sha256(DOCS_RESULTS.read_bytes()).hexdigest() == before


def test_smoke_refuses_to_write_docs_results(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--smoke numbers are meaningless: give --out <another file>" in done.stderr


def _fake_checkpoint(run_dir: Path, iteration: int, iterations: int) -> None:
    state = {k: {} for k in ("G", "D", "G_ema", "opt_g", "opt_d")}
    state |= {"iteration": iteration, "config": {"iterations": iterations}}
    checkpoint.save(state, run_dir / "checkpoints" / "latest.pt")


def test_a_second_run_skips_finished_runs_and_resumes_unfinished_ones(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _fake_checkpoint(runs / "dcgan" / "dcgan_A", 100_000, 100_000)
    _fake_checkpoint(runs / "dcgan" / "dcgan_B", 40_000, 100_000)
    commands = []
    monkeypatch.setattr(reproduce, "run", lambda cmd, dry_run=False: commands.append(cmd))
    only = list(TABLE_1)
    run_dirs = reproduce.train(runs, ["data.root=/cifar"], only, dry_run=False)

    assert run_dirs == {name: runs / "dcgan" / name for name in only}
    multirun, resume = commands
    assert multirun[1:] == [
        "-m",
        "experiment=dcgan_C,dcgan_D,dcgan_E,dcgan_F",
        f"hydra.sweep.dir={runs / 'dcgan'}",
        "hydra.sweep.subdir=${hydra.runtime.choices.experiment}",
        "data.root=/cifar",
    ]
    # A resume continues with the run's saved config: no overrides.
    assert resume[1:] == [f"resume={runs / 'dcgan' / 'dcgan_B'}"]
    assert Path(multirun[0]).name == Path(resume[0]).name == "sngan-train"


def test_docs_results_has_every_row_and_the_published_numbers():
    rows = table_rows(DOCS_RESULTS.read_text())
    assert [r[0] for r in rows] == [row.label for row in reproduce.ROWS]
    for cells, row in zip(rows, reproduce.ROWS, strict=True):
        assert (cells[3], cells[6]) == (row.published_standard, row.published_paper)
        for ours in (cells[1], cells[2], cells[4], cells[5]):
            # Real numbers, or an honest placeholder: never anything else.
            assert NUMBERS.match(ours) or ours in ("not yet run", "not run", "—"), ours


def test_published_numbers_are_the_cited_ones():
    """The numbers as printed by the sources the table cites (see docs/results.md)."""
    by_experiment = {row.experiment or row.label: row for row in reproduce.ROWS}
    resnet = by_experiment["sngan_resnet"]
    assert "8.22 ± .05 / 21.7 ± .21 [p]" in resnet.published_paper  # SN-GAN Table 2
    assert "8.31 (0.10) / 14.32 [c]" in resnet.published_standard  # pytorch-gan-collections
    assert "7.97 ± 0.06 / 16.77 ± 0.04 [m]" in resnet.published_standard  # Mimicry
    assert "7.42 ± .08 / 29.3" in by_experiment["dcgan_C"].published_paper
    hinge = next(r for r in reproduce.ROWS if r.experiment is None)
    assert hinge.published_paper == "7.58 ± .12 / 25.5 [p]"
    assert hinge.published_standard == "7.84 (0.12) / 17.81 [c]"
    stl10 = by_experiment["sngan_stl10_resnet"]
    assert stl10.published_paper == "9.10 / 40.1 [p]"  # SN-GAN Table 2, STL-10 (the issue's)
    assert stl10.published_standard == "8.04 ± 0.07 / 39.56 ± 0.10 [m]"  # Mimicry, STL-10 48
    assert "8.25 ± 0.13 / 10.84 ± 0.03 [m]" in by_experiment["sngan_resnet_cond"].published_standard
    imagenet = {e: by_experiment[e] for e in reproduce.SWEEPS["imagenet"]}
    assert "IS 21.1 ± 0.35 [p, §4.2]" in imagenet["sngan_imagenet128_concat"].published_paper
    projection = imagenet["sngan_imagenet128_projection"]
    assert "IS 29.7, intra-FID 103.1 (450K)" in projection.published_paper  # Miyato & Koyama
    assert "IS 36.8, intra-FID 92.4 (850K)" in projection.published_paper
    assert "IS 32.25 / FID 26.79 [g]" in projection.published_standard  # StudioGAN
    assert "IS 30.07 / FID 32.62 [x]" in projection.published_standard  # mmgeneration
    assert "FID 27.62 [a]" in projection.published_standard  # SAGAN's quote
    assert (
        "IS 13.05 / FID 65.74, KID 0.0663 [m]" in imagenet["sngan_imagenet128"].published_standard
    )


def test_imagenet_runs_under_torchrun_and_only_when_asked(tmp_path, monkeypatch):
    assert not set(reproduce.SWEEPS["imagenet"]) & set(reproduce.DEFAULT_EXPERIMENTS)
    commands: list[list[str]] = []
    monkeypatch.setattr(reproduce, "run", lambda cmd, dry_run=False: commands.append(cmd))
    only = ["sngan_imagenet128_projection"]
    run_dirs = reproduce.train(tmp_path, ["data.root=/imagenet"], only, False, gpus=4)
    run_dir = tmp_path / "imagenet" / "sngan_imagenet128_projection"
    assert run_dirs == {"sngan_imagenet128_projection": run_dir}
    assert commands == [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=4",
            "-m",
            "sngan.cli",
            "experiment=sngan_imagenet128_projection",
            f"hydra.run.dir={run_dir}",
            "data.root=/imagenet",
        ]
    ]
