"""Inception weights: found, refused with one line when they are not torch-fidelity's, never run.

The good file is tests/inception_fixture.py's: torch-fidelity's keys and shapes, random values.
"""

from __future__ import annotations

import os
import pickle
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from inception_fixture import random_inception_state_dict
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from sngan import extractor_weights as inception
from sngan.extractor_weights import WeightsFileError, check_weights, safe_weights_file

NEEDED = 472  # 566 tensors, less the 94 optional BatchNorm counters


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_inception_state_dict(seed=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, state) -> Path:
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(state, path)
    return path


def error(path: Path) -> str:
    """check_weights' message for ``path``, after checking it is one line naming the file."""
    with pytest.raises(WeightsFileError) as err:
        check_weights(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"Inception weights file {path} "), message
    return message.removeprefix(f"Inception weights file {path} ")


def test_expected_tensors_are_those_of_torch_fidelitys_network(state):
    # The fixture builds the real network with loading mocked out; expected_tensors() builds it
    # on the meta device with loading skipped by a subclass.
    assert inception.expected_tensors() == {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    assert len(state) == 566 and sum(k.endswith(".num_batches_tracked") for k in state) == 94


def test_a_text_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_text("hello, I am a text file\n")
    assert error(path) == (
        "is not a torch file: it starts with b'hell', where torch.save writes a zip archive "
        "(b'PK\\x03\\x04') or, before torch 1.6, a pickle of torch's magic number"
    )


def test_an_empty_file_and_no_file(tmp_path):
    path = tmp_path / "w.pth"
    path.touch()
    assert error(path) == "is not a torch file: the file is empty"
    path.unlink()
    assert error(path) == "does not exist"


def test_a_random_pickle(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    assert error(path).startswith("is not a torch file: it starts with b'\\x80")


@pytest.mark.parametrize("obj", [[1, 2, 3], torch.zeros(3)], ids=["list", "tensor"])
def test_a_torch_file_that_is_not_a_dict(tmp_path, obj):
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    kind = type(obj).__name__
    assert error(path) == f"holds a {kind}, not the dict of tensors inception-v3-compat needs"


def test_an_empty_dict(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    assert error(path) == (
        f"is missing {NEEDED} of the {NEEDED} tensors inception-v3-compat needs "
        "(Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.weight, Conv2d_1a_3x3.bn.bias, ...)"
    )


def test_a_resnet_state_dict(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    assert error(path) == (
        f"is missing 470 of the {NEEDED} tensors inception-v3-compat needs "
        "(Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.weight, Conv2d_1a_3x3.bn.bias, ...); "
        "has 120 entries that inception-v3-compat does not have "
        "(conv1.weight, bn1.weight, bn1.bias, ...); "
        "has 2 tensors of the wrong shape or dtype (fc.weight is (1000, 512) float32, not "
        "(1008, 2048) float32, fc.bias is (1000,) float32, not (1008,) float32)"
    )


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_truncated_file(tmp_path, weights, zipped, state):
    path = tmp_path / "w.pth"
    if zipped:
        data = weights.read_bytes()
    else:
        torch.save(state, path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expected = (
        "PytorchStreamReader failed reading zip archive: failed finding central directory"
        if zipped
        else "unexpected EOF, expected"
    )
    assert error(path).startswith(f"is truncated or damaged ({expected}")


def test_a_missing_tensor(tmp_path, state):
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in state.items() if k != "Mixed_6b.branch7x7_2.conv.weight"}, path)
    assert error(path) == (
        f"is missing 1 of the {NEEDED} tensors inception-v3-compat needs "
        "(Mixed_6b.branch7x7_2.conv.weight)"
    )


def test_an_extra_tensor(tmp_path, state):
    path = tmp_path / "w.pth"
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1000, 768)}, path)
    assert error(path) == "has 1 entry that inception-v3-compat does not have (AuxLogits.fc.weight)"


def test_wrong_shapes_and_dtypes(tmp_path, state):
    path = tmp_path / "w.pth"
    bad = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1008).half()}
    torch.save(bad, path)
    assert error(path) == (
        "has 2 tensors of the wrong shape or dtype (fc.weight is (1000, 2048) float32, not "
        "(1008, 2048) float32, fc.bias is (1008,) float16, not (1008,) float32)"
    )


