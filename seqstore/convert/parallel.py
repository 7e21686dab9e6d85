"""Writing a sharded conversion's shards: in this process, or in worker processes that each
take the next shard as they become free."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..backends import get_backend
from ..backends.sharded import open_shard_writer, shard_name, shard_provenance
from ..errors import SeqstoreError, WorkerDiedError
from .plan import ConversionPlan
from .prepare import prepare_records
from .write import write_records

__all__ = ["ShardDone", "ShardJob", "write_shards"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class ShardJob:
    """Everything a process needs to write shards of a conversion.

    Attributes
    ----------
    plan : ConversionPlan
        The conversion (source, write order, classes, provenance, options).
    directory : Path
        The staging directory of the store, where shards are written.
    records_per_shard : int
        Positions of the write order per shard (the last shard may hold fewer).
    num_shards : int
    todo : list of int
        The shards to write: all but those a killed conversion finished.
    kept_records : int
        Records in the shards a killed conversion finished.
    """

    plan: ConversionPlan
    directory: Path
    records_per_shard: int
    num_shards: int
    todo: list[int]
    kept_records: int

    def positions(self, index: int) -> np.ndarray:
        """The source positions shard ``index`` holds, in write order."""
        r = self.records_per_shard
        return self.plan.order[index * r : (index + 1) * r]


@dataclass
class ShardDone:
    """A shard written.

    Attributes
    ----------
    index : int
        The shard's number.
    bytes_read : int
        Source bytes read for it (checkpointed ones included).
    resumed_records : int
        Records kept from a killed writer's checkpoint of the shard.
    """

    index: int
    bytes_read: int
    resumed_records: int


def write_shards(
    job: ShardJob,
    mine: list[int],
    *,
    show: bool,
    rank: int,
    world: int,
    on_shard: Callable[[Path], object] | None = None,
) -> list[ShardDone]:
    """Write the shards ``mine``: in this process, or in the config's worker processes;
    ``on_shard`` is called with each one's directory once it is finished."""
    finished = (lambda _index: None) if on_shard is None else _call_with_directory(job, on_shard)
    workers = min(job.plan.config.workers, len(mine))
    who = f" (rank {rank} of {world})" if world > 1 else ""
    with tqdm(
        total=sum(len(job.positions(i)) for i in mine),
        unit="img",
        disable=not show,
        desc=f"convert -> {job.plan.config.format}, {len(mine)} shards{who}",
    ) as bar:
        if workers == 0:
            out = []
            for i in mine:
                out.append(_write_shard(job, i, bar.update))
                finished(i)
            return out
        return _in_processes(job, mine, workers, bar.update, finished)


def _call_with_directory(
    job: ShardJob, on_shard: Callable[[Path], object]
) -> Callable[[int], object]:
    return lambda index: on_shard(job.directory / shard_name(index))


def _write_shard(job: ShardJob, index: int, progress: Callable[[int], object]) -> ShardDone:
    """Write shard ``index`` of ``job`` with the format's ordinary writer."""
    plan = job.plan
    cfg = plan.config
    writer = open_shard_writer(
        job.directory,
        index,
        get_backend(cfg.format),
        classes=plan.classes,
        provenance=shard_provenance(plan.provenance, index),
        resume=cfg.resume,
        overwrite=True,  # a finished shard of another plan, left by a killed conversion
    )
    with writer:
        written = write_records(
            writer,
            plan,
            job.positions(index),
            lambda part: prepare_records(plan.reader, part, cfg, workers=0),
            lambda records, _bytes: progress(records),
        )
    return ShardDone(index, written.bytes_read, written.resumed_records)


def _in_processes(
    job: ShardJob,
    mine: list[int],
    workers: int,
    progress: Callable[[int], object],
    finished: Callable[[int], object],
) -> list[ShardDone]:
    """Write the shards ``mine`` in ``workers`` processes, each taking the next shard as it
    becomes free, and call ``finished`` here with each shard's number as it is finished (the
    processes go on with the next shards meanwhile); a process that raises or dies, or
    ``finished`` raising, stops them all."""
    ctx = mp.get_context()
    tasks: Any = ctx.Queue()
    results: Any = ctx.Queue()
    counter: Any = ctx.Value("q", 0)
    for index in mine:
        tasks.put(index)
    for _ in range(workers):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_shard_process, args=(job, tasks, results, counter, os.getpid()), daemon=True
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    out: list[ShardDone] = []
    shown = 0
    try:
        while len(out) < len(mine):
            try:
                kind, value = results.get(timeout=0.2)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise WorkerDiedError(
                        f"a convert process (pid {dead[0].pid}) died while writing shards "
                        f"(exit code {dead[0].exitcode}: killed, or out of memory); the "
                        "finished shards are kept: run the same convert with --resume to "
                        "write the rest"
                    ) from None
            else:
                if kind == "error":
                    raise value
                out.append(value)
                finished(value.index)
            done = counter.value  # read once: workers add to it meanwhile
            progress(done - shown)
            shown = done
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
    return out


def _shard_process(job: ShardJob, tasks: Any, results: Any, counter: Any, parent: int) -> None:
    _die_with(parent)

    def progress(records: int) -> None:
        with counter.get_lock():
            counter.value += records

    while (index := tasks.get()) is not None:
        try:
            results.put(("done", _write_shard(job, index, progress)))
        except BaseException as exc:
            results.put(("error", _picklable(exc)))
            return


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL (Linux): a shard writer left
    running would go on writing into a store that a resumed conversion has taken over."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
    except Exception:
        return SeqstoreError(f"{type(exc).__name__}: {exc}")
    return exc
