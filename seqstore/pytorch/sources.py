"""What a Loader reads: one store (or a split of a dataset root), or several sources mixed
(:class:`~seqstore.backends.mixed.MixedReader`, with each source's count per epoch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..backends import Reader, open_store
from ..backends.mixed import MixedReader
from ..config import LoaderConfig
from ..config.mix import mix_sources
from ..engine.mix import source_counts
from ..errors import ConfigError
from ..io.places import is_url
from ..splits import resolve_split

__all__ = ["Opened", "open_sources"]


@dataclass
class Opened:
    """A Loader's data, opened.

    Attributes
    ----------
    reader : Reader
        The store, or the mix's sources as one.
    path : str
        What messages call it.
    mix : tuple or None
        For a mix: each source's size, and the records it gives per epoch.
    """

    reader: Reader
    path: str
    mix: tuple[tuple[int, ...], tuple[int, ...]] | None = None


def _open(
    cfg: LoaderConfig,
    path: str | os.PathLike[str],
    backend: str | None,
    options: dict[str, Any],
    mixed: bool = False,
) -> Reader:
    # A mix's local sources leave out the options of its sources at a URL.
    remote = not mixed or is_url(os.fspath(path))
    return open_store(
        path,
        backend,
        storage_options=cfg.storage_options if remote else None,
        cache_dir=cfg.cache_dir if remote else None,
        cache_limit_gb=cfg.cache_limit_gb if remote else None,
        **options,
    )


def open_sources(cfg: LoaderConfig) -> Opened:
    """Open what ``cfg.path`` names.

    Raises
    ------
    ConfigError
        A source holds no records, or the mix's counts do not fit its ``epoch_size``.
    """
    if not isinstance(cfg.path, list):
        path, options = cfg.path, dict(cfg.reader_options)
        if cfg.split is not None:
            path, found = resolve_split(cfg.path, cfg.split, cfg.storage_options)
            options = {**found, **options}
        return Opened(_open(cfg, path, cfg.backend, options), str(path))
    sources = mix_sources(cfg.path, cfg.weights)
    readers = [
        _open(
            cfg, s.path, s.backend or cfg.backend, {**cfg.reader_options, **s.reader_options}, True
        )
        for s in sources
    ]
    reader = MixedReader(readers, [s.label_offset for s in sources])
    sizes = [len(r) for r in readers]
    for s, n in zip(sources, sizes, strict=True):
        if not n:
            raise ConfigError(f"source '{s.path}' holds no records")
    try:
        counts = source_counts(
            sizes,
            weights=[s.weight for s in sources],  # None where repeat or choose is given
            fixed=[s.fixed(n) for s, n in zip(sources, sizes, strict=True)],
            epoch_size=cfg.epoch_size,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Opened(reader, os.fspath(reader.location), (tuple(sizes), tuple(counts)))
