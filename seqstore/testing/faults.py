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

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SeqstoreWarning
from .data import make_image_folder

__all__ = ["CASES", "OUTCOMES", "FaultCase", "run_case"]

OUTCOMES = ("handled", "clear error", "crash", "hang", "silent wrong", "data lost", "leaked")
_TIMEOUT = 120.0

# Runs seqstore's Python API in a fresh process the way a training script would: a
# SeqstoreError is the one line a user sees; anything else escapes as a traceback.
_SCRIPT_PRELUDE = """
import sys
from seqstore.errors import SeqstoreError
try:
{body}
except SeqstoreError as exc:
    print(f"seqstore: error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""


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


@dataclass
class _Proc:
    rc: int | None  # None: killed by the harness after the time limit
    out: str
    err: str


def _python(body: str, timeout: float = _TIMEOUT) -> _Proc:
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return _run([sys.executable, "-c", _SCRIPT_PRELUDE.format(body=indented)], timeout)


def _cli(*args: str | Path, timeout: float = _TIMEOUT) -> _Proc:
    return _run([sys.executable, "-m", "seqstore", *map(str, args)], timeout)


def _run(argv: list[str], timeout: float) -> _Proc:
    try:
        p = subprocess.run(
            argv,
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # a damaged key may print as bytes that are not UTF-8
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return _Proc(None, str(exc.stdout or ""), str(exc.stderr or ""))
    return _Proc(p.returncode, p.stdout, p.stderr)


def _failure(p: _Proc) -> str:
    """How a process that did not succeed ended, as an outcome."""
    if os.environ.get("SEQSTORE_FAULTS_VERBOSE"):
        print(f"[rc={p.rc}] {p.err.strip()}", file=sys.stderr)
    if p.rc is None:
        return "hang"
    if p.rc < 0 or p.rc >= 128 or "Traceback" in p.err:
        return "crash"
    lines = [line for line in p.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("seqstore: error:")]
    if p.rc == 2 and len(errors) == 1:
        return "clear error"
    return "crash"


# -- the data every case starts from -------------------------------------------------------
def _source(workdir: Path, per_class: int = 60) -> Path:
    return make_image_folder(
        workdir / "src", classes=4, per_class=per_class, seed=7, min_side=64, max_side=220
    )


def _convert(src: Path, dst: Path, fmt: str, *extra: str) -> None:
    p = _cli("convert", src, dst, "--format", fmt, "--quiet", *extra)
    if p.rc != 0:
        raise RuntimeError(f"convert failed while setting up a fault case: {p.err.strip()}")


def _fingerprint(store: Path) -> str:
    """Digest of every record (key, label, bytes) in order, read with verification."""
    from ..backends import open_store

    with warnings.catch_warnings():  # the notes a case provokes are checked by the case
        warnings.simplefilter("ignore", SeqstoreWarning)
        reader = open_store(store)
    h = hashlib.sha256()
    for start in range(0, len(reader), 256):
        for r in reader.read_block(start, min(start + 256, len(reader))):
            if not r.verify():
                return "corrupt"
            h.update(r.key.encode("utf-8", "surrogateescape") + r.label.to_bytes(4, "little"))
            h.update(r.data)
    reader.close()
    return h.hexdigest()


def _hidden(dst: Path, infix: str) -> list[Path]:
    return [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.seqstore-{infix}")]


def _writing(dst: Path) -> bool:
    """Whether a writer of ``dst`` has started: its partial marker exists."""
    return (
        any(dst.parent.glob(f".{dst.name}.seqstore-new-*/seqstore.partial.json"))
        or (dst / "seqstore.partial.json").exists()
    )


def _start(body: str) -> subprocess.Popen[bytes]:
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT_PRELUDE.format(body=indented)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _write_time(body: str, dst: Path) -> float:
    """Seconds from the writer's start (its marker) to the end of the run of ``body``."""
    proc = _start(body)
    while proc.poll() is None and not _writing(dst):
        time.sleep(0.002)
    t0 = time.perf_counter()
    if proc.wait() != 0:
        raise RuntimeError("convert failed while setting up a fault case")
    return time.perf_counter() - t0


