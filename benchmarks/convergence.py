"""Shuffle quality against accuracy: a small CNN trained on the CPU through seqstore.Loader.

    python benchmarks/convergence.py [--data DIR] [--seeds 5] [--epochs 6] [--batch-size 128]
                                     [--rows NAME ...]

DATA defaults to ../shared/data/tiny10 (10 Tiny-ImageNet classes, 5000 training and 500
validation JPEGs of 64 px); any root with ``train/`` class folders and a ``val`` split the
Loader reads works. Each row trains the same network (four conv-BN-ReLU stages, 56 px
random-resized crops and flips, SGD with a one-cycle schedule, batches of 128, 2 workers)
from the same initial weights for each seed, and reports the mean validation accuracy over
the seeds, its paired difference to the shuffled store with a 95% t-interval, and two
figures of the order the Loader draws, computed from labels alone (seqstore.engine.quality):
classes per batch against a uniform shuffle's, and how far the label shares of a batch,
and of 10 consecutive batches, lean from the store's, over a uniform shuffle's lean (1.0
for a uniform shuffle). ``warns`` says whether the Loader raised its OrderWarning before
the first batch.

Rows: a plain ``torch.utils.data.DataLoader`` with a global shuffle over the image files
(the reference), the store that ``seqstore convert`` writes (shuffled), the image folder read
in place, and a store written in class order (``--no-shuffle``) with default settings, no
workers, small blocks, a 10% and a 1% shuffle buffer, and no shuffle at all. The rows
"before: ..." replay the order of seqstore's first loaders (scheme 1 of
seqstore.engine.plan.EpochSpec: whole batches per worker, emission from 256 buffered
records at half rate, blocks of the configured size everywhere) with the same settings,
through a DataLoader whose batches are that order's, over the same image files: the
mixes that lost accuracy, for the figures to be checked against.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import seqstore
from seqstore import Loader
from seqstore.bench.report import cpu_name
from seqstore.config import LoaderConfig
from seqstore.convert import convert
from seqstore.engine.plan import EpochSpec, rank_order
from seqstore.engine.quality import batch_skew, classes_per_batch, random_classes_per_batch
from seqstore.engine.stream import sample_rng
from seqstore.errors import OrderWarning
from seqstore.transforms import NAMED_TRANSFORMS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny10"
SIZE, RESIZE, WORKERS = 56, 64, 2
SKEW_WINDOW = 10  # batches
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# name -> (source: "shuffled", "ordered", "folder" or "global", Loader options)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "global shuffle (DataLoader)": ("global", {}),
    "shuffled store": ("shuffled", {}),
    "image folder in place": ("folder", {}),
    "class-ordered store": ("ordered", {}),
    "class-ordered, 0 workers": ("ordered", {"num_workers": 0}),
    "class-ordered, block_mb=0.25": ("ordered", {"block_mb": 0.25}),
    "class-ordered, shuffle_buffer=500": ("ordered", {"shuffle_buffer": 500}),
    "class-ordered, shuffle_buffer=50": ("ordered", {"shuffle_buffer": 50}),
    "class-ordered, shuffle=False": ("ordered", {"shuffle": False}),
    "before: image folder in place": ("before-folder", {}),
    "before: class-ordered store": ("before-ordered", {}),
    "before: class-ordered, 0 workers": ("before-ordered", {"num_workers": 0}),
    "before: class-ordered, block_mb=0.25": ("before-ordered", {"block_mb": 0.25}),
    "before: class-ordered, shuffle_buffer=50": ("before-ordered", {"shuffle_buffer": 50}),
}
BASE = "shuffled store"
# Two-sided 95% quantiles of Student's t, by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def network(classes: int) -> nn.Module:
    """Four conv-BN-ReLU stages (16, 32, 64, 128 channels), global pooling, a linear head."""
    layers: list[nn.Module] = []
    width = 3
    for i, out in enumerate((16, 32, 64, 128)):
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1)]
        width = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width, classes))


def train(
    batches: Batches, steps: int, epochs: int, val: tuple[torch.Tensor, torch.Tensor], seed: int
) -> float:
    """Validation accuracy after ``epochs`` epochs of ``steps`` batches each."""
    torch.manual_seed(seed)
    classes = int(val[1].max()) + 1
    model = network(classes)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps * epochs)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        for images, labels in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x in val[0].split(250)])
    return float((predicted == val[1]).float().mean())


class FolderFiles(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The reference: one JPEG file per sample, decoded and augmented as the Loader does."""

    def __init__(self, files: list[str], labels: list[int], seed: int) -> None:
        self.files, self.labels, self.seed, self.epoch = files, labels, seed, 0
        self.pipeline = NAMED_TRANSFORMS["imagenet_train"](SIZE, RESIZE)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with open(self.files[i], "rb") as f:
            data = f.read()
        image = self.pipeline(data, sample_rng(self.seed, self.epoch, i), name=self.files[i])
        return torch.from_numpy(image).permute(2, 0, 1), self.labels[i]


def global_batches(folder: Any, seed: int, batch: int) -> tuple[Batches, int, dict[str, Any]]:
    """A DataLoader with shuffle=True over the folder's files, and its order's figures."""
    dataset = FolderFiles([str(p) for p in folder.source_files], folder.labels().tolist(), seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=WORKERS, generator=generator
    )

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset.epoch = epoch
        for images, y in loader:
            yield (images.float() / 255 - MEAN) / STD, y

    order = np.random.default_rng(seed).permutation(len(dataset))
    return batches, len(loader), figures(order, folder.labels(), batch, False)


