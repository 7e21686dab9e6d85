"""The fault suite's harness: fresh processes, their outcomes, and the data cases start from."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SeqstoreWarning
from ..data import make_image_folder

TIMEOUT = 120.0

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


@dataclass
class Proc:
    rc: int | None  # None: killed by the harness after the time limit
    out: str
    err: str


def run_python(body: str, timeout: float = TIMEOUT, shm_mb: int | None = None) -> Proc:
    """``body`` in a fresh interpreter; with ``shm_mb``, in a private mount namespace whose
    /dev/shm is a tmpfs of that size (root; PermissionError where it cannot be mounted)."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    argv = [sys.executable, "-c", _SCRIPT_PRELUDE.format(body=indented)]
    if shm_mb is None:
        return _run(argv, timeout)
    mount = f'mount -t tmpfs -o size={shm_mb}m tmpfs /dev/shm || exit 97; exec "$@"'
    p = _run(["unshare", "-m", "sh", "-c", mount, "sh", *argv], timeout)
    if p.rc == 97:
        raise PermissionError(f"cannot mount a tmpfs on /dev/shm: {p.err.strip()}")
    return p


def run_cli(*args: str | Path, timeout: float = TIMEOUT) -> Proc:
    return _run([sys.executable, "-m", "seqstore", *map(str, args)], timeout)


def _run(argv: list[str], timeout: float) -> Proc:
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
        return Proc(None, str(exc.stdout or ""), str(exc.stderr or ""))
    return Proc(p.returncode, p.stdout, p.stderr)


def failure_outcome(p: Proc) -> str:
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
def make_source(workdir: Path, per_class: int = 60) -> Path:
    return make_image_folder(
        workdir / "src", classes=4, per_class=per_class, seed=7, min_side=64, max_side=220
    )


def convert_cli(src: Path, dst: Path, fmt: str, *extra: str) -> None:
    p = run_cli("convert", src, dst, "--format", fmt, "--quiet", *extra)
    if p.rc != 0:
        raise RuntimeError(f"convert failed while setting up a fault case: {p.err.strip()}")


def fingerprint(store: Path) -> str:
    """Digest of every record (key, label, bytes) in order, read with verification."""
    from ...backends import open_store

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


def hidden_siblings(dst: Path, infix: str) -> list[Path]:
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


def time_the_write(body: str, dst: Path) -> float:
    """Seconds from the writer's start (its marker) to the end of the run of ``body``."""
    proc = _start(body)
    while proc.poll() is None and not _writing(dst):
        time.sleep(0.002)
    t0 = time.perf_counter()
    if proc.wait() != 0:
        raise RuntimeError("convert failed while setting up a fault case")
    return time.perf_counter() - t0


def kill_mid_write(body: str, dst: Path, rng: np.random.Generator, write_time: float) -> int:
    """Run ``body``; SIGKILL it at a random instant of its write (marker to exit)."""
    proc = _start(body)
    while proc.poll() is None and not _writing(dst):
        time.sleep(0.002)
    time.sleep(float(rng.uniform(0.0, 1.1)) * write_time)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


CONVERT_BODY = (
    "from seqstore.convert import convert\n"
    "convert({src!r}, {dst!r}, format={fmt!r}, checkpoint_mb=0.2, progress=False, {extra})"
)


def data_file(store: Path) -> Path:
    return store / ("data.mdb" if (store / "data.mdb").exists() else "data.h5")