def test_an_entry_that_is_not_a_tensor(tmp_path, state):
    path = tmp_path / "w.pth"
    torch.save({**state, "fc.bias": [0.0] * 1008}, path)
    assert error(path) == "has 1 entry that should be tensors and are not (fc.bias)"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, zipped):
    path, marker = tmp_path / "w.pth", tmp_path / "code-ran"
    payload = {"fc.weight": _RunsCode(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zipped)
    assert error(path) == (
        "holds objects that torch.load(weights_only=True) refuses, as loading them could run "
        "code (Unsupported global: GLOBAL getattr was not an allowed global by default)"
    )
    assert not marker.exists()
    # Nor does it reach torch-fidelity through safe_weights_file.
    cache = tmp_path / "cache"
    with pytest.raises(WeightsFileError, match="could run code"):
        safe_weights_file(path, cache_dir=cache)
    assert not marker.exists()
    assert not cache.exists()
    # A bare pickle of it is not even a torch file.
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    assert error(path).startswith("is not a torch file")
    assert not marker.exists()
    # The test's payload does run when unpickled without restriction.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_the_fixture_passes_and_comes_back_unchanged(weights, state):
    tensors = check_weights(weights)
    assert tensors.keys() == state.keys()
    assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in state.items())


def test_old_formats_pass(tmp_path, state):
    # torch.save's pre-1.6 format, and a state dict without the BatchNorm counters.
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert check_weights(path).keys() == state.keys()
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    assert len(check_weights(path)) == NEEDED


def features(weights_path: Path, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(weights_path),
    )
    with torch.no_grad():
        return net(images)


def test_torch_fidelity_loads_the_checked_copy_and_computes_the_same_features(weights, tmp_path):
    copy = safe_weights_file(weights, cache_dir=tmp_path)
    assert copy.parent == tmp_path and copy != weights
    assert copy.name == f"inception-{inception.file_digest(weights)}.pth"
    images = torch.randint(
        0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    ours, theirs = features(copy, images), features(weights, images)
    assert [f.shape for f in ours] == [(2, 2048), (2, 1008)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert [p.name for p in tmp_path.iterdir()] == [copy.name]  # no temporary file left


def test_torch_fidelity_loads_a_copy_without_batchnorm_counters(tmp_path, state):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    copy = safe_weights_file(path, cache_dir=tmp_path / "cache")
    # Its load_state_dict is strict: torch's BatchNorm fills the counters in itself.
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(copy)
    )
    assert torch.equal(net.fc.weight, state["fc.weight"])


def test_the_copy_is_reused_until_the_source_changes(tmp_path, state):
    source, cache = tmp_path / "w.pth", tmp_path / "cache"
    torch.save(state, source)
    first = safe_weights_file(source, cache_dir=cache)
    made = first.stat().st_mtime_ns
    os.utime(first, ns=(made - 10**9, made - 10**9))  # so that a rewrite would show
    made = first.stat().st_mtime_ns
    assert safe_weights_file(source, cache_dir=cache) == first
    assert first.stat().st_mtime_ns == made
    # A new content makes a new copy.
    torch.save({**state, "fc.bias": state["fc.bias"] + 1}, source)
    second = safe_weights_file(source, cache_dir=cache)
    assert second != first and second.is_file()
    assert torch.equal(check_weights(second)["fc.bias"], state["fc.bias"] + 1)
    # A damaged copy is made again.
    second.write_bytes(second.read_bytes()[:1000])
    assert safe_weights_file(source, cache_dir=cache) == second
    assert torch.equal(check_weights(second)["fc.bias"], state["fc.bias"] + 1)


def test_the_default_cache_is_next_to_torch_hubs_checkpoints(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    copy = safe_weights_file(weights)
    assert copy.parent == tmp_path / "torch" / "hub" / "checkpoints" / "sngan-checked"


def test_a_cache_that_cannot_be_written(tmp_path, weights):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(WeightsFileError) as err:
        safe_weights_file(weights, cache_dir=blocker / "cache")
    assert str(err.value).startswith(
        f"cannot write the checked copy of Inception weights file {weights} to "
        f"{blocker / 'cache'}: "
    )


def test_find_weights_names_a_missing_file(tmp_path):
    missing = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError) as err:
        inception.find_weights(missing)
    assert str(err.value) == (
        f"Inception weights file not found: {missing} (metrics.inception_weights). It should be "
        f"torch-fidelity's {inception.INCEPTION_FILE}, downloadable from {inception.INCEPTION_URL}"
    )
    assert inception.INCEPTION_FILE == "weights-inception-2015-12-05-6726825d.pth"


def test_find_weights_uses_torch_hubs_copy_or_says_how_to_get_one(tmp_path, monkeypatch, state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"

    def urlopen(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    with pytest.raises(RuntimeError) as err:
        inception.find_weights()
    assert str(err.value) == (
        f"FID/IS need torch-fidelity's Inception weights {inception.INCEPTION_FILE}, which are not "
        f"in {hub} and could not be downloaded from {inception.INCEPTION_URL} (URLError: <urlopen "
        "error [Errno -3] Temporary failure in name resolution>). Download that file on a machine "
        "with network access, then either pass it with metrics.inception_weights=<file> or copy "
        f"it to {hub / inception.INCEPTION_FILE}."
    )
    torch.save(state, hub / inception.INCEPTION_FILE)
    assert inception.find_weights() == hub / inception.INCEPTION_FILE
