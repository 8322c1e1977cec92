#!/usr/bin/env python3
"""Reproduce the SN-GAN paper's CIFAR-10 experiments and write their results table.

Three Hydra multiruns of sngan-train: the official ResNet (experiment=sngan_resnet), the
standard CNN under the paper's settings A-F (experiment=dcgan_A,...,dcgan_F) and the
class-conditional ResNet (experiment=sngan_resnet_cond). Each run's last checkpoint is then
evaluated by sngan-eval under both FID protocols (standard and paper), and the numbers go
into a Markdown table next to the published ones, each with the protocol it was measured
under.

    python scripts/reproduce.py                         # everything: days on one GPU
    python scripts/reproduce.py --smoke --out /tmp/smoke.md \\
        --eval metrics.inception_weights=<file>          # CPU, minutes, numbers meaningless
    python scripts/reproduce.py --table-only             # rewrite the table from results.json

Runs go to ``--runs`` (default runs/reproduce), one directory per experiment:
``<runs>/<sweep>/<experiment>``. Running the script again skips finished runs, resumes
unfinished ones (``sngan-train resume=<run>``) and evaluates again. ``--train`` and ``--eval``
pass extra key=value overrides to every sngan-train and sngan-eval call, e.g.
``--train data.root=/datasets`` for CIFAR-10 already on disk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("standard", "paper")
SMOKE_BANNER = "SMOKE RUN — numbers are meaningless"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"

# Tiny networks on random images, two iterations each: the pipeline, not the numbers.
SMOKE_TRAIN = (
    "data=synthetic",
    "data.num_images=16",
    "model.z_dim=16",
    "model.g_channels=32",
    "model.d_channels=8",
    "iterations=2",
    "optim.d_batch_size=8",
    "optim.g_batch_size=8",
    "optim.ema_start=1",
    "metrics.enabled=false",
    "log_every=1",
    "log_exact_every=2",
    "sample_every=2",
    "checkpoint_every=2",
    "progress=false",
    "device=cpu",
)
# The fewest generated images each protocol accepts (IS has 10 splits; paper's IS is 10 x N).
SMOKE_EVAL = {
    "standard": ("metrics.num_samples=10", "metrics.batch_size=10", "device=cpu"),
    "paper": ("metrics.num_samples=2", "metrics.batch_size=10", "device=cpu"),
}


@dataclass(frozen=True)
class Row:
    """One line of the table: an experiment we run (or only a published reference)."""

    label: str
    experiment: str | None  # configs/experiment/<name>.yaml; None: published numbers only
    sweep: str | None  # the multirun it belongs to (its directory under --runs)
    published_standard: str  # published IS / FID under a 50k-sample protocol
    published_paper: str  # published IS / FID under the paper's 5k-vs-10k protocol


NA = "n/a"
FIG1 = "see paper Fig. 1"
ROWS = (
    Row(
        "ResNet, hinge loss: the official SN-GAN (`sngan_resnet`)",
        "sngan_resnet",
        "resnet",
        "8.31 (0.10) / 14.32 [c]<br>7.97 ± 0.06 / 16.77 ± 0.04 [m]",
        "8.22 ± .05 / 21.7 ± .21 [p]<br>FID 23.90 ± 0.20 [m']",
    ),
    Row("Standard CNN, setting A (`dcgan_A`)", "dcgan_A", "dcgan", NA, FIG1 + " [p]"),
    Row("Standard CNN, setting B (`dcgan_B`)", "dcgan_B", "dcgan", NA, FIG1 + " [p]"),
    Row(
        "Standard CNN, setting C (`dcgan_C` = `sngan_dcgan`)",
        "dcgan_C",
        "dcgan",
        NA,
        "7.42 ± .08 / 29.3 [p, Table 2 'SN-GANs'] [s]",
    ),
    Row("Standard CNN, setting D (`dcgan_D`)", "dcgan_D", "dcgan", NA, FIG1 + " [p]"),
    Row("Standard CNN, setting E (`dcgan_E`)", "dcgan_E", "dcgan", NA, FIG1 + " [p]"),
    Row("Standard CNN, setting F (`dcgan_F`)", "dcgan_F", "dcgan", NA, FIG1 + " [p]"),
    Row(
        "Standard CNN, hinge loss (`sngan_dcgan loss=hinge`; not run by this script)",
        None,
        None,
        "7.84 (0.12) / 17.81 [c]",
        "7.58 ± .12 / 25.5 [p]",
    ),
    Row(
        "Conditional ResNet, projection D (`sngan_resnet_cond`)",
        "sngan_resnet_cond",
        "cond",
        "8.25 ± 0.13 / 10.84 ± 0.03 [m]",
        "FID 17.5 [k] (as quoted by [m'])<br>FID 17.84 ± 0.17 [m']",
    ),
)
EXPERIMENTS = tuple(r.experiment for r in ROWS if r.experiment)
SWEEPS = {
    sweep: [r.experiment for r in ROWS if r.sweep == sweep] for sweep in ("resnet", "dcgan", "cond")
}

SOURCES = """\
Sources of the published numbers, each with the protocol it was measured under:

