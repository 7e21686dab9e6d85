"""seqstore bench on a tiny generated dataset: every figure present, JSON and chart written.

Speed is the benchmark's business, not the tests': nothing here asserts a rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqstore.bench import shuffle_quality
from seqstore.cli import main
from seqstore.testing import make_image_folder


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("bench")
    images = make_image_folder(root / "images", classes=4, per_class=24, max_side=96)
    out = root / "out"
    argv = [
        "bench",
        str(images),
        "--formats",
        "lmdb,folder",
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
        "--out",
        str(out),
    ]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return out, buf.getvalue()


def test_table_and_json_hold_every_figure(bench_run: tuple[Path, str]) -> None:
    out, printed = bench_run
    result = json.loads((out / "bench.json").read_text())
    assert result["records"] == 96 and result["machine"]["cpus"] >= 1
    assert result["machine"]["versions"]["torch"]
    rows = {r["name"]: r for r in result["rows"]}
    expected = {"lmdb", "folder", "lmdb float32 cpu", "torchvision-style", "ceiling"}
    assert expected <= set(rows)
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["first_batch_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["ratio_to_ceiling"] > 0
    for name in ("lmdb", "folder"):
        assert rows[name]["read_records_per_s"] > 0 and rows[name]["read_mb_per_s"] > 0
        assert set(rows[name]["stages_ms"]) == {
            "read",
            "verify",
            "decode (full size)",
            "decode + transform",
            "collate + normalize",
        }
        assert all(v > 0 for v in rows[name]["stages_ms"].values())
        assert 0 < rows[name]["shuffle"]["classes_per_batch"] <= 4
    for name in expected:
        assert name in printed
    assert "shuffle quality" in printed and "stage ms per image" in printed
    cost = result["checksum_cost"]
    assert cost["store"] == "lmdb" and cost["verify_on"] > 0 and cost["verify_off"] > 0
    assert "checksum cost (lmdb Loader): " in printed


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
    prepare_stores(cfg, [])
    assert store.stat().st_mtime_ns == before


def test_shuffle_quality_tells_sorted_from_mixed_stores() -> None:
    labels = np.repeat(np.arange(10), 100)  # a class-sorted folder
    small = shuffle_quality(labels, block=50, capacity=20, batch_size=32, workers=1)
    large = shuffle_quality(labels, block=50, capacity=1000, batch_size=32, workers=1)
    assert (
        small["classes_per_batch"]
        < large["classes_per_batch"]
        <= small["random_classes_per_batch"] + 0.5
    )
    assert 0.25 < small["random_displacement"] < 0.42


def test_a_changed_source_is_converted_again(tmp_path: Path) -> None:
    import shutil

    import seqstore
    from seqstore.bench import prepare_stores
    from seqstore.config import BenchConfig
    from seqstore.testing import make_image_folder

    src = make_image_folder(tmp_path / "images", classes=2, per_class=3, max_side=48)
    cfg = BenchConfig(src=src, formats=["lmdb"], out=tmp_path / "out", baselines=False)
    store = prepare_stores(cfg, [])[0]["lmdb"]
    made = seqstore.open(store).manifest.provenance.created
    assert seqstore.open(prepare_stores(cfg, [])[0]["lmdb"]).manifest.provenance.created == made
    first = sorted((src / "class00").iterdir())[0]
    shutil.copy(first, src / "class00" / "added.JPEG")  # one more image
    again = seqstore.open(prepare_stores(cfg, [])[0]["lmdb"])
    assert len(again) == 7 and again.manifest.provenance.created != made
