"""Convert any readable store or image folder into any writable format, in one pass."""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from ._version import __version__
from .backends import Reader, Writer, get_backend, open_store
from .backends.folder import load_classes
from .backends.reader import is_local
from .config import ConvertConfig, load_config
from .errors import BadImageError, ConfigError, SeqstoreError
from .imaging.header import ImageInfo, extension_format, probe
from .manifest import MANIFEST_NAME, Manifest, Provenance, SkippedFile
from .records import Record

__all__ = ["ConversionPlan", "ConvertReport", "Filled", "convert", "fill", "plan_conversion"]

# Records per unit of work handed to a worker process.
_CHUNK = 64


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


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: ConvertConfig | dict[str, Any] | None = None,
    **options: Any,
) -> ConvertReport:
    """Convert the store or image folder ``src`` into a new store at ``dst``.

    Parameters
    ----------
    src
        A seqstore store, a tensorpack LMDB file, an ImageFolder tree, or (with ``labels``)
        a flat validation folder.
    dst
        Directory of the new store.
    config, **options
        A :class:`~seqstore.config.ConvertConfig` (or dict), and/or its fields as keywords.
        With ``shard_mb`` or ``distributed`` the store is sharded and written in parallel
        (see :mod:`seqstore.sharded_convert`).

    Returns
    -------
    ConvertReport

    Raises
    ------
    SeqstoreError
        Bad source, destination or option, or (with ``on_error="fail"``) a bad image; the
        destination is then removed, never left looking complete.
    """
    cfg = load_config(ConvertConfig, config, **options)
    if not is_local(dst):
        if cfg.distributed:
            raise ConfigError(
                f"a distributed convert writes to a local file system only, not to '{dst}'; "
                "convert to a path every rank sees, or leave out --distributed and give "
                "--shard-mb (a sharded store is uploaded shard by shard)"
            )
        return _convert_to_url(src, os.fspath(dst), cfg)
    if cfg.storage_options:
        raise ConfigError(
            f"storage_options apply to a destination URL (s3://, gs:// ...), and '{dst}' is "
            "a local path; leave them out, or give the store's URL"
        )
    if cfg.shard_mb is not None or cfg.distributed:
        from .sharded_convert import convert_sharded

        return convert_sharded(src, dst, cfg)
    plan = plan_conversion(src, dst, cfg)
    start = time.perf_counter()
    with get_backend(cfg.format).open_writer(
        dst,
        classes=plan.classes,
        overwrite=cfg.overwrite,
        provenance=plan.provenance,
        resume=cfg.resume,
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

            filled = fill(
                writer, plan, plan.order, lambda part: _prepared(plan.reader, part, cfg), progress
            )
    manifest = Manifest.model_validate_json((Path(dst) / "seqstore.json").read_bytes())
    return ConvertReport(
        manifest,
        time.perf_counter() - start,
        filled.bytes_read,
        list(manifest.provenance.skipped),
        list(manifest.provenance.warnings),
        filled.resumed_records,
    )


@dataclass
class ConversionPlan:
    """What a conversion writes, decided from the source and options before any writing.

    Attributes
    ----------
    reader : Reader
        The source.
    order : numpy.ndarray
        Source positions in write order (seeded shuffle, ``limit``).
    classes : list of str
        The new store's class names.
    relabel : list of int or None
        New label of each source label, where ``classes`` renames them.
    provenance : Provenance
        The new store's provenance, with the store-wide warnings.
    config : ConvertConfig
    """

    reader: Reader
    order: np.ndarray
    classes: list[str]
    relabel: list[int] | None
    provenance: Provenance
    config: ConvertConfig


def plan_conversion(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], cfg: ConvertConfig
) -> ConversionPlan:
    """Open the source and decide the write order, the classes and the provenance.

    Raises
    ------
    SeqstoreError
        A bad source, destination or option.
    """
    src_path, dst_path = Path(src), Path(dst)
    if src_path.exists() and dst_path.exists() and src_path.resolve() == dst_path.resolve():
        raise ConfigError(f"source and destination are the same path '{src_path}'")
    get_backend(cfg.format)  # an unknown format fails before the source is read
    reader_options: dict[str, Any] = {}
    if cfg.labels is not None:
        reader_options["labels"] = cfg.labels
    if cfg.classes is not None and cfg.labels is not None:
        reader_options["classes"] = cfg.classes
    reader = open_store(src_path, cfg.source_format, **reader_options)
    n = len(reader)
    if n == 0:
        raise ConfigError(f"source '{src_path}' holds no records; nothing to convert")
    classes = reader.classes
    relabel: list[int] | None = None
    class_warning = None
    if cfg.classes is not None:
        listed = load_classes(cfg.classes, sort=False)
        if listed != sorted(listed):
            # A training folder's classes are sorted (torchvision's ImageFolder order), and so
            # are the file's as used here: a split converted with the file and one without it
            # then agree on every label.
            class_warning = (
                f"--classes '{cfg.classes}' lists classes out of order; they are used sorted "
                "(torchvision's ImageFolder order), as a training folder's are"
            )
    if cfg.classes is not None and cfg.labels is None:
        classes = load_classes(cfg.classes)
        if reader.classes and reader.classes != classes:
            # Labels index the source's class names: map them onto the new list by name.
            index = {name: i for i, name in enumerate(classes)}
            missing = [c for c in reader.classes if c not in index]
            if missing:
                raise ConfigError(
                    f"--classes '{cfg.classes}' lacks {len(missing)} class(es) of the source "
                    f"'{src_path}', e.g. '{missing[0]}'; give a list that holds all of them"
                )
            relabel = [index[c] for c in reader.classes]
    is_training_tree = reader.class_sorted and cfg.labels is None
    shuffle = is_training_tree if cfg.shuffle is None else cfg.shuffle
    order = np.random.default_rng(cfg.seed).permutation(n) if shuffle else np.arange(n)
    order = order[: cfg.limit]

    provenance = Provenance(
        seqstore_version=__version__,
        source=str(src_path),
        source_format=reader.manifest.format,
        options=cfg.model_dump(
            mode="json",
            exclude={
                "progress",
                "overwrite",
                "workers",
                "resume",
                "checkpoint_mb",
                "shard_mb",
                "distributed",
                # Credentials and a local scratch path are no facts of the store.
                "storage_options",
                "staging_dir",
            },
        )
        | {"shuffle": shuffle, "source_records": len(reader)},
    )
    # The writer records the provenance when it finishes: what is skipped or worth a warning
    # on the way is appended to its lists.
    if reader.ignored:
        provenance.warnings.append(_ignored_line(reader.ignored))
    if class_warning is not None:
        provenance.warnings.append(class_warning)
    return ConversionPlan(reader, order, classes, relabel, provenance, cfg)


