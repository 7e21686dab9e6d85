"""Loader throughput on a hard-disk-like device with a cold page cache.

    sudo python benchmarks/hdd.py [SRC] [--iops 100] [--mbps 250] [--copies 40] [--repeat 3]

The device that holds the working directory is throttled with cgroup block-I/O limits (v1
``blkio.throttle.read_iops_device``/``read_bps_device``, or v2 ``io.max``) to what a hard
disk serves: 100 reads per second, 250 MB/s. This process joins the throttled group, so the
measurement processes and their workers do too, and the data's pages are dropped from the
page cache (``posix_fadvise(DONTNEED)`` on each of its files) before each cold epoch. SRC
(default ../shared/data/imagen200, 1000 real ImageNet JPEGs; generated images when absent)
is copied ``--copies`` times into the working directory and converted to LMDB and HDF5
there (40 copies: 4 GB per store). The store must be large beside the Loader's 256 MB shuffle
buffer, as a hard disk's dataset is: a worker fills its share of the buffer before its first
batch, so a cold epoch starts with 256 MB read at the device's rate while the decoders wait,
and then keeps pace with a warm one. On a 1 GB store that start is a large part of the
epoch; on 4 GB it is 5%, and on ImageNet's 140 GB nothing. 40 copies need about 12 GB free
in the working directory (the copied folder and the two stores) and half an hour.

Rows: each store cold and warm (RandomResizedCrop(224) + flip, 2 workers, batch 64), read
with ``direct_io=True`` (blocks not in the page cache read with ``O_DIRECT``: the default
for a store larger than memory, which is what a hard disk's dataset is) and with
``direct_io=False`` (through the page cache: the default for a store that fits in memory,
as this one does); the folder read in place by seqstore, and the torchvision-style loader
over the one-copy folder (its rate is per image; it is slow enough that one copy is
plenty). Cold and warm are timed alike: the first epoch, from the Loader's start, in a fresh
process; warm with the store read into the page cache just before. Before each timed epoch
the same pipeline reads a one-copy store unthrottled, so that the libraries' pages are in
memory, as a training job's are (this machine's kernel pages out what has not been touched
for a minute, and the timed process would read them through the throttle). Above the table, the
device itself: the first store's file read in 4 MB reads at shuffled offsets, cold, with
``O_DIRECT`` and through the page cache ("cold / device" compares with the first: as fast
as any reader of shuffled blocks can go on it).

Targets: LMDB and HDF5 cold >= 0.9x their own warm speed, and >= 9.6x the torchvision-style
loader under the same throttle (the 670 h vs 70 h of the sequential-LMDB loaders).

Needs root on Linux and a cgroup block-I/O controller; otherwise it prints why and exits
with status 0 without measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from seqstore.bench import measure
from seqstore.config import BenchConfig
from seqstore.convert import convert
from seqstore.io.local import aligned_buffer

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"
V1 = Path("/sys/fs/cgroup/blkio")
V2_MOUNTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def disk_of(path: Path) -> str:
    """``MAJOR:MINOR`` of the whole disk holding ``path`` (a partition's parent)."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        raise RuntimeError(f"'{path}' is not on a block device (st_dev {os.major(dev)}:0)")
    if (node / "partition").exists():
        node = node.resolve().parent
    return (node / "dev").read_text().strip()


class Throttle:
    """This process (and every process it starts afterwards) in a cgroup whose reads from
    ``disk`` are limited to ``iops`` operations and ``bps`` bytes per second."""

    def __init__(self, disk: str, iops: int, bps: int) -> None:
        self.disk, self.iops, self.bps = disk, iops, bps
        self.group: Path | None = None
        self.home: Path | None = None

    def __enter__(self) -> Throttle:
        name = f"seqstore-hdd-{os.getpid()}"
        if (V1 / "blkio.throttle.read_iops_device").exists():
            self.group, self.home = V1 / name, V1
            self.group.mkdir()
            (self.group / "blkio.throttle.read_iops_device").write_text(f"{self.disk} {self.iops}")
            (self.group / "blkio.throttle.read_bps_device").write_text(f"{self.disk} {self.bps}")
        else:
            root = next((m for m in V2_MOUNTS if (m / "cgroup.controllers").exists()), None)
            if root is None or "io" not in (root / "cgroup.controllers").read_text().split():
                raise RuntimeError("no cgroup block-I/O controller (v1 blkio or v2 io)")
            (root / "cgroup.subtree_control").write_text("+io")
            self.group, self.home = root / name, root
            self.group.mkdir()
            (self.group / "io.max").write_text(f"{self.disk} riops={self.iops} rbps={self.bps}")
        (self.group / "cgroup.procs").write_text(str(os.getpid()))
        return self

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """This process (and what it starts meanwhile) out of the throttled group."""
        assert self.group is not None and self.home is not None
        (self.home / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.group is not None and self.home is not None:
            # This process, and helpers it left running (multiprocessing's resource tracker).
            for pid in (self.group / "cgroup.procs").read_text().split():
                try:
                    (self.home / "cgroup.procs").write_text(pid)
                except OSError:  # it ended meanwhile
                    pass
            self.group.rmdir()


def files_under(*paths: Path) -> Iterator[Path]:
    """Each of ``paths`` that is a file, and every file under those that are folders."""
    for path in paths:
        yield from [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())


def evict(*paths: Path) -> None:
    """Drop the page cache of every file under ``paths``, and nothing else: a cold epoch
    reads its data from the device, while the libraries a training job has loaded long
    before stay in memory (dropping the whole cache would time their pages too)."""
    for file in files_under(*paths):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def device_rate(file: Path, block: int = 4 << 20, direct: bool = False) -> float:
    """MB/s of reading ``file`` in ``block``-sized reads at shuffled offsets, cache dropped:
    what the throttled device gives a reader of shuffled blocks, through the page cache or
    (``direct``) with ``O_DIRECT`` into a huge-page buffer."""
    block = max(4096, min(block, file.stat().st_size // 8)) // 4096 * 4096
    offsets = list(range(0, file.stat().st_size - block, block))
    random.Random(0).shuffle(offsets)
    buffer = aligned_buffer(block) if direct else memoryview(bytearray(block))
    evict(file)
    fd = os.open(file, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.preadv(fd, [buffer], offset)
        return len(offsets) * block / 1e6 / (time.perf_counter() - start)
    finally:
        os.close(fd)


def load(*paths: Path) -> None:
    """Read every file under ``paths`` into the page cache, for a warm epoch."""
    for file in files_under(*paths):
        with file.open("rb") as f:
            while f.read(8 << 20):
                pass


def copy_folder(src: Path, dst: Path, copies: int) -> Path:
    """``src``'s class folders with every image ``copies`` times (``k_<name>``)."""
    for image in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = image.relative_to(src)
        (dst / rel.parent).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            shutil.copyfile(image, dst / rel.parent / f"{k}_{rel.name}")
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--iops", type=int, default=100)
    parser.add_argument("--mbps", type=float, default=250.0)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    parser.add_argument(
        "--only", nargs="+", default=["lmdb", "hdf5", "folder", "torchvision"], metavar="ROW"
    )
    args = parser.parse_args()
    if sys.platform != "linux" or os.geteuid() != 0:
        print("skipped: needs root on Linux (cgroup throttling, dropping the page cache)")
        return
    with tempfile.TemporaryDirectory(prefix="seqstore-hdd-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        src = Path(args.src)
        if not src.exists():
            from seqstore.testing import make_image_folder

            src = make_image_folder(work / "images", classes=20, per_class=50, max_side=500)
        try:
            throttle = Throttle(disk_of(work), args.iops, int(args.mbps * 1e6))
        except (OSError, RuntimeError) as exc:
            print(f"skipped: cannot throttle the disk of '{work}': {exc}")
            return
        one = copy_folder(src, work / "one", 1)
        many = copy_folder(src, work / "many", args.copies)
        # The stores --only asks for; one at least, whose file the device row reads.
        formats = [f for f in ("lmdb", "hdf5") if any(w in f"seqstore {f}" for w in args.only)]
        stores = {fmt: work / f"store.{fmt}" for fmt in formats or ["lmdb"]}
        # The same formats of the one-copy folder: read unthrottled just before each timed
        # epoch, so that the libraries' pages are in memory, as a training job's are
        # (some kernels page out what has not been touched for a minute).
        small = {fmt: work / f"small.{fmt}" for fmt in stores}
        for fmt, store in stores.items():
            convert(many, store, format=fmt, check="header", progress=False)
            convert(one, small[fmt], format=fmt, check="header", progress=False)
        cfg = BenchConfig(src=many, workers=2, batch_size=64, transform="imagenet_train", out=work)
        cold_cfg = cfg.model_copy(update={"cold": True})
        reads = {"O_DIRECT": True, "page cache": False}
        cases = [
            case
            for case in (
                *(
                    (f"seqstore {fmt}, {how}", stores[fmt], small[fmt], {"direct_io": direct})
                    for fmt in formats
                    for how, direct in reads.items()
                ),
                ("seqstore folder, read in place", many, one, None),
            )
            if any(word in case[0] for word in args.only)
        ]
        rows: dict[str, dict[str, list[float]]] = {}
        with contextlib.ExitStack() as throttled:
            try:
                throttled.enter_context(throttle)
            except OSError as exc:
                print(f"skipped: cannot throttle the disk of '{work}': {exc}")
                return
            for _ in range(args.repeat):
                for name, path, twin, options in cases:
                    row = rows.setdefault(name, {"cold": [], "warm": [], "first": []})
                    extra = {"reader_options": options or {}}
                    with throttle.outside():
                        measure("seqstore", twin, cold_cfg, extra)
                    evict(path)
                    rate, first, _ = measure("seqstore", path, cold_cfg, extra)
                    row["cold"].append(rate)
                    row["first"].append(first)
                    if options is not None:
                        # Timed the same way (the first epoch, from the Loader's start), with
                        # the data in the page cache.
                        load(path)
                        with throttle.outside():
                            measure("seqstore", twin, cold_cfg, extra)
                        row["warm"].append(measure("seqstore", path, cold_cfg, extra)[0])
            fmt, store = next(iter(stores.items()))
            data = store / {"lmdb": "data.mdb", "hdf5": "data.h5"}[fmt]
            device = {how: device_rate(data, direct=direct) for how, direct in reads.items()}
            baseline = first = math.nan
            if "torchvision" in args.only:
                with throttle.outside():
                    measure("torchvision", src, cold_cfg)
                evict(one)
                baseline, first, _ = measure("torchvision", one, cold_cfg)
        files = [p for p in many.rglob("*") if p.is_file()]
        n = len(files)
        mean_mb = sum(p.stat().st_size for p in files) / n / 1e6
        print(
            f"{n} images ({args.copies} copies of {src}), disk {throttle.disk} throttled to "
            f"{args.iops} reads/s and {args.mbps:.0f} MB/s, the data evicted from the page cache "
            "before each cold epoch; RandomResizedCrop(224)+flip, 2 workers, batch 64, medians of "
            f"{args.repeat}\n"
        )
        print(
            f"the device itself, in 4 MB reads at shuffled offsets: {device['O_DIRECT']:.0f} MB/s "
            f"with O_DIRECT, {device['page cache']:.0f} MB/s through the page cache; "
            f"{device['O_DIRECT'] / mean_mb:.0f} img/s of this data's mean "
            f"{mean_mb * 1e3:.0f} KB at the first\n"
        )
        print(
            "| pipeline | cold img/s | warm img/s | cold / warm | cold / device "
            "| cold x torchvision-style | first batch, cold |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            cold = statistics.median(row["cold"])
            warm = statistics.median(row["warm"]) if row["warm"] else None
            ratio = f"{cold / warm:.2f}" if warm else "-"
            print(
                f"| {name} | {cold:.0f} | {f'{warm:.0f}' if warm else '-'} | {ratio} | "
                f"{cold * mean_mb / device['O_DIRECT']:.2f} | {cold / baseline:.1f}x | "
                f"{statistics.median(row['first']):.2f} s |"
            )
        print(
            f"| torchvision-style folder loader | {baseline:.1f} | - | - | "
            f"{baseline * mean_mb / device['O_DIRECT']:.2f} | 1.0x | {first:.2f} s |"
        )


if __name__ == "__main__":
    main()
