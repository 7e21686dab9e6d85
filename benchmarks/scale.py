"""ImageNet's record count: what in opening, verifying, the first batch and a resume grows
with the number of records.

    python benchmarks/scale.py [--records 1281167] [--workdir DIR] [--formats lmdb hdf5]

The source is an image folder of ``--records`` tiny JPEGs in 1000 class folders,
hard-linked from 300 made ones, so that it takes seconds and little disk; it is converted
with ``--workers 2 --check header``. Each row runs in fresh processes, with a warm page
cache:

- convert: the conversion's time, and the store's size;
- ``info --verify``: its time and its peak resident memory;
- first batch: from ``Loader(...)`` to the first batch of 256 (``transform="none"``, 2
  workers), in a process that has already imported torch;
- first batch after a resume: the same, for a new Loader given the ``state_dict`` saved
  after 10 batches by another process;
- records/s: through that Loader, over its first ``--epoch-records`` records, without
  decoding (the read path's own cost).

The folder read in place is a row of its own (its first batch includes the walk of every
file). Targets: a first batch < 1 s, < 1.5 s after a resume, for every store format; LMDB's
verify < 15 s and < 1 GB; LMDB's records/s >= 0.67x HDF5's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqstore.bench.report import cpu_name
from seqstore.testing import make_image_folder

IMAGENET = 1_281_167

# Run in a fresh interpreter: prints seconds to the first batch, then records/s.
_LOADER = """
import sys, time, torch
from seqstore import Loader
path, records, state_in, state_out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = time.perf_counter()
loader = Loader(path, batch_size=256, num_workers=2, transform="none", shuffle=True)
if state_in != "-":
    loader.load_state_dict(torch.load(state_in))
batches = iter(loader)
next(batches)
first = time.perf_counter() - t
seen, t = 0, time.perf_counter()
for k, (_, labels) in enumerate(batches, 1):
    seen += len(labels)
    if state_out != "-":
        if k == 10:
            torch.save(loader.state_dict(), state_out)
            break
    elif seen >= records:
        break
print(first, seen / (time.perf_counter() - t))
"""


def make_source(root: Path, records: int) -> Path:
    """``records`` tiny JPEGs under ``root/train/<class>/``, hard-linked from 300 made
    ones, 1000 classes."""
    made = make_image_folder(root / "made", classes=10, per_class=30, min_side=16, max_side=32)
    files = sorted(p for p in made.rglob("*") if p.is_file())
    train = root / "train"
    for c in range(1000):
        (train / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    for i in range(records):
        src = files[i % len(files)]
        os.link(src, train / f"n{i % 1000:08d}" / f"{i:07d}{src.suffix}")
    return train


def _timed(argv: list[str]) -> tuple[float, int, str]:
    """Run ``argv``: its seconds, its peak resident memory in bytes, its stdout. Its output
    goes to files, not pipes, which a child writing more than a pipe holds would block on
    while this process waits for it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
        if p.returncode:
            raise SystemExit(f"{' '.join(argv)} failed:\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss * 1024, out.read()


def _loader(path: Path, records: int, state_in: str, state_out: str) -> tuple[float, float]:
    out = _timed([sys.executable, "-c", _LOADER, str(path), str(records), state_in, state_out])
    first, rate = map(float, out[2].split())
    return first, rate


def main() -> None:
    """Build the source and stores, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=IMAGENET)
    ap.add_argument("--epoch-records", type=int, default=300_000)
    ap.add_argument("--formats", nargs="+", default=["lmdb", "hdf5"])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seqstore-scale-", dir=args.workdir))
    try:
        t = time.perf_counter()
        src = make_source(work, args.records)
        print(
            f"CPU: {cpu_name()}; {args.records:,} records, source made in "
            f"{time.perf_counter() - t:.1f} s"
        )
        print(
            f"{'':28}{'convert s':>10}{'size GB':>9}{'verify s':>10}{'verify MB':>10}"
            f"{'1st batch s':>12}{'resumed s':>10}{'records/s':>11}"
        )
        rates: dict[str, float] = {}
        for fmt in args.formats:
            store = work / f"store.{fmt}"
            seconds, _, _ = _timed(
                [
                    sys.executable,
                    "-m",
                    "seqstore",
                    "convert",
                    str(src),
                    str(store),
                    "--format",
                    fmt,
                    "--workers",
                    "2",
                    "--check",
                    "header",
                    "--quiet",
                ]
            )
            size = (
                sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
                if store.is_dir()
                else store.stat().st_size
            )
            verify, rss, _ = _timed(
                [sys.executable, "-m", "seqstore", "info", "--verify", str(store)]
            )
            first, rates[fmt] = _loader(store, args.epoch_records, "-", "-")
            state = work / f"state.{fmt}.pt"
            _loader(store, args.epoch_records, "-", str(state))
            resumed, _ = _loader(store, 256, str(state), "-")
            print(
                f"{fmt:28}{seconds:>10.1f}{size / 1e9:>9.2f}{verify:>10.1f}{rss / 1e6:>10.0f}"
                f"{first:>12.2f}{resumed:>10.2f}{rates[fmt]:>11,.0f}"
            )
        first, rate = _loader(src, args.epoch_records, "-", "-")
        print(
            f"{'folder in place':28}{'':>10}{'':>9}{'':>10}{'':>10}{first:>12.2f}{'':>10}"
            f"{rate:>11,.0f}"
        )
        if "lmdb" in rates and "hdf5" in rates:
            print(f"lmdb / hdf5 records/s: {rates['lmdb'] / rates['hdf5']:.2f}x (target >= 0.67)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
