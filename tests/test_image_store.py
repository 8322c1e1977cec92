"""The image store: prepared once in parallel, resumable, refused on a full disk, bad images named;
batches from the host equal batches from the device, down to the checkpoints.

The folders are photos of ImageNet-like sizes (60 to 520 pixels a side, portrait and landscape,
some smaller than the target), saved as JPEG, so Pillow's reduced-scale decoding is exercised.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY, compose_config, mounted_tmpfs, torchrun_two
from PIL import Image

import sngan.image_store as image_store
from sngan import checkpoint
from sngan.batches import BatchStream, HostBatchStream, choose_residence
from sngan.build import build_train_state, training_images
from sngan.data import folder_store, load_images
from sngan.train import generator_iteration, train

CPU = torch.device("cpu")


def make_photos(root: Path, n: int, seed: int = 0, classes: int = 3) -> Path:
    """``n`` smooth random JPEGs of varied sizes in ``classes`` class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(60, 521, 2))
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def store_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), 40)


def test_two_workers_make_the_same_store_as_one(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(image_store, "CHUNK", 6)  # 7 chunks for 40 images
    one = folder_store(photos, image_size=32, cache_dir=tmp_path / "one", workers=1)
    two = folder_store(photos, image_size=32, cache_dir=tmp_path / "two", workers=2)
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.labels.tolist() == two.labels.tolist() == sorted(i % 3 for i in range(40))
    assert one.images.shape == (40, 3, 32, 32) and one.left_out == []
    assert store_files(tmp_path / "two") == [two.path.with_suffix(".json").name, two.path.name]


def test_each_image_is_the_centre_square_of_its_shorter_side_resized(photos, tmp_path):
    store = folder_store(photos, image_size=128, cache_dir=tmp_path, workers=1)
    paths = sorted(photos.glob("*/*.jpg"))
    for i in (0, 7, 39):  # 452x353 (drafted to 1/2), 322x113 and 315x247 (decoded in full)
        with Image.open(paths[i]) as img:
            rgb = img.convert("RGB")  # in full here
        w, h = rgb.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        expected = np.asarray(rgb.crop(box).resize((128, 128), Image.BILINEAR))
        diff = np.abs(store.images[i].astype(int) - expected.transpose(2, 0, 1).astype(int))
        # Decoding at half scale in the DCT domain moves pixels by about one level.
        assert diff.mean() < 1.5 and diff.max() <= 8, (i, diff.mean(), diff.max())


def test_jpegs_are_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    Image.new("RGB", (500, 375), (10, 200, 30)).save(tmp_path / "a.jpg")
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        out = real(self, mode, size)
        drafts.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    pixels = image_store.decode_image(str(tmp_path / "a.jpg"), 128)
    assert drafts == [(250, 188)]  # 1/2 scale: both sides still >= 128
    assert pixels.shape == (3, 128, 128) and abs(int(pixels[1].mean()) - 200) <= 2


KILLED = """
import os, signal, sys
import sngan.image_store as store
from sngan.data import folder_store

store.CHUNK = 4
decode, chunks = store.decode_files, []

def decode_files(paths, size):
    chunks.append(1)
    if len(chunks) == 5:  # in the middle of the fifth of ten chunks
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(paths, size)

store.decode_files = decode_files
folder_store(sys.argv[1], image_size=32, cache_dir=sys.argv[2], workers=1)
"""


def test_a_killed_preparation_continues_where_it_stopped(photos, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, str(photos), str(cache)], cwd=REPO_ROOT, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL
    assert not list(cache.glob("*.json"))  # not complete: no marker
    (partial,) = cache.glob("*.partial.npy")
    assert (cache / partial.name.replace(".npy", ".done")).read_bytes() == bytes([1] * 4 + [0] * 6)
    monkeypatch.setattr(image_store, "CHUNK", 4)
    decoded = []
    decode = image_store.decode_files
    monkeypatch.setattr(
        image_store,
        "decode_files",
        lambda paths, size: decoded.append(len(paths)) or decode(paths, size),
    )
    resumed = folder_store(photos, image_size=32, cache_dir=cache, workers=1)
    assert decoded == [4] * 6  # only the chunks that were not done
    monkeypatch.undo()
    whole = folder_store(photos, image_size=32, cache_dir=tmp_path / "whole", workers=1)
    assert resumed.path.read_bytes() == whole.path.read_bytes()
    assert resumed.labels.tolist() == whole.labels.tolist()
    assert store_files(cache) == [resumed.path.with_suffix(".json").name, resumed.path.name]


INTERRUPTED = """
import os, signal, sys
import sngan.image_store as store
from sngan.cli import prepare_main

store.CHUNK = 4
decode, chunks = store.decode_files, []

def decode_files(paths, size):
    chunks.append(1)
    if len(chunks) == 3:  # Ctrl-C in the middle of the third of ten chunks
        os.kill(os.getpid(), signal.SIGINT)
    return decode(paths, size)

store.decode_files = decode_files
prepare_main(sys.argv[1:])
"""


def test_ctrl_c_while_preparing_is_one_line_and_a_re_run_continues(photos, tmp_path):
    cache = tmp_path / "cache"
    args = ["data=folder", f"data.root={photos}", "data.image_size=32", f"data.cache_dir={cache}"]
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, *args, "data.workers=1", "progress=false"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (partial,) = cache.glob("*.partial.npy")
    final = partial.name.replace(".partial", "")
    assert proc.returncode == 130 and proc.stdout == ""
    assert proc.stderr == (
        f"sngan-prepare: error: interrupted; preparing {cache / final} stopped at 8 of 40 "
        "images, which are kept: the same command continues from there\n"
    )
    from sngan.cli import prepare_main

    prepare_main([*args, "data.workers=2"])
    whole = folder_store(photos, image_size=32, cache_dir=tmp_path / "whole", workers=1)
    assert (cache / final).read_bytes() == whole.path.read_bytes()


def test_a_disk_without_room_is_refused_before_the_first_image(photos, tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr(image_store, "decode_files", lambda *a: decoded.append(1))
    with mounted_tmpfs(tmp_path / "disk", "100k") as disk:
        free = image_store.atomic.free_bytes(disk)
        with pytest.raises(image_store.StoreError) as err:
            folder_store(photos, image_size=32, cache_dir=disk / "cache", workers=1)
        needed = 40 * 3 * 32 * 32 + 4096
        d = image_store.atomic.describe_bytes
        assert str(err.value).startswith("not enough space for the image store ")
        assert str(err.value).endswith(
            f": it needs {d(needed)} more, {d(free)} are free in {disk / 'cache'}; free some "
            "space, or put the store on a larger disk with data.cache_dir=<dir>"
        )
        assert decoded == [] and store_files(disk / "cache") == []


def test_a_disk_without_room_through_sngan_train(photos, tmp_path, monkeypatch, capsys):
    from sngan.cli import train_main

    monkeypatch.chdir(tmp_path)
    with mounted_tmpfs(tmp_path / "disk", "100k") as disk:
        args = [*TINY, "data=folder", f"data.root={photos}", "data.image_size=32"]
        run_dir = tmp_path / "run"
        argv = [*args, f"data.cache_dir={disk}", f"hydra.run.dir={run_dir}"]
        monkeypatch.setattr(sys, "argv", ["sngan-train", *argv])
        with pytest.raises(SystemExit):
            train_main()
        err = capsys.readouterr().err
        assert err.startswith("sngan-train: error: not enough space for the image store ")
        assert err.count("\n") == 1 and not run_dir.exists()


def test_a_store_moved_without_its_source_trains_through_data_store(tmp_path, monkeypatch, capsys):
    """sngan-prepare on one machine, the two files copied to another that has no source tree:
    sngan-train data.store=<file> trains on them; what cannot work is one line, and no run
    directory is left."""
    import shutil

    from sngan.cli import prepare_main, train_main

    photos = make_photos(tmp_path / "photos", 12)
    prepare_main(["data=folder", f"data.root={photos}", f"data.cache_dir={tmp_path / 'login'}"])
    node = tmp_path / "node"
    shutil.copytree(tmp_path / "login", node)
    shutil.rmtree(photos)
    (npy,) = node.glob("*.npy")
    monkeypatch.chdir(tmp_path)

    def sngan_train(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["sngan-train", *TINY, "data=folder", *args])
        with contextlib.suppress(SystemExit):  # a refusal exits 1, after its line
            train_main()
        return capsys.readouterr().err

    sngan_train(f"data.store={npy}", f"hydra.run.dir={tmp_path / 'run'}")
    assert checkpoint.load(tmp_path / "run/checkpoints/latest.pt")["iteration"] == 4
    npy.with_suffix(".json").unlink()
    for args, error in (
        (
            [f"data.store={npy}"],
            f"data.store={npy} is not a prepared image store: it needs {npy.name} and "
            f"{npy.with_suffix('.json').name} side by side, as sngan-prepare writes them",
        ),
        (
            [f"data.store={photos}.png"],
            f"data.store='{photos}.png' is not valid: a .npy file that sngan-prepare wrote, for "
            "data.source=folder|imagenet|stl10 (data.source=folder)",
        ),
    ):
        run_dir = tmp_path / "refused"
        err = sngan_train(*args, f"hydra.run.dir={run_dir}")
        assert err == f"sngan-train: error: {error}\n" and not run_dir.exists()


def test_a_corrupt_jpeg_is_named_and_left_out(tmp_path):
    photos = make_photos(tmp_path / "photos", 9)
    bad = photos / "class1" / "00004.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + os.urandom(200))
    with pytest.warns(UserWarning, match=f"left out of the training set: cannot read image {bad}"):
        store = folder_store(photos, image_size=32, cache_dir=tmp_path / "cache", workers=1)
    assert len(store.images) == 8 and store.left_out[0].startswith(f"cannot read image {bad}: ")
    # The others, each once: the last image moved into the gap, with its label.
    good = folder_store(
        make_photos(tmp_path / "ref", 9), image_size=32, cache_dir=tmp_path / "ref_cache"
    )
    listing = sorted(photos.glob("*/*.jpg"))
    gap = listing.index(bad)
    order = list(range(9))
    order[gap] = 8  # the last image fills the gap; the store is one image shorter
    order = order[:8]
    assert np.array_equal(store.images, good.images[order])
    assert store.labels.tolist() == good.labels[order].tolist()
    meta = json.loads(store.path.with_suffix(".json").read_text())
    assert meta["count"] == 8 and len(meta["left_out"]) == 1


def test_a_second_run_maps_the_store_it_finds(photos, tmp_path, monkeypatch):
    first, labels = load_images("folder", root=photos, image_size=32, cache_dir=tmp_path)
    monkeypatch.setattr(image_store, "decode_files", lambda *a: pytest.fail("decoded again"))
    again, again_labels = load_images("folder", root=photos, image_size=32, cache_dir=tmp_path)
    assert torch.equal(first, again) and torch.equal(labels, again_labels)


# -- batches from the host ------------------------------------------------------------------------


def streams(images, labels, **kwargs):
    return (
        BatchStream(images, labels, device=CPU, seed=3, **kwargs),
        HostBatchStream(images, labels, device=CPU, seed=3, **kwargs),
    )


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_host_batches_equal_device_batches(photos, tmp_path, shard):
    images, labels = load_images("folder", root=photos, image_size=32, cache_dir=tmp_path)
    device, host = streams(images, labels, channels_last=True)
    # Over three epochs of 40 images, with a batch size that leaves a tail, and one odd request.
    for size in [6] * 7 + [4] + [6] * 14:
        a, b = device.next(size, shard), host.next(size, shard)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].is_contiguous(memory_format=torch.channels_last)
        assert b[0].is_contiguous(memory_format=torch.channels_last)
    assert device.epoch == host.epoch == 3
    state = host.state_dict()
    assert all(
        torch.equal(state[k], v) if torch.is_tensor(v) else state[k] == v
        for k, v in device.state_dict().items()
    )
    host.close()


def test_switching_residence_on_resume_gives_the_same_batches(photos, tmp_path):
    images, labels = load_images("folder", root=photos, image_size=32, cache_dir=tmp_path)
    device, host = streams(images, labels)
    for _ in range(5):
        device.next(6)
    host.load_state_dict(device.state_dict())
    for _ in range(9):
        a, b = device.next(6), host.next(6)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    host.close()


def test_residence_auto_keeps_a_small_set_on_the_device():
    assert choose_residence("auto", 10**9, CPU) == ("device", None)
    assert choose_residence("host", 10, CPU) == ("host", None)


HOST = ["data=folder", "data.image_size=32", "optim.d_batch_size=6", "optim.g_batch_size=6"]


def test_residence_host_and_device_train_the_same_checkpoints(photos, tmp_path):
    common = [*HOST, f"data.root={photos}", f"data.cache_dir={tmp_path / 'cache'}", "iterations=4"]
    s = build_train_state(
        compose_config(*common, "data.residence=host"),
        *training_images(compose_config(*common)),
        CPU,
    )
    assert isinstance(s.stream, HostBatchStream)
    generator_iteration(s, 0)
    train(compose_config(*common, "data.residence=device"), tmp_path / "device")
    train(compose_config(*common, "data.residence=host"), tmp_path / "host")
    a = checkpoint.load(tmp_path / "device/checkpoints/latest.pt")
    b = checkpoint.load(tmp_path / "host/checkpoints/latest.pt")
    for net in ("G", "D", "G_ema"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert torch.equal(a["stream"]["perm"], b["stream"]["perm"])


LAUNCH = """
import sys
sys.argv = ["sngan-train", *sys.argv[1:]]
from sngan.cli import train_main
train_main()
"""


def test_kill_9_and_resume_under_residence_host_is_bit_identical(photos, tmp_path):
    cache = tmp_path / "cache"
    args = [
        *TINY,
        *HOST,
        f"data.root={photos}",
        f"data.cache_dir={cache}",
        "data.residence=host",
        "iterations=8",
        "checkpoint_every=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SNGAN_TEST_SAVE_PAUSE": "0"}

    def run(*extra, **more):
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args, *extra],
            cwd=tmp_path,
            env={**env, **more},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    whole = run(f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.wait(timeout=600) == 0, whole.communicate()[1][-2000:]
    killed = run(f"hydra.run.dir={tmp_path / 'killed'}")
    ckpt = tmp_path / "killed/checkpoints/ckpt_0000004.pt"
    while not ckpt.exists():
        assert killed.poll() is None, killed.communicate()[1][-2000:]
    killed.kill()
    killed.communicate()
    resumed = run(f"resume={tmp_path / 'killed'}")
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-2000:]
    a = checkpoint.load(tmp_path / "whole/checkpoints/latest.pt")
    b = checkpoint.load(tmp_path / "killed/checkpoints/latest.pt")
    assert b["iteration"] == 8
    for net in ("G", "D", "G_ema", "opt_g", "opt_d"):
        flat_a, flat_b = (
            torch.utils._pytree.tree_flatten(a[net])[0],
            torch.utils._pytree.tree_flatten(b[net])[0],
        )
        assert all(
            torch.equal(x, y) if torch.is_tensor(x) else x == y
            for x, y in zip(flat_a, flat_b, strict=True)
        ), net


RANKS = """
import os, sys
import sngan.batches as batches

real, seen = batches.HostBatchStream.next, []

def next_(self, *args, **kwargs):
    if not seen:
        seen.append(1)
        maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".npy" in line})
        print(f"RANK {os.environ['RANK']} MAPS {maps}", flush=True)
    return real(self, *args, **kwargs)

batches.HostBatchStream.next = next_
sys.argv = ["sngan-train", *sys.argv[1:]]
from sngan.cli import train_main
train_main()
"""


def test_under_torchrun_both_ranks_map_the_one_file(photos, tmp_path):
    cache = tmp_path / "cache"
    store = folder_store(photos, image_size=32, cache_dir=cache)  # sngan-prepare's part
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    overrides = [o for o in TINY if not o.startswith("checkpoint_every")]
    proc = torchrun_two(
        str(script),
        *overrides,
        *HOST,
        f"data.root={photos}",
        f"data.cache_dir={cache}",
        "data.residence=host",
        "iterations=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("RANK "))
    assert lines == [f"RANK {rank} MAPS {[str(store.path)]}" for rank in (0, 1)]
