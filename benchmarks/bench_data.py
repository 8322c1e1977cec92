"""Time the data path: the image store's preparation, its second load, and batches from it.

1. The store on small PNGs: builds a folder of PNGs (by default 10,000 at 64x64, made from the real
   CIFAR-10 slice in shared/ upscaled and varied, or smooth random images where the slice is
   absent), then times ``load_images("folder", ...)`` at each ``--sizes`` with an empty cache
   (first load: preparation) and again (second load: the store found and mapped), ``--repeats``
   times each; the two ways of reading a store in full (``np.load`` against a memory map); and
   an STL-10-like binary of ``--stl10-images`` random 96x96 images resized to 48.
2. Preparation of ImageNet-like photos (``--photos``, default 10,000 JPEGs of 300-500 pixels a
   side, in two kinds: ``smooth``, the CIFAR-10 slice upscaled, and ``textured``, the same with
   noise of sigma 20, about the bits per pixel of ImageNet's files) at 128 pixels: images/s of
   the single-process decode sngan had before the store (torchvision's Resize and CenterCrop per
   PIL image, reproduced here as ``decode_folder_before``), of the store with one worker and with
   two, interleaved; and what that makes of 1.28 M images on 16 cores.
3. Peak RSS while preparing ``--rss-images`` photos (default 10,000 and 40,000) at 128 pixels with
   two workers, each in a fresh process: the parent's and its largest worker's.
4. Batches from the store (``--host``): images/s that ``HostBatchStream`` gathers at 128 pixels
   from the memory-mapped store (page cache warm, one thread) against what an H200 consumes on
   the official ImageNet schedule (``--consume``: 320 real images per generator iteration at
   40 ms: 8,000 images/s); and a CPU generator iteration with ``data.residence=host`` against
   ``device``, interleaved.

    python benchmarks/bench_data.py --json bench_data.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from sngan import benchmarking
from sngan.batches import HostBatchStream
from sngan.data import load_images

CPU = torch.device("cpu")

CIFAR_SLICE = benchmarking.CIFAR10_SLICE / "train"
FOLDER_SIDE = 64  # larger than every size timed, so each load really resizes


def build_folder(dest: Path, num_images: int, seed: int = 0) -> str:
    """Write ``num_images`` 64x64 PNGs in class folders under ``dest``; returns their origin."""
    rng = np.random.default_rng(seed)
    sources = sorted(CIFAR_SLICE.glob("*/*.png")) if CIFAR_SLICE.is_dir() else []
    for i in range(num_images):
        if sources:
            path = sources[i % len(sources)]
            cls = path.parent.name
            # Each pass over the slice gets its own flip, shift and tint: distinct files and
            # PNG sizes, as a real folder has, not one image copied ten times.
            variant = i // len(sources)
            img = Image.open(path).convert("RGB").resize((FOLDER_SIDE, FOLDER_SIDE), Image.BICUBIC)
            pixels = np.asarray(img).astype(np.int16)
            if variant % 2:
                pixels = pixels[:, ::-1]
            pixels = np.roll(pixels, variant, axis=0) + rng.integers(-8, 9, 3)
        else:
            cls = f"class{i % 10}"
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            pixels = np.asarray(
                Image.fromarray(coarse).resize((FOLDER_SIDE, FOLDER_SIDE), Image.BICUBIC)
            )
        (dest / cls).mkdir(parents=True, exist_ok=True)
        out = np.clip(pixels, 0, 255).astype(np.uint8)
        Image.fromarray(out).save(dest / cls / f"{i:06d}.png")
    return f"cifar10 slice ({len(sources)} PNGs) upscaled and varied" if sources else "random"


def timed_s(fn) -> tuple[float, object]:
    """Seconds ``fn()`` took, and what it returned (loads run on the CPU: nothing to sync)."""
    result, seconds = benchmarking.timed(fn, CPU)
    return seconds, result


def summary(seconds: list[float]) -> dict:
    """``benchmarking.summary`` of the timings, and every run."""
    return {**benchmarking.summary(seconds), "runs": seconds}


def entry_bytes(cache: Path) -> int:
    """Bytes of the cache entries (.npy and .json) in one cache directory."""
    return sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".npy", ".json"))


def time_loads(load, cache_root: Path, name: str, repeats: int) -> dict:
    """First loads (each with an empty cache) and second loads (hits) of ``load(cache_dir)``."""
    first, second = [], []
    for r in range(repeats):
        cache = cache_root / f"{name}-{r}"
        seconds, (images, _) = timed_s(lambda cache=cache: load(cache))
        first.append(seconds)
    shape = tuple(images.shape)
    for _ in range(repeats):
        seconds, (hit, _) = timed_s(lambda: load(cache))
        second.append(seconds)
    assert torch.equal(hit, images), "the cache gave other images than the decode"
    return {
        "shape": list(shape),
        "first_load": summary(first),
        "second_load": summary(second),
        "ratio": statistics.median(first) / statistics.median(second),
        "cache_bytes": entry_bytes(cache),
    }


def time_read_modes(cache: Path, repeats: int) -> dict:
    """A cache entry read with np.load against a memory map copied out in full (as .to() does)."""
    (npy,) = cache.glob("*.npy")
    plain, mapped, mapped_open = [], [], []
    for _ in range(repeats):
        plain.append(timed_s(lambda: np.load(npy))[0])
        mapped_open.append(timed_s(lambda: np.load(npy, mmap_mode="r"))[0])
        mapped.append(timed_s(lambda: np.array(np.load(npy, mmap_mode="r")))[0])
    return {
        "np_load_s": summary(plain),
        "mmap_open_only_s": summary(mapped_open),
        "mmap_read_all_s": summary(mapped),
    }


def write_stl10_like(root: Path, num_images: int, seed: int = 0) -> None:
    """Random 96x96 images as STL-10's ``unlabeled_X.bin``, written in chunks."""
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(base / "unlabeled_X.bin", "wb") as f:
        for start in range(0, num_images, 1000):
            n = min(1000, num_images - start)
            f.write(rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tobytes())