@dataclass
class Filled:
    """What :func:`fill` did: source bytes read (checkpointed ones included) and records
    kept from a killed writer's checkpoint."""

    bytes_read: int
    resumed_records: int


def fill(
    writer: Writer,
    plan: ConversionPlan,
    positions: np.ndarray,
    prepared: Callable[[np.ndarray], Iterator[list[_Good | _Bad]]],
    progress: Callable[[int, int], object],
) -> Filled:
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
        A bad source file, with ``on_error="fail"``.
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
            if isinstance(result, _Bad):
                if cfg.on_error == "fail":
                    raise BadImageError(result.reason)
                skipped.append(SkippedFile(key=result.key, reason=result.reason))
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
    return Filled(bytes_read, resumed_records)


def _convert_to_url(src: str | os.PathLike[str], url: str, cfg: ConvertConfig) -> ConvertReport:
    """Convert into a local staging directory, then upload the finished store to ``url``
    (data files first, the manifest last: see :mod:`seqstore.remote.upload`). A sharded
    store's shards are uploaded as they are finished, while the next ones are written."""
    from .remote.location import Remote
    from .remote.upload import StoreUpload, check_destination, staging_path

    remote = Remote(url, dict(cfg.storage_options))
    check_destination(remote, overwrite=cfg.overwrite)
    local = staging_path(remote.url, cfg.staging_dir)
    upload = StoreUpload(remote, overwrite=cfg.overwrite)
    # The staging path is this conversion's own: a finished store left there by a convert
    # whose upload failed is replaced.
    local_cfg = cfg.model_copy(update={"overwrite": True, "storage_options": {}})
    if cfg.shard_mb is not None:
        from .sharded_convert import convert_sharded

        try:
            report = convert_sharded(src, local, local_cfg, on_shard=upload.put_shard)
        except SeqstoreError as exc:
            raise type(exc)(f"{exc}; '{url}' holds no store (no {MANIFEST_NAME})") from None
    else:
        report = convert(src, local, local_cfg)
    try:
        upload.finish(local)
    except SeqstoreError as exc:
        raise type(exc)(
            f"{exc}; the finished store stays at '{local}' (copy it up, data files before "
            f"{MANIFEST_NAME}, or run the same convert again)"
        ) from None
    shutil.rmtree(local, ignore_errors=True)
    return report


