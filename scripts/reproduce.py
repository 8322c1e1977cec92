#!/usr/bin/env python3
"""Reproduce the SN-GAN paper's experiments and write their results table.

Four Hydra multiruns of sngan-train: the official ResNet (experiment=sngan_resnet), the
standard CNN under the paper's settings A-F (experiment=dcgan_A,...,dcgan_F), the
class-conditional ResNet (experiment=sngan_resnet_cond) and the paper's STL-10 models
(experiment=sngan_stl10_dcgan,sngan_stl10_resnet). With ``--imagenet`` (or ``--only``), also
the ImageNet 128x128 experiments (sngan_imagenet128_concat, _projection, and the unconditional
sngan_imagenet128), each under torchrun on ``--gpus`` GPUs (4, the official set-up), with
``--train data.root=<dir holding train/>``. Each run's last checkpoint is then
evaluated by sngan-eval under both FID protocols (standard and paper), the raw G (what the
paper scored: the official code keeps no weight average) next to G_ema, and the numbers go
into a Markdown table next to the published ones, with how each was measured.

    python scripts/reproduce.py                         # everything: days on one GPU
    python scripts/reproduce.py --smoke --out /tmp/smoke.md \\
        --eval metrics.inception_weights=<file>          # CPU, minutes, numbers meaningless
    python scripts/reproduce.py --table-only             # rewrite the table from results.json

Runs go to ``--runs`` (default runs/reproduce), one directory per experiment:
``<runs>/<sweep>/<experiment>``. Running the script again skips finished runs, resumes
unfinished ones (``sngan-train resume=<run>``) and evaluates again; a run that another
sngan-train is training right now is skipped (and not evaluated). ``--train`` and ``--eval``
pass extra key=value overrides to every sngan-train and sngan-eval call, e.g.
``--train data.root=/datasets`` for CIFAR-10 already on disk.

``--jobs N`` trains up to N experiments at once, each on a GPU of its own: the three sweeps
and the resumes start together, each sweep through the joblib launcher (``+sweep=gpus``, which
needs ``pip install 'sngan[sweep]'``), and a job waits until one of the first N GPUs is free
(``SNGAN_GPU_SLOTS=N``, sngan/gpu_slots.py). Progress bars are off then (they would interleave);
follow the runs in TensorBoard.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
# The STL-10 and ImageNet sweeps keep their image size in the smoke run (random images).
SMOKE_SWEEP = {
    "stl10": ("data.image_size=48", "model.d_channels=16"),
    "imagenet": ("data.image_size=128", "model.d_channels=16", "data.residence=device"),
}
# The fewest generated images each protocol accepts (IS has 10 splits; paper's IS is 10 x N).
SMOKE_EVAL = {
    "standard": ("metrics.num_samples=10", "metrics.batch_size=10", "device=cpu"),
    "paper": ("metrics.num_samples=2", "metrics.batch_size=10", "device=cpu"),
}
# Both generators of every run, the raw G first: the paper's numbers are G's.
GENERATORS = ("G", "G_ema")


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
    Row(
        "STL-10 48x48, standard CNN (`sngan_stl10_dcgan`)",
        "sngan_stl10_dcgan",
        "stl10",
        NA,
        "see [p] Table 2, STL-10 column [t]",
    ),
    Row(
        "STL-10 48x48, ResNet (`sngan_stl10_resnet`)",
        "sngan_stl10_resnet",
        "stl10",
        "8.04 ± 0.07 / 39.56 ± 0.10 [m]",
        "9.10 / 40.1 [p]",
    ),
    Row(
        "ImageNet 128x128, conditional, concat D (`sngan_imagenet128_concat`)",
        "sngan_imagenet128_concat",
        "imagenet",
        NA,
        "IS 21.1 ± 0.35 [p, §4.2] (450K)",
    ),
    Row(
        "ImageNet 128x128, conditional, projection D (`sngan_imagenet128_projection`)",
        "sngan_imagenet128_projection",
        "imagenet",
        "IS 32.25 / FID 26.79 [g]<br>IS 30.07 / FID 32.62 [x]<br>FID 27.62 [a]",
        "IS 29.7, intra-FID 103.1 (450K); IS 36.8, intra-FID 92.4 (850K) [k]",
    ),
    Row(
        "ImageNet 128x128, unconditional (`sngan_imagenet128`)",
        "sngan_imagenet128",
        "imagenet",
        "IS 13.05 / FID 65.74, KID 0.0663 [m]",
        NA,
    ),
)
EXPERIMENTS = tuple(r.experiment for r in ROWS if r.experiment)
SWEEPS = {
    sweep: [r.experiment for r in ROWS if r.sweep == sweep]
    for sweep in ("resnet", "dcgan", "cond", "stl10", "imagenet")
}
IMAGENET_CONDITIONAL = ("sngan_imagenet128_concat", "sngan_imagenet128_projection")
# ImageNet (the ILSVRC2012 tree, four GPUs for weeks) runs only when asked: --imagenet or --only.
DEFAULT_EXPERIMENTS = tuple(e for e in EXPERIMENTS if e not in SWEEPS["imagenet"])

SOURCES = """\
Sources of the published numbers, each with the protocol it was measured under:

- **[p]** Miyato, Kataoka, Koyama, Yoshida: *Spectral Normalization for Generative Adversarial
  Networks*, ICLR 2018, Table 2 (CIFAR-10 and STL-10, unsupervised). Protocol (appendix B.1): IS
  over 50,000 generated images in 10 splits; FID between 5,000 generated images and 10,000 real
  ones. Settings A-F (their Table 1) are compared in their Fig. 1 as bar charts; no exact values
  are quoted here. The numbers are the raw generator's (the official code keeps no weight
  average), trained and evaluated in fp32.
- **[t]** The standard CNN's STL-10 numbers of Table 2 could not be checked against the paper in
  this repository's sessions (no copy of it was at hand), so none is quoted; the ResNet's
  (IS 9.10, FID 40.1) is. Which D produced the standard CNN's numbers: most likely the official
  chainer-gan-lib's `SNDCGANDiscriminator` (`model.d_widths=chainer`: conv widths 64, 128, 128,
  256, 256, 512, 512), not Table 3 as printed (64, 64, 128, 128, 256, 256, 512). The paper's code
  link, pfnet-research/sngan_projection, holds only the ResNets; the authors' standard CNN is in
  pfnet-research/chainer-gan-lib, whose README lists SN-DCGAN at Inception 7.5 against 7.41 in its
  "Inception (Official)" column and whose example.sh trains it as `--architecture sndcgan`
  (common/net.py's `SNDCGANDiscriminator`, ch = 512); no D in that file has Table 3's printed
  widths, which look off by one layer. The presets keep Table 3 (`d_widths=paper`).
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
- **[m]** kwotsin/mimicry, README "Baselines", CIFAR-10 and STL-10 (48x48, the unlabeled split):
  IS on 50k samples in 10 splits, FID on 50k real (train split; STL-10: unlabeled) and 50k
  generated images. Training: ResNet, batch 64, Adam 2e-4 (0.0, 0.9), linear decay, n_dis 5, 100k
  iterations.
- **[m']** kwotsin/mimicry, README "Reproducibility": FID with the paper's sample sizes, 10k real
  and 5k generated images.
- ImageNet 128x128 (ILSVRC2012, 1,000 classes), the official code's set-up
  (pfnet-research/sngan_projection, configs/sn_projection.yml and sn_concat.yml): hinge loss,
  Adam 2e-4 (0, 0.9), n_dis 5, 16 real + 16 generated images per D step and 32 per G step on
  each of 4 GPUs (global 64 / 128), 450,000 generator iterations, linear decay from 400,000, no
  weight average. [p, §4.2] is the concat D (IS only, no FID). [k]'s intra-FID: per class,
  5,000 generated images against that class's training images, averaged over the 1,000 classes.
  [m] for ImageNet: mimicry's unconditional SNGAN 128 (batch 64, n_dis 5, 450K, no decay), 50k
  samples against the training set.
- **[g]** POSTECH-CVLab/PyTorch-StudioGAN, ImageNet SNGAN: batch 256, 2 D steps, its own D
  (hidden width = output width: 39,443,137 parameters, not the official 30,041,857); FID against
  50,000 validation images.
- **[x]** open-mmlab/mmgeneration, SNGAN-projection ImageNet 128, its own schedule.
- **[a]** Zhang et al., *Self-Attention GANs* (ICML 2019), quoting SNGAN-projection at FID 27.62.

Our presets follow the paper: 50k generator iterations for the CIFAR-10 ResNets, 100k for the
standard CNN; where the paper gives no STL-10 schedule, sngan_stl10_resnet follows [m] (100k,
linear decay). The reproductions [c] and [m] train their ResNets for 100k iterations.
"""

PROTOCOL_NOTES = """\
Our columns (`sngan-eval generators=[G,G_ema]`, torch-fidelity's port of the TensorFlow Inception
network, the run's last checkpoint; the metrics themselves always run in fp32):

- **standard**: IS over 50,000 generated images in 10 splits; FID between those 50,000 images
  and the whole training set (CIFAR-10: 50,000; STL-10: the 100,000 unlabeled). Compare with [c]
  and [m].
- **paper**: IS over 10 sets of 5,000 generated images; FID between 5,000 generated images and
  the first 10,000 training images. Compare with [p] and [m'].
- **G** is the raw generator, what the paper reports; **G_ema** its weight average, sampled with
  BatchNorm statistics recomputed from its own samples unless the table below says `copy`.

FID falls as the number of images grows, so the two protocols give different numbers for the
same generator: compare numbers only within a column. Cells read IS ± std / FID. How each number
was made (sample counts, BatchNorm statistics, the run's training precision) is in the second
table.
"""


def console_script(name: str) -> str:
    """The console script next to this Python (a venv's bin/), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def run(cmd: list[str], dry_run: bool = False) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run:
        return
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(
            f"reproduce.py: command failed (exit {done.returncode}): {shlex.join(cmd)}"
        )


def imagenet_command(gpus: int, args: list[str]) -> list[str]:
    """sngan-train under torchrun on ``gpus`` GPUs of this node (a plain one for 1)."""
    if gpus <= 1:
        return [console_script("sngan-train"), *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    return [*torchrun, "-m", "sngan.cli", *args]


def run_together(cmds: list[list[str]], env: dict[str, str], dry_run: bool = False) -> None:
    """Start every command at once (with ``env`` added), wait for all; any failure is fatal."""
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    for cmd in cmds:
        print(f"+ {shown} {shlex.join(cmd)} &", flush=True)
    if dry_run:
        return
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}) for cmd in cmds]
    codes = [p.wait() for p in procs]
    failed = [(code, cmd) for code, cmd in zip(codes, cmds, strict=True) if code != 0]
    if failed:
        raise SystemExit(
            "reproduce.py: "
            + "; ".join(f"command failed (exit {code}): {shlex.join(cmd)}" for code, cmd in failed)
        )


def gpu_slots(jobs: int) -> int:
    """How many GPU slots ``--jobs`` gives the runs: ``jobs``, at most the GPUs there are."""
    import torch

    gpus = torch.cuda.device_count()
    return min(jobs, gpus) if gpus else jobs


def run_state(run_dir: Path) -> str:
    """'done', 'partial' (a checkpoint short of the last iteration) or 'new'."""
    latest = run_dir / "checkpoints" / "latest.pt"
    if not latest.is_file():
        return "new"
    from sngan import checkpoint

    state = checkpoint.load(latest)
    return "done" if state["iteration"] >= state["config"]["iterations"] else "partial"


def in_use(run_dir: Path) -> bool:
    """Whether another sngan-train holds ``run_dir`` now; if so, say who and that it is skipped."""
    from sngan.runlock import RunLockedError, holder

    record = holder(run_dir)
    if record is not None:
        print(f"reproduce.py: skipped {run_dir.name}: {RunLockedError(run_dir, record)}")
    return record is not None


def train(
    runs: Path,
    overrides: list[str],
    only: list[str],
    dry_run: bool,
    jobs: int | None = None,
    sweep_overrides: dict[str, tuple[str, ...]] | None = None,
    gpus: int = 4,
) -> dict[str, Path]:
    """Train every experiment in ``only`` that is not finished yet; {experiment: run directory}.

    ``jobs``: train up to that many at once, one GPU each (else one after another).
    ``sweep_overrides``: more overrides for the new runs of one sweep (--smoke's STL-10 size).
    ``gpus``: each ImageNet run's GPUs, one torchrun process each (1: a plain sngan-train).
    """
    run_dirs, cmds = {}, []
    # In parallel: the sweeps go through the joblib launcher, one GPU slot per job; a resume
    # claims a slot too (unless the overrides name a device, e.g. --smoke's device=cpu).
    devices = [o for o in overrides if o.startswith("device=")] or ["device=cuda:${gpu_slot:}"]
    together = ["progress=false", *devices[-1:]] if jobs else []
    for sweep, all_experiments in SWEEPS.items():
        experiments = [e for e in all_experiments if e in only]
        sweep_dir = runs / sweep
        experiments = [e for e in experiments if not in_use(sweep_dir / e)]
        if not experiments:
            continue
        states = {e: run_state(sweep_dir / e) for e in experiments}
        new = [e for e in experiments if states[e] == "new"]
        if sweep == "imagenet":  # one run at a time, on all its GPUs
            more = [*overrides, *(sweep_overrides or {}).get(sweep, ())]
            for e in experiments:
                run_dirs[e] = sweep_dir / e
                if states[e] == "done":
                    print(f"{sweep_dir / e}: finished, not trained again")
                    continue
                args = [f"resume={sweep_dir / e}"] if states[e] == "partial" else []
                args = args or [f"experiment={e}", f"hydra.run.dir={sweep_dir / e}", *more]
                run(imagenet_command(gpus, args), dry_run)
            continue
        if new:
            # One multirun per sweep; each job writes to <sweep_dir>/<experiment>.
            launcher = (
                ["+sweep=gpus", f"hydra.launcher.n_jobs={min(jobs, len(new))}"] if jobs else []
            )
            cmds.append(
                [
                    console_script("sngan-train"),
                    "-m",
                    *launcher,
                    "experiment=" + ",".join(new),
                    f"hydra.sweep.dir={sweep_dir}",
                    "hydra.sweep.subdir=${hydra.runtime.choices.experiment}",
                    *overrides,
                    *(sweep_overrides or {}).get(sweep, ()),
                    *together[:1],
                ]
            )
        for e in experiments:
            if states[e] == "partial":
                cmds.append([console_script("sngan-train"), f"resume={sweep_dir / e}", *together])
            elif states[e] == "done":
                print(f"{sweep_dir / e}: finished, not trained again")
            run_dirs[e] = sweep_dir / e
    if jobs:
        run_together(cmds, {"SNGAN_GPU_SLOTS": str(gpu_slots(jobs))}, dry_run)
    else:
        for cmd in cmds:
            run(cmd, dry_run)
    return run_dirs


def evaluate(
    run_dirs: dict[str, Path], overrides: dict[str, list[str]], dry_run: bool
) -> dict[str, dict[str, dict[str, Any]]]:
    """{experiment: {protocol: {generator: sngan-eval's record}}} for each run's last
    checkpoint.

    What ``sngan-eval <arguments>`` does, called in this process: the twenty evaluations then
    pay for one torch import, not twenty.
    """
    from sngan import checkpoint
    from sngan.cli import parse_args
    from sngan.config import ConfigError, EvalConfig
    from sngan.evaluation import evaluate_checkpoint

    results: dict[str, dict[str, Any]] = {}
    for experiment, run_dir in run_dirs.items():
        for protocol in PROTOCOLS:
            how = [f"metrics.protocol={protocol}"]
            if experiment in SWEEPS["imagenet"]:
                # ImageNet's first 10,000 images are its first few classes: the paper column is
                # IS and intra-FID (the projection paper's), both over the standard protocol's
                # samples; the unconditional model has none.
                if protocol == "paper" and experiment not in IMAGENET_CONDITIONAL:
                    continue
                how = ["metrics.protocol=standard"]
                how += ["metrics.intra_fid=true"] if protocol == "paper" else []
            arguments = [
                f"checkpoint={run_dir / 'checkpoints' / 'latest.pt'}",
                *how,
                f"generators=[{','.join(GENERATORS)}]",
                *overrides[protocol],
            ]
            print("+ " + shlex.join(["sngan-eval", *arguments]), flush=True)
            if dry_run:
                continue
            try:
                records = evaluate_checkpoint(parse_args("sngan-eval", EvalConfig, arguments))
            except (ConfigError, checkpoint.CheckpointError, OSError, ValueError) as e:
                raise SystemExit(f"reproduce.py: sngan-eval {shlex.join(arguments)}: {e}") from e
            for record in records:
                print(json.dumps(record), flush=True)
            results.setdefault(experiment, {})[protocol] = {r["generator"]: r for r in records}
    return results


def _ours(record: dict[str, Any] | None, pending: str) -> str:
    if record is None:
        return pending
    if "metrics/intra_fid" in record:
        return f"IS {record['metrics/is']:.2f}, intra-FID {record['metrics/intra_fid']:.2f}"
    return (
        f"{record['metrics/is']:.2f} ± {record['metrics/is_std']:.2f} / {record['metrics/fid']:.2f}"
    )


def _how(records: dict[str, dict[str, Any]]) -> str:
    """One cell: the sample counts, G_ema's BatchNorm statistics, the training precision."""
    any_record = next(iter(records.values()))
    counts = (
        f"{int(any_record['metrics/num_fake']):,} / {int(any_record['metrics/num_fake_is']):,} / "
        f"{int(any_record['metrics/num_real']):,}"
    )
    ema = records.get("G_ema", {}).get("bn_stats", "—")
    precision = ", ".join(f"{key}={any_record.get(key)}".lower() for key in ("amp", "compile"))
    return f"{counts}; G_ema: {ema}; {precision}"


def _pending(meta: dict[str, str] | None) -> str:
    # After a run, a missing cell is an experiment that run left out (--only).
    return "not run" if meta else "not yet run"


def table(results: dict[str, dict[str, Any]], pending: str) -> str:
    """The results table: one row per entry of ROWS, ours (G and G_ema) next to the published
    numbers of each protocol."""
    lines = [
        "| Experiment (preset) | Ours, standard: G | Ours, standard: G_ema "
        "| Published, 50k protocols | Ours, paper: G | Ours, paper: G_ema "
        "| Published, paper protocol |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        got = results.get(row.experiment, {}) if row.experiment else {}
        mine = pending if row.experiment else "—"
        cells = {p: [_ours(got.get(p, {}).get(g), mine) for g in GENERATORS] for p in PROTOCOLS}
        lines.append(
            f"| {row.label} | {' | '.join(cells['standard'])} | {row.published_standard} "
            f"| {' | '.join(cells['paper'])} | {row.published_paper} |"
        )
    return "\n".join(lines) + "\n"


def provenance_table(results: dict[str, dict[str, Any]]) -> str:
    """How each of our numbers was made, per experiment and protocol."""
    lines = [
        "| Experiment | standard: generated (FID / IS) / real; G_ema's BatchNorm statistics; "
        "training precision | paper: the same |",
        "|---|---|---|",
    ]
    for row in ROWS:
        got = results.get(row.experiment) if row.experiment else None
        if got:
            paper = _how(got["paper"]) if "paper" in got else "—"
            lines.append(f"| `{row.experiment}` | {_how(got['standard'])} | {paper} |")
    return "\n".join(lines) + "\n"


def render(
    results: dict[str, dict[str, Any]], *, smoke: bool = False, meta: dict[str, str] | None = None
) -> str:
    """docs/results.md: our numbers (or what is still to run) next to the published ones."""
    lines = ["# Results: SN-GAN on CIFAR-10, STL-10 and ImageNet", ""]
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
            "Our columns are not filled in yet: the reproduction trains ten GANs for 50k-100k",
            "generator iterations each, which needs a GPU. `python scripts/reproduce.py` trains",
            "and evaluates them and rewrites this file (and the table in the README).",
            "",
        ]
    lines += [table(results, _pending(meta)), PROTOCOL_NOTES]
    if results:
        lines += ["How our numbers were made:", "", provenance_table(results)]
    lines += [SOURCES]
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
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="train up to N experiments at once, one GPU each"
    )
    parser.add_argument("--imagenet", action="store_true", help="also the ImageNet experiments")
    parser.add_argument(
        "--gpus", type=int, default=4, help="GPUs (torchrun) of each ImageNet run (default 4)"
    )
    parser.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    default = EXPERIMENTS if args.imagenet else DEFAULT_EXPERIMENTS
    only = args.only.split(",") if args.only else list(default)
    unknown = sorted(set(only) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"--only: unknown experiments {unknown}; choose from {list(EXPERIMENTS)}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs: must be at least 1, got {args.jobs}")
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
        sweep_overrides = SMOKE_SWEEP if args.smoke else {}
        run_dirs = train(
            runs, train_overrides, only, args.dry_run, args.jobs, sweep_overrides, args.gpus
        )
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