# -- 2. preparing ImageNet-like photos ------------------------------------------------------------

PHOTO_SIDES = (300, 500)  # each side drawn uniformly in this range, as ImageNet's photos
TEXTURE = {"smooth": 0.0, "textured": 20.0}  # noise sigma added to the upscaled slice


def build_photos(dest: Path, num_images: int, texture: float, seed: int = 0) -> dict:
    """``num_images`` JPEGs of 300-500 pixels a side in 10 class folders; their bits per pixel."""
    rng = np.random.default_rng(seed)
    sources = sorted(CIFAR_SLICE.glob("*/*.png")) if CIFAR_SLICE.is_dir() else []
    size = pixels = 0
    for i in range(num_images):
        w, h = (int(v) for v in rng.integers(PHOTO_SIDES[0], PHOTO_SIDES[1] + 1, 2))
        if sources:
            img = Image.open(sources[i % len(sources)]).convert("RGB")
        else:
            img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        arr = np.asarray(img.resize((w, h), Image.BICUBIC)).astype(np.int16)
        if texture:
            arr = arr + rng.normal(0, texture, arr.shape).round().astype(np.int16)
        folder = dest / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        size += path.stat().st_size
        pixels += w * h
    return {
        "images": num_images,
        "bits_per_pixel": 8 * size / pixels,
        "mean_kB": size / num_images / 1e3,
    }