def _kill_mid_write(body: str, dst: Path, rng: np.random.Generator, write_time: float) -> int:
    """Run ``body``; SIGKILL it at a random instant of its write (marker to exit)."""
    proc = _start(body)
    while proc.poll() is None and not _writing(dst):
        time.sleep(0.002)
    time.sleep(float(rng.uniform(0.0, 1.1)) * write_time)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


_CONVERT_BODY = (
    "from seqstore.convert import convert\n"
    "convert({src!r}, {dst!r}, format={fmt!r}, checkpoint_mb=0.2, progress=False, {extra})"
)


# -- cases ---------------------------------------------------------------------------------
def _kill_convert_then_resume(fmt: str) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = _source(workdir)
        ref, dst = workdir / "ref", workdir / "dst"
        body = _CONVERT_BODY.format(src=str(src), dst=str(dst), fmt=fmt, extra="")
        write_time = _write_time(body.replace(repr(str(dst)), repr(str(ref))), ref)
        # A store at DST after the kill must be the whole one (the kill came after the
        # final rename); otherwise the write is resumed.
        if _kill_mid_write(body, dst, rng, write_time) != 0 and _cli("info", dst).rc != 0:
            resume = _CONVERT_BODY.format(src=str(src), dst=str(dst), fmt=fmt, extra="resume=True")
            p = _python(resume)
            if p.rc != 0:
                return _failure(p)
        if _fingerprint(dst) != _fingerprint(ref):
            if os.environ.get("SEQSTORE_FAULTS_VERBOSE"):
                print(f"[{dst}] differs from the uninterrupted [{ref}]", file=sys.stderr)
            return "silent wrong"
        return "leaked" if _hidden(dst, "") else "handled"

    return run


def _kill_overwrite(fmt: str) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = _source(workdir)
        ref, dst = workdir / "ref", workdir / "dst"
        write_time = _write_time(
            _CONVERT_BODY.format(src=str(src), dst=str(ref), fmt=fmt, extra=""), ref
        )
        _convert(src, dst, fmt, "--limit", "50")
        old = _fingerprint(dst)
        body = _CONVERT_BODY.format(src=str(src), dst=str(dst), fmt=fmt, extra="overwrite=True")
        _kill_mid_write(body, dst, rng, write_time)
        p = _python(f"import seqstore\nseqstore.open({str(dst)!r})")
        if p.rc != 0:
            return "data lost"
        if _fingerprint(dst) not in (old, _fingerprint(ref)):
            return "silent wrong"
        return "leaked" if _hidden(dst, "old") else "handled"

    return run


