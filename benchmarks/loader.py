"""Loader throughput, time to first batch and memory, against the ceiling and a baseline.

    python benchmarks/loader.py [SRC] [--repeat 3] [--workdir DIR]

SRC defaults to ../shared/data/imagen200 (1000 real ImageNet JPEGs). RandomResizedCrop(224)
+ flip, 2 workers, batch 64. Every figure comes from a fresh process (see seqstore.bench);
throughput is the median over repetitions of a full epoch after a warm-up epoch.

Targets: Loader >= 0.85x the ceiling (the same decode + crop in 2 bare processes over bytes
in RAM) and >= 2.5x the torchvision-style baseline (PIL, one file per sample, float
normalisation in workers); first batch under 1 s and not growing with the store's size; peak
memory within the shuffle buffer plus a fixed amount per worker.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import seqstore
from seqstore.bench import measure
from seqstore.config import BenchConfig
from seqstore.convert import convert
from seqstore.testing import replicate_store

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"


def median(
    kind: str, path: Path, cfg: BenchConfig, extra: dict, repeat: int
) -> tuple[float, float, float]:
    runs = [measure(kind, path, cfg, extra) for _ in range(repeat)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        max(r[2] for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqstore-loader-bench-") as tmp:
        work = Path(args.workdir or tmp)
        src = Path(args.src)
        if not src.exists():
            from seqstore.testing import make_image_folder

            src = make_image_folder(work / "images", classes=20, per_class=50, max_side=500)
        store = work / "store.lmdb"
        if not store.exists():
            convert(src, store, format="lmdb", progress=False)
        cfg = BenchConfig(src=src, workers=2, batch_size=64, transform="imagenet_train", out=work)
        rows = {}
        for _ in range(args.repeat):  # interleaved repetitions
            for name, kind, path, extra in (
                ("seqstore lmdb (uint8, to a GPU)", "seqstore", store, {}),
                ("seqstore lmdb (float32 on CPU)", "seqstore", store, {"dtype": "float32"}),
                ("torchvision-style baseline", "torchvision", src, {}),
                ("ceiling", "ceiling", store, {}),
            ):
                rows.setdefault(name, []).append(measure(kind, path, cfg, extra))
        n = len(seqstore.open(store))
        ceiling = statistics.median(r[0] for r in rows["ceiling"])
        baseline = statistics.median(r[0] for r in rows["torchvision-style baseline"])
        print(f"{n} images from {src}; RandomResizedCrop(224)+flip, 2 workers, batch 64\n")
        print(
            f"{'pipeline':<34}{'img/s':>8}{'x ceiling':>10}{'x baseline':>11}"
            f"{'1st batch s':>12}{'peak MB':>9}"
        )
        for name, runs in rows.items():
            rate = statistics.median(r[0] for r in runs)
            ttfb = statistics.median(r[1] for r in runs)
            peak = max(r[2] for r in runs)
            print(
                f"{name:<34}{rate:>8.0f}{rate / ceiling:>10.2f}{rate / baseline:>11.2f}"
                f"{ttfb:>12.3f}{peak:>9.0f}"
            )

        big = work / "store-x10.lmdb"
        if not big.exists():
            replicate_store(store, big, 10, format="lmdb")
        print("\ntime to first batch by store size (median of repetitions):")
        for path in (store, big):
            rate, ttfb, _ = median("seqstore", path, cfg, {}, args.repeat)
            print(f"  {len(seqstore.open(path)):>6} records: {ttfb:.3f} s")

        print("\npeak memory by shuffle buffer (loader + 2 workers, big store):")
        for mb in (16, 128, 512):
            sized = cfg.model_copy(update={"shuffle_buffer_mb": float(mb)})
            _, _, peak = median("seqstore", big, sized, {}, 1)
            print(f"  buffer {mb:>4} MB: peak {peak:>6.0f} MB, peak - buffer {peak - mb:>6.0f} MB")


if __name__ == "__main__":
    main()
