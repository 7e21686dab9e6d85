"""``seqstore bench``: backends side by side on the user's own data, with baselines.

For each backend, in the same run, interleaved, after a warm-up, as medians of repetitions:
the raw ``read_block`` rate, the Loader's images/s with the chosen transform and workers,
the time to the first batch, the peak memory of the loader and its workers, and a stage
breakdown (read, verify, decode, transform, collate) that shows what bounds the loader, and
what checking checksums on read costs: the first store's Loader with ``verify`` on and off,
pass by pass in turn in one process, the fastest pass of each compared. Beside them:
the ceiling (the same decode and transform in bare processes over bytes already in RAM),
a torchvision-style pipeline (PIL, one file per sample, float normalisation in workers), and
the tensorpack pipeline of the old sequential loaders when tensorpack is installed. Every
row shows its ratio to the ceiling. Shuffle quality is computed from the order functions
alone: how far records move, and how many classes a batch holds against a random batch.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ._version import __version__
from .backends import Reader, open_store
from .backends.folder import FolderReader
from .config import BenchConfig, load_config
from .convert import convert
from .engine.plan import EpochSpec, rank_order
from .engine.stream import sample_rng
from .errors import ConfigError, NotAStoreError, SeqstoreError
from .manifest import is_store
from .records import Record

__all__ = ["BenchResult", "Row", "run_bench", "shuffle_quality"]


@dataclass
class Row:
    """One line of the results table.

    Attributes
    ----------
    name : str
        What was measured (a backend, a baseline, or the ceiling).
    kind : str
        ``"seqstore"``, ``"baseline"`` or ``"ceiling"``.
    images_per_s : float
        Median images per second through the whole pipeline.
    first_batch_s : float or None
        Median time from starting an epoch to its first batch.
    peak_rss_mb : float or None
        Largest resident memory of the process and its workers together.
    read_records_per_s, read_mb_per_s : float or None
        Raw ``read_block`` rate of the store (seqstore rows).
    stages_ms : dict
        Milliseconds per image of each stage, measured in one process.
    shuffle : dict
        Shuffle quality of the configuration (seqstore rows).
    runs : list of float
        Every timed images/s, for the record.
    """

    name: str
    kind: str
    images_per_s: float = 0.0
    first_batch_s: float | None = None
    peak_rss_mb: float | None = None
    read_records_per_s: float | None = None
    read_mb_per_s: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    shuffle: dict[str, float] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    ttfb_runs: list[float] = field(default_factory=list)
    rss_runs: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    """Everything ``seqstore bench`` measured, as written to ``bench.json``."""

    config: dict[str, Any]
    machine: dict[str, Any]
    records: int
    megabytes: float
    rows: list[Row]
    notes: list[str]
    checksum_cost: dict[str, Any] | None = None

    def ratio(self, name: str, to: str) -> float | None:
        """images/s of row ``name`` divided by that of row ``to`` (None if either is absent)."""
        rows = {r.name: r for r in self.rows}
        if name not in rows or to not in rows or not rows[to].images_per_s:
            return None
        return rows[name].images_per_s / rows[to].images_per_s


# -- shuffle quality (pure: order functions and labels, no I/O) ---------------------------------
def shuffle_quality(
    labels: np.ndarray,
    *,
    block: int,
    capacity: int,
    batch_size: int,
    workers: int,
    seed: int = 0,
    trials: int = 3,
) -> dict[str, float]:
    """How well a configuration mixes one epoch, against a truly random order.

    Returns
    -------
    dict
        ``displacement``: mean distance a record moves from its storage position, as a
        fraction of the store (about 1/3 for a random permutation); ``classes_per_batch``:
        mean distinct labels in a batch; the ``random_`` keys give both for random orders.
    """
    n = len(labels)
    spec = EpochSpec(
        num_records=n,
        block=block,
        capacity=capacity,
        shuffle=True,
        seed=seed,
        rank=0,
        world_size=1,
        workers=workers,
        batch_size=batch_size,
        drop_last=False,
    )
    mixed = rank_order(spec, 0, 0)  # epoch 0 of rank 0, as the Loader yields it

    def stats(o: np.ndarray) -> tuple[float, float]:
        disp = float(np.abs(o - np.arange(len(o))).mean() / max(n, 1))
        per_batch = [
            len(np.unique(labels[o[i : i + batch_size]])) for i in range(0, len(o), batch_size)
        ]
        return disp, float(np.mean(per_batch)) if per_batch else 0.0

    disp, classes = stats(mixed)
    rng = np.random.default_rng(seed)
    random = [stats(rng.permutation(n)) for _ in range(trials)]
    return {
        "displacement": disp,
        "classes_per_batch": classes,
        "random_displacement": float(np.mean([r[0] for r in random])),
        "random_classes_per_batch": float(np.mean([r[1] for r in random])),
    }


# -- measuring ------------------------------------------------------------------------------------
def drop_caches() -> bool:
    """Drop the Linux page cache; False where that is not allowed (not root, not Linux)."""
    try:
        subprocess.run(["sync"], check=True, capture_output=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


class _PeakRSS:
    """Samples the memory of this process and its children in a thread.

    On Linux it sums each process's proportional share of anonymous and shared memory
    (``Pss_Anon + Pss_Shmem`` in ``/proc/<pid>/smaps_rollup``): forked workers share pages
    with their parent, which resident sizes would count once per worker, and pages of a
    memory-mapped store are page cache, not memory the loader holds. Elsewhere: RSS.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _memory(proc: psutil.Process) -> int:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            return sum(int(fields[k].split()[0]) * 1024 for k in ("Pss_Anon", "Pss_Shmem"))
        except (OSError, KeyError, ValueError):
            return int(proc.memory_info().rss)

    def _sample(self) -> None:
        me = psutil.Process()
        total = self._memory(me)
        for child in me.children(recursive=True):
            try:
                total += self._memory(child)
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _build(
    kind: str, path: Path, cfg: BenchConfig, extra: dict[str, Any]
) -> Callable[[], Iterator[Any]]:
    if kind == "seqstore":
        return _seqstore_epoch(path, cfg, extra.get("dtype", "uint8"), extra.get("verify", True))
    if kind == "torchvision":
        reader = open_store(path)
        if not isinstance(reader, FolderReader):
            raise ConfigError(f"the torchvision-style baseline reads an image folder, not '{path}'")
        return _torchvision_style(reader, cfg)
    if kind == "tensorpack":
        return _tensorpack_pipeline(path, cfg, extra["cache"])
    reader = open_store(path)
    return _Ceiling([(r.data, r.key) for r in reader.read_block(0, len(reader))], cfg)