def _ignored_line(ignored: Sequence[str]) -> str:
    return (
        f"ignored {len(ignored)} file(s) without an image extension inside class folders, "
        f"e.g. '{ignored[0]}'"
    )


@dataclass
class _Good:
    record: Record
    nbytes: int
    warnings: list[str]


@dataclass
class _Bad:
    key: str
    reason: str
    nbytes: int


def _chunks(order: np.ndarray, shuffled: bool) -> Iterator[list[tuple[int, int]]]:
    """Units of work: lists of index ranges, contiguous when the order is the store's."""
    for lo in range(0, len(order), _CHUNK):
        part = order[lo : lo + _CHUNK]
        if shuffled:
            yield [(int(i), int(i) + 1) for i in part]
        else:
            yield [(int(part[0]), int(part[-1]) + 1)]


def _prepared(
    reader: Reader, order: np.ndarray, cfg: ConvertConfig, workers: int | None = None
) -> Iterator[list[_Good | _Bad]]:
    """The records at ``order``, checked and prepared, in lists of up to 64, in order: by
    ``workers`` processes (default: the config's), or in this one with 0."""
    shuffled = bool(len(order) > 1 and np.any(np.diff(order) != 1))
    args = (cfg.max_side, cfg.quality, cfg.check, cfg.max_pixels)
    processes = cfg.workers if workers is None else workers
    if processes == 0:
        if _worker_state.get("reader") is not reader:
            _init_worker(reader, *args)
        yield from map(_prepare_chunk, _chunks(order, shuffled))
        return
    # One writer, many readers: imap keeps the results in submission order, so the store
    # is identical whatever the number of workers.
    with mp.get_context().Pool(processes, _init_worker, (reader, *args)) as pool:
        yield from pool.imap(_prepare_chunk, _chunks(order, shuffled))


_worker_state: dict[str, Any] = {}


def _init_worker(
    reader: Reader,
    max_side: int | None,
    quality: int | None,
    check: str,
    max_pixels: int | None,
) -> None:
    # Error messages name a folder's file by its path, a file store's entry as file:key.
    prefix = f"{reader.path}/" if reader.path.is_dir() else f"{reader.path}:"
    _worker_state.clear()  # nothing of an earlier conversion in this process carries over
    _worker_state.update(
        reader=reader,
        max_side=max_side,
        quality=quality,
        prefix=prefix,
        check=check,
        max_pixels=max_pixels,
    )


def _prepare_chunk(ranges: list[tuple[int, int]]) -> list[_Good | _Bad]:
    reader: Reader = _worker_state["reader"]
    out: list[_Good | _Bad] = []
    for start, stop in ranges:
        if reader.stores_checksums:
            # A record damaged in a source store must not get a fresh checksum here.
            for record in reader.read_block(start, stop):
                if record.verify():
                    out.append(_prepare(record.key, record.label, record.data))
                else:
                    reason = (
                        f"record '{record.key}' of '{reader.path}' fails its checksum (damaged "
                        "in the source store); recover it from the original images or use "
                        "--on-error skip to leave it out"
                    )
                    out.append(_Bad(record.key, reason, len(record.data)))
            continue
        try:
            block = reader.read_raw_block(start, stop)
        except BadImageError:
            # One unreadable file (a dangling link, no permission) fails the whole range:
            # read it again file by file so that only that one is bad.
            for i in range(start, stop):
                try:
                    block = reader.read_raw_block(i, i + 1)
                except BadImageError as exc:
                    # Built once per process: a path for every record of the source.
                    files = _worker_state.get("source_files")
                    if files is None:
                        files = _worker_state["source_files"] = reader.source_files
                    key = str(files[i].relative_to(reader.path)) if files else str(i)
                    out.append(_Bad(key, str(exc), 0))
                    continue
                out.extend(_prepare(key, label, data) for key, label, data in block)
            continue
        out.extend(_prepare(key, label, data) for key, label, data in block)
    return out


