"""The soak (bench/soak.py): its verdict on made-up samples, and a short
real run that must pass and leave its CSV, plot and summary."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402

MiB = 2**20


def samples(n: int = 100, **grow: float) -> list[dict]:
    """n seconds of steady gauges; `grow` adds so much per second to a gauge."""
    rows = []
    for t in range(n):
        under_load = t < n - soak.IDLE_SAMPLES
        row = {
            "t": float(t),
            "rss": 40 * MiB + (t % 3) * 100_000,
            "fds": 12 + t % 2,
            "slots_used": (20 + t % 5) if under_load else 0,
            "arena_in_use": (t % 2) if under_load else 0,
            "ext_in_use": 0,
            "bufs_out": (t % 3) if under_load else 0,
            "connections": (20 + t % 5) if under_load else 0,
            "tasks": 1,
        }
        for key, per_second in grow.items():
            row[key] += int(per_second * t)
        rows.append(row)
    return rows


def test_steady_samples_pass() -> None:
    lines, failures = soak.judge(samples(), warmup=20)
    assert not failures, failures
    assert any(line.startswith("RSS:") for line in lines)


@pytest.mark.parametrize(
    "grow,words",
    [
        ({"rss": 0.2 * MiB}, "RSS grew"),
        ({"fds": 0.5}, "fds climbed"),
        ({"tasks": 0.2}, "tasks climbed"),
        ({"bufs_out": 0.3}, "bufs_out climbed"),
    ],
)
def test_a_climbing_gauge_fails(grow: dict, words: str) -> None:
    _, failures = soak.judge(samples(**grow), warmup=20)
    assert any(words in f for f in failures), failures


def test_rss_that_climbs_only_in_the_last_half_fails_on_its_slope() -> None:
    """A leak that starts late: the first-against-last-fifth check allows it
    (+3 MiB < 4 MiB), the last half's fitted line does not (+3 MiB > 2 MiB)."""
    rows = samples(200)
    start = 100
    for r in rows:
        r["rss"] += int(max(0.0, r["t"] - start) * 3 * MiB / (200 - soak.IDLE_SAMPLES - start))
    lines, failures = soak.judge(rows, warmup=20)
    assert not any("RSS grew" in f for f in failures), failures
    assert any("still climbing in the last half" in f for f in failures), failures


def test_rss_that_rose_and_flattened_passes() -> None:
    """What converges (a rise during the first half that stops) is not a leak."""
    rows = samples(200)
    for r in rows:
        r["rss"] += int(min(r["t"], 90) * 3.9 * MiB / 90)
    lines, failures = soak.judge(rows, warmup=20)
    assert not failures, failures
    assert any(line.startswith("RSS over the last half") for line in lines)


def test_the_memory_split_names_the_part_that_grows() -> None:
    rows = samples(200)
    for r in rows:
        r |= {"rss_anon": 30 * MiB, "rss_file": 10 * MiB + int(r["t"] * 1000), "malloc_in_use": 5 * MiB}
    lines, _ = soak.judge(rows, warmup=20)
    file_line = next(line for line in lines if "file-backed RSS" in line)
    anon_line = next(line for line in lines if "anonymous RSS" in line)
    assert "+0.00 MiB after warm-up" in anon_line and "+0.00 MiB/hour" in anon_line
    # 1000 B/s: 3.43 MiB per hour
    assert "last half +3.43 MiB/hour" in file_line, file_line


def test_resources_held_after_the_load_fail() -> None:
    rows = samples()
    rows[-1]["slots_used"] = 3
    _, failures = soak.judge(rows, warmup=20)
    assert any("still held" in f for f in failures), failures


def test_a_short_soak_passes_and_leaves_its_files(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "12", "--rate", "500", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    with open(tmp_path / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10 and {"rss", "fds", "slots_used", "arena_in_use", "bufs_out"} <= set(rows[0])
    memory = {"rss_anon", "rss_file", "malloc_in_use", "malloc_free", "malloc_heap", "py_blocks", "pymalloc_arenas"}
    assert memory <= set(rows[0])
    assert int(rows[-1]["pymalloc_arenas"]) > 0 and int(rows[-1]["malloc_in_use"]) > 0
    assert (tmp_path / "summary.txt").read_text().strip().endswith("no upward trend")
    plot_line = next(line for line in r.stdout.splitlines() if line.startswith(("plot:", "no plot:")))
    assert plot_line.startswith("plot:") == (tmp_path / "soak.png").exists()
