"""What a conversion writes, decided from the source and the options before any writing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..backends import Reader, get_backend, open_store
from ..backends.folder import load_classes
from ..config import ConvertConfig
from ..errors import ConfigError
from ..manifest import Provenance

__all__ = ["ConversionPlan", "plan_conversion"]


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
    reader_options: dict[str, Any] = dict(cfg.reader_options)
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


def _ignored_line(ignored: Sequence[str]) -> str:
    return (
        f"ignored {len(ignored)} file(s) without an image extension inside class folders, "
        f"e.g. '{ignored[0]}'"
    )
