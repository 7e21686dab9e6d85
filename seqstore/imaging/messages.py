"""What libjpeg says about an image while OpenCV decodes it.

OpenCV's libjpeg prints its warnings ("Corrupt JPEG data: bad Huffman code", "Premature end
of data segment", "2 extraneous bytes before marker 0xd9") straight to file descriptor 2,
past OpenCV's log level, one line per image and without its name, and decodes damaged data
anyway, filling what it lost with grey. :func:`c_stderr_lines` collects those lines around a
decode, so that damage is an error naming the image (:func:`damage_of`) rather than a line
on stderr and a grey-smeared training image. Captures nest: an inner one sees the lines
printed in its own scope, the outermost all of them.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["c_stderr_lines", "damage_of"]

# One capture file per process, reused for every image: making one per image cost 30 us.
_captures: dict[int, IO[bytes]] = {}
_depth: dict[int, tuple[int, int]] = {}  # pid -> (open captures, the saved descriptor 2)


def _capture_file() -> IO[bytes]:
    pid = os.getpid()
    if pid not in _captures:
        _captures.clear()  # a forked child's copy of its parent's file is not its own
        _depth.clear()
        _captures[pid] = capture = tempfile.TemporaryFile()
        atexit.register(capture.close)
    return _captures[pid]


@contextmanager
def c_stderr_lines() -> Iterator[list[str]]:
    """Collect, as lines, what C code prints on file descriptor 2 meanwhile."""
    lines: list[str] = []
    capture = _capture_file()
    fd, pid = capture.fileno(), os.getpid()
    depth, saved = _depth.get(pid, (0, -1))
    if depth == 0:
        os.ftruncate(fd, 0)
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fd, 2)
    start = os.fstat(fd).st_size
    _depth[pid] = (depth + 1, saved)
    try:
        yield lines
    finally:
        _depth[pid] = (depth, saved)
        if depth == 0:
            os.dup2(saved, 2)
            os.close(saved)
        text = os.pread(fd, os.fstat(fd).st_size - start, start).decode("utf-8", "replace")
        lines.extend(line.strip() for line in text.splitlines() if line.strip())


def damage_of(lines: list[str]) -> list[str]:
    """The lines that say an image's data is damaged: all but libjpeg's note of extraneous
    bytes before a marker, which changes no pixel."""
    return [line for line in lines if "extraneous bytes" not in line]
