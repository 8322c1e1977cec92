"""scripts/bench_data.py at toy size: the image cache's first and second load are both timed,
the second gives back the decoded images (the script asserts it) and is read from the cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
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
    # the work directory is removed, and the table names every load
    assert not any(tmp_path.glob("bench_data-*"))
    table = capsys.readouterr().out
    assert "folder 12 @ 24px" in table and "stl10-like 20 @ 48" in table
