"""A seeded, bounded shuffle buffer over record indices.

It decides the order in which a worker emits the records it reads, and nothing else: it
sees indices, never image bytes, so the same object drives the real read (where the reader
keeps the bytes of the indices in the buffer) and a resume, which replays only the index
decisions to find where an interrupted epoch stopped, without reading or decoding anything.

Emission rule, with ``capacity`` the buffer size in records: items are pulled in read order;
once the buffer holds ``capacity`` items, every pull is followed by one emission of a
uniformly chosen buffered item, and at the end of the input the rest is emitted in random
order. The first emission waits for a full buffer, so that the first records out are
drawn from as many places as the last: an input that fits in the buffer comes out as a
uniform permutation. An earlier ``warmup`` starts emitting once that many items are
buffered, at one emission for every two pulls until the buffer is full (the rule of
seqstore's first loaders, whose early emissions came from the first blocks read).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["ShuffleBuffer"]

_DRAWS = 4096


class ShuffleBuffer:
    """Bounded random reordering of a stream of indices.

    Parameters
    ----------
    source
        Indices in read order.
    capacity
        Most indices held at once (the memory bound, in records). 1 disables shuffling.
    seed
        Entropy for the generator: the same seed and source give the same order.
    warmup
        Buffered items before the first emission (default: ``capacity``).

    Attributes
    ----------
    buffer : list of int
        Indices pulled but not yet emitted.
    pulled : int
        Indices pulled from ``source`` so far.
    """

    def __init__(
        self,
        source: Iterator[int],
        capacity: int,
        seed: list[int] | int,
        warmup: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"shuffle buffer capacity must be >= 1, got {capacity}")
        self._source = source
        self.capacity = capacity
        self.warmup = max(1, min(capacity, capacity if warmup is None else warmup))
        self._rng = np.random.default_rng(seed)
        self._draws = np.empty(0)
        self._next_draw = 0
        self.buffer: list[int] = []
        self.pulled = 0
        self._exhausted = False

    def _uniform(self) -> float:
        # Batched draws: one generator call per 4096 decisions instead of one each.
        if self._next_draw == len(self._draws):
            self._draws = self._rng.random(_DRAWS)
            self._next_draw = 0
        u = float(self._draws[self._next_draw])
        self._next_draw += 1
        return u

    def _pull(self) -> bool:
        if self._exhausted:
            return False
        try:
            self.buffer.append(next(self._source))
        except StopIteration:
            self._exhausted = True
            return False
        self.pulled += 1
        return True

    def _pop_random(self) -> int:
        buf = self.buffer
        j = int(self._uniform() * len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        return buf.pop()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.capacity == 1:
            if not self._pull():
                raise StopIteration
            return self.buffer.pop()
        while True:
            if not self._pull():
                if not self.buffer:
                    raise StopIteration
                return self._pop_random()
            size = len(self.buffer)
            if size >= self.capacity or (size >= self.warmup and self.pulled % 2 == 0):
                return self._pop_random()

    def skip(self, count: int) -> None:
        """Advance past ``count`` emissions, as if they had been consumed."""
        for _ in range(count):
            next(self)
