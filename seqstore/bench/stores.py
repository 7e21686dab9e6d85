"""The bench's stores room: each format's store of the same records, converted once.

Converted stores live in ``out/stores`` beside a marker of what they were made from, so
that the next run reuses them unless the source changed; the store of re-encoded images
(``--max-side``, ``--quality``) and the tensorpack-format LMDB file (for the tensorpack rows)
are written there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Reader, open_store
from ..config import BenchConfig
from ..convert import convert
from ..errors import SeqstoreError
from ..manifest import is_store
from .baselines import missing_packages, tensorpack_dataflow

__all__ = ["prepare_stores", "reencoded_name"]


def reencoded_name(cfg: BenchConfig) -> str | None:
    """The row name of the store of re-encoded images, e.g. ``"lmdb 512px q90"``; None when
    the bench measures none."""
    if cfg.reencode_max_side is None:
        return None
    return f"{cfg.formats[0]} {cfg.reencode_max_side}px q{cfg.reencode_quality}"


def prepare_stores(cfg: BenchConfig) -> tuple[dict[str, Path], Path | None]:
    """Each format of ``cfg.formats`` as a store of the same records, converted into
    ``cfg.out`` unless an earlier run's conversion still holds.

    Returns
    -------
    stores : dict
        Row name -> store path: each format (the source itself where it is already that
        format), then the first format with images re-encoded (:func:`reencoded_name`),
        converted from the first format's store, so that it holds the same records in the
        same order.
    tensorpack_file : Path or None
        The tensorpack-format LMDB file, when baselines are on and tensorpack is installed.
    """
    src = cfg.src
    source = open_store(src)
    stores: dict[str, Path] = {}
    folder_src = source.source_files is not None and cfg.limit is None
    for fmt in cfg.formats:
        if fmt == "folder" and folder_src:
            stores[fmt] = src
            continue
        if fmt == source.manifest.format and cfg.limit is None:
            stores[fmt] = src
            continue
        dst = cfg.out / "stores" / fmt
        _made_once(
            dst,
            f"{_fingerprint(source)} limit={cfg.limit}",
            f"converting {src} -> {dst} ({fmt})",
            partial(
                convert,
                src,
                dst,
                format=fmt,
                overwrite=True,
                limit=cfg.limit,
                shuffle=cfg.limit is not None or None,
            ),
        )
        stores[fmt] = dst
    name = reencoded_name(cfg)
    if name is not None:
        first = open_store(stores[cfg.formats[0]])
        side, quality = cfg.reencode_max_side, cfg.reencode_quality
        dst = cfg.out / "stores" / f"{cfg.formats[0]}-{side}px-q{quality}"
        _made_once(
            dst,
            _fingerprint(first),
            f"converting {first.path} -> {dst} (--max-side {side} --quality {quality})",
            partial(
                convert,
                first.path,
                dst,
                format=cfg.formats[0],
                overwrite=True,
                max_side=side,
                quality=quality,
                shuffle=False,
            ),
        )
        first.close()
        stores[name] = dst
    tensorpack_file = None
    if cfg.baselines and "tensorpack pipeline" not in missing_packages():
        tensorpack_file = cfg.out / "stores" / "ILSVRC-bench.lmdb"
        base = stores.get("lmdb") or next(iter(stores.values()))
        base_reader = open_store(base)
        _made_once(
            tensorpack_file,
            _fingerprint(base_reader),
            f"writing {tensorpack_file} with tensorpack's LMDBSerializer",
            partial(_write_tensorpack, base_reader, tensorpack_file),
        )
        base_reader.close()
    # Closed, so that no mapping of a store in this process keeps its pages cached (--cold).
    source.close()
    return stores, tensorpack_file


def _fingerprint(reader: Reader) -> str:
    """What identifies a source's content: where it is, its size, and when a store was made.
    Adding, removing or replacing images changes the record count or the byte total."""
    m = reader.manifest
    made = m.provenance.created if is_store(reader.path) else ""
    return f"{reader.path.resolve()} {m.format} {m.num_records} {m.total_bytes} {made}"


def _made_once(dst: Path, wanted: str, what: str, make: Callable[[], Any]) -> None:
    """``make()`` the store ``dst`` (saying ``what`` it does), unless an earlier run made it
    from the source ``wanted`` names: the marker beside it says so, and it opens."""
    marker = dst.with_suffix(".source")
    if _reusable(dst, marker, wanted):
        return
    print(f"{what} ...")
    marker.unlink(missing_ok=True)
    make()
    marker.write_text(wanted)


def _reusable(dst: Path, marker: Path, wanted: str) -> bool:
    """Whether ``dst``, converted earlier, holds what converting now would give."""
    if not marker.is_file() or marker.read_text() != wanted:
        return False
    try:
        open_store(dst).close()
    except SeqstoreError:  # a conversion that did not finish, or no store there
        return False
    return True


def _write_tensorpack(reader: Reader, path: Path) -> None:
    td = tensorpack_dataflow()
    dataflow: Any = td.DataFlow

    class Records(dataflow):
        def __len__(self) -> int:
            return len(reader)

        def __iter__(self) -> Iterator[list[Any]]:
            for start in range(0, len(reader), 512):
                for r in reader.read_block(start, min(start + 512, len(reader))):
                    yield [np.frombuffer(r.data, np.uint8), r.label]

    if path.exists():
        path.unlink()
    td.LMDBSerializer.save(Records(), str(path))
