"""A store's URL: its fsspec filesystem, requests with retries, and one-line errors.

:class:`ObjectStore` is where a remote store lives (``s3://bucket/train.h5``, ``gs://...``,
``https://host/train.h5``, any fsspec URL) and how to reach it: ``storage_options`` for
fsspec, else what the filesystem finds in the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, Google's application
default credentials ...). The filesystem object is made in each process that uses it, never
inherited over fork: s3fs and gcsfs run an event loop in a thread of the process that made
them.

Every request goes through :meth:`ObjectStore.call`, which retries transient failures (a
connection refused or reset, a timeout, HTTP 5xx or 429) with exponential backoff, and turns
permanent ones (no such bucket or object, access denied) and exhausted retries into one
:class:`~seqstore.errors.RemoteError` line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import BackendNotFoundError, CorruptStoreError, RemoteError
from .presigned import PresignedGets, UseFsspec, presigned_gets
from .ranges import GAP, Source, coalesce, split_runs
from .retry import RetryPolicy, http_status, is_transient, one_line

__all__ = ["ObjectFile", "ObjectStore", "object_version"]

T = TypeVar("T")

# Where a protocol's fsspec implementation comes from: the pip extra, or the package.
_EXTRAS = {
    "s3": "seqstore[s3]",
    "s3a": "seqstore[s3]",
    "gs": "seqstore[gcs]",
    "gcs": "seqstore[gcs]",
    "http": "fsspec[http]",
    "https": "fsspec[http]",
}
# s3fs and botocore each retry on their own (5 times, then 5 times each), which would stack
# under ObjectStore.call's retries into minutes of silence before one error: the request is
# tried once by them and retried by ObjectStore.call (given storage_options take precedence).
_LIBRARY_DEFAULTS: dict[str, dict[str, Any]] = {
    protocol: {"config_kwargs": {"retries": {"max_attempts": 1}}} for protocol in ("s3", "s3a")
}
# The filesystems made in each process, by (pid, protocol, options), kept for the life of
# the process. Reused, because each holds a connection pool; never dropped, because s3fs
# closes a collected filesystem's connections from a task on whichever event loop is at
# hand, which fails with "attached to a different loop" in a child that inherited it over
# fork, or in the main thread while fsspec's loop runs elsewhere.
_filesystems: dict[tuple[int, str, str], Any] = {}


@dataclass
class ObjectStore:
    """A remote store's URL and the means to reach it.

    Parameters
    ----------
    url
        The store: ``s3://bucket/train.h5``, ``https://host/data/train.h5``, ...
    storage_options
        Keyword arguments of the fsspec filesystem (``key``, ``secret``, ``endpoint_url``,
        ``client_kwargs``, ``anon`` ...); empty: from the environment.
    retry
        The retries of transient failures.
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Requests tried again after a transient failure, in this process.
    retried: int = field(default=0, compare=False)
    #: GET requests for object bytes made in this process.
    gets: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.protocol, _, rest = self.url.partition("://")
        self.url = f"{self.protocol}://{rest.rstrip('/')}"
        # Byte ranges straight over HTTP where the protocol and options allow: see
        # seqstore.io.presigned; None: through fsspec.
        self._presigned = presigned_gets(self)

    def _try_presigned(self, fn: Callable[[PresignedGets], T]) -> T | None:
        """``fn`` over presigned GETs, or None where the request goes through fsspec (and,
        for a lasting reason, all later ones)."""
        if self._presigned is None:
            return None
        try:
            return fn(self._presigned)
        except UseFsspec as exc:
            if exc.lasting:
                self._presigned = None
            return None

    @property
    def fs(self) -> Any:
        """This process's fsspec filesystem of the URL (one per protocol and options)."""
        key = (os.getpid(), self.protocol, repr(sorted(self.storage_options.items())))
        fs = _filesystems.get(key)
        if fs is None:
            fs = _filesystems[key] = self._open_fs()
        return fs

    def _open_fs(self) -> Any:
        try:
            import fsspec
        except ImportError:
            raise BackendNotFoundError(
                f"reading '{self.url}' needs fsspec, which is not installed; run: pip "
                "install 'seqstore[s3]'"
            ) from None
        try:
            cls = fsspec.get_filesystem_class(self.protocol)
        except (ImportError, ValueError) as exc:
            package = _EXTRAS.get(self.protocol)
            hint = f"pip install '{package}'" if package else one_line(exc)
            raise BackendNotFoundError(
                f"reading '{self.url}' needs fsspec's '{self.protocol}' filesystem, which is "
                f"not available ({one_line(exc)}); run: {hint}"
            ) from None
        # Out of fsspec's instance cache, which a child process clears: see _filesystems.
        options = {"skip_instance_cache": True, **_LIBRARY_DEFAULTS.get(self.protocol, {})}
        try:
            fs = cls(**{**options, **self.storage_options})
        except TypeError as exc:
            raise RemoteError(
                f"storage_options {sorted(self.storage_options)} do not fit fsspec's "
                f"'{self.protocol}' filesystem ({one_line(exc)})"
            ) from None
        if self.protocol in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop: see _LIBRARY_DEFAULTS
        return fs

    def join(self, name: str) -> str:
        """The URL of the file ``name`` inside the store."""
        return f"{self.url}/{name}"

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint in use, where one is set, for messages."""
        client = self.storage_options.get("client_kwargs", {})
        return (
            self.storage_options.get("endpoint_url")
            or client.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def call(self, what: str, url: str, fn: Callable[[], T]) -> T:
        """Run the request ``fn`` (``what`` of ``url``, for messages), retrying transient
        failures as :attr:`retry` says.

        Raises
        ------
        RemoteError
            A permanent failure, or transient ones past the last try. No such object is
            a ``FileNotFoundError`` the caller names (as its own refusal, or as this error).
        """
        started = time.monotonic()
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except FileNotFoundError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise self.permanent(what, url, exc) from None
                if attempt + 1 == self.retry.attempts:
                    raise RemoteError(
                        f"{what} '{url}' failed {attempt + 1} times over "
                        f"{time.monotonic() - started:.0f} s (last: {type(exc).__name__}: "
                        f"{one_line(exc)}); check that the server"
                        + (f" at {self.endpoint}" if self.endpoint else "")
                        + " is up and reachable, then start again"
                    ) from None
                self.retried += 1
                time.sleep(self.retry.wait(attempt))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def permanent(self, what: str, url: str, exc: BaseException) -> RemoteError:
        """The one line for a request that cannot succeed."""
        text = one_line(exc)
        if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
            bucket = url.split("://", 1)[-1].split("/", 1)[0]
            where = f" at {self.endpoint}" if self.endpoint else ""
            return RemoteError(
                f"no such bucket '{bucket}'{where} ({what} '{url}'); check the URL, and the "
                "endpoint (AWS_ENDPOINT_URL or storage_options)"
            )
        if isinstance(exc, FileNotFoundError):
            return RemoteError(f"no such object '{url}' ({text}); check the URL")
        if isinstance(exc, PermissionError) or "AccessDenied" in text or http_status(exc) == 403:
            return RemoteError(
                f"access denied: {what} '{url}' ({text}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or storage_options)"
            )
        return RemoteError(f"{what} '{url}' failed: {type(exc).__name__}: {text}")

    # -- requests ----------------------------------------------------------------------------
    def cat(self, url: str, start: int | None = None, end: int | None = None) -> bytes | bytearray:
        """The bytes ``[start, end)`` of the object ``url`` (all of it by default)."""
        data: bytes | bytearray | None = None
        if start is not None and end is not None:
            data = self.call(
                "reading", url, lambda: self._try_presigned(lambda d: d.get(url, start, end))
            )
        if data is None:
            data = self.call("reading", url, lambda: self.fs.cat_file(url, start=start, end=end))
        self.gets += 1
        return data

    def cat_ranges(self, url: str, ranges: list[tuple[int, int]]) -> list[bytes | bytearray]:
        """Several ``(offset, length)`` ranges of ``url``: one after another over the
        presigned GETs' kept-alive connection, else concurrently through fsspec."""
        if len(ranges) == 1 or self._presigned is not None:
            return [self.cat(url, offset, offset + length) for offset, length in ranges]

        def fetch() -> list[bytes | bytearray]:
            out = self.fs.cat_ranges(
                [url] * len(ranges), [o for o, _ in ranges], [o + n for o, n in ranges]
            )
            for item in out:  # cat_ranges returns errors in place of data
                if isinstance(item, BaseException):
                    raise item
            return list(out)

        datas = self.call("reading", url, fetch)
        self.gets += len(ranges)
        return datas

    def info(self, url: str) -> dict[str, Any]:
        """What the server says of the object ``url`` (``size``, and an ``ETag`` where
        it has one)."""
        info: dict[str, Any] | None = self.call(
            "looking up", url, lambda: self._try_presigned(lambda d: d.info(url))
        )
        if info is None:
            info = self.call("looking up", url, lambda: self.fs.info(url))
        return info

    def find(self, url: str) -> list[str]:
        """The URLs of every object under the prefix ``url``, sorted."""
        protocol = self.protocol
        found = self.call("listing", url, lambda: self.fs.find(url))
        return sorted(f if "://" in f else f"{protocol}://{f}" for f in found)

    def exists(self, url: str) -> bool:
        """Whether the object ``url`` exists."""
        try:
            self.info(url)
        except FileNotFoundError:
            return False
        return True

    def get_file(self, url: str, local: str | os.PathLike[str]) -> None:
        """Download the object ``url`` to the local file ``local``."""
        self.call("downloading", url, lambda: self.fs.get_file(url, os.fspath(local)))

    def put_file(self, local: str | os.PathLike[str], url: str) -> None:
        """Upload the local file ``local`` as the object ``url``."""
        self.call("uploading to", url, lambda: self.fs.put_file(os.fspath(local), url))

    def rm(self, url: str) -> None:
        """Delete the object ``url``, if it exists."""
        try:
            self.call("deleting", url, lambda: self.fs.rm_file(url))
        except FileNotFoundError:
            pass
        self.invalidate()

    def invalidate(self) -> None:
        """Forget listings the filesystem cached (after a change made by this process)."""
        fs = self.fs
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()