- **[p]** Miyato, Kataoka, Koyama, Yoshida: *Spectral Normalization for Generative Adversarial
  Networks*, ICLR 2018, Table 2 (CIFAR-10, unsupervised). Protocol (appendix B.1): IS over 50,000
  generated images in 10 splits; FID between 5,000 generated images and 10,000 real ones. Settings
  A-F (their Table 1) are compared in their Fig. 1 as bar charts; no exact values are quoted here.
- **[s]** Shown on this row because the preset built for Table 2's standard-CNN row,
  configs/experiment/sngan_dcgan.yaml, uses setting C (non-saturating loss, 100k iterations), so
  `dcgan_C` and `sngan_dcgan` are the same run.
- **[k]** Miyato & Koyama: *cGANs with Projection Discriminator*, ICLR 2018. Their CIFAR-10 FID is
  given here only as Mimicry quotes it (17.5, 10k real / 5k generated); not checked against the
  paper.
- **[c]** w86763777/pytorch-gan-collections, README "Results" (2022-01-10 change log): "The FID is
  calculated by 50k generated images and CIFAR10 train set" with pytorch_gan_metrics; IS on the
  generated images, by the same tool (their configs set `--num_images=50000`); IS std in
  parentheses. Training: hinge loss, 100k
  generator steps; CNN: batch 128, n_dis 1; ResNet: batch 64, n_dis 5.
- **[m]** kwotsin/mimicry, README "Baselines", CIFAR-10: IS on 50k samples in 10 splits, FID on 50k
  real (train split) and 50k generated images. Training: ResNet, batch 64, Adam 2e-4 (0.0, 0.9),
  linear decay, n_dis 5, 100k iterations.
