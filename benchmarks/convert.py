"""Sharded conversion in parallel against one writer.

    python benchmarks/convert.py [SRC] [--repeat 5] [--workers 2] [--shard-mb MB] [--workdir DIR]

SRC defaults to ../shared/data/imagen200 (1000 real ImageNet JPEGs), or a generated folder
when that is absent. For each format and check, in interleaved rounds (so that other work on
the machine weighs on every row alike):

* ``one writer``: ``convert SRC DST`` in one process (``--workers 0``), the baseline;
* ``one writer, -w N``: the same with N processes checking images for the one writer;
* ``sharded -w 0``: ``--shard-mb`` in one process: what sharding itself costs;
* ``sharded -w N``: ``--shard-mb --workers N``, N processes each writing whole shards.

Shards are, by default, a quarter of each worker's share of the source (8 shards for 2
workers), the proportion ``--shard-mb 1024`` gives a conversion of some tens of GB: enough
shards that the workers finish together, few enough that each shard's fsyncs (a handful per
shard) stay small against its writing. Rows give the median time and rates; the ratio is the
median over rounds of the one-writer time over the row's, so it compares runs that met the
same load.

Target: sharded with ``--workers 2`` >= 1.6x the one-writer rate on 2 cores, for the
default conversion (``--check decode``: every image decoded once, the CPU work that a second
core can share). The ``--check header`` rows are shown for what they are: about 0.2 s of
work on imagen200, where starting the processes, listing the source and writing to disk
weigh as much as the checks (and on a large dataset, a conversion bound by the disk). The
source is read once before timing, so the figures are for a source in the page cache; the
store is written and synced to disk in every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import seqstore
from seqstore.convert import convert
from seqstore.testing import make_image_folder

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"
TARGET = 1.6
CASES = (("hdf5", "header"), ("lmdb", "header"), ("hdf5", "decode"))


def _runs(workers: int, shard_mb: float) -> list[tuple[str, dict[str, object]]]:
    return [
        ("one writer", {"workers": 0}),
        (f"one writer, -w {workers}", {"workers": workers}),
        ("sharded -w 0", {"workers": 0, "shard_mb": shard_mb}),
        (f"sharded -w {workers}", {"workers": workers, "shard_mb": shard_mb}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shard-mb", type=float, help="default: 1/4 of a worker's share")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqstore-bench-") as tmp:
        work = Path(args.workdir or tmp)
        src = Path(args.src)
        if not src.exists():
            src = make_image_folder(work / "images", classes=20, per_class=50, max_side=400)
        source = seqstore.open(src)
        files = source.source_files or []
        for f in files:  # into the page cache: the rows time conversion, not the disk
            f.read_bytes()
        mb = source.manifest.total_bytes / 1e6
        args.shard_mb = args.shard_mb or mb / (4 * max(args.workers, 1))
        print(
            f"source: {src} ({len(source)} images, {mb:.1f} MB); {os.cpu_count()} CPUs; "
            f"--shard-mb {args.shard_mb:.3g}"
        )
        runs = _runs(args.workers, args.shard_mb)
        times: dict[tuple[str, str, str], list[float]] = {}
        shards: dict[tuple[str, str], int] = {}
        for _ in range(args.repeat):
            for fmt, check in CASES:
                for name, options in runs:
                    dst = work / "out"
                    shutil.rmtree(dst, ignore_errors=True)
                    t0 = time.perf_counter()
                    report = convert(src, dst, format=fmt, check=check, progress=False, **options)
                    times.setdefault((fmt, check, name), []).append(time.perf_counter() - t0)
                    if report.manifest.shards is not None:
                        shards[(fmt, check)] = len(report.manifest.shards)
        print(f"\n{'conversion':<44} {'median s':>9} {'MB/s':>7} {'rec/s':>7} {'ratio':>6}  target")
        for fmt, check in CASES:
            base = times[(fmt, check, "one writer")]
            for name, _ in runs:
                t = times[(fmt, check, name)]
                ratio = statistics.median(b / x for b, x in zip(base, t, strict=True))
                mark = ""
                if name == f"sharded -w {args.workers}" and (args.workers, check) == (2, "decode"):
                    mark = "ok" if ratio >= TARGET else "MISSED"
                label = f"{fmt} --check {check}: {name}"
                med = statistics.median(t)
                print(
                    f"{label:<44} {med:>9.3f} {mb / med:>7.1f} {len(source) / med:>7.0f} "
                    f"{ratio:>6.2f}  {mark}"
                )
            print(f"{'':<44} ({shards[(fmt, check)]} shards)")


if __name__ == "__main__":
    main()
