"""Where stores are written before they appear, and how interrupted writes are finished.

The fault suite kills real writers at random instants; these tests put the directory in
each state a kill can leave and check what the next open or convert makes of it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import seqstore
from seqstore.backends import get_backend
from seqstore.convert import convert
from seqstore.errors import PartialStoreError, SeqstoreWarning
from seqstore.manifest import Provenance
from seqstore.testing import make_image_folder, make_records

CLASSES = ["class00", "class01", "class02", "class03"]


def _store(path: Path, n: int, seed: int = 0) -> str:
    with get_backend("lmdb").open_writer(path, classes=CLASSES) as writer:
        for record in make_records(n, classes=4, seed=seed):
            writer.write(record)
    return seqstore.open(path).manifest.store_id or ""


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(p.stdout)


def _as_killed(path: Path, kind: str, pid: int) -> Path:
    """Rename the store at ``path`` to the sibling a writer of pid ``pid`` would use."""
    target = path.parent / f".{path.name}.seqstore-{kind}-{pid}-0badc0de"
    path.rename(target)
    return target


def test_kill_between_the_two_renames_finishes_the_replace(tmp_path: Path) -> None:
    pid = _dead_pid()
    dst = tmp_path / "dst"
    _store(dst, 5)
    _as_killed(dst, "old", pid)
    new_id = _store(tmp_path / "new", 9, seed=1)
    _as_killed(tmp_path / "new", "new", pid).rename(tmp_path / f".dst.seqstore-new-{pid}-0badc0de")
    with pytest.warns(SeqstoreWarning, match="finished replacing"):
        reader = seqstore.open(dst)
    assert (len(reader), reader.manifest.store_id) == (9, new_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_kill_with_the_old_store_aside_and_no_new_one_puts_it_back(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    old_id = _store(dst, 5)
    _as_killed(dst, "old", _dead_pid())
    with pytest.warns(SeqstoreWarning, match="put back"):
        reader = seqstore.open(dst)
    assert reader.manifest.store_id == old_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_old_store_left_after_a_finished_swap_is_removed(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    new_id = _store(dst, 7)
    _store(tmp_path / "old", 5)
    _as_killed(tmp_path / "old", "old", _dead_pid()).rename(
        tmp_path / f".dst.seqstore-old-{_dead_pid()}-0badc0de"
    )
    with pytest.warns(SeqstoreWarning, match="removed"):
        assert seqstore.open(dst).manifest.store_id == new_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_a_killed_writers_output_is_announced_then_removed_by_the_next_convert(
    tmp_path: Path,
) -> None:
    src = make_image_folder(tmp_path / "src", classes=2, per_class=4)
    dst = tmp_path / "dst"
    convert(src, dst, format="lmdb", progress=False)
    leftover = tmp_path / f".dst.seqstore-new-{_dead_pid()}-0badc0de"
    leftover.mkdir()
    (leftover / "seqstore.partial.json").write_text("{}")
    with pytest.warns(SeqstoreWarning, match="killed and left its unfinished output"):
        seqstore.open(dst)
    with pytest.warns(SeqstoreWarning, match="unfinished output of a convert"):
        convert(src, dst, format="lmdb", overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_open_names_a_killed_write_and_resume(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    leftover = tmp_path / f".dst.seqstore-new-{_dead_pid()}-0badc0de"
    leftover.mkdir()
    with pytest.raises(PartialStoreError, match="--resume"):
        seqstore.open(dst)


def test_resume_never_adopts_the_output_of_another_conversion(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src", classes=2, per_class=6)
    dst = tmp_path / "dst"
    # A writer of another source that checkpointed, then died.
    other = Provenance(seqstore_version="0", source=str(tmp_path / "other"))
    writer = get_backend("lmdb").open_writer(dst, classes=["class00", "class01"], provenance=other)
    for record in make_records(3, classes=2, seed=5):
        writer.write(record)
    writer.checkpoint({"consumed": 3})
    writer._abort()  # noqa: SLF001 - what a kill leaves: files open, nothing cleaned
    writer.directory.rename(tmp_path / f".dst.seqstore-new-{_dead_pid()}-0badc0de")
    with pytest.warns(SeqstoreWarning, match="unfinished output"):
        convert(src, dst, format="lmdb", progress=False, resume=True)
    reader = seqstore.open(dst)
    assert len(reader) == 12
    assert {r.key for r in reader.read_block(0, 12)} == set(seqstore.open(src).keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_a_reused_pid_does_not_keep_a_dead_writers_staging_alive(tmp_path: Path) -> None:
    """A writer is its pid and its process's start time: a later process with the same pid
    (pids come round within seconds where pid_max is 32768) is not that writer, so its
    staging directory is resumable, not taken for a live write."""
    import json
    import subprocess

    import psutil

    from seqstore.backends import staging
    from seqstore.manifest import PARTIAL_NAME

    dst = tmp_path / "store"
    other = subprocess.Popen(["sleep", "30"])
    try:
        began = psutil.Process(other.pid).create_time()
        cases = {"reused": began - 100.0, "alive": began, "unknown": None, "adopted": -1.0}
        dirs = {}
        for name, pid_started in cases.items():
            d = tmp_path / f".store.seqstore-new-{other.pid}-{name}"
            d.mkdir()
            # "adopted": renamed by a resuming writer, the killed one's marker still inside
            owner = other.pid + 1 if name == "adopted" else other.pid
            marker = {"pid": owner} | ({} if pid_started is None else {"pid_started": pid_started})
            (d / PARTIAL_NAME).write_text(json.dumps(marker))
            dirs[name] = d
        assert staging.dead_staging(dst) == [dirs["reused"]]
        alive = [dirs["alive"], dirs["unknown"], dirs["adopted"]]
        assert sorted(staging.live_staging(dst)) == sorted(alive)
    finally:
        other.kill()
        other.wait()
    assert sorted(staging.dead_staging(dst)) == sorted(dirs.values())
