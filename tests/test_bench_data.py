"""benchmarks/bench_data.py at toy size: the image store's first and second load are both timed,
the second gives back the decoded images (the script asserts it) and is read from the store;
the preparation of photos, its peak memory and batches from the store are measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_data  # noqa: E402


def test_bench_data_times_first_and_second_load(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "bench_data.json"
    results = bench_data.main(
        [
            "--images",
            "12",
            "--sizes",
            "16",
            "24",
            "--repeats",
            "2",
            "--stl10-images",
            "20",
            "--photos",
            "12",
            "--prep-repeats",
            "1",
            "--rss-images",
            "12",
            "--host-seconds",
            "0.5",
            "--iteration-repeats",
            "2",
            "--workdir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert out.exists()
    assert set(results["sizes"]) == {"16", "24"}
    for size, row in results["sizes"].items():
        assert row["shape"] == [12, 3, int(size), int(size)]
        assert row["first_load"]["n"] == 2 and row["second_load"]["n"] == 2
        assert row["cache_bytes"] >= 12 * 3 * int(size) ** 2  # the uint8 pixels are cached
    assert results["stl10_48"]["shape"] == [20, 3, 48, 48]
    assert results["machine"]["torch"]
    for kind in ("smooth", "textured"):
        prep = results["preparation"][kind]
        assert set(prep["images_per_s"]) == {"before", "store, 1 worker", "store, 2 workers"}
        assert all(rate > 0 for rate in prep["images_per_s"].values())
        assert prep["bits_per_pixel"] > 0
    assert (
        results["preparation"]["textured"]["bits_per_pixel"]
        > 2 * (results["preparation"]["smooth"]["bits_per_pixel"])
    )
    assert results["peak_rss"]["12"]["total_mib"] >= results["peak_rss"]["12"]["parent_mib"] > 0
    assert results["host_batches"]["images_per_s"] > 0
    assert results["iteration"]["host_over_device"]["n"] == 2
    # the work directory is removed, and the table names every load
    assert not any(tmp_path.glob("bench_data-*"))
    table = capsys.readouterr().out
    assert "folder 12 @ 24px" in table and "stl10-like 20 @ 48" in table
    assert "prepare 12 textured JPEGs" in table and "residence=host / device" in table
