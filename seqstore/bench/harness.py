"""The bench's harness room: processes, peak memory and the page cache.

Each pipeline is measured in a spawned process of its own (:func:`measure`), so that it runs
alone with its workers, its memory is counted apart, and py-lmdb's one-open-per-path rule
holds per pipeline. The timing loops that run inside that process live here too.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from ..config import BenchConfig
from ..errors import SeqstoreError
from .pipelines import build, seqstore_epoch

__all__ = [
    "PeakMemory",
    "drop_caches",
    "measure",
    "measure_checksum_cost",
    "measure_epochs",
    "run_in_child",
    "time_epochs",
    "training_script_start",
]


def training_script_start() -> None:
    """Make a spawned measuring process start as a training script does. It inherited the
    spawn start method, where a script gets the platform's default (fork on Linux), and so
    should the workers of what it measures; and a script has imported torch before it
    builds its loader, so the import is not part of the time to the first batch."""
    mp.set_start_method(mp.get_all_start_methods()[0], force=True)
    import torch  # noqa: F401


def drop_caches() -> bool:
    """Drop the Linux page cache; False where that is not allowed (not root, not Linux)."""
    try:
        subprocess.run(["sync"], check=True, capture_output=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


class PeakMemory:
    """Samples the memory of this process and its children in a thread.

    On Linux it sums each process's proportional share of anonymous and shared memory
    (``Pss_Anon + Pss_Shmem`` in ``/proc/<pid>/smaps_rollup``): forked workers share pages
    with their parent, which resident sizes would count once per worker, and pages of a
    memory-mapped store are page cache, not memory the loader holds. Elsewhere: RSS.

    Parameters
    ----------
    interval : float
        Seconds between samples while running.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        """Largest total seen so far, in bytes."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _memory(proc: psutil.Process) -> int:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            return sum(int(fields[k].split()[0]) * 1024 for k in ("Pss_Anon", "Pss_Shmem"))
        except (OSError, KeyError, ValueError):
            return int(proc.memory_info().rss)

    def sample(self) -> None:
        """Take one sample now (and keep it if it is the largest)."""
        me = psutil.Process()
        total = self._memory(me)
        for child in me.children(recursive=True):
            try:
                total += self._memory(child)
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        """Take a sample, then keep sampling in the background until :meth:`stop`."""
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop the background sampling."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def time_pipeline(
    kind: str, path: Path, cfg_json: str, extra: dict[str, Any]
) -> tuple[float, float, float]:
    """In a fresh process: (images/s of a full epoch, seconds from building the pipeline to
    its first batch, peak memory MB of the process and its workers)."""
    cfg = BenchConfig.model_validate_json(cfg_json)
    training_script_start()
    from .. import Loader  # noqa: F401 - imports are not part of the time to the first batch

    if kind == "tensorpack":
        from .baselines import tensorpack_dataflow

        tensorpack_dataflow()
    return time_epochs(lambda: build(kind, path, cfg, extra), cfg.min_seconds, cfg.cold)


def time_epochs(
    make_epoch: Callable[[], Callable[[], Iterator[Any]]], min_seconds: float, cold: bool
) -> tuple[float, float, float]:
    """(images/s of whole epochs, seconds from ``make_epoch()`` to the first batch, peak
    memory MB of this process and its workers) of the pipeline ``make_epoch`` builds: a
    callable that runs one epoch per call, yielding batches whose second item holds one
    entry per image. A warm-up epoch, then whole epochs for at least ``min_seconds``;
    ``cold``: the first epoch only, timed from the start (the page cache was just dropped)."""
    memory = PeakMemory(interval=0.1)
    start = time.perf_counter()
    epoch = make_epoch()
    if cold:
        # The parent dropped the page cache just before: the first epoch is the cold one.
        # (A warm-up would map the store into persistent workers, where no drop reaches.)
        first = None
        images = 0
        with memory:
            for batch in epoch():
                if first is None:
                    first = time.perf_counter() - start
                images += len(batch[1])
        return images / (time.perf_counter() - start), first or 0.0, memory.peak / 1e6
    # Reading a process's PSS costs milliseconds, so memory is sampled only during the
    # warm-up epoch after its first batch: the timed epochs run unobserved.
    first = None
    for _ in epoch():  # warm-up epoch, run to its end: nothing left running after it
        if first is None:
            first = time.perf_counter() - start
            memory.start()
    if first is None:
        raise SeqstoreError("the pipeline's epoch yielded no batch")
    memory.stop()
    images = 0
    start = time.perf_counter()
    while True:  # whole epochs, at least min_seconds of them
        for batch in epoch():
            images += len(batch[1])
        if time.perf_counter() - start >= min_seconds:
            break
    rate = images / (time.perf_counter() - start)
    memory.sample()
    return rate, first or 0.0, memory.peak / 1e6


def time_checksum_cost(
    path: Path, cfg_json: str, passes: int
) -> tuple[list[float], list[float], int]:
    """In a fresh process: (images/s of each pass with checksums verified, of each pass
    without, batches per pass). The two Loaders run pass by pass in turn (on, off, then
    off, on), so that both meet the same load from the rest of the machine; each pass times
    the batches after its first, up to an epoch or about 2000 images, so that the figure is
    the steady rate, not the start, and a large store is not read whole a dozen times."""
    cfg = BenchConfig.model_validate_json(cfg_json)
    limit = max(8, math.ceil(2000 / cfg.batch_size))
    training_script_start()
    epochs = {verify: seqstore_epoch(path, cfg, verify=verify) for verify in (True, False)}
    rates: dict[bool, list[float]] = {True: [], False: []}
    timed = 0
    for i in range(passes + 1):  # the first round warms both up
        for verify in (True, False) if i % 2 else (False, True):
            images, start = 0, 0.0
            for b, batch in enumerate(epochs[verify]()):
                if b == 0:
                    start = time.perf_counter()
                    continue
                images += len(batch[1])
                timed = b
                if b == limit:
                    break
            if i and images:
                rates[verify].append(images / (time.perf_counter() - start))
    return rates[True], rates[False], timed


def measure(
    kind: str, path: Path, cfg: BenchConfig, extra: dict[str, Any] | None = None
) -> tuple[float, float, float]:
    """Measure one pipeline in a spawned process of its own.

    Parameters
    ----------
    kind : {"seqstore", "ceiling", "torchvision", "tensorpack"}
        Which pipeline (see :func:`seqstore.bench.pipelines.build`).
    path : Path
        The store (or image folder, for ``"torchvision"``) it reads.
    cfg : BenchConfig
        Batch size, workers, transform, ``min_seconds`` and ``cold``.
    extra : dict, optional
        ``dtype``, ``verify``, ``reader_options`` and ``mix`` (a list of sources read in
        place of ``path``) for ``"seqstore"``; ``cache`` for ``"tensorpack"``.

    Returns
    -------
    tuple of float
        Images/s over whole epochs after a warm-up epoch, seconds to the first batch, and
        the peak memory in MB of the process and its workers.
    """
    return run_in_child(time_pipeline, (kind, path, cfg.model_dump_json(), extra or {}), kind)


def measure_checksum_cost(
    path: Path, cfg: BenchConfig, passes: int
) -> tuple[list[float], list[float], int]:
    """The Loader of ``path`` with checksums verified and not, alternating pass by pass in
    one spawned process: (images/s of each pass verifying, of each pass not, batches
    timed per pass)."""
    return run_in_child(time_checksum_cost, (path, cfg.model_dump_json(), passes), "checksum cost")


def measure_epochs(
    make_epoch: Callable[..., Callable[[], Iterator[Any]]],
    args: tuple[Any, ...] = (),
    *,
    min_seconds: float = 2.0,
    what: str = "pipeline",
) -> tuple[float, float, float]:
    """Measure a pipeline of one's own in a spawned process, as :func:`measure` does.

    Parameters
    ----------
    make_epoch : callable
        Called as ``make_epoch(*args)`` in the new process, it builds the pipeline and returns
        a callable that runs one epoch per call, yielding batches whose second item holds one
        entry per image. It and ``args`` are pickled: a function defined at a module's top
        level (a script's included).
    args : tuple
        Its arguments.
    min_seconds : float
        Whole epochs are timed for at least this long, after a warm-up epoch.
    what : str
        What is measured, for the message should the process fail.

    Returns
    -------
    tuple of float
        Images/s, seconds from ``make_epoch`` to the first batch, peak memory in MB of the
        process and its workers.
    """
    return run_in_child(_time_epochs_in_child, (make_epoch, args, min_seconds), what)


def _time_epochs_in_child(
    make_epoch: Callable[..., Callable[[], Iterator[Any]]], args: tuple[Any, ...], seconds: float
) -> tuple[float, float, float]:
    training_script_start()
    return time_epochs(lambda: make_epoch(*args), seconds, cold=False)


def run_in_child(fn: Callable[..., Any], args: tuple[Any, ...], what: str) -> Any:
    """``fn(*args)`` in a spawned process of its own, and its result; a process that dies
    or a call that raises is one :class:`~seqstore.errors.SeqstoreError` naming ``what``.
    ``fn`` and ``args`` are pickled (a script's top-level function will do)."""
    # A plain (non-daemon) process: the pipelines start worker processes of their own.
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_reply, args=(send, fn, args))
    proc.start()
    send.close()  # the child's copy is the only one left: recv() ends if the child dies
    try:
        ok, value = receive.recv()
    except EOFError:
        proc.join()
        raise SeqstoreError(
            f"the {what} measurement process died (exit code {proc.exitcode}) without a "
            "result; if it ran out of memory, measure fewer records with --limit"
        ) from None
    proc.join()
    if not ok:
        raise SeqstoreError(f"the {what} measurement failed: {value}")
    return value


def _reply(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send((True, fn(*args)))
    except Exception as exc:  # reported in the parent, which has the terminal
        conn.send((False, f"{type(exc).__name__}: {exc}"))
