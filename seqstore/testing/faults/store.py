"""Fault cases of stores and conversions: kills, full disks, damage on disk, races, odd images."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .harness import (
    CONVERT_BODY,
    TIMEOUT,
    Proc,
    convert_cli,
    data_file,
    failure_outcome,
    fingerprint,
    hidden_siblings,
    kill_mid_write,
    make_source,
    run_cli,
    run_python,
    time_the_write,
)


# -- cases ---------------------------------------------------------------------------------
def kill_convert_then_resume(
    fmt: str, *, sharded: bool = False
) -> Callable[[Path, np.random.Generator], str]:
    """kill -9 at a random instant of a convert (``sharded``: by 2 writer processes, in
    shards), then the same convert with --resume: the store must equal an uninterrupted
    one (shard for shard), and a checkpointed unsharded write must be continued, not
    started over."""
    api = "shard_mb=0.5, workers=2" if sharded else ""
    cli = ("--shard-mb", "0.5", "--workers", "2") if sharded else ()

    def run(workdir: Path, rng: np.random.Generator) -> str:
        from ..shards import layout

        src = make_source(workdir)
        ref, dst = workdir / "ref", workdir / "dst"
        body = CONVERT_BODY.format(src=str(src), dst=str(dst), fmt=fmt, extra=api)
        write_time = time_the_write(body.replace(repr(str(dst)), repr(str(ref))), ref)
        # A store at DST after the kill must be the whole one (the kill came after the
        # final rename); otherwise the write is resumed.
        if kill_mid_write(body, dst, rng, write_time) != 0 and run_cli("info", dst).rc != 0:
            checkpointed = any(
                dst.parent.glob(f".{dst.name}.seqstore-new-*/seqstore.progress.json")
            )
            # As a user would: the same convert on the command line, with --resume.
            p = run_cli(
                "convert", src, dst, "--format", fmt, *cli, "--checkpoint-mb", "0.2",
                "--resume", "-q",
            )  # fmt: skip
            if p.rc != 0:
                return failure_outcome(p)
            # A sharded resume keeps finished shards only, not a checkpoint inside a shard.
            if checkpointed and not sharded and "resumed a killed convert" not in p.out:
                if os.environ.get("SEQSTORE_FAULTS_VERBOSE"):
                    print(f"[not resumed] {p.out} {p.err}", file=sys.stderr)
                return "silent wrong"  # it started over instead of continuing
        if fingerprint(dst) != fingerprint(ref) or (sharded and layout(dst) != layout(ref)):
            if os.environ.get("SEQSTORE_FAULTS_VERBOSE"):
                print(f"[{dst}] differs from the uninterrupted [{ref}]", file=sys.stderr)
            return "silent wrong"
        return "leaked" if hidden_siblings(dst, "") else "handled"

    return run


def kill_overwrite(fmt: str) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = make_source(workdir)
        ref, dst = workdir / "ref", workdir / "dst"
        write_time = time_the_write(
            CONVERT_BODY.format(src=str(src), dst=str(ref), fmt=fmt, extra=""), ref
        )
        convert_cli(src, dst, fmt, "--limit", "50")
        old = fingerprint(dst)
        body = CONVERT_BODY.format(src=str(src), dst=str(dst), fmt=fmt, extra="overwrite=True")
        kill_mid_write(body, dst, rng, write_time)
        p = run_python(f"import seqstore\nseqstore.open({str(dst)!r})")
        if p.rc != 0:
            return "data lost"
        if fingerprint(dst) not in (old, fingerprint(ref)):
            return "silent wrong"
        return "leaked" if hidden_siblings(dst, "old") else "handled"

    return run


def disk_full(fmt: str, size_mb: int) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = make_source(workdir, per_class=120)  # 3 MB: more than fits beside the margin
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
            p = run_cli("convert", src, tiny / "dst", "--format", fmt, "--quiet")
            if p.rc == 0:
                return "silent wrong"  # the source does not fit: success cannot be true
            outcome = failure_outcome(p)
            if outcome == "clear error" and any(tiny.iterdir()):
                return "leaked"
            return outcome
        finally:
            subprocess.run(["umount", "-l", str(tiny)], check=False)

    return run


def damaged(
    fmt: str, damage: Callable[[Path, np.random.Generator], None], verify: bool
) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        store = workdir / "store"
        convert_cli(make_source(workdir), store, fmt)
        before = fingerprint(store)
        damage(store, rng)
        p = run_cli("info", "--verify", store) if verify else run_cli("info", store)
        if p.rc == 1 and "corrupt:" in p.out and "Traceback" not in p.err:
            return "handled"  # verify named the damaged records
        if p.rc == 0:
            # Damage that hit no record (unused space in a file) changes nothing a user reads.
            return "handled" if verify and fingerprint(store) == before else "silent wrong"
        return failure_outcome(p)

    return run


def truncate(store: Path, rng: np.random.Generator) -> None:
    f = data_file(store)
    os.truncate(f, int(f.stat().st_size * rng.uniform(0.3, 0.9)))


def flip_record_byte(store: Path, rng: np.random.Generator) -> None:
    from ...backends import open_store

    reader = open_store(store)
    record = reader.read(int(rng.integers(len(reader))))
    reader.close()
    raw = bytearray(data_file(store).read_bytes())
    at = raw.find(record.data) + int(rng.integers(20, len(record.data)))
    raw[at] ^= 0x10
    data_file(store).write_bytes(bytes(raw))


def flip_label(store: Path, rng: np.random.Generator) -> None:
    from ...backends import open_store

    reader = open_store(store)
    record = reader.read(int(rng.integers(len(reader))))
    reader.close()
    raw = bytearray(data_file(store).read_bytes())
    if (store / "data.mdb").exists():
        # value = label, width, height, crc, key length (18 bytes), key, image bytes
        at = raw.find(record.key.encode() + record.data[:16]) - 18
        raw[at] ^= 0x01
        data_file(store).write_bytes(bytes(raw))
    else:
        import h5py

        with h5py.File(data_file(store), "r+") as f:
            labels = f["labels"][()]
            index = int(np.flatnonzero(labels == record.label)[0])
            f["labels"][index] = (record.label + 1) % 4


def flip_index(store: Path, rng: np.random.Generator) -> None:
    from ...backends import open_store

    reader = open_store(store)
    labels = reader.labels().astype(np.int32).tobytes()
    reader.close()
    raw = bytearray(data_file(store).read_bytes())
    at = raw.find(labels) + int(rng.integers(len(labels)))
    raw[at] ^= 0x01
    data_file(store).write_bytes(bytes(raw))


def edit_manifest(store: Path, rng: np.random.Generator) -> None:
    import json

    m = json.loads((store / "seqstore.json").read_text())
    m["num_records"] = int(m["num_records"] * rng.uniform(0.2, 0.9))
    (store / "seqstore.json").write_text(json.dumps(m))


def delete_manifest(store: Path, rng: np.random.Generator) -> None:
    (store / "seqstore.json").unlink()


def scribble_page(store: Path, rng: np.random.Generator) -> None:
    f = data_file(store)
    raw = bytearray(f.read_bytes())
    page = int(rng.integers(2, len(raw) // 4096))  # never the two meta pages
    raw[page * 4096 : page * 4096 + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(raw))


def stale_handle(workdir: Path, rng: np.random.Generator) -> str:
    src = make_source(workdir)
    ref = workdir / "ref"
    # The replacement differs in every position (another write order), so reading the old
    # store's records under the new manifest cannot pass for the new store.
    convert_cli(src, ref, "lmdb", "--limit", "120", "--seed", "1")
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
print(len(new), [r.key for r in new.read_block(0, len(new))] == {store_keys(ref)!r})
"""
    p = run_python(body)
    if p.rc != 0:
        return failure_outcome(p)
    return "handled" if p.out.split() == ["120", "True"] else "silent wrong"


