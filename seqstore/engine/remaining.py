"""The records an interrupted epoch had not delivered, and their compact saved form."""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["Remaining"]


@dataclass(frozen=True, eq=False)
class Remaining:
    """The records an interrupted epoch had not delivered: what its resumed run yields.

    Parameters
    ----------
    num_records
        Records in the store.
    ranges
        ``(k, 2)`` int64 ``[start, stop)`` storage ranges of the records, sorted and
        disjoint.
    """

    num_records: int
    ranges: np.ndarray

    @cached_property
    def count(self) -> int:
        """Records still to deliver (asked for with every batch: see Loader.__len__)."""
        return int((self.ranges[:, 1] - self.ranges[:, 0]).sum())

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Remaining:
        """The records whose entry in the boolean ``mask`` (one per record) is set."""
        edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
        return cls(len(mask), edges.reshape(-1, 2).astype(np.int64))

    def mask(self) -> np.ndarray:
        """One boolean per record of the store: still to deliver."""
        edges = np.concatenate([[0], self.ranges.ravel(), [self.num_records]])
        inside = np.arange(len(edges) - 1) % 2 == 1  # runs alternate: out, in, out, ...
        return np.repeat(inside, np.diff(edges))

    def to_state(self) -> dict[str, Any]:
        """A JSON-friendly form: the count, and a bitmap over the records, compressed
        (at most ``num_records / 8`` bytes, far less when the records form long runs)."""
        return dict(self._state)

    @cached_property
    def _state(self) -> dict[str, Any]:
        # Made once: a loader's state_dict() may be asked for after every batch.
        packed = zlib.compress(np.packbits(self.mask()).tobytes(), 6)
        return {"count": self.count, "bitmap": base64.b64encode(packed).decode("ascii")}

    @classmethod
    def from_state(cls, state: dict[str, Any], num_records: int) -> Remaining:
        """The inverse of :meth:`to_state`, for a store of ``num_records`` records.

        Raises
        ------
        ValueError
            The state is damaged: it does not decode, or its count is not its bitmap's.
        """
        try:
            raw = zlib.decompress(base64.b64decode(state["bitmap"], validate=True))
            bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=num_records)
            count = int(state["count"])
        except (KeyError, TypeError, ValueError, zlib.error) as err:
            raise ValueError(f"the remaining records do not decode ({err})") from None
        remaining = cls.from_mask(bits.astype(bool))
        if remaining.count != count:
            raise ValueError(f"the bitmap holds {remaining.count} records, not {count}")
        return remaining
