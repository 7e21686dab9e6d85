"""``seqstore bench``: backends side by side on the user's own data, with baselines.

For each backend, in the same run, interleaved, after a warm-up, as medians of repetitions:
the raw ``read_block`` rate, the Loader's images/s with the chosen transform and workers,
the time to the first batch, the peak memory of the loader and its workers, and a stage
breakdown (read, verify, decode, transform, collate) that shows what bounds the loader, and
what checking checksums on read costs: the first store's Loader with ``verify`` on and off,
pass by pass in turn in one process, the fastest pass of each compared. Beside them:
the ceiling (the same decode and transform in bare processes over bytes already in RAM),
a torchvision-style pipeline (PIL, one file per sample, float normalisation in workers), and
the tensorpack pipeline of the old sequential loaders when tensorpack is installed. Every
row shows its ratio to the ceiling. Shuffle quality is computed from the order functions
alone: how far records move, and how many classes a batch holds against a random batch.

The rooms:

- :mod:`.run`: :func:`run_bench`, the whole run, from stores to report.
- :mod:`.stores`: each format's store of the same records, converted once and reused.
- :mod:`.harness`: a process per measurement, peak memory, the page cache.
- :mod:`.pipelines`: the Loader's epoch and the ceiling, by name.
- :mod:`.baselines`: the torchvision-style and tensorpack pipelines.
- :mod:`.stages`: milliseconds per image of each stage.
- :mod:`.quality`: shuffle quality from the order functions.
- :mod:`.report`: the result, its table, ``bench.json`` and the chart.
"""

from __future__ import annotations

from .harness import (
    drop_caches,
    measure,
    measure_checksum_cost,
    measure_epochs,
    run_in_child,
    training_script_start,
)
from .quality import order_quality, shuffle_quality
from .report import BenchResult, Row, format_table
from .run import run_bench
from .stores import prepare_stores

__all__ = [
    "BenchResult",
    "Row",
    "drop_caches",
    "format_table",
    "measure",
    "measure_checksum_cost",
    "measure_epochs",
    "order_quality",
    "prepare_stores",
    "run_bench",
    "run_in_child",
    "shuffle_quality",
    "training_script_start",
]
