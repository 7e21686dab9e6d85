"""Helpers for tests of sharded stores: what two conversions must agree on, and an image
that holds a conversion still until the test lets it go.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "HeldImage",
    "held_image",
    "layout",
    "process_gone",
    "staged_shards",
    "staging_pid",
    "wait_for",
]


def layout(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the store at ``path`` without what differs from run to run (its id,
    when it was written, the digests of the manifests themselves): two conversions of the
    same source with the same options give the same layout, whoever wrote the shards."""
    raw: dict[str, Any] = json.loads((Path(path) / "seqstore.json").read_text())
    raw.pop("store_id")
    raw.pop("digest")
    raw["provenance"].pop("created")
    for shard in raw.get("shards") or ():
        shard.pop("digest")
    return raw


def staged_shards(dst: Path) -> tuple[list[Path], list[Path]]:
    """The finished shards and the shard staging directories inside the staging directory
    of a sharded store being written to ``dst``."""
    finished = sorted(dst.parent.glob(f".{dst.name}.seqstore-new-*/shard-*/seqstore.json"))
    staging = sorted(dst.parent.glob(f".{dst.name}.seqstore-new-*/.shard-*.seqstore-new-*"))
    return [p.parent for p in finished], staging


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 120
) -> None:
    """Wait until ``condition()`` holds while ``proc`` runs; fail if it ends first or the
    wait times out (``proc`` is then killed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def staging_pid(staging: Path) -> int:
    """The pid of the writer whose staging directory is ``staging`` (from its name)."""
    return int(staging.name.rsplit(".seqstore-new-", 1)[1].split("-")[0])


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie not yet reaped counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return any(line.startswith("State:") and "Z" in line for line in status.splitlines())


class HeldImage:
    """An image file replaced by a named pipe (FIFO) of the same name, its size 0 as a
    source listing sees it: a conversion that reads it waits until :meth:`release`.

    Parameters
    ----------
    path
        The image file; put back as it was by :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        self._feeders: list[threading.Thread] = []

    def release(self) -> None:
        """Let the next reader of the pipe (this one only) read the image's bytes."""

        def feed() -> None:
            with open(self.path, "wb") as f:  # waits for a reader, then hands the bytes over
                f.write(self.data)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        self._feeders.append(thread)

    def close(self) -> None:
        """End the feeders no reader came for, and put the image file back."""
        for thread in self._feeders:
            if thread.is_alive():
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                thread.join(10)
                os.close(fd)
        self.path.unlink()
        self.path.write_bytes(self.data)


@contextmanager
def held_image(path: Path) -> Iterator[HeldImage]:
    """A :class:`HeldImage` of ``path`` for the duration of the block."""
    held = HeldImage(path)
    try:
        yield held
    finally:
        held.close()
