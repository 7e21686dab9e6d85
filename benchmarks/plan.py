"""The epoch plan at scale: time and memory of one worker's plan, and of an elastic resume.

    python benchmarks/plan.py [--records 1000000000] [--ranks 1024] [--workers 16] [--repeat 5]

Each plan row is what one loader worker computes at the start of an epoch
(:attr:`seqstore.engine.plan.WorkerEpoch.plan`): the storage spans it reads and its batches,
for the last worker of the last rank (the one that reads the padding), shuffled, 4 MB blocks
of 110 KB records (36 per block, ImageNet's mean), batches of 256. Time is the median over
``--repeat`` runs; peak memory is traced (tracemalloc, numpy's arrays included) in a run of
its own.

Target: the plan of 1B records x 1024 ranks x 16 workers in < 1 s and < 100 MB. Beside it:
an ImageNet-size plan; the largest store whose block order is still numpy's permutation
table (TABLE_LIMIT blocks); and, as the baseline, that table drawn for the main row's store,
which is what a plan over every block costs.

The mix rows: classes per batch of 256 over an ImageNet-size store written in class order
(1000 classes, each one run), with the default settings (4 MB blocks, a 256 MB buffer per
rank) on 2 and 8 workers: this seqstore's order (scheme 2) and the order of its first
loaders (scheme 1), from the pure order of a whole epoch (no I/O), beside a uniform shuffle.
Target: >= 120 with 8 workers (scheme 1 gave 36; a uniform shuffle gives 226).

The resume row: an ImageNet-size epoch (1,281,167 records) interrupted halfway on 8 ranks of
8 workers (256 MB buffers per rank), to be resumed on another shape: the time to find the
records it had not delivered (:func:`seqstore.engine.elastic.remaining_after`, done once by
each rank as it loads the state) and the size of the saved state that then carries them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from seqstore.bench.report import cpu_name
from seqstore.engine.elastic import remaining_after
from seqstore.engine.order import TABLE_LIMIT
from seqstore.engine.plan import EpochSpec, WorkerEpoch, rank_order
from seqstore.engine.quality import classes_per_batch, random_classes_per_batch

PER_BLOCK = 36  # 4 MB blocks of 110 KB records
IMAGENET = 1_281_167


def spec(
    records: int, ranks: int, workers: int, capacity: int = 2330, scheme: int = 2
) -> EpochSpec:
    """A shuffled loader's spec: 4 MB blocks, batches of 256, a 256 MB buffer per rank."""
    return EpochSpec(
        num_records=records,
        block=PER_BLOCK,
        capacity=max(1, capacity // workers),
        shuffle=True,
        seed=0,
        rank=ranks - 1,
        world_size=ranks,
        workers=workers,
        batch_size=256,
        drop_last=False,
        scheme=scheme,
        split=scheme == 2,  # as the Loader fits a store in class order
    )


def mix(workers: int, scheme: int) -> float:
    """Mean distinct classes per batch of rank 0's first epoch over a class-ordered
    ImageNet-size store."""
    labels = np.arange(IMAGENET) * 1000 // IMAGENET
    return classes_per_batch(
        rank_order(spec(IMAGENET, 1, workers, scheme=scheme), 0, 0), labels, 256
    )


def worker_plan(records: int, ranks: int, workers: int) -> Callable[[], Any]:
    """What one worker computes: its plan (a fresh one each call, nothing cached)."""
    s = spec(records, ranks, workers)
    return lambda: WorkerEpoch(s, 1, ranks - 1, workers - 1).plan


def measure(job: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds over ``repeat`` runs, and the peak traced MB of one more."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    job()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10**9)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, ranks, workers = args.records, args.ranks, args.workers
    blocks = -(-n // PER_BLOCK)
    limit = TABLE_LIMIT * PER_BLOCK
    rows: list[tuple[str, Callable[[], Any], str]] = [
        (f"plan: {n:,} records, {ranks} ranks x {workers} workers", worker_plan(n, ranks, workers),
         "< 1 s, < 100 MB"),
        (f"plan: {IMAGENET:,} records, 8 ranks x 8 workers", worker_plan(IMAGENET, 8, 8), ""),
        (f"plan: {limit:,} records (table limit), 64 x 8", worker_plan(limit, 64, 8), ""),
        (f"baseline: a table of all {blocks:,} blocks",
         lambda: np.random.default_rng(0).permutation(blocks), ""),
    ]  # fmt: skip
    cpu = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"one worker's epoch plan, shuffled, 36 records per block; {cpu}")
    print(f"median of {args.repeat} runs; peak memory traced in one more\n")
    header = f"| {'what':<56} | {'time':>9} | {'peak MB':>8} | {'target':<15} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, job, target in rows:
        seconds, peak = measure(job, args.repeat)
        print(f"| {name:<56} | {seconds * 1e3:>6.1f} ms | {peak:>8.1f} | {target:<15} |")

    shuffle = random_classes_per_batch(np.full(1000, IMAGENET / 1000), 256)
    print(f"\nclasses per batch of 256, {IMAGENET:,} records in class order, default settings:")
    for workers in (2, 8):
        now, before = mix(workers, 2), mix(workers, 1)
        print(
            f"  {workers} workers: {now:.1f} (scheme 1: {before:.1f}; a uniform shuffle: "
            f"{shuffle:.1f}){'; target >= 120' if workers == 8 else ''}"
        )

    interrupted = spec(IMAGENET, 8, 8)
    half = interrupted.num_batches // 2
    start = time.perf_counter()
    remaining = remaining_after(interrupted, 0, half)
    seconds = time.perf_counter() - start
    state = json.dumps(remaining.to_state())
    print(
        f"\nelastic resume: {IMAGENET:,} records stopped after {half} of {interrupted.num_batches}"
        f" batches on 8 ranks x 8 workers:\n  finding the {remaining.count:,} records not"
        f" delivered: {seconds:.2f} s; the state carries them in {len(state) / 1e3:.0f} KB"
    )


if __name__ == "__main__":
    main()