def _measure(
    kind: str, path: Path, cfg_json: str, extra: dict[str, Any]
) -> tuple[float, float, float]:
    """In a fresh process: (images/s of a full epoch, seconds from building the pipeline to
    its first batch, peak memory MB of the process and its workers)."""
    cfg = BenchConfig.model_validate_json(cfg_json)
    # A spawned process inherits the spawn start method; a training script gets the
    # platform's default (fork on Linux), and so do the pipelines measured here.
    mp.set_start_method(mp.get_all_start_methods()[0], force=True)
    import torch  # noqa: F401 - imports are not part of the time to the first batch

    from . import loader  # noqa: F401

    if kind == "tensorpack":
        import tensorpack.dataflow  # noqa: F401
    rss = _PeakRSS(interval=0.1)
    start = time.perf_counter()
    epoch = _build(kind, path, cfg, extra)
    if cfg.cold:
        # The parent dropped the page cache just before: the first epoch is the cold one.
        # (A warm-up would map the store into persistent workers, where no drop reaches.)
        first = None
        images = 0
        with rss:
            for batch in epoch():
                if first is None:
                    first = time.perf_counter() - start
                images += len(batch[1])
        return images / (time.perf_counter() - start), first or 0.0, rss.peak / 1e6
    # Reading a process's PSS costs milliseconds, so memory is sampled only during the
    # warm-up epoch after its first batch: the timed epochs run unobserved.
    first = None
    for _ in epoch():  # warm-up epoch, run to its end: nothing left running after it
        if first is None:
            first = time.perf_counter() - start
            rss.__enter__()
    rss.__exit__()
    images = 0
    start = time.perf_counter()
    while True:  # whole epochs, at least cfg.min_seconds of them
        for batch in epoch():
            images += len(batch[1])
        if time.perf_counter() - start >= cfg.min_seconds:
            break
    rate = images / (time.perf_counter() - start)
    rss._sample()
    return rate, first or 0.0, rss.peak / 1e6


