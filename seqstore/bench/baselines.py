"""The bench's baselines room: the pipelines people run today, to compare the Loader with.

- :func:`torchvision_style`: the PyTorch ImageNet example's pipeline, a map-style Dataset
  that opens each file with PIL, in a plain ``torch.utils.data.DataLoader``. The DataLoader
  is the thing measured here, so it stays: it is a reference, not a path of seqstore's own.
- :func:`tensorpack_pipeline`: what the old sequential loaders ran on a tensorpack LMDB file.

torchvision's transforms are re-implemented on PIL, since torchvision is not a dependency.
Neither Pillow nor tensorpack is installed with seqstore itself: :func:`missing_packages`
tells which baselines the bench leaves out, and :func:`tensorpack_dataflow` imports
tensorpack without the lines it prints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BenchConfig
from ..transforms import IMAGENET_MEAN, IMAGENET_STD, RandomResizedCrop

__all__ = [
    "missing_packages",
    "pil_transform",
    "tensorpack_dataflow",
    "tensorpack_pipeline",
    "torchvision_style",
]

# What each baseline needs beyond seqstore's own dependencies: (module, pip extra).
_NEEDS = {
    "torchvision-style": ("PIL", "pil"),
    "tensorpack pipeline": ("tensorpack", "tensorpack"),
}


def missing_packages() -> dict[str, str]:
    """The baselines whose package is not installed: row name -> the pip extra that installs
    it (``pip install 'seqstore[EXTRA]'``). Nothing is imported to find out."""
    return {
        row: extra
        for row, (module, extra) in _NEEDS.items()
        if importlib.util.find_spec(module) is None
    }


def tensorpack_dataflow() -> Any:
    """``tensorpack.dataflow``, imported without its noise.

    tensorpack prints "Failed to import tensorflow." when it is imported without TensorFlow
    (which its dataflows do not need), and its worker processes log a warning each when
    python-prctl is missing. Neither says anything about the measurement, so the import's
    output is dropped and tensorpack's logger keeps only errors.

    Raises
    ------
    ImportError
        tensorpack is not installed.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        import tensorpack.dataflow as td
    logger = logging.getLogger("tensorpack")
    logger.setLevel(logging.ERROR)
    for handler in logger.handlers:
        # made during the import above, with the redirected stream
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stdout)
    return td


def torchvision_style(
    files: list[Path], labels: list[int], cfg: BenchConfig
) -> Callable[[], Iterator[Any]]:
    """A Dataset that opens each file with PIL, crops, and normalises to float, as in the
    PyTorch ImageNet example, batched by a shuffling DataLoader; one epoch per call."""
    import torch
    from torch.utils.data import DataLoader

    dataset = _PILFolder(files, labels, cfg.image_size, cfg.transform)
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        collate_fn=None,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda: iter(loader)


def pil_transform(img: Any, size: int, transform: str) -> Any:
    """torchvision's RandomResizedCrop + flip or Resize + CenterCrop, on a PIL image."""
    import random

    from PIL import Image

    if transform == "imagenet_train":
        rng = np.random.default_rng(random.getrandbits(64))
        top, left, h, w = RandomResizedCrop(size).get_params(img.width, img.height, rng)
        img = img.crop((left, top, left + w, top + h))
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif transform == "imagenet_val":
        short = size * 8 // 7
        scale = short / min(img.width, img.height)
        width = max(short, round(img.width * scale))
        height = max(short, round(img.height * scale))
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


class _PILFolder:
    def __init__(self, files: list[Path], labels: list[int], size: int, transform: str) -> None:
        self.files = files
        self.labels = labels
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        if self.transform == "none":
            with open(self.files[i], "rb") as f:
                f.read()
            return torch.zeros(0), self.labels[i]
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.transform == "decode":  # sizes differ: nothing to stack
            return torch.zeros(0), self.labels[i]
        img = pil_transform(img, self.size, self.transform)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std, self.labels[i]


def tensorpack_pipeline(path: Path, cfg: BenchConfig, cache: int) -> Callable[[], Iterator[Any]]:
    """LMDBData -> LocallyShuffleData -> mapped PIL decode + augment -> BatchData."""
    td = tensorpack_dataflow()
    mapper = _TensorpackMap(cfg.image_size, cfg.transform)
    ds = td.LMDBSerializer.load(str(path), shuffle=False)
    ds = td.LocallyShuffleData(ds, cache)
    if cfg.workers:
        ds = td.MultiProcessMapDataZMQ(ds, num_proc=cfg.workers, map_func=mapper, strict=True)
    else:
        ds = td.MapData(ds, mapper)
    ds = td.BatchData(ds, cfg.batch_size, remainder=True, use_list=cfg.transform == "decode")
    ds.reset_state()
    size = len(ds)

    def run() -> Iterator[Any]:
        import torch

        for i, (x, y) in enumerate(ds):
            if cfg.transform in ("imagenet_train", "imagenet_val"):
                x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 128.0 - 1.0
            yield x, y
            if i + 1 >= size:
                break

    return run


class _TensorpackMap:
    def __init__(self, size: int, transform: str) -> None:
        self.size = size
        self.transform = transform

    def __call__(self, dp: list[Any]) -> list[Any]:
        import io

        from PIL import Image

        data, label = dp
        if self.transform == "none":
            return [np.zeros(0, np.uint8), label]
        img = Image.open(io.BytesIO(data.tobytes())).convert("RGB")
        return [np.asarray(pil_transform(img, self.size, self.transform)), label]
