"""Ranged GETs straight over HTTP (urllib3), around fsspec, for stores in S3 or at http(s) URLs.

fsspec's S3 filesystem (s3fs, over aiobotocore and aiohttp on an event loop in a thread)
spends about 3 ms of CPU per MB it reads, on the cores that decode the images; a GET made
with urllib3 into a buffer of the right size spends about 0.3 ms per MB. So a remote
store's byte ranges are fetched here: from S3 through a URL that the filesystem presigns
(with the usual credentials, once per object and process family, and again before it
expires), from http(s) URLs as they are. Anything else goes through fsspec: other
protocols, options this path cannot honour (proxies, requester-pays ...), and
any answer it does not expect (no such object, access denied, TLS failure), so that the
errors a user meets, and their one line, stay fsspec's.

:class:`PresignedGets` raises :class:`UseFsspec` to hand a request over, an exception with an
HTTP ``status`` for a server error that a retry may mend, and urllib3's own exceptions for
a failed connection (both retried by :meth:`~seqstore.io.object.ObjectStore.call`).
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

__all__ = ["PresignedGets", "ServerError", "UseFsspec", "presigned_gets", "transient_status"]

# How long a presigned URL is valid, and how long before that it is signed again.
SIGN_S = 3600
RENEW_S = 600
# storage_options that a presigned GET honours as s3fs would (everything else: fsspec).
_S3_OPTIONS = {"key", "secret", "token", "anon", "endpoint_url", "client_kwargs", "profile"}
_S3_CLIENT_OPTIONS = {"endpoint_url", "region_name", "verify"}
# Proxies, which s3fs and fsspec's http follow and urllib3 does not.
_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def transient_status(status: int) -> bool:
    """Whether a request answered with HTTP ``status`` may succeed if tried again: 5xx,
    408 (request timeout) and 429 (too many requests)."""
    return status >= 500 or status in (408, 429)


class UseFsspec(Exception):
    """This request goes through fsspec instead (the reason is the message). ``lasting``:
    so do all later ones of this store (a refusal, a TLS failure, no way to presign); not
    for a request this path does not make, or a missing object, which fsspec then names."""

    def __init__(self, reason: str, *, lasting: bool = True) -> None:
        super().__init__(reason)
        self.lasting = lasting


class ServerError(Exception):
    """The server answered with an error that a retry may mend (5xx, 408, 429)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from the server for '{url}'")
        self.status = status


# This process's connection pool (one per process: a pool is not shared over fork), and
# presigned URLs by (store URL, options), shared with forked children, which then need no
# filesystem of their own to read.
_pools: dict[tuple[int, str], Any] = {}
_signed: dict[tuple[str, str], tuple[str, float]] = {}
_lock = threading.Lock()


def presigned_gets(remote: Any) -> PresignedGets | None:
    """Presigned GETs for an :class:`~seqstore.io.object.ObjectStore`, or None where it
    cannot stand in for the remote's filesystem (given its protocol and options)."""
    protocol, storage_options = remote.protocol, remote.storage_options
    if any(os.environ.get(name) or os.environ.get(name.lower()) for name in _ENV):
        return None
    try:
        import urllib3  # noqa: F401 - installed with botocore and requests
    except ImportError:
        return None
    if protocol in ("http", "https"):
        return None if storage_options else PresignedGets(None, {})
    if protocol in ("s3", "s3a"):
        client = storage_options.get("client_kwargs", {})
        if set(storage_options) - _S3_OPTIONS or set(client) - _S3_CLIENT_OPTIONS:
            return None
        # TLS as botocore does it: client_kwargs' verify, else AWS_CA_BUNDLE.
        verify = client.get("verify", os.environ.get("AWS_CA_BUNDLE") or True)
        tls: dict[str, Any] = (
            {"cert_reqs": "CERT_NONE"}
            if verify is False
            else {"ca_certs": verify}
            if isinstance(verify, str)
            else {}
        )
        return PresignedGets(remote, tls)
    return None