def object_version(info: dict[str, Any]) -> str:
    """What tells one version of an object from another: its ETag (or the nearest thing
    the filesystem reports) and size."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or ""
    return f"{str(tag).strip(chr(34))}:{info.get('size')}"


class ObjectFile(Source):
    """One object of an :class:`ObjectStore` as a :class:`~seqstore.io.ranges.Source`: each
    run of extents is one ranged GET, with retries.

    The object is looked up once when this is made (its size and version); a process that
    reads it and did not look it up, or reads it again after :meth:`close`, checks the
    version again before its first read, so that an object replaced meanwhile is never read
    as the one the caller checked.

    Parameters
    ----------
    store
        Where it is and how to reach it.
    url
        The object.

    Raises
    ------
    FileNotFoundError
        No such object.
    """

    far = True

    def __init__(self, store: ObjectStore, url: str) -> None:
        self.store = store
        self.name = url
        info = store.info(url)
        self.size = int(info.get("size") or 0)
        self.version = object_version(info)
        self._checked_in: int | None = os.getpid()

    @property
    def identity(self) -> str:
        # docstring inherited
        return self.version

    def check(self) -> None:
        # docstring inherited
        if self._checked_in == os.getpid():
            return
        if object_version(self.store.info(self.name)) != self.version:
            raise CorruptStoreError(
                f"'{self.name}' was replaced after this reader opened it; open the store again"
            )
        self._checked_in = os.getpid()

    def _short(self, offset: int, got: int) -> CorruptStoreError:
        return CorruptStoreError(
            f"'{self.name}' ends at byte {offset + got}, inside a block being read (replaced "
            "or cut short?); upload the store again with seqstore convert"
        )

    def read(self, offset: int, length: int) -> bytes | bytearray:
        # docstring inherited
        if length <= 0:
            return b""
        self.check()
        data = self.store.cat(self.name, offset, offset + length)
        if len(data) != length:
            raise self._short(offset, len(data))
        return data

    def read_extents(self, extents: Sequence[tuple[int, int]], gap: int = GAP) -> list[memoryview]:
        """The bytes of each extent, in the order given: :func:`coalesce`'s runs, one GET
        each."""
        runs = coalesce(extents, gap)
        if runs:
            self.check()
        datas = self.store.cat_ranges(self.name, runs) if runs else []
        for (offset, length), data in zip(runs, datas, strict=True):
            if len(data) != length:
                raise self._short(offset, len(data))
        return split_runs(extents, runs, datas)

    def close(self) -> None:
        """Forget the check: the next read looks the object up again."""
        self._checked_in = None

    def download(self, local: str | os.PathLike[str]) -> None:
        """Copy the whole object to the local file ``local``.

        Raises
        ------
        CorruptStoreError
            The object changed while it was copied.
        """
        self.store.get_file(self.name, local)
        if os.stat(local).st_size != self.size or (
            object_version(self.store.info(self.name)) != self.version
        ):
            raise CorruptStoreError(f"'{self.name}' changed while it was downloaded")