def replayed_batches(
    folder: Any, store: Path, seed: int, batch: int, options: dict[str, Any]
) -> tuple[Batches, int, dict[str, Any]]:
    """The batches a Loader of seqstore's first order (scheme 1) over ``store`` yielded,
    each record read from its file in ``folder`` (the store holds the folder's records in
    the same positions), and that order's figures."""
    settings = LoaderConfig(
        **({"batch_size": batch, "num_workers": WORKERS} | options), path=store, seed=seed
    )
    reader = seqstore.open(store)
    spec = EpochSpec.from_config(
        settings, num_records=len(reader), mean_record_bytes=reader.manifest.mean_record_bytes
    )
    spec = dataclasses.replace(spec, scheme=1)
    labels = folder.labels()
    dataset = FolderFiles([str(p) for p in folder.source_files], labels.tolist(), seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset.epoch = epoch
        order = rank_order(spec, epoch, 0).tolist()
        sampler = [order[i : i + batch] for i in range(0, len(order), batch)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=WORKERS)
        for images, y in loader:
            yield (images.float() / 255 - MEAN) / STD, y

    return batches, spec.num_batches, figures(rank_order(spec, 0, 0), labels, batch, False)


def figures(order: np.ndarray, labels: np.ndarray, batch: int, warned: bool) -> dict[str, Any]:
    counts = np.bincount(labels)
    return {
        "classes_per_batch": classes_per_batch(order, labels, batch),
        "random_classes_per_batch": random_classes_per_batch(counts, batch),
        "batch_skew": batch_skew(order, labels, batch),
        "window_skew": batch_skew(order, labels, batch, window=SKEW_WINDOW),
        "warns": warned,
    }


def loader_batches(
    path: Path, seed: int, batch: int, options: dict[str, Any]
) -> tuple[Batches, int, dict[str, Any]]:
    """seqstore.Loader over ``path`` with ``options``, and its order's figures."""
    settings = dict(batch_size=batch, num_workers=WORKERS, image_size=SIZE, resize_size=RESIZE)
    settings |= dict(transform="imagenet_train", seed=seed) | options
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = Loader(path, **settings)
    warned = any(issubclass(w.category, OrderWarning) for w in caught)

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        loader.set_epoch(epoch)
        return loader

    order = rank_order(loader.spec, 0, 0)
    return batches, len(loader), figures(order, loader.reader.labels(), batch, warned)


def validation(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split, centre-cropped, as one tensor."""
    loader = Loader(data, split="val", batch_size=1000, image_size=SIZE, resize_size=RESIZE)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def interval(diffs: list[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95% t-interval."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan
    t = T95.get(len(diffs) - 1, 1.96)
    return mean, t * statistics.stdev(diffs) / math.sqrt(len(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--workdir", help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "train").is_dir():
        raise SystemExit(f"convergence: '{data}' has no train/ folder; pass --data ROOT")
    rows = [BASE] + [r for r in args.rows if r != BASE]
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="seqstore-convergence-") as tmp:
        work = Path(args.workdir or tmp)
        sources: dict[str, Path] = {"folder": data / "train", "global": data / "train"}
        for name, shuffle in (("shuffled", None), ("ordered", False)):
            sources[name] = work / f"{name}.lmdb"
            if not sources[name].exists():
                convert(
                    data / "train", sources[name], format="lmdb", shuffle=shuffle, progress=False
                )
        val = validation(data)
        folder = Loader(data / "train", num_workers=0).reader
        accuracy: dict[str, list[float]] = {r: [] for r in rows}
        facts: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        for seed in range(args.seeds):
            for row in rows:
                source, options = ROWS[row]
                if source == "global":
                    batches, steps, facts[row] = global_batches(folder, seed, args.batch_size)
                elif source.startswith("before-"):
                    store = sources[source.removeprefix("before-")]
                    batches, steps, facts[row] = replayed_batches(
                        folder, store, seed, args.batch_size, options
                    )
                else:
                    batches, steps, facts[row] = loader_batches(
                        sources[source], seed, args.batch_size, options
                    )
                accuracy[row].append(train(batches, steps, args.epochs, val, seed))
                took = time.perf_counter() - started
                print(f"seed {seed} {row}: {accuracy[row][-1]:.3f} ({took:.0f} s)", flush=True)
    print(
        f"\n{cpu_name()}; {args.seeds} seeds, {args.epochs} epochs, batches of {args.batch_size}\n"
    )
    print(
        "| row | val accuracy | vs shuffled store (95% CI) | classes per batch (shuffle) "
        "| skew: batch, 10 batches | warns |"
    )
    print("|---|---|---|---|---|---|")
    results = []
    for row in rows:
        mean, half = interval([a - b for a, b in zip(accuracy[row], accuracy[BASE], strict=True)])
        f = facts[row]
        results.append({"row": row, "accuracy": accuracy[row], **f})
        vs = "" if row == BASE else f"{mean:+.3f} ± {half:.3f}"
        print(
            f"| {row} | {statistics.fmean(accuracy[row]):.3f} | {vs} | "
            f"{f['classes_per_batch']:.1f} ({f['random_classes_per_batch']:.1f}) | "
            f"{f['batch_skew']:.2f}, {f['window_skew']:.1f} | {'yes' if f['warns'] else 'no'} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
