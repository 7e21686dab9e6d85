"""The bench's run room: :func:`run_bench`, one ``seqstore bench`` from stores to report.

Every pipeline runs in a process of its own (:mod:`.harness`), interleaved over the
repetitions; the stage breakdown (:mod:`.stages`), the raw read rate and the shuffle quality
(:mod:`.quality`) are measured in this process.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from ..backends import Reader, open_store
from ..config import BenchConfig, LoaderConfig, load_config
from ..engine.plan import EpochSpec
from ..errors import NotAStoreError
from ..mixcheck import fit_blocks, label_runs
from .baselines import missing_packages
from .harness import drop_caches, measure, measure_checksum_cost
from .quality import shuffle_quality
from .remote import S3_ROW, s3_row
from .report import BenchResult, Row, chart, describe_machine, to_json
from .stages import stage_times
from .stores import prepare_stores, reencoded_name

__all__ = ["run_bench"]


def run_bench(config: BenchConfig | dict[str, Any] | None = None, **options: Any) -> BenchResult:
    """Measure every configured backend and baseline; see :mod:`seqstore.bench`.

    Returns
    -------
    BenchResult
        Also written to ``out/bench.json`` (and ``out/bench.png`` with matplotlib).
    """
    cfg = load_config(BenchConfig, config, **options)
    if not cfg.src.exists():
        raise NotAStoreError(f"'{cfg.src}' does not exist")
    cfg.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    left_out = missing_packages() if cfg.baselines else {}
    if left_out:
        notes.append(
            "left out, their packages are not installed: "
            + ", ".join(
                f"{row} (pip install 'seqstore[{extra}]')" for row, extra in left_out.items()
            )
        )
    stores, tensorpack_file = prepare_stores(cfg)
    # The order the Loader reads the user's own data in (a folder in place, a store in the
    # order it was written), beside the stores bench wrote.
    with open_store(cfg.src) as source:
        source_shuffle = shuffle_quality(source.labels(), loader_spec(cfg, source))
    first = open_store(next(iter(stores.values())))
    n, mb = len(first), first.manifest.total_bytes / 1e6
    first.close()

    rows: dict[str, Row] = {}
    # (row, pipeline kind, path, extra options), each measured in a process of its own
    plans: list[tuple[Row, str, Path, dict[str, Any]]] = []
    for fmt, path in stores.items():
        row = rows[fmt] = Row(fmt, "seqstore")
        reader = open_store(path)
        row.store_mb = store_megabytes(reader)
        row.stages_ms = stage_times(reader, cfg)
        row.shuffle = shuffle_quality(reader.labels(), loader_spec(cfg, reader))
        reader.close()
        plans.append((row, "seqstore", path, {}))
    first_fmt, first_path = next(iter(stores.items()))
    name = f"{first_fmt} float32 cpu"
    plans.append(
        (rows.setdefault(name, Row(name, "seqstore")), "seqstore", first_path, {"dtype": "float32"})
    )
    # What mixing costs: the first store mixed with itself, 1:1, beside the store alone.
    name = f"{first_fmt} mixed 1:1"
    mixed = [str(first_path), str(first_path)]
    plans.append(
        (rows.setdefault(name, Row(name, "seqstore")), "seqstore", first_path, {"mix": mixed})
    )
    if tensorpack_file is not None:
        row = rows["tensorpack file"] = Row("tensorpack file", "seqstore")
        plans.append((row, "seqstore", tensorpack_file, {}))
        cache = max(1, _records_for_mb(cfg.shuffle_buffer_mb, mb * 1e6 / max(n, 1)))
        row = rows["tensorpack pipeline"] = Row("tensorpack pipeline", "baseline")
        plans.append((row, "tensorpack", tensorpack_file, {"cache": cache}))
    if cfg.baselines and "torchvision-style" not in left_out:
        if "folder" in stores:
            row = rows["torchvision-style"] = Row("torchvision-style", "baseline")
            plans.append((row, "torchvision", stores["folder"], {}))
        else:
            notes.append("torchvision-style baseline needs the 'folder' format in --formats")
    plans.append((rows.setdefault("ceiling", Row("ceiling", "ceiling")), "ceiling", first_path, {}))
    s3 = s3_row(stores, notes)
    if s3 is not None:
        plans.append(
            (rows.setdefault(S3_ROW, Row(S3_ROW, "seqstore")), "seqstore", stores["hdf5"], s3[0])
        )

    cold = cfg.cold
    if cold and not drop_caches():
        notes.append(
            "--cold: the page cache could not be dropped (needs root on Linux); runs are warm"
        )
        cold = False
    for rep in range(cfg.repeat):  # interleaved: every pipeline once per repetition
        for row, kind, path, extra in plans:
            if cold:
                drop_caches()
            rate, ttfb, peak = measure(kind, path, cfg, extra)
            row.runs.append(rate)
            row.ttfb_runs.append(ttfb)
            row.rss_runs.append(peak)
        print(f"repetition {rep + 1}/{cfg.repeat} done")
    if s3 is not None:
        s3[1].close()
    for row in rows.values():
        row.images_per_s = statistics.median(row.runs)
        row.first_batch_s = statistics.median(row.ttfb_runs)
        row.peak_rss_mb = max(row.rss_runs)
    for fmt, path in stores.items():
        rates = []
        for _ in range(cfg.repeat):
            if cold:
                drop_caches()
            reader = open_store(path)  # afresh: a mapping kept open keeps its pages cached
            t0 = time.perf_counter()
            for start in range(0, n, 512):
                reader.read_block(start, min(start + 512, n))
            rates.append(n / (time.perf_counter() - t0))
            reader.close()
        rate = statistics.median(rates)
        rows[fmt].read_records_per_s = rate
        rows[fmt].read_mb_per_s = rate * mb / n

    # Checksums cost about 1% of a worker's time, within the run-to-run spread of whole
    # measurements in separate processes: the two settings are compared pass by pass instead.
    passes = max(6, 2 * cfg.repeat)
    # Two figures: the best pass of each setting, and the median over pairs of adjacent
    # passes, which cancels the machine's load drifting between pairs.
    on, off, batches = measure_checksum_cost(first_path, cfg, passes)
    pairs = [100 * (1 - a / b) for a, b in zip(on, off, strict=True) if b]
    best_on, best_off = max(on, default=0.0), max(off, default=0.0)
    checksum_cost: dict[str, Any] = {
        "store": first_fmt,
        "verify_on": best_on,
        "verify_off": best_off,
        "percent": 100 * (1 - best_on / best_off) if on and best_off else None,
        "percent_pairs_median": statistics.median(pairs) if pairs else None,
        "passes": passes,
        "batches_per_pass": batches,
        "runs_on": on,
        "runs_off": off,
    }
    result = BenchResult(
        config=cfg.model_dump(mode="json"),
        machine=describe_machine(),
        records=n,
        megabytes=mb,
        rows=list(rows.values()),
        notes=notes,
        checksum_cost=checksum_cost,
        reencoded=reencoded_name(cfg),
        source_shuffle=source_shuffle,
    )
    (cfg.out / "bench.png").unlink(missing_ok=True)  # an earlier run's
    if chart(result, cfg.out / "bench.png") is None:
        notes.append("matplotlib is not installed: no chart (pip install 'seqstore[plot]')")
    (cfg.out / "bench.json").write_text(json.dumps(to_json(result), indent=2) + "\n")
    return result


def store_megabytes(reader: Reader) -> float:
    """What a store takes on disk, in MB: its files, or an image folder's image files."""
    files = reader.source_files
    if files is None:
        files = [f for f in reader.path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def loader_spec(cfg: BenchConfig, reader: Reader) -> EpochSpec:
    """The epoch spec of the bench's Loader (``cfg``: its workers, batch, block and buffer)
    over ``reader``, shuffled, seed 0, one rank, as the Loader makes it (blocks fitted to a
    store in class order)."""
    settings = LoaderConfig(
        path=reader.location,
        num_workers=cfg.workers,
        batch_size=cfg.batch_size,
        block_mb=cfg.block_mb,
        shuffle_buffer_mb=cfg.shuffle_buffer_mb,
    )
    spec = EpochSpec.from_config(
        settings,
        num_records=len(reader),
        mean_record_bytes=reader.manifest.mean_record_bytes,
        by_record=reader.records_are_files,
    )
    return fit_blocks(spec, label_runs(reader))


def _records_for_mb(mb: float, mean_record_bytes: float) -> int:
    """How many records of ``mean_record_bytes`` fit in ``mb`` megabytes, as the Loader
    sizes its blocks and shuffle buffer (``block_mb``, ``shuffle_buffer_mb``)."""
    return int(mb * 1e6 / mean_record_bytes)
