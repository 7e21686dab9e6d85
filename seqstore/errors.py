"""The exceptions seqstore raises.

Every error a user can cause is a :class:`SeqstoreError` whose message is one line naming the
file or value at fault and what to do about it; the CLI prints that line instead of a traceback.
"""

from __future__ import annotations

import re

#: How a message about one bad image says it can be left out, in the Python API's words;
#: :func:`for_cli` says it in the command line's.
SKIP_ADVICE = "pass on_error='skip' to leave it out"
_ADVICE = re.compile(r"(;\s*|,?\s+or\s+)?pass on_error='skip' to leave it out")
_CLI_WORDS = {
    "pass on_error='skip'": "use --on-error skip",
    "raise max_pixels": "raise --max-pixels",
}

__all__ = [
    "SKIP_ADVICE",
    "for_cli",
    "without_skip_advice",
    "BackendNotFoundError",
    "BadImageError",
    "BadRecordError",
    "BadRecordWarning",
    "ConfigError",
    "CorruptStoreError",
    "DiskFullError",
    "NotAStoreError",
    "OrderWarning",
    "PartialStoreError",
    "RemoteError",
    "ResumeError",
    "SeqstoreError",
    "SeqstoreWarning",
    "StoreExistsError",
    "WorkerDiedError",
]


class SeqstoreError(Exception):
    """Base class of every error seqstore raises on purpose."""


class ConfigError(SeqstoreError, ValueError):
    """An option or argument has a value seqstore cannot use."""


class BackendNotFoundError(SeqstoreError, KeyError):
    """No backend is registered under a name, or its optional dependency is missing."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotAStoreError(SeqstoreError, FileNotFoundError):
    """A path holds no store that any backend can read."""


class PartialStoreError(SeqstoreError):
    """A store whose writer never finished; it is refused rather than read short."""


class CorruptStoreError(SeqstoreError):
    """A store's files disagree with its manifest or checksums: damaged, truncated or edited."""


class DiskFullError(SeqstoreError, OSError):
    """The destination's disk has no room for the next write; nothing was written past it."""


class StoreExistsError(SeqstoreError, FileExistsError):
    """A writer was pointed at a path that already holds data."""


class BadImageError(SeqstoreError):
    """A source file is not a decodable image (empty, truncated, or another kind of file)."""


class RemoteError(SeqstoreError, OSError):
    """Object storage refused a request for good (no such bucket, access denied), or kept
    failing past the retries (the server or the network did not recover)."""

    def __str__(self) -> str:  # OSError would prefix an errno
        return str(self.args[0]) if self.args else ""


class ResumeError(SeqstoreError):
    """A loader state cannot be restored into a loader of a different shape."""


class BadRecordError(SeqstoreError):
    """A record of a store fails its checksum or cannot be decoded while loading, or more
    records did than the loader's ``max_bad`` allows."""


class WorkerDiedError(SeqstoreError):
    """A loader worker process ended without a word (killed, or out of memory)."""


class SeqstoreWarning(UserWarning):
    """Something seqstore did on its own that a user should know of (a rollback, a skip)."""


class BadRecordWarning(SeqstoreWarning):
    """A loader with ``on_error="skip"`` left out a bad record (once per record)."""


class OrderWarning(SeqstoreWarning):
    """A loader's settings cannot mix its store's order into batches of many classes: its
    records come in long runs of one class (see :mod:`seqstore.mixcheck`)."""


def for_cli(message: str) -> str:
    """``message`` in the command line's words: its flags where it names the Python
    API's arguments (``--on-error skip`` for ``on_error='skip'``)."""
    for python, flag in _CLI_WORDS.items():
        message = message.replace(python, flag)
    return message


def without_skip_advice(message: str) -> str:
    """``message`` without its advice to leave the image out: what a record left out by
    ``on_error='skip'`` is recorded with."""
    return _ADVICE.sub("", message)