def _prepare(key: str, label: int, data: bytes) -> _Good | _Bad:
    name = _worker_state["prefix"] + key
    try:
        info = probe(data, name, max_pixels=_worker_state["max_pixels"])
        _refuse_unlike_pil(info, name)
    except BadImageError as exc:
        return _Bad(key, str(exc), len(data))
    warnings = []
    if info.animated:
        warnings.append(f"'{name}' is an animated PNG; only its first frame is kept, as PIL does")
    promised = extension_format(key)
    if promised is not None and promised != info.format:
        warnings.append(
            f"'{name}' is a {info.format.upper()} file named {Path(key).suffix}; kept as is "
            "(seqstore decodes by content)"
        )
    if info.cmyk:
        warnings.append(f"'{name}' is a CMYK JPEG; kept as is (seqstore decodes it to RGB)")
    max_side, quality = _worker_state["max_side"], _worker_state["quality"]
    nbytes = len(data)
    width, height = info.width, info.height
    reencode = (max_side is not None and max(width, height) > max_side) or (
        quality is not None and max_side is None
    )
    decodes = reencode or _worker_state["check"] == "decode"
    capture: AbstractContextManager[list[str]] = _c_stderr() if decodes else nullcontext([])
    with capture as printed:
        if reencode:
            try:
                data, width, height = _reencode(data, name, max_side, quality or 90)
            except BadImageError as exc:  # a sound header over damaged image data
                return _Bad(key, str(exc), nbytes)
        elif _worker_state["check"] == "decode":
            from .imaging.decode import decode

            try:
                decode(data, name=name, max_pixels=None)  # the header check applied the limit
            except BadImageError as exc:
                return _Bad(key, str(exc), nbytes)
    damage = [line for line in printed if "extraneous bytes" not in line]
    if damage:
        # libjpeg decodes damaged data anyway, filling what it lost with grey, and says so
        # only on stderr: the image would train as a grey-smeared picture.
        return _Bad(
            key,
            f"'{name}' has damaged image data (libjpeg: {damage[0]}); re-copy it from the "
            "original or use --on-error skip to leave it out",
            nbytes,
        )
    warnings.extend(f"'{name}' decodes, but libjpeg says: {line}; kept" for line in printed)
    return _Good(Record.make(key, label, data, width, height), nbytes, warnings)


@contextmanager
def _c_stderr() -> Iterator[list[str]]:
    """Collect what C code prints on file descriptor 2 meanwhile, as lines.

    OpenCV's libjpeg prints warnings such as "Corrupt JPEG data: 2 extraneous bytes before
    marker 0xd9" straight to stderr, past OpenCV's log level, one line per file and without
    its name; hundreds of them would bury a conversion's output. Collected, they become
    warnings that name the file.
    """
    lines: list[str] = []
    capture = _capture_file()
    capture.seek(0)
    capture.truncate()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(capture.fileno(), 2)
    try:
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
        lines.extend(line.strip() for line in text.splitlines() if line.strip())


# One capture file per process, reused for every image: making one per image cost 30 us.
_captures: dict[int, IO[bytes]] = {}


def _capture_file() -> IO[bytes]:
    pid = os.getpid()
    if pid not in _captures:
        _captures.clear()  # a forked child's copy of its parent's file is not its own
        _captures[pid] = capture = tempfile.TemporaryFile()
        atexit.register(capture.close)
    return _captures[pid]


def _refuse_unlike_pil(info: ImageInfo, name: str) -> None:
    """Refuse the images whose pixels from :func:`seqstore.imaging.decode.decode` differ from PIL's.

    16-bit colour PNGs decode alike (both keep the high byte); 16-bit greyscale ones do not
    (PIL's ``convert("RGB")`` clips them to white), nor do 16-bit TIFF and PGM files (PIL
    clips greyscale and rounds colour). A model trained on either decoder's pixels would
    see other pixels from the other, so such files are refused rather than stored.
    """
    if info.bits <= 8 or (info.format == "png" and info.channels != 1):
        return
    kind = "greyscale PNG" if info.format == "png" else info.format.upper()
    raise BadImageError(
        f"'{name}' is a {info.bits}-bit {kind}, which OpenCV and PIL decode to different "
        "8-bit pixels; save it as an 8-bit image or use --on-error skip to leave it out"
    )


def _reencode(data: bytes, name: str, max_side: int | None, quality: int) -> tuple[bytes, int, int]:
    import cv2

    from .imaging.decode import decode

    rgb = decode(data, name=name, max_pixels=None)  # the header check applied the limit
    height, width = rgb.shape[:2]
    try:
        if max_side is not None and max(width, height) > max_side:
            scale = max_side / max(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error:
        ok = False
    if not ok:
        raise BadImageError(f"could not re-encode '{name}' as JPEG")
    return buf.tobytes(), width, height
