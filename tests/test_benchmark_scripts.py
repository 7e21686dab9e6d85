"""The benchmark scripts the README shows run as written (on small data, one repetition)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import seqstore
from seqstore.testing import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(Path(seqstore.__file__).parents[1])}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=300,
        check=False,
    )


def test_storage_benchmark_times_every_conversion_and_read(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = _run(ROOT / "benchmarks" / "storage.py", src, "--repeat", "1", "--workdir", tmp_path)
    assert p.returncode == 0, p.stderr
    for row in (
        "convert -> lmdb --check header",
        "convert -> hdf5 --check header",
        "convert -> lmdb --check decode",
        "convert -> lmdb --check decode -w2",
        "seqstore lmdb read_block",
        "seqstore hdf5 read_block",
    ):
        assert row in p.stdout, row


def test_fault_benchmark_prints_its_table() -> None:
    p = _run(ROOT / "benchmarks" / "faults.py", "--tries", "1", "--only", "manifest")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("| case") and "silent wrong" in lines[0]
    rows = [line for line in lines[2:] if line.startswith("| manifest")]
    assert len(rows) == 2 and all(" 1 |" in row for row in rows)


def test_loader_benchmark_prints_throughput_first_batch_and_memory(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = _run(ROOT / "benchmarks" / "loader.py", src, "--repeat", "1", "--workdir", tmp_path)
    assert p.returncode == 0, p.stderr
    for row in (
        "seqstore lmdb (uint8, to a GPU)",
        "torchvision-style baseline",
        "ceiling",
        "40 records:",
        "400 records:",
        "buffer  512 MB",
    ):
        assert row in p.stdout, row


def test_plan_benchmark_prints_its_table_and_the_resume() -> None:
    args = ("--records", "100000", "--ranks", "4", "--workers", "2", "--repeat", "1")
    p = _run(ROOT / "benchmarks" / "plan.py", *args)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    row = next(line for line in lines if "plan: 100,000 records, 4 ranks x 2 workers" in line)
    assert row.endswith("| < 1 s, < 100 MB |") and " ms |" in row
    assert any(line.startswith("| baseline: a table of all 2,778 blocks") for line in lines)
    assert "elastic resume: 1,281,167 records stopped after 313 of 626 batches" in p.stdout
    assert "the state carries them in" in p.stdout


def test_hdd_benchmark_measures_cold_and_warm_or_says_why_not(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = _run(
        ROOT / "benchmarks" / "hdd.py",
        src,
        *("--copies", "1", "--repeat", "1", "--only", "lmdb", "--workdir", tmp_path),
    )
    assert p.returncode == 0, p.stderr
    if p.stdout.startswith("skipped: "):  # not root, or no cgroup block-I/O controller
        assert len(p.stdout.splitlines()) == 1
        return
    row = next(line for line in p.stdout.splitlines() if line.startswith("| seqstore lmdb"))
    cold, warm = (float(cell) for cell in row.split("|")[2:4])
    assert cold > 0 and warm > 0
    assert not list(Path("/sys/fs/cgroup/blkio").glob("seqstore-hdd-*"))
