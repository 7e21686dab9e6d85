"""Sharded conversion: a store written as shards in parallel, by the ``workers`` processes
of one machine or by every rank of a torch.distributed job on many.

What goes into which shard is decided before anything is written, from the source alone:
the write order is the one an unsharded conversion uses (seeded shuffle, ``limit``), and
shard ``i`` holds the positions ``i * R`` to ``(i + 1) * R - 1`` of it, ``R`` being
``shard_mb`` over the source's mean record size. So the store (its records, their order,
which shard holds each, the manifest's ``index_digest``) is the same for any number of
processes, ranks or machines, and holds the records of an unsharded conversion in the same
order. Processes take whole shards, as they become free, and write each with the format's
ordinary writer, checking images as any conversion does: which process writes a shard
depends on timing, what the shard holds does not.

Distributed (``torchrun ... -m seqstore convert``): rank 0 lists the source, makes the plan
and the store's staging directory, and broadcasts them through a gloo group; rank ``r``
writes the unfinished shards ``r, r + W, r + 2W, ...`` (with its own ``workers``); once
every rank has reported, rank 0 writes the manifest. The destination must be on a file
system that every rank sees. A rank that fails stops the store from being written; a rank
that is killed leaves it partial, refused by readers, and ``--resume`` writes the shards
that are missing.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .backends import get_backend
from .backends.sharded import (
    ShardedWriter,
    finished_shard,
    open_shard_writer,
    shard_name,
    shard_provenance,
    sharded_writer_cls,
)
from .config import ConvertConfig
from .convert import ConversionPlan, ConvertReport, _prepared, fill, plan_conversion
from .errors import ConfigError, SeqstoreError, WorkerDiedError
from .manifest import read_manifest

__all__ = ["DISTRIBUTED_SHARD_MB", "ShardJob", "convert_sharded", "under_torchrun"]

#: Shard size of a distributed conversion that names none.
DISTRIBUTED_SHARD_MB = 1024.0
# How long a rank waits for the others: the rank with the most to convert sets the pace.
_GROUP_TIMEOUT = timedelta(days=7)
# The environment torch.distributed's env:// initialisation reads (torchrun sets it).
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def under_torchrun() -> bool:
    """Whether this process is a rank that torchrun started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and all(v in os.environ for v in _TORCHRUN_ENV)


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
class _ShardDone:
    index: int
    bytes_read: int
    resumed_records: int


def convert_sharded(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    cfg: ConvertConfig,
    *,
    on_shard: Callable[[Path], object] | None = None,
) -> ConvertReport:
    """Convert ``src`` into a sharded store at ``dst`` (see the module docstring).

    Called by :func:`seqstore.convert.convert` when ``shard_mb`` or ``distributed`` is set;
    in a distributed conversion every rank calls it, and each returns the same report.
    ``on_shard`` is called in this process with the directory of each shard it (or its
    worker processes) finished, as soon as it is finished: a conversion to a URL uploads it
    then. An exception it raises ends the conversion as a failed shard would.

    Raises
    ------
    SeqstoreError
        A bad source, destination, option or image (the store is then not written), or a
        process that died (the finished shards are kept for ``resume``).
    """
    group = _Group() if cfg.distributed else None
    try:
        return _convert(src, dst, cfg, group, on_shard)
    finally:
        if group is not None:
            group.close()


