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

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..backends import get_backend
from ..backends.sharded import (
    ShardedWriter,
    finished_shard,
    shard_provenance,
    sharded_writer_cls,
)
from ..config import ConvertConfig
from ..errors import SeqstoreError, WorkerDiedError
from ..manifest import read_manifest
from .distributed import RankGroup
from .parallel import ShardDone, ShardJob, write_shards
from .plan import plan_conversion
from .write import ConvertReport

__all__ = ["DISTRIBUTED_SHARD_MB", "convert_sharded"]

#: Shard size of a distributed conversion that names none.
DISTRIBUTED_SHARD_MB = 1024.0


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
    group = RankGroup() if cfg.distributed else None
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
    group: RankGroup | None,
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
    done: list[ShardDone] = []
    error: Exception | None = None
    try:
        done = write_shards(
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
