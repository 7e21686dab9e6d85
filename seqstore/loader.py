"""Loader: the object a training loop holds.

It is a ``torch.utils.data.DataLoader`` over an IterableDataset whose workers each read their
share of the epoch (see :mod:`seqstore.engine.order`) block by block, shuffle, decode and
augment, and return uint8 batches. Conversion to float and normalisation happen after the
batch reaches its device, in one step: uint8 is a quarter of the bytes over worker IPC and
over PCIe.

When every sample has the same shape (the named transforms), workers write batches into a
ring of shared-memory buffers made once per loader, and send only which buffer they used:
creating a fresh shared-memory segment per batch and faulting its pages in cost more than
the copy itself (about 7 ms per 64 images of 224x224, 8% of a worker's time on 2 cores). The
main process copies (or converts, or moves to the GPU) each batch out of the ring before the
training loop sees it, and hands the buffer back, so a batch a user keeps is never
overwritten.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import transforms
from .backends import Reader, open_store
from .config import LoaderConfig, load_config
from .engine.order import num_batches, worker_plan
from .engine.stream import RawBatch, iter_batches
from .errors import ConfigError, NotAStoreError, ResumeError
from .records import Record

__all__ = ["Loader", "resolve_split"]

_STATE_VERSION = 1
# What must match between a saved loader state and the loader it is loaded into.
_TOPOLOGY = (
    "num_records",
    "world_size",
    "rank",
    "workers",
    "batch_size",
    "drop_last",
    "shuffle",
    "seed",
    "block",
    "shuffle_capacity",
)


def resolve_split(root: Path, split: str) -> tuple[Path, dict[str, Any]]:
    """Find the store or folder of ``split`` under a dataset root, and its reader options.

    See :class:`~seqstore.config.LoaderConfig` (``split``) for the layouts tried.
    """
    # Converted stores first: a root often keeps the image folder beside its store.
    for candidate in (
        root / f"{split}.lmdb",
        root / f"{split}.h5",
        root / f"{split}.hdf5",
        root / f"ILSVRC-{split}.lmdb",
        root / split,
    ):
        if not candidate.exists():
            continue
        labels = candidate / "val_annotations.txt"
        if candidate.is_dir() and (candidate / "images").is_dir() and labels.is_file():
            options: dict[str, Any] = {"labels": labels}
            if (root / "train").is_dir():
                options["classes"] = root / "train"
            return candidate / "images", options
        return candidate, {}
    raise NotAStoreError(
        f"no '{split}' split under '{root}' (looked for {split}.lmdb, {split}.h5, "
        f"{split}.hdf5, ILSVRC-{split}.lmdb, {split}/)"
    )


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            "are not integers; fix the environment or pass rank= and world_size="
        ) from None


class _Transform:
    """Record + generator -> sample, for every kind of transform a config can name."""

    def __init__(self, cfg: LoaderConfig) -> None:
        spec = cfg.transform
        if spec is None:
            spec = "imagenet_train" if cfg.shuffle and cfg.split != "val" else "imagenet_val"
        named = {
            "imagenet_train": lambda: transforms.imagenet_train(cfg.image_size),
            "imagenet_val": lambda: transforms.imagenet_val(cfg.image_size, cfg.resize_size),
            "decode": transforms.decode_only,
        }
        self.pipeline: transforms.Pipeline | None = None
        self.user: Callable[[Any], Any] | None = None
        if isinstance(spec, str) and spec in named:
            self.pipeline = named[spec]()
        elif isinstance(spec, transforms.Pipeline):
            self.pipeline = spec
        elif spec != "none":
            self.user = spec
        self.image_format = cfg.image_format

    def __call__(self, record: Record, rng: np.random.Generator) -> Any:
        if self.pipeline is not None:
            return self.pipeline(record.data, rng, name=record.key)
        if self.user is None:  # transform="none": the encoded bytes
            return record.data
        from .decode import decode, decode_pil

        # User transforms draw from torch's and Python's generators (torchvision does):
        # seed both from the record's generator so augmentation is reproducible.
        seed = int(rng.integers(2**63))
        torch.manual_seed(seed)
        random.seed(seed)
        if self.image_format == "pil":
            return self.user(decode_pil(record.data, name=record.key))
        return self.user(decode(record.data, name=record.key))


def _normalize(
    images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, layout: torch.memory_format
) -> torch.Tensor:
    """uint8 NCHW -> ``(images - mean) * inv_std`` in ``mean``'s dtype and ``layout``: one
    conversion (dtype and layout together, a new tensor), then two in-place passes, the
    fastest of the orders tried (a promoting ``mul`` or ``addcmul`` is 1.5x slower)."""
    return images.to(dtype=mean.dtype, memory_format=layout).sub_(mean).mul_(inv_std)


@dataclass(frozen=True)
class _Slot:
    """A batch a worker left in its ring: which worker, which buffer, how many samples."""

    worker: int
    slot: int
    size: int


class _Ring:
    """Shared-memory batch buffers, ``slots`` per worker, reused from batch to batch.

    A worker takes a free buffer (:meth:`acquire`), fills it and sends a :class:`_Slot`; the
    main process reads the batch out and frees the buffer (:meth:`release`). The DataLoader
    hands a worker its next task as soon as the main process takes a batch from it, so a
    worker has at most ``prefetch_factor`` batches in flight plus the one being read out:
    ``prefetch_factor + 1`` buffers keep it from ever waiting. That is about the shared
    memory that batches in flight take anyway, reserved once when the loader is made.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, shape: tuple[int, ...]):
        self.shape = shape
        size = (workers, slots, batch_size, *shape)
        try:
            # A new shared segment, as torch.multiprocessing makes them: no copy into it,
            # which share_memory_() of a fresh tensor would make (twice as slow).
            storage = torch.UntypedStorage._new_shared(math.prod(size))
            self.buffers = torch.empty(0, dtype=torch.uint8).set_(storage).view(size)
        except AttributeError:  # a torch without it
            self.buffers = torch.empty(size, dtype=torch.uint8).share_memory_()
        self.busy = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()

    def reset(self, worker: int) -> None:
        """Free all of ``worker``'s buffers: at the start of an epoch nothing else holds them
        (a batch is copied out before the training loop sees it)."""
        self.busy[worker] = 0

    def acquire(self, worker: int) -> int:
        """A free buffer of ``worker``, marked busy; waits for the main process if none is."""
        busy = self.busy[worker].numpy()
        while True:
            free = np.flatnonzero(busy == 0)
            if free.size:
                busy[free[0]] = 1
                return int(free[0])
            time.sleep(0.0005)

    def view(self, slot: _Slot) -> torch.Tensor:
        """The batch in ``slot``, NHWC, a view of the shared buffer."""
        return self.buffers[slot.worker, slot.slot, : slot.size]

    def release(self, slot: _Slot) -> None:
        """Hand ``slot``'s buffer back to its worker."""
        self.busy[slot.worker, slot.slot] = 0


