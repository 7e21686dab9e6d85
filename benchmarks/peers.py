"""seqstore side by side with MosaicML Streaming (MDS), WebDataset, litdata and FFCV.

    python benchmarks/peers.py [SRC] [--repeat 3] [--workdir DIR] [--min-seconds 2]

SRC defaults to ../shared/data/imagen200 (1000 real ImageNet JPEGs); without it, a generated
image folder. SRC is converted to a seqstore lmdb store (shuffled at write time, as
``seqstore convert`` does for a training folder), and every other format is written from
that store's records in its order: lmdb -> hdf5 with ``seqstore convert``, MDS with its
``MDSWriter``, WebDataset tar shards with its ``ShardWriter``, litdata chunks with its
``optimize``, an FFCV ``.beton`` with its ``DatasetWriter``. The peers' shards hold 1/16 of
the data each, so that both workers have shards to read (WebDataset and litdata deal whole
shards to workers).

Every pipeline reads through its library's recommended PyTorch path with 2 workers, batch 64
and shuffling, and yields uint8 batches of 224 x 224 crops:

- MDS: a ``StreamingDataset`` subclass whose ``__getitem__`` does the work, in a
  ``StreamingDataLoader``;
- WebDataset: ``WebDataset(shardshuffle) .shuffle() .to_tuple() .map_tuple() .batched()`` in a
  ``WebLoader``;
- litdata: ``StreamingDataset(shuffle=True, transform=...)`` in a ``StreamingDataLoader``;
- FFCV: its ``Loader`` with ``RandomResizedCropRGBImageDecoder`` and ``RandomHorizontalFlip``;
  FFCV stores images re-encoded (JPEG, quality 90, at their own size) and decodes them with its
  own decoder in threads, so its per-image work is not the others';
- seqstore: ``seqstore.Loader`` with the built-in ``imagenet_train`` pipeline (lmdb and hdf5;
  its crop-window decoder decodes only the crop of each JPEG), and with a callable of the
  user's own doing the peers' work (lmdb).

The peers and the user callable do the same per-image work, with the same code:
``seqstore.imaging.decode.decode`` (OpenCV, as the Loader decodes for a user callable), then
:class:`CropFlip`, torchvision's RandomResizedCrop(224) + horizontal flip with cv2 (draws
from Python's ``random``, which each library's workers seed). The torchvision-style row
(PIL, float normalisation in the workers, from seqstore's bench) is there for reference.

Each pipeline runs in a fresh process (``seqstore.bench``): a warm-up epoch, then whole epochs
for at least ``--min-seconds``; the figure is the median of ``--repeat`` interleaved rounds.

The peers are optional (``pip install -e '.[peers]'``; FFCV needs system libraries, see the
README): a peer that is not installed is noted and left out.

mosaicml-streaming and torchvision: ``import streaming`` imports ``streaming.vision``, whose
datasets subclass torchvision's ``VisionDataset``. torchvision has no build for the CPU-only
torch seqstore pins; PyPI's wheel, which pip installs with mosaicml-streaming, is linked
against CUDA torch (``libc10_cuda.so``) and fails on import ("operator torchvision::nms does
not exist"). This benchmark uses only ``streaming.base`` (``MDSWriter``, ``StreamingDataset``,
``StreamingDataLoader``), which never touches torchvision: :func:`import_streaming` puts an
empty module in the place of ``streaming.vision`` before ``streaming`` is first imported, in
this script's processes only. torchvision is never imported, installed or not.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import seqstore
from seqstore.bench import measure, measure_epochs
from seqstore.bench.pipelines import seqstore_epoch
from seqstore.bench.report import cpu_name
from seqstore.config import BenchConfig
from seqstore.convert import convert
from seqstore.imaging.decode import decode
from seqstore.testing.peers import litdata_optimize, mds_writer
from seqstore.transforms import RandomResizedCrop

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"
SHARDS = 16

# name -> (module to find, distribution whose version is reported)
PEERS = {
    "MosaicML Streaming (MDS)": ("streaming", "mosaicml-streaming"),
    "WebDataset": ("webdataset", "webdataset"),
    "litdata": ("litdata", "litdata"),
    "HF datasets (Parquet)": ("datasets", "datasets"),
    "tfrecord (TFRecord)": ("tfrecord", "tfrecord"),
    "FFCV (own decoder, threads)": ("ffcv", "ffcv"),
}
#: The peers whose files seqstore also reads in place, and the format each row names.
IN_PLACE = {
    "MosaicML Streaming (MDS)": "MDS",
    "WebDataset": "WebDataset",
    "litdata": "litdata",
    "HF datasets (Parquet)": "Parquet",
    "tfrecord (TFRecord)": "TFRecord",
}
BUILTIN = "seqstore lmdb, built-in pipeline"
USER = "seqstore lmdb, user callable (cv2)"
TORCHVISION = "torchvision-style (PIL, float)"
# The peers doing the same per-image work as the user callable, for the targets
SAME_WORK_PEERS = ("MosaicML Streaming (MDS)", "WebDataset", "litdata")


def in_place_row(peer: str) -> str:
    """The row of seqstore reading ``peer``'s own files in place."""
    return f"seqstore in place: {IN_PLACE[peer]}"