def _measure_checksum_cost(path: Path, cfg_json: str, passes: int) -> tuple[float, float, int]:
    """In a fresh process: (best images/s with checksums verified, best without, batches
    per pass). The two Loaders run pass by pass in turn (on, off, then off, on), so that
    both meet the same load from the rest of the machine; each pass times the batches
    after its first, up to an epoch or about 2000 images, so that the figure is the steady
    rate, not the start, and a large store is not read whole a dozen times."""
    cfg = BenchConfig.model_validate_json(cfg_json)
    limit = max(8, math.ceil(2000 / cfg.batch_size))
    mp.set_start_method(mp.get_all_start_methods()[0], force=True)
    epochs = {verify: _seqstore_epoch(path, cfg, verify=verify) for verify in (True, False)}
    best = {True: 0.0, False: 0.0}
    timed = 0
    for i in range(passes + 1):  # the first round warms both up
        for verify in (True, False) if i % 2 else (False, True):
            images, start = 0, 0.0
            for b, batch in enumerate(epochs[verify]()):
                if b == 0:
                    start = time.perf_counter()
                    continue
                images += len(batch[1])
                timed = b
                if b == limit:
                    break
            if i and images:
                best[verify] = max(best[verify], images / (time.perf_counter() - start))
    return best[True], best[False], timed


def _in_child(
    kind: str, path: Path, cfg: BenchConfig, extra: dict[str, Any]
) -> tuple[float, float, float]:
    """Run :func:`_measure` in a spawned process: each pipeline alone with its workers, its
    memory counted apart, and py-lmdb's one-open-per-path rule kept per pipeline."""
    # A plain (non-daemon) process: the pipelines start worker processes of their own.
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    fn: Callable[..., Any] = _measure
    args: tuple[Any, ...] = (kind, path, cfg.model_dump_json(), extra)
    if kind == "checksum cost":
        fn, args = _measure_checksum_cost, (path, cfg.model_dump_json(), extra["passes"])
    proc = ctx.Process(target=_reply, args=(send, fn, args))
    proc.start()
    send.close()  # the child's copy is the only one left: recv() ends if the child dies
    try:
        ok, value = receive.recv()
    except EOFError:
        proc.join()
        raise SeqstoreError(
            f"the {kind} measurement process died (exit code {proc.exitcode}) without a "
            "result; if it ran out of memory, measure fewer records with --limit"
        ) from None
    proc.join()
    if not ok:
        raise SeqstoreError(f"the {kind} measurement failed: {value}")
    return value


# -- the pipelines under test -------------------------------------------------------------------
def _seqstore_epoch(
    path: Path, cfg: BenchConfig, dtype: str = "uint8", verify: bool = True
) -> Callable[[], Iterator[Any]]:
    """One Loader epoch per call. ``uint8`` batches in channels-last layout are what crosses
    to a GPU, which converts and normalises them on arrival; with ``float32`` the CPU does
    that too, as a CPU-only training loop needs. ``verify``: check checksums on read."""
    from .loader import Loader

    loader = Loader(
        path,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        transform=cfg.transform,
        image_size=cfg.image_size,
        shuffle_buffer_mb=cfg.shuffle_buffer_mb,
        block_mb=cfg.block_mb,
        dtype=dtype,
        channels_last=dtype == "uint8",
        verify=verify,
    )
    return lambda: iter(loader)


_ceiling_state: dict[str, Any] = {}


def _ceiling_work(share: tuple[int, int, int]) -> int:
    pipeline, records, seed = (
        _ceiling_state["pipeline"],
        _ceiling_state["records"],
        _ceiling_state["seed"],
    )
    start, stop, epoch = share
    for i in range(start, stop):
        data, key = records[i]
        if pipeline is not None:
            pipeline(data, sample_rng(seed, epoch, i), name=key)
    return stop - start


