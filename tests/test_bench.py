"""seqstore bench on a tiny generated dataset: every figure present, JSON and chart written.

Speed is the benchmark's business, not the tests': nothing here asserts a rate.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seqstore
from seqstore.bench import order_quality, shuffle_quality
from seqstore.engine.plan import EpochSpec
from seqstore.testing import make_image_folder, one_rank_spec

ROOT = str(Path(seqstore.__file__).parents[1])


BENCH_ARGS = [
    "--formats",
    "lmdb,folder,webdataset,parquet",
    "--workers",
    "1",
    "--batch-size",
    "16",
    "--image-size",
    "32",
    "--repeat",
    "1",
    "--min-seconds",
    "0",
    # Below the images' 96 px: every image of that store is re-encoded smaller.
    "--reencode-max-side",
    "48",
]


def run_bench_command(
    images: Path, out: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``seqstore bench`` as a user runs it, in a process of its own: what its worker and
    measurement processes print reaches this output too."""
    return subprocess.run(
        [sys.executable, "-m", "seqstore", "bench", str(images), *BENCH_ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    return make_image_folder(root / "images", classes=4, per_class=24, max_side=96)


@pytest.fixture(scope="module")
def bench_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench") / "out"
    p = run_bench_command(images, out)
    assert p.returncode == 0, p.stderr
    return out, p.stdout + p.stderr


def test_table_and_json_hold_every_figure(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    result = json.loads((out / "bench.json").read_text())
    assert result["records"] == 96 and result["machine"]["cpus"] >= 1
    assert result["machine"]["versions"]["torch"]
    rows = {r["name"]: r for r in result["rows"]}
    expected = {"lmdb", "folder", "lmdb 48px q90", "lmdb float32 cpu", "ceiling"}
    expected.add("lmdb mixed 1:1")  # what mixing costs
    expected |= {"webdataset", "parquet"}  # other projects' formats, written and read in place
    if importlib.util.find_spec("PIL") is not None:
        expected.add("torchvision-style")
    assert expected <= set(rows)
    for name in ("lmdb", "folder", "lmdb 48px q90"):
        assert set(rows[name]["stages_ms"]) == {
            "read",
            "verify",
            "decode (full size)",
            "decode + transform",
            "collate + normalize",
        }
        assert all(v > 0 for v in rows[name]["stages_ms"].values())
    for name in expected:
        assert name in printed
    assert "shuffle quality" in printed and "stage ms per image" in printed
    cost = result["checksum_cost"]
    assert cost["store"] == "lmdb"
    assert "checksum cost (lmdb Loader): " in printed


def test_rates_agree_with_their_runs_and_the_ceiling(bench_run: tuple[Path, str]) -> None:
    out, _ = bench_run
    result = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    ceiling = rows["ceiling"]["images_per_s"]
    for row in rows.values():
        # --repeat 1: one timed run, one first batch and one memory peak per row
        assert len(row["runs"]) == len(row["ttfb_runs"]) == len(row["rss_runs"]) == 1
        assert row["images_per_s"] == row["runs"][0]
        assert row["first_batch_s"] == row["ttfb_runs"][0]
        assert row["peak_rss_mb"] == row["rss_runs"][0]
        assert row["ratio_to_ceiling"] == pytest.approx(row["images_per_s"] / ceiling)
        # a process that has imported torch holds tens of MB of its own
        assert 20 < row["peak_rss_mb"] < 4000
        assert 0 < row["first_batch_s"] < 60
    assert rows["ceiling"]["ratio_to_ceiling"] == 1.0
    for name in ("lmdb", "folder"):
        row = rows[name]
        # One worker decodes every image: it cannot beat that stage's own rate by far.
        per_image_ms = row["stages_ms"]["decode + transform"]
        assert 0 < row["images_per_s"] < 3 * 1000 / per_image_ms
        assert row["read_mb_per_s"] == pytest.approx(
            row["read_records_per_s"] * result["megabytes"] / result["records"]
        )
        assert row["read_records_per_s"] > row["images_per_s"]  # reading is a part of loading


def test_checksum_cost_agrees_with_its_passes(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    cost = json.loads((out / "bench.json").read_text())["checksum_cost"]
    assert len(cost["runs_on"]) == len(cost["runs_off"]) == cost["passes"] == 6
    assert cost["verify_on"] == max(cost["runs_on"]) and cost["verify_off"] == max(cost["runs_off"])
    assert cost["percent"] == pytest.approx(100 * (1 - cost["verify_on"] / cost["verify_off"]))
    pairs = sorted(
        100 * (1 - a / b) for a, b in zip(cost["runs_on"], cost["runs_off"], strict=True)
    )
    assert cost["percent_pairs_median"] == pytest.approx((pairs[2] + pairs[3]) / 2)
    assert cost["batches_per_pass"] == 96 // 16 - 1  # an epoch, less its untimed first batch
    assert f"checksum cost (lmdb Loader): {cost['percent']:.1f}%" in printed


def test_shuffle_quality_of_the_stores_is_within_its_bounds(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    rows = {r["name"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    for name in ("lmdb", "folder"):
        s = rows[name]["shuffle"]
        # 4 classes, batches of 16
        assert 1 <= s["classes_per_batch"] <= 4 and 1 <= s["random_classes_per_batch"] <= 4
        assert 0 <= s["displacement"] < 1
        assert 0.25 < s["random_displacement"] < 0.42
        line = f"{name:<22}{s['displacement']:>13.3f}{s['random_displacement']:>8.3f}"
        assert line in printed


def test_chart_written_when_matplotlib_is_there(bench_run: tuple[Path, str]) -> None:
    pytest.importorskip("matplotlib")
    out, _ = bench_run
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorpack_rows_when_tensorpack_is_there(bench_run: tuple[Path, str]) -> None:
    pytest.importorskip("tensorpack")
    out, printed = bench_run
    names = {r["name"] for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert {"tensorpack file", "tensorpack pipeline"} <= names
    assert "tensorpack file / tensorpack pipeline" in printed
    # tensorpack prints this on import without TensorFlow, and its worker processes warn
    # about python-prctl: nothing a bench user needs to read
    assert "tensorflow" not in printed.lower() and "prctl" not in printed


def test_reencoded_store_is_measured_with_its_size(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    rows = {r["name"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    original = seqstore.open(out / "stores" / "lmdb")
    smaller = seqstore.open(out / "stores" / "lmdb-48px-q90")
    # the same records in the same order, every image now at most 48 px on its longer side
    assert [r.key for r in smaller.read_block(0, len(smaller))] == [
        r.key for r in original.read_block(0, len(original))
    ]
    assert all(max(r.width, r.height) <= 48 for r in smaller.read_block(0, len(smaller)))
    assert smaller.manifest.provenance.options["max_side"] == 48
    on_disk = sum(f.stat().st_size for f in (out / "stores" / "lmdb").iterdir()) / 1e6
    assert rows["lmdb"]["store_mb"] == pytest.approx(on_disk)
    assert 0 < rows["lmdb 48px q90"]["store_mb"] < rows["lmdb"]["store_mb"]
    assert rows["lmdb 48px q90"]["images_per_s"] > 0
    ratio = rows["lmdb 48px q90"]["images_per_s"] / rows["lmdb"]["images_per_s"]
    size = rows["lmdb 48px q90"]["store_mb"] / rows["lmdb"]["store_mb"]
    assert f"lmdb 48px q90 / lmdb: {ratio:.2f}x the images/s from {size:.2f}x the bytes" in printed


BLOCK = """
import sys
# As after `pip install torch==2.13.0 -e .` alone: neither Pillow nor tensorpack installed.
sys.modules["PIL"] = None
sys.modules["tensorpack"] = None
"""


def test_bench_runs_without_pillow_and_tensorpack(images: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCK)
    p = run_bench_command(
        images, tmp_path / "out", env={"PYTHONPATH": f"{tmp_path / 'blocker'}{os.pathsep}{ROOT}"}
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    names = {r["name"] for r in result["rows"]}
    assert {"lmdb", "folder", "lmdb 48px q90", "ceiling"} <= names
    assert not names & {"torchvision-style", "tensorpack file", "tensorpack pipeline"}
    notes = [line for line in p.stdout.splitlines() if "not installed" in line]
    assert notes[0] == (
        "note: left out, their packages are not installed: "
        "torchvision-style (pip install 'seqstore[pil]'), "
        "tensorpack pipeline (pip install 'seqstore[tensorpack]')"
    )


def test_converted_stores_are_reused(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    assert "converting" in printed
    store = out / "stores" / "lmdb" / "seqstore.json"
    before = store.stat().st_mtime_ns
    from seqstore.bench import prepare_stores
    from seqstore.config import BenchConfig

    cfg = BenchConfig(
        src=Path(json.loads((out / "bench.json").read_text())["config"]["src"]),
        formats=["lmdb"],
        out=out,
        baselines=False,
    )
    prepare_stores(cfg)
    assert store.stat().st_mtime_ns == before


def _spec_of(labels: np.ndarray, block: int, capacity: int, workers: int) -> EpochSpec:
    return one_rank_spec(
        len(labels), block=block, capacity=capacity, workers=workers, batch_size=32
    )


def _quality(labels: np.ndarray, block: int, capacity: int, workers: int) -> dict[str, float]:
    return shuffle_quality(labels, _spec_of(labels, block, capacity, workers))


def test_shuffle_quality_tells_sorted_from_mixed_stores() -> None:
    labels = np.repeat(np.arange(10), 100)  # a class-sorted folder
    small = _quality(labels, block=50, capacity=20, workers=1)
    large = _quality(labels, block=50, capacity=1000, workers=1)
    assert (
        small["classes_per_batch"]
        < large["classes_per_batch"]
        <= small["random_classes_per_batch"] + 0.5
    )
    assert 0.25 < small["random_displacement"] < 0.42


def test_order_quality_of_known_orders() -> None:
    labels = np.repeat(np.arange(10), 100)
    n = len(labels)
    # Storage order: nothing moves; 8 of the 32 batches of 32 straddle a class boundary
    # (800 = 25 * 32 does not).
    assert order_quality(np.arange(n), labels, 32) == (0.0, 1.25)
    # Reversed: record i moves |n - 1 - 2i|, n / 2 on average.
    assert order_quality(np.arange(n)[::-1], labels, 32) == (0.5, 1.25)
    disp, classes = order_quality(np.random.default_rng(7).permutation(n), labels, 32)
    assert 0.3 < disp < 0.37  # 1/3 for a random permutation
    assert 8 < classes <= 10  # 10 classes; a batch of 32 holds 9.6 of them on average
    # Every label distinct: a batch holds as many classes as records, the last one 8.
    assert order_quality(np.arange(n), np.arange(n), 32)[1] == (31 * 32 + 8) / 32


def test_shuffle_quality_golden_values() -> None:
    """Pinned: the engine's block order, shuffle buffer and worker round robin as the Loader
    runs them. A change of any of them changes these figures."""
    labels = np.repeat(np.arange(10), 100)
    random = {"random_displacement": 0.3355866666666667, "random_classes_per_batch": 9.675450}
    unshuffled = _quality(labels, block=1000, capacity=1, workers=1)
    assert unshuffled == pytest.approx({"displacement": 0.0, "classes_per_batch": 1.25, **random})
    # Whole batches per worker: as before (scheme 1 gave these two figures too).
    two = _quality(labels, block=50, capacity=20, workers=2)
    assert two == pytest.approx({"displacement": 0.317694, "classes_per_batch": 2.40625, **random})
    # Scheme 2's full buffer: the store fits, so it comes out uniformly (scheme 1: 8.69).
    one = _quality(labels, block=50, capacity=1000, workers=1)
    assert one == pytest.approx({"displacement": 0.34609, "classes_per_batch": 9.4375, **random})
    # Split over the two workers, as the Loader reads a store in class order: 3.94.
    split = dataclasses.replace(_spec_of(labels, block=50, capacity=20, workers=2), split=True)
    assert shuffle_quality(labels, split)["classes_per_batch"] == pytest.approx(3.9375)


def test_a_changed_source_is_converted_again(tmp_path: Path) -> None:
    import shutil

    import seqstore
    from seqstore.bench import prepare_stores
    from seqstore.config import BenchConfig
    from seqstore.testing import make_image_folder

    src = make_image_folder(tmp_path / "images", classes=2, per_class=3, max_side=48)
    cfg = BenchConfig(src=src, formats=["lmdb"], out=tmp_path / "out", baselines=False)
    store = prepare_stores(cfg)[0]["lmdb"]
    made = seqstore.open(store).manifest.provenance.created
    assert seqstore.open(prepare_stores(cfg)[0]["lmdb"]).manifest.provenance.created == made
    first = sorted((src / "class00").iterdir())[0]
    shutil.copy(first, src / "class00" / "added.JPEG")  # one more image
    again = seqstore.open(prepare_stores(cfg)[0]["lmdb"])
    assert len(again) == 7 and again.manifest.provenance.created != made
