"""Convert any readable store or image folder into any writable format, in one pass.

The rooms, in the order a conversion runs through them: ``plan`` (the source, the write
order, the classes and the provenance, decided before any writing), ``prepare`` (each
record checked and, if asked, re-encoded, by worker processes), ``write`` (the records into
one store, with checkpoints to resume from), ``parallel`` (a sharded store's shards, written
in processes), ``sharded`` (a sharded conversion from plan to manifest), ``distributed``
(the ranks of a torchrun job) and ``dispatch`` (:func:`convert`, which picks among them and
uploads to a URL).
"""

from __future__ import annotations

from .dispatch import convert
from .distributed import under_torchrun
from .parallel import ShardJob
from .plan import ConversionPlan, plan_conversion
from .sharded import DISTRIBUTED_SHARD_MB, convert_sharded
from .write import ConvertReport, Written, write_records

__all__ = [
    "DISTRIBUTED_SHARD_MB",
    "ConversionPlan",
    "ConvertReport",
    "ShardJob",
    "Written",
    "convert",
    "convert_sharded",
    "plan_conversion",
    "under_torchrun",
    "write_records",
]
