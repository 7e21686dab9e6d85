"""Helpers for testing seqstore and third-party backends: sample data and a conformance suite."""

from __future__ import annotations

from .data import make_image_folder, make_records, replicate_store
from .epoch import collect_epoch, one_rank_spec

__all__ = [
    "collect_epoch",
    "make_image_folder",
    "make_records",
    "one_rank_spec",
    "replicate_store",
]