class _Ceiling:
    """Decode + transform in bare processes over bytes already in RAM: the upper bound.

    The processes are started once, before any timing, and receive the records by fork.
    Each call is one epoch with crops drawn afresh, as the loader's epochs are: the cost of
    decoding a large image depends on the crop (see :class:`~seqstore.transforms.Pipeline`).
    """

    def __init__(self, records: list[tuple[bytes, str]], cfg: BenchConfig) -> None:
        from .loader import LoaderConfig, _Transform

        transform = _Transform(
            LoaderConfig(path=cfg.src, transform=cfg.transform, image_size=cfg.image_size)
        )
        _ceiling_state.update(pipeline=transform.pipeline, records=records, seed=0)
        n = len(records)
        self.shares = [(lo, min(lo + cfg.batch_size, n)) for lo in range(0, n, cfg.batch_size)]
        self.epoch = 0
        self.pool = mp.get_context("fork").Pool(cfg.workers) if cfg.workers else None

    def __call__(self) -> Iterator[Any]:
        shares = [(lo, hi, self.epoch) for lo, hi in self.shares]
        self.epoch += 1
        if self.pool is None:
            for share in shares:
                yield (None, range(_ceiling_work(share)))
            return
        for done in self.pool.imap(_ceiling_work, shares):
            yield (None, range(done))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _torchvision_style(reader: FolderReader, cfg: BenchConfig) -> Callable[[], Iterator[Any]]:
    """A Dataset that opens each file with PIL, crops, and normalises to float, as in the
    PyTorch ImageNet example; torchvision's transforms re-implemented on PIL, since
    torchvision itself is not a dependency."""
    import torch
    from torch.utils.data import DataLoader

    dataset = _PILFolder(reader, cfg.image_size, cfg.transform)
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        collate_fn=None,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda: iter(loader)


