"""The bench's report room: the figures of one run, as a table, ``bench.json`` and a chart."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .._version import __version__
from ..imaging.decode import HAS_WINDOW_DECODER, NO_WINDOW_DECODER

__all__ = [
    "BenchResult",
    "Row",
    "chart",
    "cpu_name",
    "describe_machine",
    "format_table",
    "to_json",
]


@dataclass
class Row:
    """One line of the results table.

    Attributes
    ----------
    name : str
        What was measured (a backend, a baseline, or the ceiling).
    kind : str
        ``"seqstore"``, ``"baseline"`` or ``"ceiling"``.
    images_per_s : float
        Median images per second through the whole pipeline.
    first_batch_s : float or None
        Median time from starting an epoch to its first batch.
    peak_rss_mb : float or None
        Largest resident memory of the process and its workers together.
    read_records_per_s, read_mb_per_s : float or None
        Raw ``read_block`` rate of the store (seqstore rows).
    store_mb : float or None
        What the store takes on disk (seqstore rows of a store of their own).
    stages_ms : dict
        Milliseconds per image of each stage, measured in one process.
    shuffle : dict
        Shuffle quality of the configuration (seqstore rows).
    runs : list of float
        Every timed images/s, for the record.
    """

    name: str
    kind: str
    images_per_s: float = 0.0
    first_batch_s: float | None = None
    peak_rss_mb: float | None = None
    read_records_per_s: float | None = None
    read_mb_per_s: float | None = None
    store_mb: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    shuffle: dict[str, float] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    ttfb_runs: list[float] = field(default_factory=list)
    rss_runs: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    """Everything ``seqstore bench`` measured, as written to ``bench.json``.

    ``reencoded`` names the row of the store of re-encoded images, which the table compares
    with the first format's row (None when there is none). ``source_shuffle`` is the shuffle
    quality of the source as given, read by the Loader as it stands."""

    config: dict[str, Any]
    machine: dict[str, Any]
    records: int
    megabytes: float
    rows: list[Row]
    notes: list[str]
    checksum_cost: dict[str, Any] | None = None
    reencoded: str | None = None
    source_shuffle: dict[str, float] | None = None

    def ratio(self, name: str, to: str) -> float | None:
        """images/s of row ``name`` divided by that of row ``to`` (None if either is absent)."""
        rows = {r.name: r for r in self.rows}
        if name not in rows or to not in rows or not rows[to].images_per_s:
            return None
        return rows[name].images_per_s / rows[to].images_per_s


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers ("AMD EPYC ... (family 25,
    model 1)": names alone do not tell generations apart), from ``/proc/cpuinfo`` on
    Linux; elsewhere what :func:`platform.processor` says."""
    facts: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block is enough
                facts.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = facts.get("model name")
    if name is None:
        return platform.processor() or platform.machine()
    if "cpu family" in facts and "model" in facts:
        name += f" (family {facts['cpu family']}, model {facts['model']})"
    return name


