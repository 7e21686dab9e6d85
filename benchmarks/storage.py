"""Storage throughput: conversion vs plain file reads, and read_block vs the bare libraries.

    python benchmarks/storage.py [SRC] [--repeat 5] [--workdir DIR]

SRC defaults to ../shared/data/imagen200 (1000 real ImageNet JPEGs), or a generated folder
when that is absent. Each figure is the median of ``--repeat`` runs, interleaved. As root on
Linux the page cache is dropped before every cold run; otherwise only warm figures are shown.

Targets: conversion with ``--check header`` >= 0.5x the plain-read rate from a cold page
cache (a real dataset is larger than RAM, so its files come from disk); seqstore read_block
>= 0.5x the bare lmdb cursor / h5py slice loop over the same store. Warm conversion is shown
for information: it writes and fsyncs every byte, which a read from the page cache does not.
The default ``--check decode`` (every image decoded as the Loader will) is timed beside it,
in one process and with 2 worker processes: its cost is the decoding of every image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import lmdb

import seqstore
from seqstore.convert import convert
from seqstore.testing import make_image_folder

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"
BLOCK = 512
# (format, check, workers) of the conversions timed.
CONVERSIONS = (
    ("lmdb", "header", 0),
    ("hdf5", "header", 0),
    ("lmdb", "decode", 0),
    ("lmdb", "decode", 2),
)


def _convert_name(fmt: str, check: str, workers: int) -> str:
    return f"convert -> {fmt} --check {check}" + (f" -w{workers}" if workers else "")


def drop_caches() -> bool:
    """Drop the Linux page cache (root only); False when not allowed."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def plain_read(files: list[Path]) -> int:
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            total += len(fh.read())
    return total


def bare_lmdb(path: Path) -> int:
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    n = 0
    with env.begin(buffers=True) as txn:
        for _, value in txn.cursor():
            bytes(value)
            n += 1
    env.close()
    return n - 2  # minus the two index entries (labels, checksums)


def bare_h5py(path: Path) -> int:
    with h5py.File(path / "data.h5", "r") as f:
        offsets = f["offsets"][()]
        images = f["images"]
        n = len(offsets) - 1
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            buf = images[offsets[start] : offsets[stop]].tobytes()
            base = int(offsets[start])
            for i in range(start, stop):
                buf[int(offsets[i]) - base : int(offsets[i + 1]) - base]
    return n


def seqstore_blocks(path: Path) -> int:
    reader = seqstore.open(path)
    n = len(reader)
    for start in range(0, n, BLOCK):
        reader.read_block(start, min(start + BLOCK, n))
    reader.close()
    return n


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqstore-bench-") as tmp:
        work = Path(args.workdir or tmp)
        src = Path(args.src)
        if not src.exists():
            src = make_image_folder(work / "images", classes=20, per_class=50, max_side=400)
        files = [src / k for k in seqstore.open(src).keys]  # type: ignore[attr-defined]
        mb = sum(f.stat().st_size for f in files) / 1e6
        cold = drop_caches()
        modes = ["cold", "warm"] if cold else ["warm"]
        print(f"source: {src} ({len(files)} images, {mb:.1f} MB); {os.cpu_count()} CPUs")
        runs: dict[str, list[float]] = {}

        def run(
            name: str, fn: Callable[[], object], mode: str, setup: Callable[[], object] = list
        ) -> None:
            setup()
            if mode == "cold":
                drop_caches()
            else:
                fn()  # untimed: brings the files into the page cache
                setup()
            runs.setdefault(f"{name} [{mode}]", []).append(timed(fn))

        for _ in range(args.repeat):
            for mode in modes:
                run("plain read", lambda: plain_read(files), mode)
                for fmt, check, workers in CONVERSIONS:
                    dst = work / (fmt if check == "header" else f"{fmt}-{check}-{workers}")
                    run(
                        _convert_name(fmt, check, workers),
                        lambda fmt=fmt, dst=dst, check=check, workers=workers: convert(
                            src, dst, format=fmt, check=check, workers=workers, progress=False
                        ),
                        mode,
                        # Removing the last run's store is not part of converting.
                        lambda dst=dst: shutil.rmtree(dst, ignore_errors=True),
                    )
                run("bare lmdb cursor", lambda: bare_lmdb(work / "lmdb"), mode)
                run("seqstore lmdb read_block", lambda: seqstore_blocks(work / "lmdb"), mode)
                run("bare h5py slices", lambda: bare_h5py(work / "hdf5"), mode)
                run("seqstore hdf5 read_block", lambda: seqstore_blocks(work / "hdf5"), mode)

        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"\n{'step':<44} {'median s':>9} {'MB/s':>8} {'rec/s':>9} {'ratio':>7}  target")
        for mode in modes:
            base_read = med[f"plain read [{mode}]"]
            for name, base, target in (
                ("plain read", None, None),
                *(
                    (
                        _convert_name(fmt, check, workers),
                        base_read,
                        0.5 if mode == "cold" and check == "header" else None,
                    )
                    for fmt, check, workers in CONVERSIONS
                ),
                ("bare lmdb cursor", None, None),
                ("seqstore lmdb read_block", med[f"bare lmdb cursor [{mode}]"], 0.5),
                ("bare h5py slices", None, None),
                ("seqstore hdf5 read_block", med[f"bare h5py slices [{mode}]"], 0.5),
            ):
                t = med[f"{name} [{mode}]"]
                ratio = f"{base / t:>7.2f}" if base else " " * 7
                mark = ("ok" if base / t >= target else "MISSED") if base and target else ""
                print(
                    f"{name + f' [{mode}]':<44} {t:>9.3f} {mb / t:>8.0f} {len(files) / t:>9.0f} "
                    f"{ratio}  {mark}"
                )
        if not cold:
            print("\n(page cache could not be dropped: not root; cold figures omitted)")


if __name__ == "__main__":
    main()