def _pil_transform(img: Any, size: int, transform: str) -> Any:
    """torchvision's RandomResizedCrop + flip or Resize + CenterCrop, on a PIL image."""
    import random

    from PIL import Image

    from .transforms import RandomResizedCrop

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
    def __init__(self, reader: FolderReader, size: int, transform: str) -> None:
        self.root = reader.path
        self.keys = reader.keys
        self.labels = reader.labels().tolist()
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        from .transforms import IMAGENET_MEAN, IMAGENET_STD

        if self.transform == "none":
            with open(self.root / self.keys[i], "rb") as f:
                f.read()
            return torch.zeros(0), self.labels[i]
        with open(self.root / self.keys[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.transform == "decode":  # sizes differ: nothing to stack
            return torch.zeros(0), self.labels[i]
        img = _pil_transform(img, self.size, self.transform)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std, self.labels[i]


def _tensorpack_pipeline(path: Path, cfg: BenchConfig, cache: int) -> Callable[[], Iterator[Any]]:
    """LMDBData -> LocallyShuffleData -> mapped PIL decode + augment -> BatchData."""
    import tensorpack.dataflow as td

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


def _reply(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send((True, fn(*args)))
    except Exception as exc:  # reported in the parent, which has the terminal
        conn.send((False, f"{type(exc).__name__}: {exc}"))


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
        return [np.asarray(_pil_transform(img, self.size, self.transform)), label]


# -- stage breakdown ----------------------------------------------------------------------------
def _stages(
    reader: Reader[Any], cfg: BenchConfig, sample: int = 256, repeat: int = 3
) -> dict[str, float]:
    """Milliseconds per image of each stage, in this process, over the first ``sample``
    records: the fastest of ``repeat`` passes, so that opening the store and first-touch
    page faults do not count (as timeit does)."""
    import torch

    from .decode import decode
    from .engine.stream import RawBatch
    from .loader import LoaderConfig, _collate, _normalize, _Transform
    from .transforms import IMAGENET_MEAN, IMAGENET_STD

    n = min(sample, len(reader))
    transform = _Transform(
        LoaderConfig(path=cfg.src, transform=cfg.transform, image_size=cfg.image_size)
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def read() -> list[Record]:
        return [r for lo in range(0, n, 64) for r in reader.read_block(lo, min(lo + 64, n))]

    records = read()
    samples = [transform(r, sample_rng(0, 0, i)) for i, r in enumerate(records)]

    def collate() -> None:
        for lo in range(0, n, cfg.batch_size):
            part = samples[lo : lo + cfg.batch_size]
            labels = np.zeros(len(part), np.int64)
            images = _collate(RawBatch(part, labels, labels, 0), None, None)[0]
            if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
                _normalize(images.permute(0, 3, 1, 2), mean, inv_std, torch.channels_last)

    stages: dict[str, Callable[[], object]] = {
        "read": read,
        "verify": lambda: [r.verify() for r in records],
        "decode (full size)": lambda: [decode(r.data, name=r.key) for r in records],
        "decode + transform": lambda: [
            transform(r, sample_rng(0, 0, i)) for i, r in enumerate(records)
        ],
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


# -- the whole run ------------------------------------------------------------------------------
def _prepare_stores(cfg: BenchConfig, notes: list[str]) -> tuple[dict[str, Path], Path | None]:
    """Each format's store of the same records, converted once into ``out`` and reused."""
    src = cfg.src
    source = open_store(src)
    stores: dict[str, Path] = {}
    folder_src = isinstance(source, FolderReader) and cfg.limit is None
    for fmt in cfg.formats:
        if fmt == "folder" and folder_src:
            stores[fmt] = src
            continue
        if fmt == source.manifest.format and cfg.limit is None:
            stores[fmt] = src
            continue
        dst = cfg.out / "stores" / fmt
        marker = dst.with_suffix(".source")
        wanted = f"{_fingerprint(source)} limit={cfg.limit}"
        if not _reusable(dst, marker, wanted):
            print(f"converting {src} -> {dst} ({fmt}) ...")
            marker.unlink(missing_ok=True)
            convert(
                src,
                dst,
                format=fmt,
                overwrite=True,
                limit=cfg.limit,
                shuffle=cfg.limit is not None or None,
            )
            marker.write_text(wanted)
        stores[fmt] = dst
    tensorpack_file = None
    if cfg.baselines:
        try:
            import tensorpack  # noqa: F401
        except ImportError:
            notes.append(
                "tensorpack is not installed: its pipeline is left out"
                " (pip install 'seqstore[tensorpack]')"
            )
        else:
            tensorpack_file = cfg.out / "stores" / "ILSVRC-bench.lmdb"
            base = stores.get("lmdb") or next(iter(stores.values()))
            marker = tensorpack_file.with_suffix(".source")
            base_reader = open_store(base)
            wanted = _fingerprint(base_reader)
            if not tensorpack_file.exists() or not _reusable(tensorpack_file, marker, wanted):
                print(f"writing {tensorpack_file} with tensorpack's LMDBSerializer ...")
                marker.unlink(missing_ok=True)
                _write_tensorpack(base_reader, tensorpack_file)
                marker.write_text(wanted)
            base_reader.close()
    # Closed, so that no mapping of a store in this process keeps its pages cached (--cold).
    source.close()
    return stores, tensorpack_file


def _fingerprint(reader: Reader[Any]) -> str:
    """What identifies a source's content: where it is, its size, and when a store was made.
    Adding, removing or replacing images changes the record count or the byte total."""
    m = reader.manifest
    made = m.provenance.created if is_store(reader.path) else ""
    return f"{reader.path.resolve()} {m.format} {m.num_records} {m.total_bytes} {made}"


def _reusable(dst: Path, marker: Path, wanted: str) -> bool:
    """Whether ``dst``, converted earlier, holds what converting now would give."""
    if not marker.is_file() or marker.read_text() != wanted:
        return False
    try:
        open_store(dst).close()
    except SeqstoreError:  # a conversion that did not finish
        return False
    return True


def _write_tensorpack(reader: Reader[Any], path: Path) -> None:
    import tensorpack.dataflow as td

    class Records(td.DataFlow):
        def __len__(self) -> int:
            return len(reader)

        def __iter__(self) -> Iterator[list[Any]]:
            for start in range(0, len(reader), 512):
                for r in reader.read_block(start, min(start + 512, len(reader))):
                    yield [np.frombuffer(r.data, np.uint8), r.label]

    if path.exists():
        path.unlink()
    td.LMDBSerializer.save(Records(), str(path))


def _machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for pkg in ("numpy", "torch", "opencv-python-headless", "lmdb", "h5py", "pillow", "tensorpack"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "seqstore": __version__,
        "versions": versions,
    }


def run_bench(config: BenchConfig | dict[str, Any] | None = None, **options: Any) -> BenchResult:
    """Measure every configured backend and baseline; see the module docstring.

    Returns
    -------
    BenchResult
        Also written to ``out/bench.json`` (and ``out/bench.png`` with matplotlib).
    """
    cfg = load_config(BenchConfig, config, **options)
    if not cfg.src.exists():
        raise NotAStoreError(f"'{cfg.src}' does not exist")
    cfg.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    stores, tensorpack_file = _prepare_stores(cfg, notes)
    first = open_store(next(iter(stores.values())))
    n, mb = len(first), first.manifest.total_bytes / 1e6
    first.close()

    rows: dict[str, Row] = {}
    # (row, pipeline kind, path, extra options), each measured in a process of its own
    plans: list[tuple[Row, str, Path, dict[str, Any]]] = []
    for fmt, path in stores.items():
        row = rows[fmt] = Row(fmt, "seqstore")
        reader = open_store(path)
        row.stages_ms = _stages(reader, cfg)
        mean = reader.manifest.mean_record_bytes
        block = max(1, int(cfg.block_mb * 1e6 / mean))
        capacity = max(1, int(cfg.shuffle_buffer_mb * 1e6 / mean) // max(1, cfg.workers))
        row.shuffle = shuffle_quality(
            reader.labels(),
            block=block,
            capacity=capacity,
            batch_size=cfg.batch_size,
            workers=max(1, cfg.workers),
        )
        reader.close()
        plans.append((row, "seqstore", path, {}))
    first_fmt, first_path = next(iter(stores.items()))
    name = f"{first_fmt} float32 cpu"
    plans.append(
        (rows.setdefault(name, Row(name, "seqstore")), "seqstore", first_path, {"dtype": "float32"})
    )
    if tensorpack_file is not None:
        row = rows["tensorpack file"] = Row("tensorpack file", "seqstore")
        plans.append((row, "seqstore", tensorpack_file, {}))
        cache = max(1, int(cfg.shuffle_buffer_mb * 1e6 / (mb * 1e6 / max(n, 1))))
        row = rows["tensorpack pipeline"] = Row("tensorpack pipeline", "baseline")
        plans.append((row, "tensorpack", tensorpack_file, {"cache": cache}))
    if cfg.baselines:
        if "folder" in stores:
            row = rows["torchvision-style"] = Row("torchvision-style", "baseline")
            plans.append((row, "torchvision", stores["folder"], {}))
        else:
            notes.append("torchvision-style baseline needs the 'folder' format in --formats")
    plans.append((rows.setdefault("ceiling", Row("ceiling", "ceiling")), "ceiling", first_path, {}))

    cold = cfg.cold
    if cold and not drop_caches():
        notes.append(
            "--cold: the page cache could not be dropped (needs root on Linux); runs are warm"
        )
        cold = False
    for rep in range(cfg.repeat):  # interleaved: every pipeline once per repetition
        for row, kind, path, extra in plans:
            if cold:
                drop_caches()
            rate, ttfb, peak = _in_child(kind, path, cfg, extra)
            row.runs.append(rate)
            row.ttfb_runs.append(ttfb)
            row.rss_runs.append(peak)
        print(f"repetition {rep + 1}/{cfg.repeat} done")
    for row in rows.values():
        row.images_per_s = statistics.median(row.runs)
        row.first_batch_s = statistics.median(row.ttfb_runs)
        row.peak_rss_mb = max(row.rss_runs)
    for fmt, path in stores.items():
        rates = []
        for _ in range(cfg.repeat):
            if cold:
                drop_caches()
            reader = open_store(path)  # afresh: a mapping kept open keeps its pages cached
            t0 = time.perf_counter()
            for start in range(0, n, 512):
                reader.read_block(start, min(start + 512, n))
            rates.append(n / (time.perf_counter() - t0))
            reader.close()
        rate = statistics.median(rates)
        rows[fmt].read_records_per_s = rate
        rows[fmt].read_mb_per_s = rate * mb / n

    # Checksums cost about 1% of a worker's time, within the run-to-run spread of whole
    # measurements in separate processes: the two settings are compared pass by pass instead.
    passes = max(6, 2 * cfg.repeat)
    on, off, batches = _in_child("checksum cost", first_path, cfg, {"passes": passes})
    checksum_cost = {
        "store": first_fmt,
        "verify_on": on,
        "verify_off": off,
        "percent": 100 * (1 - on / off) if off else None,
        "passes": passes,
        "batches_per_pass": batches,
    }
    result = BenchResult(
        config=cfg.model_dump(mode="json"),
        machine=_machine(),
        records=n,
        megabytes=mb,
        rows=list(rows.values()),
        notes=notes,
        checksum_cost=checksum_cost,
    )
    (cfg.out / "bench.png").unlink(missing_ok=True)  # an earlier run's
    if _chart(result, cfg.out / "bench.png") is None:
        notes.append("matplotlib is not installed: no chart (pip install 'seqstore[plot]')")
    (cfg.out / "bench.json").write_text(json.dumps(_as_json(result), indent=2) + "\n")
    return result


def _as_json(result: BenchResult) -> dict[str, Any]:
    out = asdict(result)
    ceiling = result.ratio
    for row in out["rows"]:
        row["ratio_to_ceiling"] = ceiling(row["name"], "ceiling")
    return out


def _chart(result: BenchResult, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result.rows
    colors = {"seqstore": "#1f77b4", "baseline": "#7f7f7f", "ceiling": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh(
        [r.name for r in rows], [r.images_per_s for r in rows], color=[colors[r.kind] for r in rows]
    )
    for i, r in enumerate(rows):
        ax.text(r.images_per_s, i, f" {r.images_per_s:.0f}", va="center")
    ax.invert_yaxis()
    cfg = result.config
    ax.set_xlabel("images / s")
    ax.set_title(
        f"{result.records} images, {cfg['transform']}, {cfg['workers']} workers, "
        f"batch {cfg['batch_size']} ({result.machine['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(result: BenchResult) -> str:
    """The results as a plain-text table."""
    lines = [
        f"{result.records} records, {result.megabytes:.1f} MB; {result.machine['cpus']} CPUs; "
        f"transform={result.config['transform']} workers={result.config['workers']} "
        f"batch={result.config['batch_size']}",
        "",
        f"{'pipeline':<22}{'img/s':>8}{'x ceiling':>10}{'1st batch s':>12}{'peak MB':>9}"
        f"{'read rec/s':>11}{'read MB/s':>10}",
    ]
    for r in result.rows:
        ratio = result.ratio(r.name, "ceiling")
        lines.append(
            f"{r.name:<22}{r.images_per_s:>8.0f}{(ratio or 0):>10.2f}"
            f"{(r.first_batch_s or 0):>12.3f}{(r.peak_rss_mb or 0):>9.0f}"
            + (
                f"{r.read_records_per_s:>11.0f}{r.read_mb_per_s:>10.0f}"
                if r.read_records_per_s
                else ""
            )
        )
    staged = [r for r in result.rows if r.stages_ms]
    if staged:
        names = list(staged[0].stages_ms)
        lines += ["", "stage ms per image (one process): " + ", ".join(names)]
        for r in staged:
            lines.append(f"{r.name:<22}" + "".join(f"{r.stages_ms[k]:>10.3f}" for k in names))
    mixed = [r for r in result.rows if r.shuffle]
    if mixed:
        lines += [
            "",
            f"{'shuffle quality':<22}{'displacement':>13}{'random':>8}"
            f"{'classes/batch':>15}{'random':>8}",
        ]
        for r in mixed:
            s = r.shuffle
            lines.append(
                f"{r.name:<22}{s['displacement']:>13.3f}{s['random_displacement']:>8.3f}"
                f"{s['classes_per_batch']:>15.1f}{s['random_classes_per_batch']:>8.1f}"
            )
    cost = result.checksum_cost
    if cost is not None and cost["percent"] is not None:
        lines.append(
            f"checksum cost ({cost['store']} Loader): {cost['percent']:.1f}% "
            f"({cost['verify_on']:.0f} img/s verifying, {cost['verify_off']:.0f} without; "
            f"best of {cost['passes']} alternating passes of {cost['batches_per_pass']} batches)"
        )
    for a, b in (("lmdb", "torchvision-style"), ("tensorpack file", "tensorpack pipeline")):
        ratio = result.ratio(a, b)
        if ratio is not None:
            lines.append(f"{a} / {b}: {ratio:.2f}x")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
