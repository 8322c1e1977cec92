"""Bad input: each fails at once with one line, ``sngan-train: error: <message>``, exit status 1.

An unknown key, a wrong type and an unknown group option go through the real console script in
subprocesses; everything else through ``train_main`` in-process, which runs the same Hydra
application (a subprocess costs seconds of imports on a 2-core CI machine). Each test also checks
that no training time was spent.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from torchvision.datasets.folder import IMG_EXTENSIONS

from sngan import __version__, checkpoint
from sngan.cli import eval_main, train_main
from sngan.extractor_weights import INCEPTION_FILE, INCEPTION_URL
from sngan.train import train

BIN = Path(sys.executable).parent
SECTIONS = "model, loss, data, optim, metrics"
TOP_KEYS = (
    "iterations, seed, device, amp, compile, compile_mode, channels_last, fused_adam, "
    "joint_d_forward, threads, sync_bn, log_every, log_exact_every, sample_every, "
    "checkpoint_every, keep_checkpoints, nan_policy, progress, resume"
)
OPTIM_KEYS = (
    "n_dis, g_lr, d_lr, betas, d_batch_size, g_batch_size, lr_decay, lr_decay_start, ema_decay, "
    "ema_start, ema_bn_stats"
)

# Overrides that Hydra itself rejects or lets through unchecked, and sngan's one-line message.
HYDRA_ERRORS = {
    "foo=1": f"unknown config key 'foo': the config has the sections {SECTIONS} and the keys "
    f"{TOP_KEYS} (sngan-train --help shows them all)",
    "+foo=1": f"unknown config key 'foo': the config has the sections {SECTIONS} and the keys "
    f"{TOP_KEYS} (sngan-train --help shows them all)",
    "optim.ndis=1": f"unknown config key 'optim.ndis' (did you mean optim.n_dis?): optim has "
    f"{OPTIM_KEYS}",
    "+optim.foo=1": f"unknown config key 'optim.foo': optim has {OPTIM_KEYS}",
    "optim.n_dis=abc": "optim.n_dis=abc is not valid: must be an integer",
    "iterations=1.5": "iterations=1.5 is not valid: must be an integer",
    "optim.betas=0.5": "optim.betas=0.5 is not valid: must be a list of 2 numbers, e.g. [0.0, 0.9]",
    "optim=adam": "optim=adam is not valid: optim is a section of the config, not a value; set "
    "its keys, e.g. optim.n_dis=...",
    "model=resnt": "model=resnt is not valid: choose one of dcgan, resnet",
    "loss=hinj": "loss=hinj is not valid: choose one of hinge, nonsaturating, wasserstein",
    "optim.betas=[0.1": "cannot parse the override 'optim.betas=[0.1': no viable alternative at "
    "input '[0.1'",
}


# The ones also run through the console script.
IN_SUBPROCESS = ("foo=1", "optim.n_dis=abc", "model=resnt")


@pytest.fixture(scope="module")
def console_script(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """sngan-train with each IN_SUBPROCESS override, run side by side (imports and a parse)."""
    tmp = tmp_path_factory.mktemp("hydra_errors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for i, override in enumerate(IN_SUBPROCESS):
        run_dir = tmp / f"run{i}"
        args = [str(BIN / "sngan-train"), *TINY, override, f"hydra.run.dir={run_dir}"]
        procs[override] = (
            subprocess.Popen(
                args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            ),
            run_dir,
        )
    results = {}
    for override, (proc, run_dir) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[override] = (
            subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode()),
            run_dir,
        )
    return results


@pytest.mark.parametrize("override", IN_SUBPROCESS)
def test_the_console_script_prints_one_line_naming_the_key(console_script, override):
    proc, run_dir = console_script[override]
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"sngan-train: error: {HYDRA_ERRORS[override]}\n"
    assert not run_dir.exists()  # refused before Hydra made a run directory


@pytest.mark.parametrize("override", list(HYDRA_ERRORS))
def test_hydra_errors_are_one_line_naming_the_key(tmp_path, monkeypatch, capsys, override):
    run_dir = tmp_path / "run"
    err = cli_error(monkeypatch, capsys, *TINY, override, f"hydra.run.dir={run_dir}")
    assert err == f"sngan-train: error: {HYDRA_ERRORS[override]}"
    assert capsys.readouterr().out == ""
    assert not run_dir.exists()


def cli_error(monkeypatch, capsys, *args: str, prog=train_main) -> str:
    """Run the CLI in-process; return its one error line after checking the exit status."""
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    with pytest.raises(SystemExit) as exit_:
        prog()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.n_dis=0", "optim.n_dis=0 is not valid: must be an integer >= 1"),
        ("optim.g_lr=-1", "optim.g_lr=-1.0 is not valid: must be a finite number > 0"),
        ("optim.d_lr=inf", "optim.d_lr=inf is not valid: must be a finite number > 0"),
        ("optim.d_batch_size=0", "optim.d_batch_size=0 is not valid: must be an integer >= 1"),
        ("optim.g_batch_size=0", "optim.g_batch_size=0 is not valid: must be an integer >= 1"),
        (
            "optim.betas=[1.5,0.9]",
            "optim.betas=[1.5, 0.9] is not valid: must be two numbers in [0, 1), e.g. [0.0, 0.9]",
        ),
        (
            "model.num_classes=-1",
            "model.num_classes=-1 is not valid: must be >= 0 (0: unconditional)",
        ),
        ("model.z_dim=0", "model.z_dim=0 is not valid: must be an integer >= 1"),
        ("nan_policy=ignore", "nan_policy='ignore' is not valid: choose one of stop, skip"),
        (
            "optim.lr_decay_start=4",  # TINY runs 4 iterations: the decay would never begin
            "optim.lr_decay_start=4 is not valid: must be in 0..3, below iterations=4, where the "
            "linear decay reaches 0 (a preset run for fewer iterations needs it lowered too)",
        ),
        (
            "data.residence=gpu",
            "data.residence='gpu' is not valid: choose one of auto, device, host",
        ),
    ],
)
def test_values_that_cannot_work(tmp_path, monkeypatch, capsys, override, message):
    run_dir = tmp_path / "run"
    err = cli_error(monkeypatch, capsys, *TINY, override, f"hydra.run.dir={run_dir}")
    assert err == f"sngan-train: error: {message}"
    assert capsys.readouterr().out == ""
    assert not run_dir.exists()  # refused before Hydra made a run directory


def test_a_gpu_requested_where_there_is_none(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "run"
    err = cli_error(monkeypatch, capsys, *TINY, "device=cuda", f"hydra.run.dir={run_dir}")
    assert err == (
        "sngan-train: error: device='cuda' is not valid: torch.cuda.is_available() is False here "
        "(no CUDA device, or a CPU-only torch build); use device=cpu or device=auto"
    )
    assert not run_dir.exists()


# Checkpoints that cannot be resumed.


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    """A finished tiny ResNet run (2 iterations)."""
    run_dir = tmp_path_factory.mktemp("resnet") / "run"
    cfg = compose_config("model=resnet", "model.g_channels=8", "model.d_channels=8")
    train(cfg, run_dir)
    return run_dir


@pytest.fixture
def run_copy(resnet_run, tmp_path) -> tuple[Path, Path]:
    """A copy of resnet_run whose only checkpoint is ckpt_0000004.pt: (run_dir, that file)."""
    run_dir = tmp_path / "run"
    shutil.copytree(resnet_run, run_dir)
    for p in (run_dir / "checkpoints").glob("*.pt"):
        if p.name != "ckpt_0000004.pt":
            p.unlink()
    return run_dir, run_dir / "checkpoints" / "ckpt_0000004.pt"


def resume_error(monkeypatch, capsys, run_dir: Path, *args: str) -> str:
    err = cli_error(monkeypatch, capsys, f"resume={run_dir}", "iterations=6", *args)
    assert not list((run_dir / "checkpoints").glob("ckpt_0000006.pt"))  # nothing trained
    return err.removeprefix("sngan-train: error: ")


def test_a_truncated_checkpoint(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} is not a readable sngan checkpoint: truncated or damaged (PytorchStreamReader "
        "failed reading zip archive: failed finding central directory)"
    )


def test_a_file_that_is_not_a_checkpoint(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    path.write_text("hello, I am a text file\n")
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} is not an sngan checkpoint: sngan writes zip archives (torch.save), this file "
        "starts with b'hell'"
    )
    torch.save({"G": {}}, path)  # a torch file, but not one of ours
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} is not an sngan checkpoint (no 'sngan-checkpoint' marker)"
    )


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_cannot_run_code(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    state = torch.load(path, weights_only=True)
    marker = run_dir / "code-ran"
    state["G"] = _RunsCode(marker)
    torch.save(state, path)
    err = resume_error(monkeypatch, capsys, run_dir)
    assert err.startswith(
        f"{path} is not a readable sngan checkpoint: it holds objects that "
        "torch.load(weights_only=True) refuses, as loading them could run code ("
    )
    assert not marker.exists()


def test_a_checkpoint_of_another_architecture(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    assert resume_error(monkeypatch, capsys, run_dir, "model=dcgan") == (
        f"resume={run_dir} continues the run saved in {path} with its own config, but this "
        "command line changes it: model.name=dcgan (the run has resnet), model.z_dim=128 (the run "
        "has 16), model.g_channels=512 (the run has 8), model.d_channels=64 (the run has 8). A "
        "resume may change only iterations, device, amp, compile, compile_mode, channels_last, "
        "fused_adam, joint_d_forward, threads, progress, log_every, log_exact_every, sample_every, "
        "checkpoint_every, keep_checkpoints, nan_policy, optim.ema_bn_stats and metrics.*; pass "
        "only those with "
        "resume=..., or start a new run in another directory"
    )


def test_a_checkpoint_of_another_sngan_version(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format_version": 2, "sngan_version": "0.9.0"}, path)
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} has checkpoint format version 2 (written by sngan 0.9.0); this sngan "
        f"{__version__} reads version 1"
    )
    # Same format, but a config key this version does not know.
    state["sngan_version"] = "0.2.0"
    state["config"]["optim"]["warmup"] = 1000
    torch.save(state, path)
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} was written by sngan 0.2.0 with a config this sngan {__version__} cannot read: "
        "unknown config keys ['optim.warmup']"
    )


def test_a_checkpoint_made_for_sampling_cannot_be_resumed(run_copy, monkeypatch, capsys):
    run_dir, path = run_copy
    state = checkpoint.load(path)  # keep only what the README's import recipe writes
    checkpoint.save({k: state[k] for k in checkpoint.REQUIRED_KEYS}, path)
    assert resume_error(monkeypatch, capsys, run_dir) == (
        f"{path} cannot be resumed: it has no sched_g, sched_d, stream, rng, best_fid (a "
        "checkpoint made for sampling and evaluation, not by a training run)"
    )


def test_resume_of_a_directory_without_checkpoints(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").mkdir()
    assert cli_error(monkeypatch, capsys, f"resume={tmp_path}") == (
        f"sngan-train: error: resume={tmp_path}: no checkpoint in {tmp_path}/checkpoints "
        "(expected latest.pt or ckpt_<iteration>.pt)"
    )
    assert cli_error(monkeypatch, capsys, f"resume={tmp_path}/nothing") == (
        f"sngan-train: error: resume={tmp_path}/nothing: no such run directory"
    )


# Data and Inception weights that are not there. These fail inside train(), after Hydra made
# the run directory but before any training: no TensorBoard logs, no checkpoints.


def data_error(monkeypatch, capsys, tmp_path: Path, *args: str) -> str:
    run_dir = tmp_path / "new_run"
    err = cli_error(monkeypatch, capsys, *TINY, *args, f"hydra.run.dir={run_dir}")
    assert not (run_dir / "tb").exists() and not (run_dir / "checkpoints").exists()
    return err.removeprefix("sngan-train: error: ")


def test_data_root_pointing_at_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "missing"
    assert data_error(monkeypatch, capsys, tmp_path, "data=folder", f"data.root={root}") == (
        f"image folder {root} does not exist or is not a directory"
    )


def test_data_root_with_no_images(tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "notes.txt").write_text("no images here")
    extensions = ", ".join(IMG_EXTENSIONS)
    assert data_error(monkeypatch, capsys, tmp_path, "data=folder", f"data.root={root}") == (
        f"no usable images in {root} (Found no valid file for the classes cats. Supported "
        f"extensions are: {extensions}); expected images in class subfolders, "
        f"<root>/<class>/<image>.png, with extensions {extensions}"
    )


OFFLINE = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


@pytest.fixture
def offline(monkeypatch) -> None:
    """No network: every URL fails as it does on a machine without DNS."""

    def urlopen(*args, **kwargs):
        raise OFFLINE

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)


def test_cifar10_missing_while_offline(tmp_path, monkeypatch, capsys, offline):
    root = tmp_path / "data"
    base = root / "cifar-10-batches-py"
    args = ["data=cifar10", f"data.root={root}", "data.download=true"]
    assert data_error(monkeypatch, capsys, tmp_path, *args) == (
        "CIFAR-10 not found: expected data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
        f"data_batch_5 in {base} (the download failed: URLError: <urlopen error [Errno -3] "
        "Temporary failure in name resolution>). Download and extract "
        f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz so that {base} exists, or set "
        "data.root=<dir> to a directory that holds the extracted cifar-10-batches-py/ folder."
    )


def test_inception_weights_missing_while_offline(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert data_error(monkeypatch, capsys, tmp_path, "metrics.enabled=true") == (
        f"FID/IS need torch-fidelity's Inception weights {INCEPTION_FILE}, which are not "
        f"in {hub} and could not be downloaded from {INCEPTION_URL} (URLError: <urlopen "
        "error [Errno -3] Temporary failure in name resolution>). Download that file on a machine "
        "with network access, then either pass it with metrics.inception_weights=<file> or copy "
        f"it to {hub / INCEPTION_FILE}."
    )


def test_an_inception_weights_file_that_is_not_there(tmp_path, monkeypatch, capsys, run_copy):
    missing = tmp_path / "inception.pth"
    expected = (
        f"Inception weights file not found: {missing} (metrics.inception_weights). It should be "
        f"torch-fidelity's {INCEPTION_FILE}, downloadable from {INCEPTION_URL}"
    )
    args = ("metrics.enabled=true", f"metrics.inception_weights={missing}")
    assert data_error(monkeypatch, capsys, tmp_path, *args) == expected
    # sngan-eval says the same, before it loads anything.
    _, ckpt = run_copy
    monkeypatch.setattr(sys, "argv", ["sngan-eval"])
    with pytest.raises(SystemExit) as exit_:
        eval_main([f"checkpoint={ckpt}", f"metrics.inception_weights={missing}"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"sngan-eval: error: {expected}\n"


# Weights files for the metrics: checked before Hydra makes a run directory, without running code.


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    from inception_fixture import write_random_inception_weights

    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "w.pth")


def bad_weights(kind: str, good: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "missing_key":
        state = torch.load(good, weights_only=True)
        state.pop(next(iter(state)))
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["text", "pickle", "truncated", "missing_key"])
def test_a_bad_inception_file_fails_before_anything_is_written(
    kind, inception_file, tmp_path, monkeypatch, capsys
):
    path = bad_weights(kind, inception_file, tmp_path)
    run_dir = tmp_path / "run"
    args = ("metrics.enabled=true", f"metrics.inception_weights={path}", f"hydra.run.dir={run_dir}")
    err = cli_error(monkeypatch, capsys, *TINY, *args)
    assert err.startswith(f"sngan-train: error: Inception weights file {path} "), err
    assert not run_dir.exists()  # no run directory, so no checkpoint either


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_an_inception_file_that_would_run_code_is_refused_without_running_it(
    inception_file, tmp_path, monkeypatch, capsys
):
    marker = tmp_path / "the-payload-ran"
    path = tmp_path / "crafted.pth"
    state = torch.load(inception_file, weights_only=True)
    state["fc.weight"] = _RunsCodeWhenUnpickled(marker)
    torch.save(state, path)
    run_dir = tmp_path / "run"
    args = ("metrics.enabled=true", f"metrics.inception_weights={path}", f"hydra.run.dir={run_dir}")
    err = cli_error(monkeypatch, capsys, *TINY, *args)
    assert err.startswith(
        f"sngan-train: error: Inception weights file {path} holds objects that "
        "torch.load(weights_only=True) refuses, as loading them could run code"
    ), err
    assert not marker.exists() and not run_dir.exists()


@pytest.mark.parametrize("weights_present", [True, False])
@pytest.mark.parametrize("checkpoint_kind", ["missing", "garbage"])
def test_sngan_eval_names_a_bad_checkpoint_before_looking_for_weights(
    checkpoint_kind, weights_present, inception_file, tmp_path, monkeypatch, capsys, offline
):
    ckpt = tmp_path / "latest.pt"
    if checkpoint_kind == "garbage":
        ckpt.write_bytes(os.urandom(256))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights in torch hub
    weights = [f"metrics.inception_weights={inception_file}"] if weights_present else []
    monkeypatch.setattr(sys, "argv", ["sngan-eval"])
    with pytest.raises(SystemExit) as exit_:
        eval_main([f"checkpoint={ckpt}", *weights, "device=cpu"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sngan-eval: error: ") and str(ckpt) in err, err
    message = {"missing": "does not exist", "garbage": "is not an sngan checkpoint"}
    assert message[checkpoint_kind] in err
    assert "Inception" not in err