def _start(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], cfg: ConvertConfig
) -> tuple[ShardedWriter, ShardJob]:
    """Plan the conversion and open the store's writer (rank 0 alone does this)."""
    plan = plan_conversion(src, dst, cfg)
    shard_mb = cfg.shard_mb or DISTRIBUTED_SHARD_MB
    per_shard = max(1, int(shard_mb * 1e6 // plan.reader.manifest.mean_record_bytes))
    num_shards = math.ceil(len(plan.order) / per_shard)
    # The plan in the options: a resumed conversion keeps shards only of the same plan.
    plan.provenance.options.update(
        shard_mb=shard_mb, records_per_shard=per_shard, source_identity=plan.reader.identity
    )
    writer = sharded_writer_cls(get_backend(cfg.format))(
        dst,
        classes=plan.classes,
        overwrite=cfg.overwrite,
        provenance=plan.provenance,
        resume=cfg.resume,
        shard_bytes=int(shard_mb * 1e6),
        num_shards=num_shards,
    )
    kept = {}
    for i in range(num_shards):
        m = finished_shard(writer.directory, i)
        if m is not None and m.provenance.options == shard_provenance(plan.provenance, i).options:
            kept[i] = m.num_records
    todo = [i for i in range(num_shards) if i not in kept]
    return writer, ShardJob(plan, writer.directory, per_shard, num_shards, todo, sum(kept.values()))


def _convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    cfg: ConvertConfig,
    group: _Group | None,
    on_shard: Callable[[Path], object] | None = None,
) -> ConvertReport:
    rank, world = (group.rank, group.world) if group is not None else (0, 1)
    t0 = time.perf_counter()
    writer: ShardedWriter | None = None
    message: ShardJob | str = ""
    start_error: Exception | None = None
    if rank == 0:
        try:
            writer, message = _start(src, dst, cfg)
        except Exception as exc:
            if group is None:
                raise
            message, start_error = _describe(exc), exc
    if group is not None:
        message = group.broadcast(message)  # every rank's plan is rank 0's listing
    if isinstance(message, str):
        if start_error is not None:
            raise start_error
        raise SeqstoreError(f"rank 0 could not start the conversion: {message}")
    job = message
    mine = job.todo[rank::world]
    done: list[_ShardDone] = []
    error: Exception | None = None
    try:
        done = _write_shards(
            job, mine, show=cfg.progress and rank == 0, rank=rank, world=world, on_shard=on_shard
        )
    except Exception as exc:
        if group is None:
            _close(writer, ok=False, keep=isinstance(exc, WorkerDiedError))
            raise
        error = exc
    except BaseException:  # interrupted: the store goes, as an interrupted convert's does
        _close(writer, ok=False)
        raise
    if group is None:
        _close(writer, ok=True)
    else:
        line = None if error is None else _describe(error)
        reports = group.all_gather((done, line, isinstance(error, WorkerDiedError)))
        done = [d for shards, _, _ in reports for d in shards]
        failed = [(r, msg) for r, (_, msg, _) in enumerate(reports) if msg is not None]
        died = any(d for _, _, d in reports)
        finish_error = None
        if rank == 0:
            try:
                _close(writer, ok=not failed, keep=died)
            except Exception as exc:
                finish_error = _describe(exc)
        finish_error = group.broadcast(finish_error)  # no rank ends before the store does
        if error is not None:
            raise error
        if failed:
            r, line = failed[0]
            kept = " (its finished shards are kept: --resume writes the rest)" if died else ""
            raise SeqstoreError(f"rank {r} failed, so '{dst}' was not written{kept}: {line}")
        if finish_error is not None:
            raise SeqstoreError(finish_error)
    manifest = read_manifest(dst)
    return ConvertReport(
        manifest,
        time.perf_counter() - t0,
        sum(d.bytes_read for d in done),
        list(manifest.provenance.skipped),
        list(manifest.provenance.warnings),
        job.kept_records + sum(d.resumed_records for d in done),
        kept_shards=job.num_shards - len(job.todo),
        rank=rank,
    )


def _close(writer: ShardedWriter | None, *, ok: bool, keep: bool = False) -> None:
    """Finish the store (the process that holds its writer), or remove it after an error,
    unless ``keep``: after a process died its finished shards stay for ``resume``, as after
    a kill."""
    if writer is None:
        return
    if ok:
        writer.finish()
    elif not keep:
        writer.abort()


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, SeqstoreError) else f"{type(error).__name__}: {error}"


def _write_shards(
    job: ShardJob,
    mine: list[int],
    *,
    show: bool,
    rank: int,
    world: int,
    on_shard: Callable[[Path], object] | None = None,
) -> list[_ShardDone]:
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


def _write_shard(job: ShardJob, index: int, progress: Callable[[int], object]) -> _ShardDone:
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
        filled = fill(
            writer,
            plan,
            job.positions(index),
            lambda part: _prepared(plan.reader, part, cfg, workers=0),
            lambda records, _bytes: progress(records),
        )
    return _ShardDone(index, filled.bytes_read, filled.resumed_records)


def _in_processes(
    job: ShardJob,
    mine: list[int],
    workers: int,
    progress: Callable[[int], object],
    finished: Callable[[int], object],
) -> list[_ShardDone]:
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
    out: list[_ShardDone] = []
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


class _Group:
    """The gloo process group the ranks of a distributed conversion talk through.

    torch is imported here only: a conversion on one machine never needs it.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self._owned = not dist.is_initialized()
        if self._owned:
            missing = [v for v in _TORCHRUN_ENV if v not in os.environ]
            if missing:
                raise ConfigError(
                    "a distributed convert needs the environment torchrun sets "
                    f"({', '.join(missing)} missing); start it with torchrun, or leave out "
                    "--distributed"
                )
            dist.init_process_group("gloo", timeout=_GROUP_TIMEOUT)
            self._group = None
        else:  # a job's own group may be NCCL's: objects travel over a gloo one
            self._group = dist.new_group(backend="gloo", timeout=_GROUP_TIMEOUT)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        box = [obj]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def close(self) -> None:
        if self._owned:
            self._dist.destroy_process_group()