def store_keys(store: Path) -> list[str]:
    from ...backends import open_store

    reader = open_store(store)
    keys = [r.key for r in reader.read_block(0, len(reader))]
    reader.close()
    return keys


def racing_writers(fmt: str) -> Callable[[Path, np.random.Generator], str]:
    def run(workdir: Path, rng: np.random.Generator) -> str:
        src, ref, dst = make_source(workdir), workdir / "ref", workdir / "dst"
        convert_cli(src, ref, fmt)
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
                out, err = proc.communicate(timeout=TIMEOUT)
                results.append(Proc(proc.returncode, out, err))
            except subprocess.TimeoutExpired:
                proc.kill()
                return "hang"
        losers = [p for p in results if p.rc != 0]
        if len(losers) > 1:
            return failure_outcome(losers[0])
        if losers and failure_outcome(losers[0]) != "clear error":
            return failure_outcome(losers[0])
        if fingerprint(dst) != fingerprint(ref):
            return "silent wrong"
        return "leaked" if hidden_siblings(dst, "") else "handled"

    return run


def concurrent_readers(workdir: Path, rng: np.random.Generator) -> str:
    store = workdir / "store"
    convert_cli(make_source(workdir), store, "lmdb")
    argv = [sys.executable, "-m", "seqstore", "info", "--verify", str(store)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(16)
    ]
    for proc in procs:
        try:
            out, _err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            return "hang"
        if proc.returncode != 0 or b"240 of 240 records match" not in out:
            return "crash" if proc.returncode else "silent wrong"
    return "handled"


def odd_images(on_error: str) -> Callable[[Path, np.random.Generator], str]:
    """Convert a folder of every odd image (12/16-bit, APNG, tRNS, CMYK, giant headers,
    links that dangle or loop, a name that is not UTF-8) with ``--on-error``."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        import json

        from ..odd import make_odd_folder

        src, refused = make_odd_folder(workdir / "src")
        dst = workdir / "dst"
        fmt = str(rng.choice(["lmdb", "hdf5"]))
        p = run_cli("convert", src, dst, "--format", fmt, "--on-error", on_error, "--quiet")
        if p.rc != 0:
            return failure_outcome(p)
        skipped = {
            s["key"]
            for s in json.loads((dst / "seqstore.json").read_text())["provenance"]["skipped"]
        }
        if skipped != refused or fingerprint(dst) == "corrupt":
            return "silent wrong"
        return "handled"

    return run


def old_pickle_tensorpack(workdir: Path, rng: np.random.Generator) -> str:
    import pickle

    import lmdb

    path = workdir / "old.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"__keys__", pickle.dumps([b"00000000"], protocol=0))
        txn.put(b"00000000", pickle.dumps([b"\xff\xd8 not really", 3], protocol=0))
    env.close()
    return failure_outcome(run_cli("info", path))