def _disk_full(fmt: str, size_mb: int) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = _source(workdir, per_class=120)  # 3 MB: more than fits beside the margin
        tiny = workdir / "tiny"
        tiny.mkdir()
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(tiny)],
            capture_output=True,
            check=False,
        )
        if mount.returncode != 0:
            raise PermissionError(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
        try:
            p = _cli("convert", src, tiny / "dst", "--format", fmt, "--quiet")
            if p.rc == 0:
                return "silent wrong"  # the source does not fit: success cannot be true
            outcome = _failure(p)
            if outcome == "clear error" and any(tiny.iterdir()):
                return "leaked"
            return outcome
        finally:
            subprocess.run(["umount", "-l", str(tiny)], check=False)

    return run


def _damaged(
    fmt: str, damage: Callable[[Path, np.random.Generator], None], verify: bool
) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        store = workdir / "store"
        _convert(_source(workdir), store, fmt)
        before = _fingerprint(store)
        damage(store, rng)
        p = _cli("info", "--verify", store) if verify else _cli("info", store)
        if p.rc == 1 and "corrupt:" in p.out and "Traceback" not in p.err:
            return "handled"  # verify named the damaged records
        if p.rc == 0:
            # Damage that hit no record (unused space in a file) changes nothing a user reads.
            return "handled" if verify and _fingerprint(store) == before else "silent wrong"
        return _failure(p)

    return run


def _data_file(store: Path) -> Path:
    return store / ("data.mdb" if (store / "data.mdb").exists() else "data.h5")


def _truncate(store: Path, rng: np.random.Generator) -> None:
    f = _data_file(store)
    os.truncate(f, int(f.stat().st_size * rng.uniform(0.3, 0.9)))


def _flip_record_byte(store: Path, rng: np.random.Generator) -> None:
    from ..backends import open_store

    reader = open_store(store)
    record = reader.read(int(rng.integers(len(reader))))
    reader.close()
    raw = bytearray(_data_file(store).read_bytes())
    at = raw.find(record.data) + int(rng.integers(20, len(record.data)))
    raw[at] ^= 0x10
    _data_file(store).write_bytes(bytes(raw))


def _flip_label(store: Path, rng: np.random.Generator) -> None:
    from ..backends import open_store

    reader = open_store(store)
    record = reader.read(int(rng.integers(len(reader))))
    reader.close()
    raw = bytearray(_data_file(store).read_bytes())
    if (store / "data.mdb").exists():
        # value = label, width, height, crc, key length (18 bytes), key, image bytes
        at = raw.find(record.key.encode() + record.data[:16]) - 18
        raw[at] ^= 0x01
        _data_file(store).write_bytes(bytes(raw))
    else:
        import h5py

        with h5py.File(_data_file(store), "r+") as f:
            labels = f["labels"][()]
            index = int(np.flatnonzero(labels == record.label)[0])
            f["labels"][index] = (record.label + 1) % 4


def _flip_index(store: Path, rng: np.random.Generator) -> None:
    from ..backends import open_store

    reader = open_store(store)
    labels = reader.labels().astype(np.int32).tobytes()
    reader.close()
    raw = bytearray(_data_file(store).read_bytes())
    at = raw.find(labels) + int(rng.integers(len(labels)))
    raw[at] ^= 0x01
    _data_file(store).write_bytes(bytes(raw))


def _edit_manifest(store: Path, rng: np.random.Generator) -> None:
    import json

    m = json.loads((store / "seqstore.json").read_text())
    m["num_records"] = int(m["num_records"] * rng.uniform(0.2, 0.9))
    (store / "seqstore.json").write_text(json.dumps(m))


def _delete_manifest(store: Path, rng: np.random.Generator) -> None:
    (store / "seqstore.json").unlink()


def _scribble_page(store: Path, rng: np.random.Generator) -> None:
    f = _data_file(store)
    raw = bytearray(f.read_bytes())
    page = int(rng.integers(2, len(raw) // 4096))  # never the two meta pages
    raw[page * 4096 : page * 4096 + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(raw))


def _stale_handle(workdir: Path, rng: np.random.Generator) -> str:
    src = _source(workdir)
    ref = workdir / "ref"
    # The replacement differs in every position (another write order), so reading the old
    # store's records under the new manifest cannot pass for the new store.
    _convert(src, ref, "lmdb", "--limit", "120", "--seed", "1")
    body = f"""
import seqstore
from seqstore.convert import convert
path = {str(workdir / "store")!r}
convert({str(src)!r}, path, format="lmdb", progress=False)
kept = seqstore.open(path)
kept.read_block(0, 10)
dropped = seqstore.open(path)
dropped.read_block(0, 10)
del dropped
convert({str(src)!r}, path, format="lmdb", limit=120, seed=1, overwrite=True, progress=False)
new = seqstore.open(path)
print(len(new), [r.key for r in new.read_block(0, len(new))] == {_keys(ref)!r})
"""
    p = _python(body)
    if p.rc != 0:
        return _failure(p)
    return "handled" if p.out.split() == ["120", "True"] else "silent wrong"


def _keys(store: Path) -> list[str]:
    from ..backends import open_store

    reader = open_store(store)
    keys = [r.key for r in reader.read_block(0, len(reader))]
    reader.close()
    return keys


def _racing_writers(fmt: str) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src, ref, dst = _source(workdir), workdir / "ref", workdir / "dst"
        _convert(src, ref, fmt)
        argv = [sys.executable, "-m", "seqstore", "convert", str(src), str(dst)]
        procs = [
            subprocess.Popen(
                [*argv, "--format", fmt, "--quiet"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                errors="replace",
            )
            for _ in range(2)
        ]
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=_TIMEOUT)
                results.append(_Proc(proc.returncode, out, err))
            except subprocess.TimeoutExpired:
                proc.kill()
                return "hang"
        losers = [p for p in results if p.rc != 0]
        if len(losers) > 1:
            return _failure(losers[0])
        if losers and _failure(losers[0]) != "clear error":
            return _failure(losers[0])
        if _fingerprint(dst) != _fingerprint(ref):
            return "silent wrong"
        return "leaked" if _hidden(dst, "") else "handled"

    return run


def _concurrent_readers(workdir: Path, rng: np.random.Generator) -> str:
    store = workdir / "store"
    _convert(_source(workdir), store, "lmdb")
    argv = [sys.executable, "-m", "seqstore", "info", "--verify", str(store)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(16)
    ]
    for proc in procs:
        try:
            out, _err = proc.communicate(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            return "hang"
        if proc.returncode != 0 or b"240 of 240 records match" not in out:
            return "crash" if proc.returncode else "silent wrong"
    return "handled"


def _odd_images(on_error: str) -> Callable[[Path, np.random.Generator], str]:
    """Convert a folder of every odd image (12/16-bit, APNG, tRNS, CMYK, giant headers,
    links that dangle or loop, a name that is not UTF-8) with ``--on-error``."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        import json

        from .odd import make_odd_folder

        src, refused = make_odd_folder(workdir / "src")
        dst = workdir / "dst"
        fmt = str(rng.choice(["lmdb", "hdf5"]))
        p = _cli("convert", src, dst, "--format", fmt, "--on-error", on_error, "--quiet")
        if p.rc != 0:
            return _failure(p)
        skipped = {
            s["key"]
            for s in json.loads((dst / "seqstore.json").read_text())["provenance"]["skipped"]
        }
        if skipped != refused or _fingerprint(dst) == "corrupt":
            return "silent wrong"
        return "handled"

    return run


def _old_pickle_tensorpack(workdir: Path, rng: np.random.Generator) -> str:
    import pickle

    import lmdb

    path = workdir / "old.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"__keys__", pickle.dumps([b"00000000"], protocol=0))
        txn.put(b"00000000", pickle.dumps([b"\xff\xd8 not really", 3], protocol=0))
    env.close()
    return _failure(_cli("info", path))


_Run = Callable[[Path, np.random.Generator], str]


_LOADER_BODY = """
from seqstore import Loader
loader = Loader({store!r}, batch_size=16, num_workers=2, on_error={policy!r}, seed={seed})
batches = sum(1 for _ in loader)
print(batches, len(loader), sorted(loader.bad_records))
"""


def _loader_bad_record(policy: str) -> Callable[[Path, np.random.Generator], str]:
    """A Loader epoch over a store with one flipped byte, with ``on_error=policy``."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        store = workdir / "store"
        _convert(_source(workdir), store, "lmdb")
        from ..backends import open_store

        reader = open_store(store)
        key = reader.read(int(rng.integers(len(reader)))).key
        reader.close()
        _flip_record_byte_of(store, key, rng)
        p = _python(
            _LOADER_BODY.format(store=str(store), policy=policy, seed=int(rng.integers(99)))
        )
        if p.rc != 0:
            outcome = _failure(p)
            return outcome if key in p.err else "silent wrong"  # the error must name it
        batches, expected, *bad = p.out.strip().split(maxsplit=2)
        if policy == "raise" or batches != expected or bad != [repr([key])]:
            return "silent wrong"
        return "handled"

    return run


def _flip_record_byte_of(store: Path, key: str, rng: np.random.Generator) -> None:
    from ..backends import open_store

    reader = open_store(store)
    data = next(r.data for r in reader.read_block(0, len(reader)) if r.key == key)
    reader.close()
    raw = bytearray(_data_file(store).read_bytes())
    raw[raw.find(data) + int(rng.integers(20, len(data)))] ^= 0x10
    _data_file(store).write_bytes(bytes(raw))


def _loader_worker_killed(workdir: Path, rng: np.random.Generator) -> str:
    """A Loader worker SIGKILLed mid-epoch: one error, then an exact resume."""
    store = workdir / "store"
    _convert(_source(workdir), store, "lmdb")
    after = int(rng.integers(1, 10))
    body = f"""
import gc, os, signal, psutil, torch
from seqstore import Loader
from seqstore.errors import WorkerDiedError
options = dict(batch_size=16, num_workers=2, with_indices=True, seed=3)
first = Loader({str(store)!r}, **options)
full = [i for _, _, idx in first for i in idx.tolist()]
del first
gc.collect()  # its persistent workers end: the only children are the next loader's
loader = Loader({str(store)!r}, **options)
seen, state = [], None
try:
    for n, (_, _, idx) in enumerate(loader):
        seen += idx.tolist()
        state = loader.state_dict()
        if n == {after}:
            os.kill(psutil.Process().children()[0].pid, signal.SIGKILL)
except WorkerDiedError as exc:
    print("died:", exc)
resumed = Loader({str(store)!r}, **options)
resumed.load_state_dict(state)
seen += [i for _, _, idx in resumed for i in idx.tolist()]
print("exact" if seen == full else "differs")
"""
    p = _python(body)
    if p.rc != 0:
        return _failure(p)
    lines = p.out.splitlines()
    died = [line for line in lines if line.startswith("died:")]
    if lines[-1] != "exact":
        return "silent wrong"
    return "clear error" if len(died) == 1 else "silent wrong"


def _case(name: str, run: _Run, *ok: str, root: bool = False) -> FaultCase:
    return FaultCase(name, run, frozenset(ok), root)


CASES: list[FaultCase] = [
    *(
        _case(
            f"kill -9 during convert, then --resume ({fmt})",
            _kill_convert_then_resume(fmt),
            "handled",
        )
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"kill -9 during convert --overwrite ({fmt})", _kill_overwrite(fmt), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"disk full, {mb} MB tmpfs ({fmt})", _disk_full(fmt, mb), "clear error", root=True)
        for fmt in ("lmdb", "hdf5")
        for mb in (1, 18)
    ),
    *(
        _case(f"truncated data file ({fmt})", _damaged(fmt, _truncate, True), "clear error")
        for fmt in ("lmdb", "hdf5")
    ),
    *(
        _case(f"flipped bit in a record ({fmt})", _damaged(fmt, _flip_record_byte, True), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    _case("label changed on disk (lmdb)", _damaged("lmdb", _flip_label, True), "handled"),
    _case("label changed on disk (hdf5)", _damaged("hdf5", _flip_label, True), "clear error"),
    _case("flipped bit in the index (lmdb)", _damaged("lmdb", _flip_index, True), "clear error"),
    _case("manifest num_records edited", _damaged("lmdb", _edit_manifest, False), "clear error"),
    _case("manifest deleted", _damaged("hdf5", _delete_manifest, False), "clear error"),
    *(
        _case(
            f"random page overwritten ({fmt})",
            _damaged(fmt, _scribble_page, True),
            "handled",
            "clear error",
        )
        for fmt in ("lmdb", "hdf5")
    ),
    _case("store replaced under a dropped reader", _stale_handle, "handled"),
    _case("Loader over a flipped byte, on_error=raise", _loader_bad_record("raise"), "clear error"),
    _case("Loader over a flipped byte, on_error=skip", _loader_bad_record("skip"), "handled"),
    _case("Loader worker killed mid-epoch, then resumed", _loader_worker_killed, "clear error"),
    *(
        _case(f"two writers race for one DST ({fmt})", _racing_writers(fmt), "handled")
        for fmt in ("lmdb", "hdf5")
    ),
    _case("16 concurrent readers", _concurrent_readers, "handled"),
    _case("odd images, convert --on-error fail", _odd_images("fail"), "clear error"),
    _case("odd images, convert --on-error skip", _odd_images("skip"), "handled"),
    _case("tensorpack file with protocol-0 pickles", _old_pickle_tensorpack, "clear error"),
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
