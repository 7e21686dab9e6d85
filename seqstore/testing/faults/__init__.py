"""Fault cases: a store or a conversion meets a kill, a full disk, damage on disk or a race.

Each case builds what it needs under a work directory, does the damage for real (``kill -9``,
a small tmpfs, bytes changed in the data file, two writers at once) in fresh processes, and
classifies what a user got as one of :data:`OUTCOMES`:

handled
    What the README promises: the store read back whole, the damage reported by
    ``info --verify``, the rollback finished.
clear error
    Exit status 2 with one ``seqstore: error:`` line and no traceback.
crash
    A process killed by a signal (SIGSEGV, SIGBUS), or an uncaught exception's traceback.
hang
    Nothing within the time limit.
silent wrong
    Success, with records, labels or counts that are not the ones written.
data lost
    A store that existed before is no longer readable.
leaked
    Hidden files left behind that nothing announces or cleans up.

The tests (``tests/test_faults.py``) run every case and accept only its expected outcomes;
``benchmarks/faults.py`` runs each many times and prints the table in the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .loading import (
    dataset_root,
    folder_bad_files,
    loader_bad_record,
    loader_worker_killed,
    small_dev_shm,
)
from .store import (
    concurrent_readers,
    damaged,
    delete_manifest,
    disk_full,
    edit_manifest,
    flip_index,
    flip_label,
    flip_record_byte,
    kill_convert_then_resume,
    kill_overwrite,
    odd_images,
    old_pickle_tensorpack,
    racing_writers,
    scribble_page,
    stale_handle,
    truncate,
)

__all__ = ["CASES", "OUTCOMES", "FaultCase", "run_case"]

OUTCOMES = ("handled", "clear error", "crash", "hang", "silent wrong", "data lost", "leaked")


@dataclass(frozen=True)
class FaultCase:
    """One way things go wrong, and what seqstore must do about it.

    Attributes
    ----------
    name : str
        The row of the fault table.
    run : callable
        ``run(workdir, rng) -> outcome``; ``workdir`` is empty and private to this try.
    expected : frozenset of str
        The outcomes that are correct for this case.
    needs_root : bool
        The case mounts a file system; it is skipped where that is not allowed.
    """

    name: str
    run: Callable[[Path, np.random.Generator], str]
    expected: frozenset[str]
    needs_root: bool = False


_Run = Callable[[Path, np.random.Generator], str]


def _case(name: str, run: _Run, *ok: str, root: bool = False) -> FaultCase:
    return FaultCase(name, run, frozenset(ok), root)


CASES: list[FaultCase] = [
    *(
        _case(
            f"kill -9 during convert, then --resume ({fmt})",
            kill_convert_then_resume(fmt),
            "handled",
        )
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(
            f"kill -9 during sharded convert -w 2, then --resume ({fmt})",
            kill_convert_then_resume(fmt, sharded=True),
            "handled",
        )
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"kill -9 during convert --overwrite ({fmt})", kill_overwrite(fmt), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"disk full, {mb} MB tmpfs ({fmt})", disk_full(fmt, mb), "clear error", root=True)
        for fmt in ("lmdb", "hdf5")
        for mb in (1, 18)
    ),
    *(
        _case(f"truncated data file ({fmt})", damaged(fmt, truncate, True), "clear error")
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"flipped bit in a record ({fmt})", damaged(fmt, flip_record_byte, True), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    _case("label changed on disk (lmdb)", damaged("lmdb", flip_label, True), "handled"),
    _case("label changed on disk (hdf5)", damaged("hdf5", flip_label, True), "clear error"),
    _case("flipped bit in the index (lmdb)", damaged("lmdb", flip_index, True), "clear error"),
    _case("manifest num_records edited", damaged("lmdb", edit_manifest, False), "clear error"),
    _case("manifest deleted", damaged("hdf5", delete_manifest, False), "clear error"),
    *(
        _case(
            f"random page overwritten ({fmt})",
            damaged(fmt, scribble_page, True),
            "handled",
            "clear error",
        )
        for fmt in ("lmdb", "hdf5")
    ),
    _case("store replaced under a dropped reader", stale_handle, "handled"),
    _case("Loader over a flipped byte, on_error=raise", loader_bad_record("raise"), "clear error"),
    _case("Loader over a flipped byte, on_error=skip", loader_bad_record("skip"), "handled"),
    _case("Loader worker killed mid-epoch, then resumed", loader_worker_killed, "clear error"),
    _case(
        "folder in place, truncated and damaged JPEGs, on_error=raise",
        folder_bad_files("raise"),
        "clear error",
    ),
    _case(
        "folder in place, truncated and damaged JPEGs, on_error=skip",
        folder_bad_files("skip"),
        "handled",
    ),
    _case("dataset root converted without a split", dataset_root, "clear error"),
    *(
        _case(
            f"Loader in a 64 MB /dev/shm, batch 256, 2 workers, {dtype}",
            small_dev_shm(dtype),
            "handled",
            root=True,
        )
        for dtype in ("float32", "uint8")
    ),
    *(
        _case(f"two writers race for one DST ({fmt})", racing_writers(fmt), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    _case("16 concurrent readers", concurrent_readers, "handled"),
    _case("odd images, convert --on-error fail", odd_images("fail"), "clear error"),
    _case("odd images, convert --on-error skip", odd_images("skip"), "handled"),
    _case("tensorpack file with protocol-0 pickles", old_pickle_tensorpack, "clear error"),
]


def run_case(case: FaultCase, workdir: Path, seed: int) -> str:
    """Run ``case`` once in the empty directory ``workdir``; return its outcome.

    Raises
    ------
    PermissionError
        The case needs root (to mount a tmpfs) and this process cannot.
    """
    if case.needs_root and os.geteuid() != 0:
        raise PermissionError("needs root to mount a small tmpfs")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return case.run(workdir, np.random.default_rng(seed))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
