"""The benchmark scripts the README shows run as written (on small data, one repetition)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

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


def test_convert_benchmark_times_sharded_against_one_writer(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = _run(ROOT / "benchmarks" / "convert.py", src, "--repeat", "1", "--workdir", tmp_path)
    assert p.returncode == 0, p.stderr
    rows = {line[:44].strip(): line[44:].split() for line in p.stdout.splitlines()}
    for fmt, check in (("hdf5", "header"), ("lmdb", "header"), ("hdf5", "decode")):
        assert rows[f"{fmt} --check {check}: one writer"][3] == "1.00"  # its own baseline
        for name in ("one writer, -w 2", "sharded -w 0", "sharded -w 2"):
            seconds, mb_s, rec_s, ratio = map(float, rows[f"{fmt} --check {check}: {name}"][:4])
            assert seconds > 0 and rec_s * seconds == pytest.approx(40, rel=0.05)
        marks = rows[f"{fmt} --check {check}: sharded -w 2"][4:]
        expected = ["ok" if ratio >= 1.6 else "MISSED"] if check == "decode" else []
        assert marks == expected  # the target is the default conversion's
    assert "(8 shards)" in p.stdout


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


PEERS = {  # row -> module
    "MosaicML Streaming (MDS)": "streaming",
    "WebDataset": "webdataset",
    "litdata": "litdata",
    "HF datasets (Parquet)": "datasets",
    "tfrecord (TFRecord)": "tfrecord",
    "FFCV (own decoder, threads)": "ffcv",
}


def _peers() -> types.ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import peers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return peers


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("peers")
    src = make_image_folder(tmp / "src", classes=4, per_class=10)
    work = tmp / "work"
    p = _run(
        ROOT / "benchmarks" / "peers.py",
        src,
        "--repeat",
        "1",
        "--min-seconds",
        "0",
        "--workdir",
        work,
    )
    assert p.returncode == 0, p.stderr
    return work, p.stdout


def test_peers_benchmark_prints_every_installed_peer_beside_seqstore(
    peers_run: tuple[Path, str],
) -> None:
    _, printed = peers_run
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:4]
        for line in printed.splitlines()
        if line.startswith("| ") and not line.startswith("| pipeline")
    }
    for row in (
        "seqstore lmdb, built-in pipeline",
        "seqstore hdf5, built-in pipeline",
        "seqstore lmdb, user callable (cv2)",
    ):
        assert row in rows, row
    assert float(rows["seqstore lmdb, built-in pipeline"][1]) == 1.0  # "vs seqstore"
    peers = _peers()
    for row in PEERS:
        found, why = peers.usable(row)
        if found is None:
            assert f"note: {row} {why}: left out" in printed
        else:
            assert row in rows, row
            assert float(rows[row][0]) > 0
        if row in peers.IN_PLACE and (found or peers.installed(peers.PEERS[row][1])):
            # seqstore reads the peer's files in place wherever the peer's writer works
            assert float(rows[peers.in_place_row(row)][0]) > 0
            assert f"{peers.in_place_row(row)} (user callable): " in printed
    assert "CPU: " in printed and "versions: seqstore" in printed
    if any(peers.usable(row)[0] for row in list(PEERS)[:3]):
        assert "seqstore lmdb, user callable (cv2) / fastest peer: " in printed


def test_every_pipeline_of_the_peers_benchmark_yields_each_image_once_per_epoch(
    peers_run: tuple[Path, str],
) -> None:
    """What the benchmark times is a real epoch: every record once, as 224 x 224 uint8 crops,
    in another order each epoch."""
    peers = _peers()
    from seqstore.config import BenchConfig

    work, _ = peers_run
    store = seqstore.open(work / "store.lmdb")
    labels = sorted(r.label for r in store.read_block(0, len(store)))
    cfg = BenchConfig(src=work, workers=2, batch_size=16, out=work)
    epochs = {"user callable": peers.user_callable_epoch(work / "store.lmdb", cfg)}
    for row, make in (
        ("MosaicML Streaming (MDS)", lambda: peers.mds_epoch(work / "streaming", cfg)),
        ("WebDataset", lambda: peers.webdataset_epoch(work / "webdataset", cfg, 10)),
        ("litdata", lambda: peers.litdata_epoch(work / "litdata", cfg)),
        ("HF datasets (Parquet)", lambda: peers.hf_parquet_epoch(work / "datasets", cfg)),
        ("tfrecord (TFRecord)", lambda: peers.tfrecord_epoch(work / "tfrecord", cfg, 10)),
        ("FFCV (own decoder, threads)", lambda: peers.ffcv_epoch(work / "ffcv", cfg)),
    ):
        if peers.usable(row)[0] is not None:
            epochs[row] = make()
            if row in peers.IN_PLACE:
                epochs[peers.in_place_row(row)] = peers.user_callable_epoch(work / PEERS[row], cfg)
    for name, epoch in epochs.items():
        orders = []
        for _ in range(2):
            order = []
            for images, batch_labels in epoch():
                images = torch.as_tensor(images)
                assert images.dtype == torch.uint8 and images.shape[1:] == (224, 224, 3), name
                order += torch.as_tensor(batch_labels).reshape(-1).tolist()
            assert sorted(order) == labels, name
            orders.append(order)
        assert orders[0] != orders[1], name
    # mosaicml-streaming's vision datasets import torchvision, which the CPU torch has no
    # build of: the benchmark keeps them out
    assert "torchvision" not in sys.modules


def test_peers_benchmark_without_the_peers_measures_seqstore_and_says_so(
    tmp_path: Path,
) -> None:
    """As in CI without the peers extra: each missing peer is one note, seqstore's rows run."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    hidden = [*PEERS.values(), "PIL"]
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden)
    )
    src = make_image_folder(tmp_path / "src", classes=2, per_class=8)
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), str(src), "--repeat", "1"]
        + ["--min-seconds", "0", "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ENV['PYTHONPATH']}"},
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "| seqstore lmdb, user callable (cv2)" in p.stdout
    for row in PEERS:
        note = rf"note: {re.escape(row)} (is not installed|does not import \(.*\)): left out"
        assert re.search(note, p.stdout), row
        assert f"| {row}" not in p.stdout
    assert "note: torchvision-style (PIL, float): Pillow is not installed, left out" in p.stdout
    assert "fastest peer" not in p.stdout