def describe_machine() -> dict[str, Any]:
    """The CPU, memory, platform and library versions figures were taken with."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for pkg in ("numpy", "torch", "opencv-python-headless", "lmdb", "h5py", "pillow", "tensorpack"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "seqstore": __version__,
        "versions": versions,
        "window_decoder": HAS_WINDOW_DECODER,
    }


def to_json(result: BenchResult) -> dict[str, Any]:
    """``result`` as written to ``bench.json``: every field, and each row's ratio to the
    ceiling."""
    out = asdict(result)
    ceiling = result.ratio
    for row in out["rows"]:
        row["ratio_to_ceiling"] = ceiling(row["name"], "ceiling")
    return out


def chart(result: BenchResult, path: Path) -> Path | None:
    """A bar chart of images/s per row, written to ``path``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result.rows
    colors = {"seqstore": "#1f77b4", "baseline": "#7f7f7f", "ceiling": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh(
        [r.name for r in rows], [r.images_per_s for r in rows], color=[colors[r.kind] for r in rows]
    )
    for i, r in enumerate(rows):
        ax.text(r.images_per_s, i, f" {r.images_per_s:.0f}", va="center")
    ax.invert_yaxis()
    cfg = result.config
    ax.set_xlabel("images / s")
    ax.set_title(
        f"{result.records} images, {cfg['transform']}, {cfg['workers']} workers, "
        f"batch {cfg['batch_size']} ({result.machine['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(result: BenchResult) -> str:
    """The results as a plain-text table."""
    lines = [
        f"{result.records} records, {result.megabytes:.1f} MB; {result.machine['cpus']} CPUs"
        f" ({result.machine.get('cpu', '?')}); "
        f"transform={result.config['transform']} workers={result.config['workers']} "
        f"batch={result.config['batch_size']}",
        "",
        f"{'pipeline':<22}{'img/s':>8}{'x ceiling':>10}{'1st batch s':>12}{'peak MB':>9}"
        f"{'read rec/s':>11}{'read MB/s':>10}{'store MB':>10}",
    ]
    if result.machine.get("window_decoder") is False:
        lines[1:1] = [f"note: {NO_WINDOW_DECODER}"]
    for r in result.rows:
        ratio = result.ratio(r.name, "ceiling")
        lines.append(
            f"{r.name:<22}{r.images_per_s:>8.0f}{(ratio or 0):>10.2f}"
            f"{(r.first_batch_s or 0):>12.3f}{(r.peak_rss_mb or 0):>9.0f}"
            + (
                f"{r.read_records_per_s:>11.0f}{r.read_mb_per_s:>10.0f}{r.store_mb or 0:>10.1f}"
                if r.read_records_per_s
                else ""
            )
        )
    staged = [r for r in result.rows if r.stages_ms]
    if staged:
        names = list(staged[0].stages_ms)
        lines += ["", "stage ms per image (one process): " + ", ".join(names)]
        for r in staged:
            lines.append(f"{r.name:<22}" + "".join(f"{r.stages_ms[k]:>10.3f}" for k in names))
    mixed = [(r.name, r.shuffle) for r in result.rows if r.shuffle]
    if result.source_shuffle:
        mixed.append(("source as given", result.source_shuffle))
    if mixed:
        lines += [
            "",
            f"{'shuffle quality':<22}{'displacement':>13}{'random':>8}"
            f"{'classes/batch':>15}{'random':>8}",
        ]
        for name, s in mixed:
            lines.append(
                f"{name:<22}{s['displacement']:>13.3f}{s['random_displacement']:>8.3f}"
                f"{s['classes_per_batch']:>15.1f}{s['random_classes_per_batch']:>8.1f}"
            )
    cost = result.checksum_cost
    if cost is not None and cost["percent"] is not None:
        lines.append(
            f"checksum cost ({cost['store']} Loader): {cost['percent']:.1f}% "
            f"({cost['verify_on']:.0f} img/s verifying, {cost['verify_off']:.0f} without; "
            f"best of {cost['passes']} alternating passes of {cost['batches_per_pass']} "
            f"batches); median of adjacent pairs {cost['percent_pairs_median']:.1f}%"
        )
    for a, b in (("lmdb", "torchvision-style"), ("tensorpack file", "tensorpack pipeline")):
        ratio = result.ratio(a, b)
        if ratio is not None:
            lines.append(f"{a} / {b}: {ratio:.2f}x")
    rows = {r.name: r for r in result.rows}
    reencoded = rows.get(result.reencoded or "")
    original = rows.get(result.config["formats"][0])
    if reencoded is not None and original is not None and reencoded.store_mb:
        lines.append(
            f"{reencoded.name} / {original.name}: "
            f"{result.ratio(reencoded.name, original.name) or 0:.2f}x the images/s from "
            f"{reencoded.store_mb / (original.store_mb or 1):.2f}x the bytes "
            f"({reencoded.store_mb:.1f} MB against {original.store_mb or 0:.1f} MB)"
        )
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
