"""Time the image cache: a folder's first load (decode, write the cache) and its second (a hit).

Builds a folder of PNGs (by default 10,000 at 64x64, made from the real CIFAR-10 slice in
shared/ upscaled and varied, or smooth random images where the slice is absent), then times
``load_images("folder", ...)`` at each ``--sizes`` with an empty cache (first load) and again
(second load), ``--repeats`` times each. It also times the two ways of reading a cache entry
(``np.load`` against a memory map read in full) and an STL-10-like binary of ``--stl10-images``
random 96x96 images resized to 48 (first load) and read back from the cache (second load).

    python scripts/bench_data.py --json bench_data.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from sngan import benchmarking
from sngan.data import load_images

CPU = torch.device("cpu")

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_SLICE = REPO_ROOT.parent / "shared" / "data" / "cifar10-slice" / "train"
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="PNGs in the folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48], help="image_size values")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads of each kind")
    parser.add_argument("--stl10-images", type=int, default=10_000, help="0: skip STL-10")
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_data-", dir=args.workdir))
    try:
        folder = workdir / "folder"
        build_s, origin = timed_s(lambda: build_folder(folder, args.images))
        print(f"built {args.images} {FOLDER_SIDE}x{FOLDER_SIDE} PNGs ({origin}) in {build_s:.1f} s")
        results = {
            "machine": {
                **benchmarking.machine(CPU),
                "numpy": np.__version__,
                "pillow": PIL.__version__,
            },
            "folder": {"images": args.images, "side": FOLDER_SIDE, "origin": origin},
            "sizes": {},
        }
        for size in args.sizes:
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
    if args.json:
        benchmarking.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