class PresignedGets:
    """Ranged GETs of objects, over one urllib3 pool per process.

    Parameters
    ----------
    signer
        The :class:`~seqstore.io.object.ObjectStore` whose filesystem (``signer.fs``)
        presigns S3 URLs; None: URLs are fetched as they are (http and https).
    tls
        urllib3's certificate options (``ca_certs``, ``cert_reqs``); empty: its defaults.
    """

    def __init__(self, signer: Any | None, tls: dict[str, Any]) -> None:
        self._signer = signer
        self._tls = tls
        self._key = "" if signer is None else repr(sorted(signer.storage_options.items()))

    def _pool(self) -> Any:
        import urllib3

        key = (os.getpid(), repr(sorted(self._tls.items())))
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = urllib3.PoolManager(
                maxsize=4,
                retries=False,  # ObjectStore.call retries
                timeout=urllib3.Timeout(connect=10.0, read=60.0),
                **self._tls,
            )
        return pool

    def _url(self, url: str, renew: bool = False) -> str:
        if self._signer is None:
            return url
        key = (url, self._key)
        with _lock:
            signed = _signed.get(key)
        if signed is None or renew or signed[1] - time.time() < RENEW_S:
            expires = time.time() + SIGN_S
            try:
                fresh: str = self._signer.fs.sign(url, expiration=SIGN_S)
            except Exception as exc:  # anonymous access or an old s3fs: fsspec reads then
                raise UseFsspec(f"cannot presign '{url}': {exc}") from None
            signed = (fresh, expires)
            with _lock:
                _signed[key] = signed
        return signed[0]

    def _request(self, url: str, start: int, end: int) -> Any:
        """The response to ``GET url`` for bytes ``[start, end)``, its body not yet read;
        presigned again once if the server refuses an old signature."""
        import urllib3

        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        for renew in (False, True):
            try:
                response = self._pool().urlopen(
                    "GET",
                    self._url(url, renew),
                    headers=headers,
                    preload_content=False,
                    redirect=False,
                )
            except urllib3.exceptions.SSLError as exc:
                raise UseFsspec(f"TLS: {exc}") from None
            if response.status != 403 or self._signer is None or renew:
                return response
            response.drain_conn()
            response.release_conn()
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, url: str, start: int, end: int) -> bytearray:
        """Bytes ``[start, end)`` of the object ``url`` (fewer where it ends first)."""
        import urllib3

        response = self._request(url, start, end)
        try:
            status = response.status
            if status == 416:  # the range starts past the end: the caller names it
                return bytearray()
            if transient_status(status):
                raise ServerError(status, url)
            if status != 206:  # not found, refused, or the range ignored
                raise UseFsspec(f"HTTP {status}", lasting=status != 404)
            length = int(response.headers.get("Content-Length", -1))
            if not 0 <= length <= end - start:
                raise UseFsspec(f"Content-Length {length} for {end - start} bytes")
            buffer = bytearray(length)
            view = memoryview(buffer)
            got = 0
            while got < length:
                n = response.readinto(view[got:])
                if not n:
                    raise urllib3.exceptions.ProtocolError(
                        f"connection closed after {got} of {length} bytes of '{url}'"
                    )
                got += n
            return buffer
        finally:
            response.release_conn()

    def info(self, url: str) -> dict[str, Any]:
        """The object's ``size`` and ``ETag``, from a GET of its first byte (S3 only: what
        fsspec's other filesystems report as the version differs)."""
        if self._signer is None:
            raise UseFsspec("info over fsspec", lasting=False)
        response = self._request(url, 0, 1)
        try:
            if transient_status(response.status):
                raise ServerError(response.status, url)
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if response.status != 206 or match is None:
                raise UseFsspec(f"HTTP {response.status}", lasting=response.status != 404)
            response.drain_conn()
            return {"size": int(match[3]), "ETag": response.headers.get("ETag", "")}
        finally:
            response.release_conn()
