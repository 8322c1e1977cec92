"""CIFAR-10's files are not trusted: a planted pickle runs nothing, a damaged one is one line.

Every bad file goes through the commands that read it (sngan-train for the training set,
sngan-eval for the reference statistics), and each error is checked whole: the file, what is
wrong, the md5 it should have, what to do. A file that is not the published one but holds
CIFAR-10's arrays (another pickle protocol, or Python 2's layout) is read, with a warning.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config, write_cifar10

from sngan import cifar10
from sngan.cli import eval_main, train_main
from sngan.data import load_images
from sngan.train import train

CIFAR = ["data=cifar10", "data.download=false", "data.image_size=32"]
FIX = (
    f"it should be the file of {cifar10.URL} (md5 {cifar10.MD5['data_batch_1']}): delete "
    "{base} and run again to download it (data.download=true), or extract that archive there "
    "yourself"
)


class Payload:
    """Unpickled by a plain pickle.load, this creates the marker file: code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def planted(root: Path, marker: Path) -> Path:
    """A data root whose data_batch_1 runs a payload when unpickled (the rest are genuine)."""
    write_cifar10(root)
    entry = {"data": Payload(marker), "labels": [0]}
    (root / cifar10.DIR / "data_batch_1").write_bytes(pickle.dumps(entry, protocol=2))
    return root


def damaged(root: Path, kind: str) -> Path:
    """A data root whose data_batch_1 is random bytes or cut in half."""
    write_cifar10(root)
    path = root / cifar10.DIR / "data_batch_1"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def sngan_train(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["sngan-train", *args])
    with pytest.raises(SystemExit) as exit_:
        train_main()
    return exit_.value.code, capsys.readouterr().err


def expected_error(root: Path, what: str) -> str:
    path = root / cifar10.DIR / "data_batch_1"
    return f"CIFAR-10 file {path} {what}; its md5 is {md5(path)}, " + FIX.format(
        base=root / cifar10.DIR
    )


def test_a_planted_pickle_runs_nothing_through_sngan_train(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    root = planted(tmp_path / "data", marker)
    monkeypatch.chdir(tmp_path)
    code, err = sngan_train(
        monkeypatch, capsys, *TINY, *CIFAR, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert not marker.exists()
    assert code == 1
    assert err == (
        "sngan-train: error: "
        + expected_error(
            root,
            "is not a CIFAR-10 batch: it refers to the global posix.system, which sngan does not "
            "load (loading it could run code)",
        )
        + "\n"
    )
    assert not (tmp_path / "run").exists()  # checked before the run directory was made
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a tiny run on a (genuine-format) CIFAR-10, for sngan-eval."""
    base = tmp_path_factory.mktemp("cifar_run")
    root = write_cifar10(base / "data")
    run_dir = base / "run"
    train(compose_config(*CIFAR, f"data.root={root}", "iterations=1"), run_dir)
    return run_dir / "checkpoints" / "latest.pt"


@pytest.mark.parametrize("kind", ["planted", "random", "truncated"])
def test_sngan_eval_refuses_a_bad_reference_file(
    tmp_path, capsys, cifar_checkpoint, inception_weights, kind
):
    marker = tmp_path / "marker"
    root = planted(tmp_path / "data", marker) if kind == "planted" else damaged(tmp_path, kind)
    with pytest.raises(SystemExit) as exit_:
        eval_main(
            [
                f"checkpoint={cifar_checkpoint}",
                f"data_root={root}",
                f"metrics.inception_weights={inception_weights}",
                "metrics.num_samples=10",
                "device=cpu",
            ]
        )
    assert exit_.value.code == 1 and not marker.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    path = root / cifar10.DIR / "data_batch_1"
    assert err.startswith(f"sngan-eval: error: CIFAR-10 file {path} "), err
    reason = {
        "planted": "is not a CIFAR-10 batch: it refers to the global posix.system",
        "random": "is damaged or truncated (",
        "truncated": "is damaged or truncated (",
    }[kind]
    assert reason in err and err.endswith(FIX.format(base=root / cifar10.DIR) + "\n"), err


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_a_damaged_file_is_one_line_through_sngan_train(tmp_path, monkeypatch, capsys, kind):
    root = damaged(tmp_path / "data", kind)
    monkeypatch.chdir(tmp_path)
    code, err = sngan_train(
        monkeypatch, capsys, *TINY, *CIFAR, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert code == 1 and err.count("\n") == 1, err
    path = root / cifar10.DIR / "data_batch_1"
    assert err.startswith(f"sngan-train: error: CIFAR-10 file {path} is damaged or truncated (")
    assert err.endswith(f"; its md5 is {md5(path)}, {FIX.format(base=root / cifar10.DIR)}\n")
    assert not (tmp_path / "run").exists()


def test_a_foreign_pickle_is_named(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / cifar10.DIR / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": [1, 2, 3], "labels": [0]}))
    with pytest.raises(cifar10.DatasetFileError) as err:
        load_images("cifar10", root=tmp_path, download=False)
    assert str(err.value) == (
        f"CIFAR-10 file {path} is not a CIFAR-10 batch: expected a dict with 'data' (N, 3072) "
        f"uint8 and 'labels' (N integers in 0..9), found 'data' of int64 (3,); its md5 is "
        f"{md5(path)}, " + FIX.format(base=tmp_path / cifar10.DIR)
    )


def python2_layout(entry: dict) -> bytes:
    """``entry`` pickled as Python 2's cPickle wrote CIFAR-10: the array's bytes as a str, which
    ``encoding="latin1"`` turns into text that numpy reads back."""
    data = entry["data"]

    class Py2Array:
        def __reduce__(self):
            state = (1, data.shape, data.dtype, False, data.tobytes().decode("latin1"))
            core = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1
            return (core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state)

    # numpy 1's module name, as the published files have it (GLOBAL ends at a newline).
    pickled = pickle.dumps({**entry, "data": Py2Array()}, protocol=2)
    return pickled.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "python2"])
def test_a_re_export_is_read_with_a_warning(tmp_path, protocol):
    write_cifar10(tmp_path)
    base = tmp_path / cifar10.DIR
    expected, expected_labels = load_images("cifar10", root=tmp_path, download=False)
    for name in cifar10.TRAIN_FILES:
        with open(base / name, "rb") as f:
            entry = pickle.load(f)  # the tests' own file: safe to load plainly
        if protocol == "python2":
            data = python2_layout(entry)
        else:
            data = pickle.dumps(entry, protocol=protocol)
        (base / name).write_bytes(data)
    if protocol == "python2":
        assert b"cnumpy.core.multiarray\n_reconstruct" in data
    with pytest.warns(UserWarning, match="are not the published ones") as caught:
        images, labels = load_images("cifar10", root=tmp_path, download=False)
    assert len(caught) == 1  # one warning for the five files, and numpy's own is kept quiet
    assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


def test_the_unpickler_names_any_other_global():
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")]:
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
        with pytest.raises(pickle.UnpicklingError, match=f"the global {module}.{name}"):
            cifar10.SafeUnpickler(io.BytesIO(data)).load()
    with pytest.raises(pickle.UnpicklingError, match="encoding 'rot13'"):
        cifar10._latin1_encode("text", "rot13")


def test_the_md5_sums_are_torchvisions():
    import torchvision

    listed = torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list
    assert dict(listed) == cifar10.MD5
    assert torchvision.datasets.CIFAR10.url == cifar10.URL
    assert torchvision.datasets.CIFAR10.base_folder == cifar10.DIR
