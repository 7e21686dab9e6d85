"""The bench's stage room: where a Loader's time per image goes, stage by stage.

Each stage of the Loader's worker and main process (read, verify, decode, transform,
collate and normalise) is timed on its own, in this process, over the same records, with
the same public pieces the Loader is built from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backends import Reader
from ..config import BenchConfig
from ..engine.stream import sample_rng
from ..imaging.decode import decode
from ..records import Record
from ..transforms import IMAGENET_MEAN, IMAGENET_STD
from .pipelines import named_pipeline

__all__ = ["stage_times"]


def stage_times(
    reader: Reader, cfg: BenchConfig, sample: int = 256, repeat: int = 3
) -> dict[str, float]:
    """Milliseconds per image of each stage, in this process, over the first ``sample``
    records: the fastest of ``repeat`` passes, so that opening the store and first-touch
    page faults do not count (as timeit does)."""
    import torch

    n = min(sample, len(reader))
    pipeline = named_pipeline(cfg.transform, cfg.image_size)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def read() -> list[Record]:
        return [r for lo in range(0, n, 64) for r in reader.read_block(lo, min(lo + 64, n))]

    def transform() -> list[Any]:
        if pipeline is None:  # transform="none": the encoded bytes
            return [r.data for r in records]
        return [pipeline(r.data, sample_rng(0, 0, i), name=r.key) for i, r in enumerate(records)]

    records = read()
    samples = transform()

    def collate() -> None:
        for lo in range(0, n, cfg.batch_size):
            part = samples[lo : lo + cfg.batch_size]
            first = part[0] if part else None
            if not isinstance(first, np.ndarray):
                continue  # encoded bytes: nothing to collate
            if first.dtype != np.uint8 or any(s.shape != first.shape for s in part):
                for image in part:  # images of their own sizes: one tensor each
                    torch.from_numpy(image)
                continue
            # As the Loader: NHWC uint8 in one buffer, then float NCHW in channels-last
            # layout, less the mean, over the deviation (scaled to 0..255).
            images = torch.empty((len(part), *first.shape), dtype=torch.uint8)
            np.stack(part, out=images.numpy())
            nchw = images.permute(0, 3, 1, 2)
            nchw.to(dtype=mean.dtype, memory_format=torch.channels_last).sub_(mean).mul_(inv_std)

    stages: dict[str, Callable[[], object]] = {
        "read": read,
        "verify": lambda: [r.verify() for r in records],
        "decode (full size)": lambda: [decode(r.data, name=r.key) for r in records],
        "decode + transform": transform,
        "collate + normalize": collate,
    }
    out = {}
    for name, fn in stages.items():
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = min(times) * 1000 / max(n, 1)
    return out