def decode_folder_before(folder: Path, image_size: int) -> torch.Tensor:
    """The single-process decode sngan had before the store (its data.decode_folder): every
    image fully decoded, torchvision's Resize and CenterCrop, one process, one tensor in RAM."""
    import torchvision
    from torchvision.transforms import v2

    dataset = torchvision.datasets.ImageFolder(str(folder))
    transform = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])
    images = torch.empty((len(dataset), 3, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(dataset.samples):
        with Image.open(path) as img:
            images[i] = transform(img.convert("RGB"))
    return images


PREP_CHILD = """
import sys, time
import torchvision  # its import (seconds) is not preparation; the listing it does is
from sngan.data import folder_store
start = time.perf_counter()
folder_store(sys.argv[1], image_size=128, cache_dir=sys.argv[2], workers=int(sys.argv[3]))
print(time.perf_counter() - start)
"""


def prepare_seconds(folder: Path, cache: Path, workers: int) -> float:
    """Seconds ``folder_store`` takes to prepare ``folder`` at 128 px, in a fresh process (as
    sngan-prepare: whose spawned workers import sngan, not this script)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", PREP_CHILD, str(folder), str(cache), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(cache)
    return float(proc.stdout.strip().splitlines()[-1])


def time_preparation(folder: Path, n: int, cache_root: Path, repeats: int) -> dict:
    """images/s of the decode before the store, and of the store with 1 and 2 workers."""
    runs: dict[str, list[float]] = {"before": [], "store, 1 worker": [], "store, 2 workers": []}
    for r in range(repeats):  # interleaved: drift lands on all three
        runs["before"].append(timed_s(lambda: decode_folder_before(folder, 128))[0])
        runs["store, 1 worker"].append(prepare_seconds(folder, cache_root / f"1-{r}", 1))
        runs["store, 2 workers"].append(prepare_seconds(folder, cache_root / f"2-{r}", 2))
    rates = {k: [n / t for t in v] for k, v in runs.items()}
    before, one, two = (statistics.median(rates[k]) for k in runs)  # in the order of runs
    return {
        "seconds": {k: summary(v) for k, v in runs.items()},
        "images_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "per_core_vs_before": one / before,
        "two_workers_vs_one": two / one,
        # 16 cores at the 2-worker efficiency per worker (decoding only: the files' reads from
        # disk, 140 GB for ImageNet, come on top where the disk is slower).
        "imagenet_minutes_on_16_cores": 1_281_167 / (one * 16 * (two / one) / 2) / 60,
    }


# -- 3. peak memory while preparing ---------------------------------------------------------------

RSS_CHILD = """
import json, os, sys, threading, time
from pathlib import Path
from sngan.data import folder_store

def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def workers(pid):
    # The spawned workers, once they run their own program: a child caught between its fork
    # and its exec still shows the parent's pages.
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in cmdline:
                out.append(kid)
    return out

peak = {"total": 0, "parent": 0, "worker": 0}
done = threading.Event()

def sample():
    me = os.getpid()
    while not done.is_set():
        parent, kids = rss_kib(me), [rss_kib(k) for k in workers(me)]
        peak["total"] = max(peak["total"], parent + sum(kids))
        peak["parent"] = max(peak["parent"], parent)
        peak["worker"] = max([peak["worker"], *kids])
        time.sleep(0.05)

before = rss_kib(os.getpid())
thread = threading.Thread(target=sample, daemon=True)
thread.start()
folder_store(sys.argv[1], image_size=128, cache_dir=sys.argv[2], workers=2)
done.set()
thread.join()
print(json.dumps({
    "parent_before_mib": before / 1024,
    "parent_mib": peak["parent"] / 1024,
    "largest_worker_mib": peak["worker"] / 1024,
    "total_mib": peak["total"] / 1024,
}))
"""


def peak_rss(folder: Path, cache: Path) -> dict:
    """Peak RSS (VmRSS sampled every 50 ms: the parent, its largest worker, and all together) of
    a fresh process preparing ``folder`` at 128 px with two workers. (``ru_maxrss`` of the
    workers would be no use: a spawned child starts as a fork, and keeps the parent's peak.)"""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(folder), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    store_bytes = sum(p.stat().st_size for p in cache.glob("*.npy"))
    shutil.rmtree(cache)
    # What preparing adds to the process that asked for it (torch and the rest were there).
    growth = out["total_mib"] - out["parent_before_mib"]
    return {**out, "growth_mib": growth, "store_mib": store_bytes / 2**20}


# -- 4. batches from the store --------------------------------------------------------------------


def host_gather_rate(folder: Path, cache: Path, batch: int, seconds: float) -> dict:
    """Images/s the host gathers for ``HostBatchStream`` at 128 px from the store's memory map,
    on one thread: its per-batch work (``gather_into`` a buffer, in the stream's permutation
    order), which its background thread must do faster than the GPU consumes batches. (The
    conversion to float, and on a GPU the copy, happen on the device.)"""
    images, labels = load_images("folder", root=folder, image_size=128, cache_dir=cache)
    np.asarray(images.numpy()).sum()  # the page cache warm, as on a node after the first epoch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stream = HostBatchStream(images, labels, device=CPU, seed=0)
        buffer = torch.empty((batch, *images.shape[1:]), dtype=torch.uint8)
        served, pos, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            pos = pos if pos + batch <= len(images) else 0
            stream.gather_into(buffer, pos, batch, (0, 1))
            served, pos = served + batch, pos + batch
        elapsed = time.perf_counter() - start
        stream.close()
    finally:
        torch.set_num_threads(threads)
    return {"batch": batch, "images_per_s": served / elapsed, "seconds": elapsed}


def iteration_host_vs_device(folder: Path, cache: Path, n: int, repeats: int) -> dict:
    """One CPU generator iteration (the standard CNN at 32 px, batches of 64) with the set on the
    device against gathered from the store on the host, interleaved."""
    from sngan.build import build_train_state, training_images
    from sngan.train import generator_iteration

    common = [
        "data=folder",
        f"data.root={folder}",
        f"data.cache_dir={cache}",
        "data.image_size=32",
        "progress=false",
        "device=cpu",
        f"optim.d_batch_size={min(64, n)}",
        f"optim.g_batch_size={min(128, n)}",
    ]
    cfg = benchmarking.preset_config("dcgan", common)
    images, labels = training_images(cfg)
    states = {
        residence: build_train_state(
            benchmarking.preset_config("dcgan", [*common, f"data.residence={residence}"]),
            images,
            labels,
            CPU,
        )
        for residence in ("device", "host")
    }
    it = {"device": 0, "host": 0}

    def step(residence: str):
        def run() -> None:
            generator_iteration(states[residence], it[residence])
            it[residence] += 1

        return run

    times = benchmarking.interleaved_times(
        {k: step(k) for k in states}, device=CPU, warmup=1, repeats=repeats, number=1
    )
    ratios = benchmarking.paired_ratios(times, "host", "device")
    return {
        "device_s": summary(times["device"]),
        "host_s": summary(times["host"]),
        "host_over_device": summary(ratios),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = benchmarking.script_parser(__doc__)
    parser.add_argument("--images", type=int, default=10_000, help="PNGs in the folder; 0: skip")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48], help="image_size values")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads of each kind")
    parser.add_argument("--stl10-images", type=int, default=10_000, help="0: skip STL-10")
    parser.add_argument("--photos", type=int, default=10_000, help="JPEGs to prepare; 0: skip")
    parser.add_argument(
        "--kinds", nargs="+", choices=sorted(TEXTURE), default=list(TEXTURE), help="photo kinds"
    )
    parser.add_argument("--prep-repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--rss-images", type=int, nargs="*", default=[10_000, 40_000], help="peak RSS at these"
    )
    parser.add_argument("--host", type=int, default=1, help="1: time batches from the store")
    parser.add_argument("--host-seconds", type=float, default=10.0, help="gathering time")
    parser.add_argument("--consume", type=float, default=8000.0, help="images/s an H200 uses")
    parser.add_argument("--iteration-repeats", type=int, default=15, help="rounds of (4)")
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_data-", dir=args.workdir))
    try:
        results: dict = {
            "machine": {
                **benchmarking.machine(CPU),
                "numpy": np.__version__,
                "pillow": PIL.__version__,
            },
            "sizes": {},
        }
        folder = workdir / "folder"
        if args.images:
            build_s, origin = timed_s(lambda: build_folder(folder, args.images))
            side = FOLDER_SIDE
            print(f"built {args.images} {side}x{side} PNGs ({origin}) in {build_s:.1f} s")
            results["folder"] = {"images": args.images, "side": side, "origin": origin}
        for size in args.sizes if args.images else []:
            row = time_loads(
                lambda cache, size=size: load_images(
                    "folder", root=folder, image_size=size, cache_dir=cache
                ),
                workdir / "cache",
                f"folder-{size}",
                args.repeats,
            )
            row["read_modes"] = time_read_modes(
                workdir / "cache" / f"folder-{size}-{args.repeats - 1}", args.repeats
            )
            results["sizes"][str(size)] = row
        if args.stl10_images:
            write_stl10_like(workdir / "stl10", args.stl10_images)
            row = time_loads(
                lambda cache: load_images(
                    "stl10", root=workdir / "stl10", image_size=48, download=False, cache_dir=cache
                ),
                workdir / "cache",
                "stl10-48",
                args.repeats,
            )
            row["images"] = args.stl10_images
            row["first_load_images_per_s"] = args.stl10_images / row["first_load"]["median"]
            results["stl10_48"] = row
        if args.photos:
            results["preparation"] = {}
            for kind in args.kinds:
                texture = TEXTURE[kind]
                photos = workdir / f"photos-{kind}"
                made = build_photos(photos, args.photos, texture)
                print(f"built {args.photos} {kind} JPEGs: {made['bits_per_pixel']:.2f} bits/pixel")
                timing = time_preparation(photos, args.photos, workdir / "prep", args.prep_repeats)
                results["preparation"][kind] = {**made, **timing}
            textured = workdir / f"photos-{args.kinds[-1]}"
            if args.host:
                store = workdir / "store"
                batch = min(64, args.photos)  # the official schedule's per-GPU D batch is 16-64
                results["host_batches"] = host_gather_rate(
                    textured, store, batch, args.host_seconds
                )
                results["host_batches"]["consumption_images_per_s"] = args.consume
                results["host_batches"]["vs_consumption"] = (
                    results["host_batches"]["images_per_s"] / args.consume
                )
                results["iteration"] = iteration_host_vs_device(
                    textured, workdir / "store32", args.photos, args.iteration_repeats
                )
        if args.rss_images:
            results["peak_rss"] = {}
            for n in args.rss_images:
                photos = workdir / f"rss-{n}"
                build_photos(photos, n, TEXTURE["textured"], seed=1)
                results["peak_rss"][str(n)] = peak_rss(photos, workdir / f"rss-cache-{n}")
                shutil.rmtree(photos)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n" + benchmarking.machine_line(results["machine"]))
    print(
        f"{'load':<22} {'first s':>8} {'second s':>9} {'ratio':>7} {'cache MB':>9}"
        f" {'np.load s':>10} {'mmap+read s':>12}"
    )
    rows = [(f"folder {n} @ {s}px", r) for s, r in results["sizes"].items() for n in [args.images]]
    if "stl10_48" in results:
        rows.append((f"stl10-like {args.stl10_images} @ 48", results["stl10_48"]))
    for label, r in rows:
        line = (
            f"{label:<22} {r['first_load']['median']:>8.2f} {r['second_load']['median']:>9.3f}"
            f" {r['ratio']:>6.0f}x {r['cache_bytes'] / 1e6:>9.1f}"
        )
        if "read_modes" in r:
            modes = r["read_modes"]
            line += f" {modes['np_load_s']['median']:>10.3f}"
            line += f" {modes['mmap_read_all_s']['median']:>12.3f}"
        print(line)
    if "stl10_48" in results:
        print(f"stl10-like resize: {results['stl10_48']['first_load_images_per_s']:.0f} images/s")
    for kind, r in results.get("preparation", {}).items():
        rate = r["images_per_s"]
        print(
            f"prepare {r['images']} {kind} JPEGs ({r['bits_per_pixel']:.1f} bpp) at 128 px: "
            f"before {rate['before']:.0f}, store 1 worker {rate['store, 1 worker']:.0f}, "
            f"2 workers {rate['store, 2 workers']:.0f} images/s; per core "
            f"{r['per_core_vs_before']:.2f}x before, 2 workers {r['two_workers_vs_one']:.2f}x "
            f"1; ImageNet on 16 cores: {r['imagenet_minutes_on_16_cores']:.1f} min"
        )
    for n, r in results.get("peak_rss", {}).items():
        print(
            f"peak RSS preparing {n} at 128 px: {r['total_mib']:.0f} MiB in all (parent "
            f"{r['parent_mib']:.0f}, {r['parent_before_mib']:.0f} of it before; largest worker "
            f"{r['largest_worker_mib']:.0f}): {r['growth_mib']:.0f} MiB for preparing; the store "
            f"{r['store_mib']:.0f} MiB"
        )
    if "host_batches" in results:
        h = results["host_batches"]
        print(
            f"host batches at 128 px, one thread: {h['images_per_s']:.0f} images/s, "
            f"{h['vs_consumption']:.1f}x the {h['consumption_images_per_s']:.0f} images/s an "
            "H200 consumes"
        )
        i = results["iteration"]["host_over_device"]
        print(
            f"CPU generator iteration, residence=host / device: {i['median']:.3f} "
            f"(IQR {i['q1']:.3f}-{i['q3']:.3f})"
        )
    return benchmarking.write_record(args.json, results)


if __name__ == "__main__":
    main()
