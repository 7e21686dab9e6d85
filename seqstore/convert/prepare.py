"""Source records checked and prepared for writing, by worker processes.

Every record is checked (its header, and by default a full decode) and, with ``max_side`` or
``quality``, re-encoded before it is written; what fails becomes a :class:`Rejected` entry
that names the file and the reason. The work is spread over processes in chunks of 64
records, handed back in order, so a store is the same whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Reader
from ..config import ConvertConfig
from ..errors import BadImageError
from ..imaging.header import ImageInfo, extension_format, probe
from ..imaging.messages import c_stderr_lines, damage_of
from ..records import Record

__all__ = ["Prepared", "Rejected", "prepare_records"]

# Records per unit of work handed to a worker process.
_CHUNK = 64


@dataclass
class Prepared:
    """A source file checked and ready to write.

    Attributes
    ----------
    record : Record
        The record to write (re-encoded where the options say so).
    nbytes : int
        Bytes of the source file.
    warnings : list of str
        What is worth a look about the file (a PNG named .JPEG, a CMYK JPEG, libjpeg's
        complaints about data it could decode).
    """

    record: Record
    nbytes: int
    warnings: list[str]


@dataclass
class Rejected:
    """A source file that cannot be stored, and why.

    Attributes
    ----------
    key : str
        The file's key in the source.
    reason : str
        One line that names the file, the fault and what to do.
    nbytes : int
        Bytes of the source file read (0 when it could not be read).
    """

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


def prepare_records(
    reader: Reader, order: np.ndarray, cfg: ConvertConfig, workers: int | None = None
) -> Iterator[list[Prepared | Rejected]]:
    """The records at ``order``, checked and prepared, in lists of up to 64, in order.

    Parameters
    ----------
    reader
        The source.
    order
        Source positions, in write order.
    cfg
        The conversion's options (re-encoding, the image check, the pixel limit).
    workers
        Processes that prepare the lists; None for the config's ``workers``, 0 for this
        process alone.

    Yields
    ------
    list of Prepared or Rejected
        One entry per position, in order: a record to write, or a file to leave out.
    """
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


def _prepare_chunk(ranges: list[tuple[int, int]]) -> list[Prepared | Rejected]:
    reader: Reader = _worker_state["reader"]
    out: list[Prepared | Rejected] = []
    for start, stop in ranges:
        if reader.stores_checksums:
            # A record damaged in a source store must not get a fresh checksum here.
            for record in reader.read_block(start, stop):
                if record.verify():
                    out.append(_prepare(record.key, record.label, record.data))
                else:
                    reason = (
                        f"record '{record.key}' of '{reader.path}' fails its checksum (damaged "
                        "in the source store); recover it from the original images or pass "
                        "on_error='skip' to leave it out"
                    )
                    out.append(Rejected(record.key, reason, len(record.data)))
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
                    out.append(Rejected(key, str(exc), 0))
                    continue
                out.extend(_prepare(key, label, data) for key, label, data in block)
            continue
        out.extend(_prepare(key, label, data) for key, label, data in block)
    return out


def _prepare(key: str, label: int, data: bytes) -> Prepared | Rejected:
    name = _worker_state["prefix"] + key
    try:
        info = probe(data, name, max_pixels=_worker_state["max_pixels"])
        _refuse_unlike_pil(info, name)
    except BadImageError as exc:
        return Rejected(key, str(exc), len(data))
    warnings = []
    if info.animated:
        warnings.append(
            f"'{name}' is an animated PNG; it trains as its first frame, composed as PIL "
            "composes it"
        )
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
    capture: AbstractContextManager[list[str]] = c_stderr_lines() if decodes else nullcontext([])
    with capture as printed:
        if reencode:
            try:
                data, width, height = _reencode(data, name, max_side, quality or 90)
            except BadImageError as exc:  # a sound header over damaged image data
                return Rejected(key, str(exc), nbytes)
        elif _worker_state["check"] == "decode":
            from ..imaging.decode import decode

            try:
                decode(data, name=name, max_pixels=None)  # the header check applied the limit
            except BadImageError as exc:
                return Rejected(key, str(exc), nbytes)
    damage = damage_of(printed)
    if damage:
        # libjpeg decodes damaged data anyway, filling what it lost with grey, and says so
        # only on stderr: the image would train as a grey-smeared picture.
        return Rejected(
            key,
            f"'{name}' has damaged image data (libjpeg: {damage[0]}); re-copy it from the "
            "original or pass on_error='skip' to leave it out",
            nbytes,
        )
    warnings.extend(f"'{name}' decodes, but libjpeg says: {line}; kept" for line in printed)
    return Prepared(Record.make(key, label, data, width, height), nbytes, warnings)


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
        "8-bit pixels; save it as an 8-bit image or pass on_error='skip' to leave it out"
    )


def _reencode(data: bytes, name: str, max_side: int | None, quality: int) -> tuple[bytes, int, int]:
    import cv2

    from ..imaging.decode import decode

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
