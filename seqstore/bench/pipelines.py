"""The bench's pipelines room: what is measured, built from public seqstore API.

- :func:`seqstore_epoch`: the user's path, a :class:`seqstore.Loader` epoch.
- :class:`Ceiling`: the same decode and transform in bare processes over bytes in RAM.
- :func:`build`: a pipeline by name, the baselines (:mod:`.baselines`) included.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from .. import transforms
from ..backends import open_store
from ..config import BenchConfig
from ..engine.stream import sample_rng
from ..errors import ConfigError

__all__ = ["Ceiling", "build", "named_pipeline", "seqstore_epoch"]


def named_pipeline(transform: str, image_size: int) -> transforms.Pipeline | None:
    """The pipeline the Loader runs for a named transform with its default settings; None
    for ``"none"`` (the encoded bytes, untouched)."""
    if transform == "imagenet_train":
        return transforms.imagenet_train(image_size)
    if transform == "imagenet_val":
        return transforms.imagenet_val(image_size)
    if transform == "decode":
        return transforms.decode_only()
    return None


def seqstore_epoch(
    path: Path | str | list[str],
    cfg: BenchConfig,
    dtype: str = "uint8",
    verify: bool = True,
    storage_options: dict[str, Any] | None = None,
    transform: Callable[[Any], Any] | None = None,
    reader_options: dict[str, Any] | None = None,
) -> Callable[[], Iterator[Any]]:
    """One Loader epoch per call. ``uint8`` batches in channels-last layout are what crosses
    to a GPU, which converts and normalises them on arrival; with ``float32`` the CPU does
    that too, as a CPU-only training loop needs. ``verify``: check checksums on read.
    ``transform``: a callable of the user's own in place of the named ``cfg.transform``.
    ``reader_options``: the Loader's (``direct_io`` ...)."""
    from .. import Loader

    loader = Loader(
        path,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        transform=cfg.transform if transform is None else transform,
        image_size=cfg.image_size,
        shuffle_buffer_mb=cfg.shuffle_buffer_mb,
        block_mb=cfg.block_mb,
        dtype=dtype,
        channels_last=dtype == "uint8",
        verify=verify,
        storage_options=storage_options or {},
        reader_options=reader_options or {},
    )
    return lambda: iter(loader)


class Ceiling:
    """Decode + transform in bare processes over bytes already in RAM: the upper bound.

    The processes are started once, before any timing, and receive the records by fork.
    Each call is one epoch with crops drawn afresh, as the loader's epochs are: the cost of
    decoding a large image depends on the crop (see :class:`~seqstore.transforms.Pipeline`).
    An epoch is run to its end before the next starts, as the harness does.

    Parameters
    ----------
    records : list of (bytes, str)
        Every record's encoded image and key, in store order.
    cfg : BenchConfig
        ``transform``, ``image_size``, ``batch_size`` (the share a process takes at a time)
        and ``workers`` (how many processes; 0 works in this process).
    """

    def __init__(self, records: list[tuple[bytes, str]], cfg: BenchConfig) -> None:
        self.pipeline = named_pipeline(cfg.transform, cfg.image_size)
        self.records = records
        self.seed = 0
        n = len(records)
        self.shares = [(lo, min(lo + cfg.batch_size, n)) for lo in range(0, n, cfg.batch_size)]
        self.epoch = 0
        ctx = mp.get_context("fork")
        self._tasks = ctx.SimpleQueue()
        self._done = ctx.SimpleQueue()
        self._procs = [ctx.Process(target=self._serve, daemon=True) for _ in range(cfg.workers)]
        for proc in self._procs:
            proc.start()

    def work(self, share: tuple[int, int, int]) -> int:
        """Decode and transform records ``start:stop`` for ``epoch``; how many there were."""
        start, stop, epoch = share
        for i in range(start, stop):
            data, key = self.records[i]
            if self.pipeline is not None:
                self.pipeline(data, sample_rng(self.seed, epoch, i), name=key)
        return stop - start

    def _serve(self) -> None:
        for share in iter(self._tasks.get, None):
            self._done.put(self.work(share))

    def __call__(self) -> Iterator[Any]:
        shares = [(lo, hi, self.epoch) for lo, hi in self.shares]
        self.epoch += 1
        if not self._procs:
            for share in shares:
                yield (None, range(self.work(share)))
            return
        # Two shares per process in flight: none waits for work, and neither queue's pipe
        # fills while this side is not reading it.
        pending = iter(shares)
        for share in islice(pending, 2 * len(self._procs)):
            self._tasks.put(share)
        for _ in shares:
            done = self._done.get()
            following = next(pending, None)
            if following is not None:
                self._tasks.put(following)
            yield (None, range(done))

    def close(self) -> None:
        """Stop the processes."""
        for _ in self._procs:
            self._tasks.put(None)
        for proc in self._procs:
            proc.join()


def build(
    kind: str, path: Path, cfg: BenchConfig, extra: dict[str, Any]
) -> Callable[[], Iterator[Any]]:
    """The pipeline ``kind`` over ``path``: a callable that runs one epoch, yielding batches
    whose second item holds one entry per image. ``extra``: see
    :func:`seqstore.bench.harness.measure`."""
    from . import baselines

    if kind == "seqstore":
        return seqstore_epoch(
            # A mix of sources (the mixed row), a store at a URL (the S3 row), else the local one
            extra.get("mix") or extra.get("url", path),
            cfg,
            extra.get("dtype", "uint8"),
            extra.get("verify", True),
            extra.get("storage_options"),
            reader_options=extra.get("reader_options"),
        )
    if kind == "torchvision":
        reader = open_store(path)
        files = reader.source_files
        if files is None:
            raise ConfigError(f"the torchvision-style baseline reads an image folder, not '{path}'")
        return baselines.torchvision_style(files, reader.labels().tolist(), cfg)
    if kind == "tensorpack":
        return baselines.tensorpack_pipeline(path, cfg, extra["cache"])
    reader = open_store(path)
    return Ceiling([(r.data, r.key) for r in reader.read_block(0, len(reader))], cfg)