- **[m']** kwotsin/mimicry, README "Reproducibility": FID with the paper's sample sizes, 10k real
  and 5k generated images.

Our presets follow the paper: 50k generator iterations for the ResNets, 100k for the standard
CNN. The reproductions [c] and [m] train their ResNets for 100k iterations.
"""

PROTOCOL_NOTES = """\
Our columns (`sngan-eval`, torch-fidelity's port of the TensorFlow Inception network, G_ema of the
run's last checkpoint):

- **standard**: IS over 50,000 generated images in 10 splits; FID between those 50,000 images
  and the 50,000 CIFAR-10 training images. Compare with [c] and [m].
- **paper**: IS over 10 sets of 5,000 generated images; FID between 5,000 generated images and
  the first 10,000 training images. Compare with [p] and [m'].

FID falls as the number of images grows, so the two protocols give different numbers for the
same generator: compare numbers only within a column. Cells read IS ± std / FID.
"""


def console_script(name: str) -> str:
    """The console script next to this Python (a venv's bin/), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def run(cmd: list[str], dry_run: bool = False, capture: bool = False) -> str:
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run:
        return ""
    done = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"reproduce.py: command failed (exit {done.returncode}): {shlex.join(cmd)}"
        )
    return done.stdout or ""


def run_state(run_dir: Path) -> str:
    """'done', 'partial' (a checkpoint short of the last iteration) or 'new'."""
    latest = run_dir / "checkpoints" / "latest.pt"
    if not latest.is_file():
        return "new"
    from sngan import checkpoint

    state = checkpoint.load(latest)
    return "done" if state["iteration"] >= state["config"]["iterations"] else "partial"


def train(runs: Path, overrides: list[str], only: list[str], dry_run: bool) -> dict[str, Path]:
    """Train every experiment in ``only`` that is not finished yet; {experiment: run directory}."""
    run_dirs = {}
    for sweep, all_experiments in SWEEPS.items():
        experiments = [e for e in all_experiments if e in only]
        if not experiments:
            continue
        sweep_dir = runs / sweep
        states = {e: run_state(sweep_dir / e) for e in experiments}
        new = [e for e in experiments if states[e] == "new"]
        if new:
            # One multirun per sweep; each job writes to <sweep_dir>/<experiment>.
            run(
                [
                    console_script("sngan-train"),
                    "-m",
                    "experiment=" + ",".join(new),
                    f"hydra.sweep.dir={sweep_dir}",
                    "hydra.sweep.subdir=${hydra.runtime.choices.experiment}",
                    *overrides,
                ],
                dry_run,
            )
        for e in experiments:
            if states[e] == "partial":
                run([console_script("sngan-train"), f"resume={sweep_dir / e}"], dry_run)
            elif states[e] == "done":
                print(f"{sweep_dir / e}: finished, not trained again")
            run_dirs[e] = sweep_dir / e
    return run_dirs


def parse_eval_output(stdout: str) -> dict[str, Any]:
    """The JSON record sngan-eval prints as its last line."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"sngan-eval printed no JSON record:\n{stdout}")


def evaluate(
    run_dirs: dict[str, Path], overrides: dict[str, list[str]], dry_run: bool
) -> dict[str, dict[str, Any]]:
    """{experiment: {protocol: sngan-eval's record}} for the last checkpoint of each run."""
    results: dict[str, dict[str, Any]] = {}
    for experiment, run_dir in run_dirs.items():
        for protocol in PROTOCOLS:
            cmd = [
                console_script("sngan-eval"),
                f"checkpoint={run_dir / 'checkpoints' / 'latest.pt'}",
                f"metrics.protocol={protocol}",
                *overrides[protocol],
            ]
            stdout = run(cmd, dry_run, capture=True)
            if not dry_run:
                record = parse_eval_output(stdout)
                print(json.dumps(record), flush=True)
                results.setdefault(experiment, {})[protocol] = record
    return results


def _ours(record: dict[str, Any] | None, pending: str) -> str:
    if record is None:
        return pending
    return (
        f"{record['metrics/is']:.2f} ± {record['metrics/is_std']:.2f} / {record['metrics/fid']:.2f}"
    )


def _pending(meta: dict[str, str] | None) -> str:
    # After a run, a missing cell is an experiment that run left out (--only).
    return "not run" if meta else "not yet run"


def table(results: dict[str, dict[str, Any]], pending: str) -> str:
    """The results table: one row per entry of ROWS, ours next to the published numbers."""
    lines = [
        "| Experiment (preset) | Ours, standard | Published, 50k protocols "
        "| Ours, paper | Published, paper protocol |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        got = results.get(row.experiment, {}) if row.experiment else {}
        mine = pending if row.experiment else "—"
        lines.append(
            f"| {row.label} | {_ours(got.get('standard'), mine)} | {row.published_standard} "
            f"| {_ours(got.get('paper'), mine)} | {row.published_paper} |"
        )
    return "\n".join(lines) + "\n"


def render(
    results: dict[str, dict[str, Any]], *, smoke: bool = False, meta: dict[str, str] | None = None
) -> str:
    """docs/results.md: our numbers (or what is still to run) next to the published ones."""
    lines = ["# Results: SN-GAN on CIFAR-10", ""]
    if smoke:
        lines += [
            f"> **{SMOKE_BANNER}.** Tiny networks trained for two iterations on random images",
            "> and scored on a handful of samples (possibly with random Inception weights): this",
            "> checks the reproduction pipeline, not the method.",
            "",
        ]
    if meta:
        lines += ["Produced by " + ", ".join(f"{k}: {v}" for k, v in meta.items()) + ".", ""]
    else:
        lines += [
            "Our columns are not filled in yet: the reproduction trains eight GANs for 50k-100k",
            "generator iterations each, which needs a GPU. `python scripts/reproduce.py` trains",
            "and evaluates them and rewrites this file (and the table in the README).",
            "",
        ]
    lines += [table(results, _pending(meta)), PROTOCOL_NOTES, SOURCES]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace the README's results table (between its results markers) by ``block``."""
    text = readme.read_text()
    head, sep, rest = text.partition(README_START)
    _, sep2, tail = rest.partition(README_END)
    if not (sep and sep2):
        raise SystemExit(f"reproduce.py: {readme} has no {README_START} ... {README_END} block")
    readme.write_text(f"{head}{README_START}\n{block}{README_END}{tail}")


def metadata(argv: list[str], runs: Path) -> dict[str, str]:
    import torch

    import sngan

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = ""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {
        "command": "`" + shlex.join(["python", "scripts/reproduce.py", *argv]) + "`",
        "date": datetime.date.today().isoformat(),
        "sngan": sngan.__version__ + (f" (git {commit})" if commit else ""),
        "torch": torch.__version__,
        "device": device,
        "runs": f"`{runs}`",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run; numbers meaningless")
    parser.add_argument("--out", type=Path, help="the table (default: docs/results.md)")
    parser.add_argument("--runs", type=Path, help="run directories (default: runs/reproduce)")
    parser.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE", help="sngan-train override"
    )
    parser.add_argument(
        "--eval", action="append", default=[], metavar="KEY=VALUE", help="sngan-eval override"
    )
    parser.add_argument(
        "--only", metavar="EXP,EXP", help=f"run only these of {', '.join(EXPERIMENTS)}"
    )
    parser.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(EXPERIMENTS)
    unknown = sorted(set(only) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"--only: unknown experiments {unknown}; choose from {list(EXPERIMENTS)}")
    runs = args.runs or Path("runs") / ("reproduce-smoke" if args.smoke else "reproduce")
    out = args.out or REPO / "docs" / "results.md"
    if args.smoke and out.resolve() == (REPO / "docs" / "results.md").resolve():
        parser.error("--smoke numbers are meaningless: give --out <another file>")
    results_file = runs / "results.json"

    if args.table_only:
        saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
        results, smoke, meta = (
            saved.get("results", {}),
            saved.get("smoke", False),
            saved.get("meta"),
        )
    else:
        train_overrides = [*(SMOKE_TRAIN if args.smoke else ()), *args.train]
        eval_overrides = {
            p: [*(SMOKE_EVAL[p] if args.smoke else ()), *args.eval] for p in PROTOCOLS
        }
        if args.smoke and not any(o.startswith("metrics.cache_dir=") for o in args.eval):
            for p in PROTOCOLS:
                eval_overrides[p].append(f"metrics.cache_dir={runs / 'fidelity_cache'}")
        run_dirs = train(runs, train_overrides, only, args.dry_run)
        results = evaluate(run_dirs, eval_overrides, args.dry_run)
        if args.dry_run:
            return 0
        smoke, meta = args.smoke, metadata(argv, runs)
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(
            json.dumps({"smoke": smoke, "meta": meta, "results": results}, indent=2) + "\n"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results, smoke=smoke, meta=meta))
    print(f"reproduce.py: wrote {out}")
    if not smoke and out.resolve() == (REPO / "docs" / "results.md").resolve():
        update_readme(REPO / "README.md", table(results, _pending(meta)))
        print("reproduce.py: updated the results table in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