class CropFlip:
    """torchvision's RandomResizedCrop(size) + horizontal flip on an RGB uint8 array, with cv2:
    the per-image work of a user's own transform. Draws come from Python's ``random``.

    Parameters
    ----------
    size : int
        Side of the square output.
    """

    def __init__(self, size: int = 224) -> None:
        self.crop = RandomResizedCrop(size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(random.getrandbits(64))
        out = self.crop(image, rng)
        return cv2.flip(out, 1) if rng.random() < 0.5 else out


def decode_crop_flip(data: bytes | memoryview, crop_flip: CropFlip) -> np.ndarray:
    """A peer's per-image work on an encoded image: the Loader's decode for a user callable,
    then ``crop_flip``."""
    return crop_flip(decode(data))


def import_streaming() -> types.ModuleType:
    """``streaming`` (mosaicml-streaming) without torchvision; see the module docstring."""
    if "streaming" not in sys.modules:
        vision = types.ModuleType(
            "streaming.vision",
            "Stands in for mosaicml-streaming's vision datasets (they need torchvision), "
            "which benchmarks/peers.py does not use.",
        )
        sys.modules.setdefault("streaming.vision", vision)
    import streaming

    return streaming


# ---- writing each format from the same records ------------------------------------------


def write_mds(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    columns = {"image": "bytes", "label": "int"}
    with mds_writer()(out=str(dst), columns=columns, size_limit=shard_bytes) as writer:
        for data, label in records:
            writer.write({"image": data, "label": label})


def write_webdataset(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    import webdataset as wds

    dst.mkdir()
    pattern = str(dst / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=shard_bytes, verbose=0) as sink:
        for i, (data, label) in enumerate(records):
            sink.write({"__key__": f"{i:08d}", "jpg": data, "cls": label})


def _litdata_sample(record: tuple[bytes, int]) -> dict[str, Any]:
    return {"image": record[0], "label": record[1]}


def write_litdata(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    # One process keeps the records in their order; no progress output.
    litdata_optimize()(
        fn=_litdata_sample,
        inputs=records,
        output_dir=str(dst),
        chunk_bytes=shard_bytes,
        num_workers=1,
        verbose=False,
    )


def write_parquet(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    """As ``datasets`` writes a split to the Hub: ``data/train-NNNNN-of-MMMMM.parquet`` with
    ``Image`` and ``ClassLabel`` features."""
    import datasets

    names = [str(c) for c in range(max(label for _, label in records) + 1)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": None} for data, _ in records],
            "label": [label for _, label in records],
        },
        features=features,
    )
    (dst / "data").mkdir(parents=True)
    for i in range(SHARDS):
        part = ds.shard(SHARDS, i, contiguous=True)
        part.to_parquet(str(dst / "data" / f"train-{i:05d}-of-{SHARDS:05d}.parquet"))


def write_tfrecord(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    """One file of tf.train.Example records in TF's ImageNet layout, with the index that
    the tfrecord package's PyTorch dataset needs to split it among workers."""
    import tfrecord
    from tfrecord.tools.tfrecord2idx import create_index

    dst.mkdir()
    writer = tfrecord.TFRecordWriter(str(dst / "train-00000-of-00001"))
    for data, label in records:
        writer.write({"image/encoded": (data, "byte"), "image/class/label": (label, "int")})
    writer.close()
    create_index(str(dst / "train-00000-of-00001"), str(dst / "train.idx"))


class _Decoded:
    """The records as (RGB array, label), which is what FFCV's writer takes."""

    def __init__(self, records: list[tuple[bytes, int]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        data, label = self.records[i]
        return decode(data), label


def write_ffcv(records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    dst.mkdir()
    fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=90), "label": IntField()}
    writer = DatasetWriter(str(dst / "data.beton"), fields, num_workers=2)
    writer.from_indexed_dataset(_Decoded(records))


WRITERS: dict[str, Callable[[list[tuple[bytes, int]], Path, int], None]] = {
    "MosaicML Streaming (MDS)": write_mds,
    "WebDataset": write_webdataset,
    "litdata": write_litdata,
    "HF datasets (Parquet)": write_parquet,
    "tfrecord (TFRecord)": write_tfrecord,
    "FFCV (own decoder, threads)": write_ffcv,
}


# ---- reading: each library's PyTorch path, built in the measuring process ----------------

Epoch = Callable[[], Iterator[Any]]
Measurement = Callable[[], tuple[float, float, float]]


def mds_epoch(path: Path, cfg: BenchConfig) -> Epoch:
    streaming = import_streaming()
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # left behind by a run that was killed
    crop_flip = CropFlip(cfg.image_size)

    class Images(streaming.StreamingDataset):
        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            sample = super().__getitem__(i)
            return decode_crop_flip(sample["image"], crop_flip), sample["label"]

    dataset = Images(local=str(path), shuffle=True, shuffle_seed=0, batch_size=cfg.batch_size)
    loader = streaming.StreamingDataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=True
    )
    return lambda: iter(loader)


def webdataset_epoch(path: Path, cfg: BenchConfig, buffer: int) -> Epoch:
    import webdataset as wds

    crop_flip = CropFlip(cfg.image_size)
    shards = sorted(str(p) for p in path.glob("*.tar"))
    dataset = (
        wds.WebDataset(shards, shardshuffle=len(shards), seed=0)
        .shuffle(buffer)
        .to_tuple("jpg", "cls")
        .map_tuple(lambda data: decode_crop_flip(data, crop_flip), int)
        .batched(cfg.batch_size)
    )
    loader = wds.WebLoader(
        dataset, batch_size=None, num_workers=cfg.workers, persistent_workers=True
    )
    return lambda: iter(loader)


def litdata_epoch(path: Path, cfg: BenchConfig) -> Epoch:
    import litdata

    crop_flip = CropFlip(cfg.image_size)

    def work(sample: dict[str, Any]) -> tuple[np.ndarray, int]:
        return decode_crop_flip(sample["image"], crop_flip), sample["label"]

    dataset = litdata.StreamingDataset(str(path), shuffle=True, seed=0, transform=work)
    loader = litdata.StreamingDataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=True
    )
    return lambda: iter(loader)


class _HFWork:
    """``datasets``' on-the-fly transform (``set_transform``): a batch of rows in, the same
    per-image work as every other pipeline."""

    def __init__(self, size: int) -> None:
        self.crop_flip = CropFlip(size)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        images = [decode_crop_flip(x["bytes"], self.crop_flip) for x in batch["image"]]
        return {"image": images, "label": batch["label"]}


def hf_parquet_epoch(path: Path, cfg: BenchConfig) -> Epoch:
    """HF datasets' PyTorch path: ``load_dataset("parquet")`` (made into Arrow once, in its
    cache beside the files), the images left encoded (``Image(decode=False)``) and read by a
    ``set_transform``, in a shuffling torch DataLoader."""
    import datasets
    import torch

    files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
    ds = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(path.parent / "hf-cache")
    )
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds.set_transform(_HFWork(cfg.image_size))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        persistent_workers=True,
        collate_fn=_stack,
    )
    return lambda: iter(loader)


def _stack(rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[int]]:
    return np.stack([r["image"] for r in rows]), [r["label"] for r in rows]


class _TFWork:
    def __init__(self, size: int) -> None:
        self.crop_flip = CropFlip(size)

    def __call__(self, features: dict[str, Any]) -> tuple[np.ndarray, int]:
        data = features["image/encoded"]
        return decode_crop_flip(data, self.crop_flip), int(features["image/class/label"][0])


def tfrecord_epoch(path: Path, cfg: BenchConfig, buffer: int) -> Epoch:
    """The tfrecord package's PyTorch dataset: its index splits the file among the workers,
    a shuffle queue of the size WebDataset's buffer has.

    Its ``__iter__`` seeds NumPy with the worker's seed, which persistent workers keep: every
    epoch would come in the same order. The epoch's number is added to that seed here.
    """
    import torch
    from tfrecord.torch.dataset import TFRecordDataset

    class EachEpoch(TFRecordDataset):  # type: ignore[misc]
        epoch = 0

        def __iter__(self) -> Iterator[Any]:
            it = super().__iter__()  # seeds NumPy; its shuffle draws once iterated
            self.epoch += 1
            info = torch.utils.data.get_worker_info()
            seed = info.seed if info is not None else 0
            np.random.seed((seed + self.epoch) % (1 << 32))
            return it

    dataset = EachEpoch(
        str(path / "train-00000-of-00001"),
        str(path / "train.idx"),
        description={"image/encoded": "byte", "image/class/label": "int"},
        shuffle_queue_size=buffer,
        transform=_TFWork(cfg.image_size),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=True
    )
    return lambda: iter(loader)


def ffcv_epoch(path: Path, cfg: BenchConfig) -> Epoch:
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor

    size = (cfg.image_size, cfg.image_size)
    loader = Loader(
        str(path / "data.beton"),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        order=OrderOption.RANDOM,
        os_cache=True,
        drop_last=False,  # as every other pipeline here: the last, short batch too
        seed=0,
        pipelines={
            "image": [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip(), ToTensor()],
            "label": [IntDecoder(), ToTensor()],
        },
    )
    return lambda: iter(loader)


def user_callable_epoch(path: Path, cfg: BenchConfig) -> Epoch:
    return seqstore_epoch(path, cfg, transform=CropFlip(cfg.image_size))


# ---- the run ------------------------------------------------------------------------------


def write_once(name: str, records: list[tuple[bytes, int]], dst: Path, shard_bytes: int) -> Path:
    """``dst`` in peer ``name``'s format, written unless an earlier run finished it: each is
    written beside ``dst`` and renamed once complete."""
    if dst.exists():
        return dst
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"writing {dst} ...", flush=True)
    WRITERS[name](records, partial, shard_bytes)
    partial.rename(dst)
    return dst


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def load_peer(name: str) -> types.ModuleType:
    """Import peer ``name``'s loader (MDS's without torchvision)."""
    module = PEERS[name][0]
    if module == "streaming":
        streaming = import_streaming()
        streaming.StreamingDataset  # noqa: B018 - the loader, not only the writer
        return streaming
    return importlib.import_module(module)


@functools.cache
def usable(name: str) -> tuple[str | None, str]:
    """Peer ``name``'s version where its loader imports, in a fresh process as the
    benchmark's own; else None and why not (not installed; or installed without the
    dependencies its loader needs, as the tests install mosaicml-streaming and litdata for
    their writers only)."""
    found = installed(PEERS[name][1])
    if found is None:
        return None, "is not installed"
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import peers; peers.load_peer({name!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines()
        return None, f"does not import ({lines[-1] if lines else p.returncode})"
    return found, ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", nargs="?", default=str(DEFAULT_SRC))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--workdir", help="keep the converted stores here, for the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqstore-peers-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = Path(args.src)
        if not src.exists():
            from seqstore.testing import make_image_folder

            src = work / "images"
            if not src.exists():
                make_image_folder(src, classes=20, per_class=50, max_side=500)
        run(src, work, args.repeat, args.min_seconds)


def run(src: Path, work: Path, repeat: int, min_seconds: float) -> None:
    """Convert ``src`` into every format in ``work`` (or reuse what is there), measure every
    pipeline ``repeat`` times, interleaved, and print the table."""
    lmdb = work / "store.lmdb"
    if not lmdb.exists():
        convert(src, lmdb, format="lmdb", progress=False)
    hdf5 = work / "store.h5"
    if not hdf5.exists():
        convert(lmdb, hdf5, format="hdf5", progress=False)
    reader = seqstore.open(lmdb)
    records = [(bytes(r.data), r.label) for r in reader.read_block(0, len(reader))]
    total = reader.manifest.total_bytes
    reader.close()
    cfg = BenchConfig(
        src=src,
        workers=2,
        batch_size=64,
        transform="imagenet_train",
        out=work,
        min_seconds=min_seconds,
    )
    # WebDataset's shuffle buffer holds as many records per worker as seqstore's does.
    buffer = max(1, int(cfg.shuffle_buffer_mb * 1e6 * len(records) / total) // cfg.workers)
    # No record larger than a shard: MDS would write empty shards, litdata warn for each.
    shard_bytes = max(total // SHARDS, 2 * max(len(data) for data, _ in records))

    def own(make_epoch: Callable[..., Epoch], *fn_args: Any) -> Measurement:
        return partial(
            measure_epochs, make_epoch, fn_args, min_seconds=min_seconds, what=make_epoch.__name__
        )

    plans: dict[str, Measurement] = {
        BUILTIN: partial(measure, "seqstore", lmdb, cfg),
        "seqstore hdf5, built-in pipeline": partial(measure, "seqstore", hdf5, cfg),
        USER: own(user_callable_epoch, lmdb, cfg),
    }
    versions = {"seqstore": seqstore.__version__}
    for dist in ("torch", "numpy", "opencv-python-headless"):
        versions[dist] = installed(dist) or "-"
    notes: list[str] = []
    for name, (module, dist) in PEERS.items():
        found, why = usable(name)
        if found is None:
            notes.append(f"{name} {why}: left out")
            if name in IN_PLACE and installed(dist) is not None:
                # MDS's and litdata's writers need less than their loaders: seqstore can
                # still read their files in place.
                try:
                    dst = write_once(name, records, work / module, shard_bytes)
                except Exception as exc:  # the writer does not import either
                    notes.append(f"{name}'s writer fails too ({type(exc).__name__}: {exc})")
                    continue
                plans[in_place_row(name)] = own(user_callable_epoch, dst, cfg)
            continue
        versions[dist] = found
        dst = write_once(name, records, work / module, shard_bytes)
        if module == "streaming":
            plans[name] = own(mds_epoch, dst, cfg)
        elif module == "webdataset":
            plans[name] = own(webdataset_epoch, dst, cfg, buffer)
        elif module == "litdata":
            plans[name] = own(litdata_epoch, dst, cfg)
        elif module == "datasets":
            plans[name] = own(hf_parquet_epoch, dst, cfg)
        elif module == "tfrecord":
            plans[name] = own(tfrecord_epoch, dst, cfg, buffer)
        else:
            plans[name] = own(ffcv_epoch, dst, cfg)
        if name in IN_PLACE:
            plans[in_place_row(name)] = own(user_callable_epoch, dst, cfg)
    if seqstore.open(src).source_files is not None:  # an image folder
        if importlib.util.find_spec("PIL") is not None:
            versions["pillow"] = installed("pillow") or "-"
            plans[TORCHVISION] = partial(measure, "torchvision", src, cfg)
        else:
            notes.append(f"{TORCHVISION}: Pillow is not installed, left out")

    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in plans}
    for round_ in range(repeat):  # interleaved: every pipeline once per round
        for name, measurement in plans.items():
            runs[name].append(measurement())
        print(f"round {round_ + 1}/{repeat} done", flush=True)

    rates = {name: statistics.median(r[0] for r in rounds) for name, rounds in runs.items()}
    print(
        f"\n{len(records)} images, {total / 1e6:.1f} MB, from {src}; "
        f"RandomResizedCrop({cfg.image_size}) + flip to uint8, {cfg.workers} workers, "
        f"batch {cfg.batch_size}, shuffled; medians of {repeat} rounds"
    )
    print(
        f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores; "
        f"Python {platform.python_version()}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    print(f"| {'pipeline':<36} | img/s | vs seqstore | 1st batch s | img/s of each round |")
    print("|---|---|---|---|---|")
    for name, rate in rates.items():
        first = statistics.median(r[1] for r in runs[name])
        each = ", ".join(f"{r[0]:.0f}" for r in runs[name])
        print(
            f"| {name:<36} | {rate:>5.0f} | {rate / rates[BUILTIN]:>11.2f} | {first:>11.2f} "
            f"| {each:<19} |"
        )
    same_work = {name: rates[name] for name in rates if name in SAME_WORK_PEERS}
    if same_work:
        fastest = max(same_work, key=same_work.__getitem__)
        print(
            f"\nfastest of MDS, WebDataset and litdata: {fastest}, {same_work[fastest]:.0f} img/s"
        )
        for name, target in ((BUILTIN, 1.3), (USER, 1.0)):
            ratio = rates[name] / same_work[fastest]
            # The machine's load can drift from round to round; within a round the rows run
            # one after the other, so each round's own ratio meets less of that drift.
            per_round = statistics.median(
                runs[name][i][0] / max(runs[peer][i][0] for peer in same_work)
                for i in range(repeat)
            )
            print(
                f"{name} / fastest peer: {ratio:.2f}x (target >= {target}x); "
                f"median of each round's ratio to its fastest peer: {per_round:.2f}x"
            )
    for peer in IN_PLACE:
        row = in_place_row(peer)
        if row not in rates:
            continue
        lmdb_ratio = rates[row] / rates[USER]
        against = (
            f"{rates[row] / rates[peer]:.2f}x {peer}'s own loader (target >= 1.1x)"
            if peer in rates
            else f"{peer}'s own loader not measured"
        )
        print(
            f"{row} (user callable): {lmdb_ratio:.2f}x seqstore's own lmdb (target >= 0.9x), "
            f"{against}"
        )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