def _collate(
    raw: RawBatch, ring: _Ring | None, worker: int | None
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A worker's batch: images (a :class:`_Slot`, a tensor, or a list) and numpy labels and
    indices, which pickle by value instead of each taking a shared-memory segment."""
    samples = raw.samples
    first = samples[0] if samples else None
    if not (
        isinstance(first, np.ndarray)
        and first.dtype == np.uint8
        and first.ndim == 3
        and all(s.shape == first.shape for s in samples)
    ):
        if isinstance(first, (bytes, str)) or first is None:
            return samples, raw.labels, raw.indices
        if isinstance(first, np.ndarray) and any(s.shape != first.shape for s in samples):
            # Images of their own sizes (transform="decode"): nothing to stack.
            return [torch.from_numpy(s) for s in samples], raw.labels, raw.indices
        return torch.utils.data.default_collate(samples), raw.labels, raw.indices
    if ring is not None and worker is not None and first.shape == ring.shape:
        slot = _Slot(worker, ring.acquire(worker), len(samples))
        np.stack(samples, out=ring.view(slot).numpy())
        return slot, raw.labels, raw.indices
    # NHWC in one buffer, in shared memory up front when in a worker so that the batch
    # crosses to the main process without another copy.
    out = torch.empty((len(samples), *first.shape), dtype=torch.uint8)
    if worker is not None:
        out.share_memory_()
    np.stack(samples, out=out.numpy())
    return out, raw.labels, raw.indices


class _EpochDataset(IterableDataset[tuple[Any, np.ndarray, np.ndarray]]):
    def __init__(
        self,
        reader: Reader[Any],
        transform: _Transform,
        params: dict[str, Any],
        ring: _Ring | None,
    ) -> None:
        self.reader = reader
        self.transform = transform
        self.params = params
        self.ring = ring
        # (epoch, batches to skip), in shared memory: workers persist across epochs and read
        # the values the main process sets before each epoch starts.
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        p = self.params
        epoch, skip_batches = (int(v) for v in self.state)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = p["workers"]
        # DataLoader collects batches from workers round-robin starting at worker 0; after
        # a resume at batch k the next batch belongs to worker k % workers, so the workers
        # are rotated to take up where their counterparts left off.
        owner = (worker + skip_batches) % workers
        plan = worker_plan(
            p["num_records"],
            block=p["block"],
            seed=p["seed"],
            epoch=epoch,
            shuffle=p["shuffle"],
            rank=p["rank"],
            world=p["world_size"],
            worker=owner,
            workers=workers,
            batch_size=p["batch_size"],
            drop_last=p["drop_last"],
        )
        done = sum(1 for b in plan.batches if b < skip_batches)
        batches = iter_batches(
            self.reader.read_block,
            plan,
            batch_size=p["batch_size"],
            block=p["block"],
            shuffle_capacity=p["shuffle_capacity"] if p["shuffle"] else 1,
            shuffle_seed=[p["seed"], epoch, p["rank"], owner],
            transform=self.transform,
            seed=p["seed"],
            epoch=epoch,
            skip_batches=done,
        )
        in_worker = worker if info is not None else None
        if self.ring is not None and in_worker is not None:
            self.ring.reset(in_worker)
        for raw in batches:
            yield _collate(raw, self.ring, in_worker)


class Loader:
    """Batches of a store for a training loop: sequential reads, local shuffle, any backend.

    Parameters
    ----------
    path
        A store, image folder, or dataset root (with ``split``).
    backend
        Backend name; default: from the store's manifest.
    config
        A :class:`~seqstore.config.LoaderConfig`, a dict, or a JSON/YAML file of one.
    **options
        Any :class:`~seqstore.config.LoaderConfig` field (they override ``config``).

    Examples
    --------
    >>> loader = Loader("train.lmdb", batch_size=256, num_workers=8, device="cuda")
    >>> for epoch in range(90):
    ...     loader.set_epoch(epoch)
    ...     for images, labels in loader:
    ...         ...

    Iterating yields ``(images, labels)``: images ``(N, 3, H, W)`` in ``dtype`` on
    ``device``, labels int64. ``len(loader)`` is the exact number of batches, the same on
    every rank. Iterating again after a whole epoch runs the next one; after breaking off,
    the same epoch starts over (:meth:`state_dict` continues it instead).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        backend: str | None = None,
        *,
        config: LoaderConfig | dict[str, Any] | str | Path | None = None,
        **options: Any,
    ) -> None:
        if path is not None:
            options["path"] = path
        if backend is not None:
            options["backend"] = backend
        self.config = cfg = load_config(LoaderConfig, config, **options)
        path_ = cfg.path
        reader_options = dict(cfg.reader_options)
        if cfg.split is not None:
            path_, found = resolve_split(cfg.path, cfg.split)
            reader_options = {**found, **reader_options}
        self.reader: Reader[Any] = open_store(path_, cfg.backend, **reader_options)
        rank, world = _default_rank_world()
        rank = cfg.rank if cfg.rank is not None else rank
        world = cfg.world_size if cfg.world_size is not None else world
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} must be in [0, world_size={world})")
        n = len(self.reader)
        if n == 0:
            raise ConfigError(f"store '{path_}' holds no records")
        mean_bytes = self.reader.manifest.mean_record_bytes
        workers = max(1, cfg.num_workers)
        capacity = cfg.shuffle_buffer or int(cfg.shuffle_buffer_mb * 1e6 / mean_bytes)
        self._params: dict[str, Any] = {
            "num_records": n,
            "world_size": world,
            "rank": rank,
            "workers": workers,
            "batch_size": cfg.batch_size,
            "drop_last": cfg.drop_last,
            "shuffle": cfg.shuffle,
            "seed": cfg.seed,
            "block": max(1, int(cfg.block_mb * 1e6 / mean_bytes)),
            # The buffer is shared out between the workers of a rank.
            "shuffle_capacity": max(1, capacity // workers),
        }
        transform = _Transform(cfg)
        pipeline = transform.pipeline
        # The built-in pipelines make HWC arrays; uint8 ones of one size go through the ring.
        self._hwc = pipeline is not None
        size = pipeline.output_size if pipeline is not None else None
        if pipeline is not None and any(
            isinstance(t, transforms.Normalize) for t in pipeline.transforms
        ):
            size = None
        self._ring = (
            _Ring(cfg.num_workers, cfg.prefetch_factor + 1, cfg.batch_size, (*size, 3))
            if cfg.num_workers > 0 and size is not None
            else None
        )
        self._dataset = _EpochDataset(self.reader, transform, self._params, self._ring)
        self.device = torch.device(cfg.device)
        pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        self._pin = pin and self.device.type == "cuda"
        self._loader = DataLoader(
            self._dataset,
            batch_size=None,
            num_workers=cfg.num_workers,
            # Batches in the ring are pinned as they are copied out of it (see _deliver).
            pin_memory=pin and self._ring is None,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
            # Workers start once, not every epoch; each epoch's plan comes from dataset.state.
            persistent_workers=cfg.num_workers > 0,
        )
        self._num_batches = num_batches(
            n, world=world, batch_size=cfg.batch_size, drop_last=cfg.drop_last
        )
        self._epoch = 0
        self._batches_done = 0
        self._resume_at = 0
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self._inv_std = 1 / (torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    # -- facts -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._num_batches

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs."""
        return self._epoch

    @property
    def classes(self) -> list[str]:
        """Class names of the store (labels index them)."""
        return self.reader.classes

    @property
    def num_records(self) -> int:
        """Records in the store (all ranks together)."""
        return int(self._params["num_records"])

    @property
    def rank(self) -> int:
        """This process's rank."""
        return int(self._params["rank"])

    @property
    def world_size(self) -> int:
        """Number of ranks sharing each epoch."""
        return int(self._params["world_size"])

    # -- epochs ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next: its order and augmentation follow from (seed, epoch)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._resume_at = self._batches_done = 0
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0
        self._dataset.state[0] = epoch
        self._dataset.state[1] = start
        self._batches_done = start
        for images, labels, indices in self._loader:
            labels, indices = torch.as_tensor(labels), torch.as_tensor(indices)
            if isinstance(images, _Slot):
                assert self._ring is not None
                slot = images
                try:
                    images, labels = self._deliver(self._ring.view(slot), labels, owned=False)
                finally:
                    self._ring.release(slot)
            else:
                images, labels = self._deliver(images, labels, owned=True)
            self._batches_done += 1
            if self._batches_done == self._num_batches:
                # Finished: the next iteration (and a state saved now) is the next epoch.
                self._epoch, self._batches_done = epoch + 1, 0
            if self.config.with_indices:
                yield images, labels, indices
            else:
                yield images, labels

    def _deliver(self, images: Any, labels: torch.Tensor, owned: bool) -> tuple[Any, torch.Tensor]:
        """A collated batch -> what the loop gets: NCHW on the device, in ``dtype``.

        ``images`` is NHWC from the built-in pipelines (uint8, or float after a
        :class:`~seqstore.transforms.Normalize`), or whatever a user callable's outputs
        collate to, which is only moved to the device. ``owned=False``: ``images`` is a
        view of a ring buffer that is reused once this returns, so the result must not
        share its memory.
        """
        cfg = self.config
        non_blocking = self.device.type == "cuda"
        labels = labels.to(self.device, non_blocking=non_blocking)
        if isinstance(images, list) and self._hwc:  # HWC images of their own sizes
            return [x.permute(2, 0, 1).to(self.device) for x in images], labels
        if not isinstance(images, torch.Tensor):
            return images, labels
        if not self._hwc or images.ndim != 4:
            return images.to(self.device, non_blocking=non_blocking), labels
        images = images.permute(0, 3, 1, 2)  # NCHW with channels-last strides
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if self.device.type != "cpu":
            if not owned and self._pin:
                # Through page-locked memory, so that the copy to the GPU can run async.
                images = torch.empty_like(images, pin_memory=True).copy_(images)
            images = images.to(self.device, non_blocking=non_blocking and self._pin)
            owned = True  # a copy on the device
        if images.dtype != torch.uint8:  # a pipeline that normalised in the workers
            return images.to(memory_format=layout), labels
        if cfg.dtype == "uint8":
            if not owned and layout == torch.channels_last:
                # NHWC is channels-last NCHW: one flat copy. numpy's, single-threaded, since
                # torch's would wake its thread pool, which then spins against the workers.
                nhwc = images.permute(0, 2, 3, 1).numpy()
                return torch.from_numpy(nhwc.copy()).permute(0, 3, 1, 2), labels
            out = images.contiguous(memory_format=layout)
            if not owned and out.data_ptr() == images.data_ptr():  # already in that layout
                out = out.clone(memory_format=layout)
            return out, labels
        dtype = getattr(torch, cfg.dtype)
        if not cfg.normalize:
            return images.to(dtype=dtype, memory_format=layout), labels
        mean = self._mean.to(self.device, dtype, non_blocking=non_blocking)
        inv_std = self._inv_std.to(self.device, dtype, non_blocking=non_blocking)
        return _normalize(images, mean, inv_std, layout), labels

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: enough to continue an interrupted epoch exactly."""
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            **{key: self._params[key] for key in _TOPOLOGY},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields the rest of its epoch.

        Raises
        ------
        ResumeError
            The state comes from a loader of another shape (world size, workers, batch size,
            store, seed ...): the remaining samples would not be the ones it left.
        """
        if state.get("version") != _STATE_VERSION:
            raise ResumeError(f"loader state version {state.get('version')!r} is not supported")
        diff = [
            f"{key} {state.get(key)!r} != {self._params[key]!r}"
            for key in _TOPOLOGY
            if state.get(key) != self._params[key]
        ]
        if diff:
            raise ResumeError(
                "cannot resume: the saved loader state differs from this loader in "
                + ", ".join(diff)
                + "; resume with the same settings, or start the epoch afresh with set_epoch()"
            )
        done = int(state["batches_done"])
        if not 0 <= done <= self._num_batches:
            raise ResumeError(f"saved batches_done={done} is outside 0..{self._num_batches}")
        self._epoch = int(state["epoch"])
        self._batches_done = self._resume_at = done
