"""Writing a conversion's records into one store, with a checkpoint to resume from."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..backends import Writer, get_backend
from ..config import ConvertConfig
from ..errors import BadImageError, without_skip_advice
from ..manifest import Manifest, SkippedFile, read_manifest
from ..records import Record
from .plan import ConversionPlan, plan_conversion
from .prepare import Prepared, Rejected, prepare_records

__all__ = ["ConvertReport", "Written", "convert_one", "write_records"]


@dataclass
class ConvertReport:
    """What a conversion did.

    Attributes
    ----------
    manifest : Manifest
        The new store's manifest.
    seconds : float
        Wall time of the conversion.
    bytes_read : int
        Bytes of source images read (skipped ones included).
    skipped : list of SkippedFile
        Source files left out, with the reason.
    warnings : list of str
        Files kept but worth a look (a PNG named .JPEG, a CMYK JPEG) and ignored non-images.
    resumed_records : int
        Records kept from the checkpoint of a killed conversion (``resume``), finished
        shards included; 0 otherwise.
    kept_shards : int
        Shards a killed sharded conversion had finished, kept as they were (``resume``).
    rank : int
        This process's rank in a distributed conversion (0 otherwise).
    """

    manifest: Manifest
    seconds: float
    bytes_read: int
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed_records: int = 0
    kept_shards: int = 0
    rank: int = 0

    @property
    def mb_per_s(self) -> float:
        """Source megabytes read per second."""
        return self.bytes_read / 1e6 / max(self.seconds, 1e-9)


def convert_one(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], cfg: ConvertConfig
) -> ConvertReport:
    """Convert ``src`` into one (unsharded) store at the local path ``dst``.

    Parameters
    ----------
    src
        The source store or image folder.
    dst
        Directory of the new store.
    cfg
        The conversion's options.

    Returns
    -------
    ConvertReport

    Raises
    ------
    SeqstoreError
        Bad source, destination or option, or (with ``on_error="raise"``) a bad image.
    """
    plan = plan_conversion(src, dst, cfg)
    start = time.perf_counter()
    backend = get_backend(cfg.format)
    shards = {} if cfg.shard_mb is None else {"shard_bytes": int(cfg.shard_mb * 1e6)}
    with backend.open_writer(
        dst,
        classes=plan.classes,
        overwrite=cfg.overwrite,
        provenance=plan.provenance,
        resume=cfg.resume,
        **(shards if backend.writer_shards() else {}),
    ) as writer:
        with tqdm(
            total=len(plan.order),
            unit="img",
            disable=not cfg.progress,
            desc=f"convert -> {cfg.format}",
        ) as bar:

            def progress(records: int, bytes_read: int) -> None:
                bar.update(records)
                elapsed = max(bar.format_dict["elapsed"], 1e-9)
                bar.set_postfix_str(f"{bytes_read / 1e6 / elapsed:.1f} MB/s")

            written = write_records(
                writer,
                plan,
                plan.order,
                lambda part: prepare_records(plan.reader, part, cfg),
                progress,
            )
    # The one parser of manifests: names that are not UTF-8 are kept in it as escaped
    # surrogates, which json reads and strict JSON (pydantic's) refuses.
    manifest = read_manifest(dst)
    return ConvertReport(
        manifest,
        time.perf_counter() - start,
        written.bytes_read,
        list(manifest.provenance.skipped),
        list(manifest.provenance.warnings),
        written.resumed_records,
    )


@dataclass
class Written:
    """What :func:`write_records` did.

    Attributes
    ----------
    bytes_read : int
        Source bytes read, checkpointed ones included.
    resumed_records : int
        Records kept from a killed writer's checkpoint.
    """

    bytes_read: int
    resumed_records: int


def write_records(
    writer: Writer,
    plan: ConversionPlan,
    positions: np.ndarray,
    prepared: Callable[[np.ndarray], Iterator[list[Prepared | Rejected]]],
    progress: Callable[[int, int], object],
) -> Written:
    """Write the source records at ``positions`` (in that order) into ``writer``.

    A resumed writer carries on from its last checkpoint: the same positions, minus those
    already consumed, and what they skipped or warned of.

    Parameters
    ----------
    writer
        An open writer; its provenance collects skipped files and warnings.
    plan
        The conversion.
    positions
        Source positions, a slice of ``plan.order``.
    prepared
        Checks and prepares the records at some positions, in lists, in order.
    progress
        Called with the positions consumed and the bytes read so far after each list.

    Raises
    ------
    BadImageError
        A bad source file, with ``on_error="raise"``.
    """
    cfg = plan.config
    skipped, warnings = writer.provenance.skipped, writer.provenance.warnings
    own = len(warnings)  # store-wide warnings come before this writer's own
    done = writer.resumed or {}
    resumed_records = writer.num_records
    consumed = int(done.get("consumed", 0))
    bytes_read = int(done.get("bytes_read", 0))
    skipped.extend(SkippedFile.model_validate(x) for x in done.get("skipped", []))
    warnings.extend(done.get("warnings", []))
    every = int(cfg.checkpoint_mb * 1e6) if writer.resumable else None
    next_checkpoint = writer.total_bytes + (every or 0)
    progress(consumed, bytes_read)
    for results in prepared(positions[consumed:]):
        for result in results:
            bytes_read += result.nbytes
            if isinstance(result, Rejected):
                if cfg.on_error == "raise":
                    raise BadImageError(result.reason)
                skipped.append(
                    SkippedFile(key=result.key, reason=without_skip_advice(result.reason))
                )
                continue
            warnings.extend(result.warnings)
            record = result.record
            if plan.relabel is not None:
                # A new label is a new record: its checksum covers the label.
                record = Record.make(
                    record.key,
                    plan.relabel[record.label],
                    record.data,
                    record.width,
                    record.height,
                )
            writer.write(record)
        consumed += len(results)
        if every is not None and writer.total_bytes >= next_checkpoint:
            writer.checkpoint(
                {
                    "consumed": consumed,
                    "bytes_read": bytes_read,
                    "skipped": [x.model_dump() for x in skipped],
                    "warnings": warnings[own:],
                }
            )
            next_checkpoint = writer.total_bytes + every
        progress(len(results), bytes_read)
    return Written(bytes_read, resumed_records)