def test_plan_benchmark_prints_its_table_and_the_resume() -> None:
    args = ("--records", "100000", "--ranks", "4", "--workers", "2", "--repeat", "1")
    p = _run(ROOT / "benchmarks" / "plan.py", *args)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    row = next(line for line in lines if "plan: 100,000 records, 4 ranks x 2 workers" in line)
    assert row.endswith("| < 1 s, < 100 MB |") and " ms |" in row
    assert any(line.startswith("| baseline: a table of all 2,778 blocks") for line in lines)
    assert "classes per batch of 256, 1,281,167 records in class order" in p.stdout
    row = next(line for line in lines if line.startswith("  8 workers: "))
    assert float(row.split()[2]) >= 120 and "(scheme 1: 36." in row
    assert "elastic resume: 1,281,167 records stopped after 313 of 626 batches" in p.stdout
    assert "the state carries them in" in p.stdout


def test_hdd_benchmark_measures_cold_and_warm_or_says_why_not(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = _run(
        ROOT / "benchmarks" / "hdd.py",
        src,
        *("--copies", "1", "--repeat", "1", "--only", "lmdb", "hdf5", "torchvision"),
        *("--workdir", tmp_path),
    )
    assert p.returncode == 0, p.stderr
    if p.stdout.startswith("skipped: "):  # not root, or no cgroup block-I/O controller
        assert len(p.stdout.splitlines()) == 1
        return
    rows = [line for line in p.stdout.splitlines() if line.startswith("| seqstore ")]
    assert [row.split("|")[1].strip() for row in rows] == [
        f"seqstore {fmt}, {how}" for fmt in ("lmdb", "hdf5") for how in ("O_DIRECT", "page cache")
    ]
    for row in rows:
        cold, warm = (float(cell) for cell in row.split("|")[2:4])
        assert cold > 0 and warm > 0
        assert float(row.split("|")[6].strip().rstrip("x")) > 0  # x the torchvision-style row
    assert not list(Path("/sys/fs/cgroup/blkio").glob("seqstore-hdd-*"))


def test_convergence_benchmark_trains_each_row_and_prints_its_table(tmp_path: Path) -> None:
    # docs/shuffle.md's command, on 4 classes x 12 images, 2 seeds of 1 epoch, batches of 8.
    make_image_folder(tmp_path / "data" / "train", classes=4, per_class=12, max_side=64)
    make_image_folder(tmp_path / "data" / "val", classes=4, per_class=3, max_side=64, seed=1)
    rows = ["global shuffle (DataLoader)", "class-ordered, shuffle=False"]
    rows += ["before: class-ordered store", "class-ordered, shuffle_buffer=50"]
    out = tmp_path / "result.json"
    p = _run(
        ROOT / "benchmarks" / "convergence.py", "--data", tmp_path / "data", "--seeds", "2",
        "--epochs", "1", "--batch-size", "8", "--rows", *rows, "--json", out,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| row | val accuracy | vs shuffled store (95% CI) |")
    assert [line.split(" | ")[0] for line in table[1:]] == [
        f"| {r}" for r in ["shuffled store", *rows]
    ]
    result = json.loads(out.read_text())
    by_row = {r["row"]: r for r in result["rows"]}
    assert all(len(r["accuracy"]) == 2 and 0 <= min(r["accuracy"]) for r in result["rows"])
    # Storage order: one or two classes a batch, and it leans; the shuffled store does not.
    assert by_row["class-ordered, shuffle=False"]["classes_per_batch"] < 2.5
    assert by_row["class-ordered, shuffle=False"]["batch_skew"] > 2
    assert by_row["shuffled store"]["classes_per_batch"] > 3.5
    assert by_row["class-ordered, shuffle_buffer=50"]["warns"] is True  # far shorter blocks


def test_scale_benchmark_prints_every_row(tmp_path: Path) -> None:
    p = _run(
        ROOT / "benchmarks" / "scale.py",
        "--records",
        "3000",
        "--epoch-records",
        "1000",
        "--workdir",
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    rows = {line[:28].strip(): line[28:].split() for line in p.stdout.splitlines()[2:]}
    for fmt in ("lmdb", "hdf5"):
        convert_s, size_gb, verify_s, verify_mb, first, resumed, rate = rows[fmt]
        assert float(verify_mb) > 0 and 0 < float(first) and 0 < float(resumed)
        assert float(rate.replace(",", "")) > 0
    assert len(rows["folder in place"]) == 2
    assert "lmdb / hdf5 records/s" in p.stdout
    assert not list(tmp_path.iterdir())  # the stores and the source are removed
