"""Which failures of a request to object storage a retry may mend, and how to retry.

Transient: timeouts, broken connections, HTTP 5xx, 408 and 429, "SlowDown", and the client
libraries' own connection and timeout errors. Permanent: no such bucket or object, access
denied, an invalid request. :meth:`seqstore.io.object.ObjectStore.call` retries the first
with :class:`RetryPolicy`'s backoff and turns the second into one line.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass

from .presigned import transient_status

__all__ = ["PERMANENT_CODES", "RetryPolicy", "http_status", "is_transient", "one_line"]

# Client libraries whose own exceptions (not OSError subclasses) mean the connection or the
# server failed: a retry may succeed.
_NETWORK_MODULES = ("aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "http", "google")
# ... and the words in the names of those exceptions (not, say, botocore's
# ParamValidationError, which no retry mends).
_NETWORK_WORDS = (
    "Connect",
    "Timeout",
    "Disconnect",
    "Endpoint",
    "HTTPClientError",
    "Payload",
    "Protocol",
    "IncompleteRead",
    "ResponseStreaming",
    "ServerError",
    "ClientOSError",
)
PERMANENT_CODES = (
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "NoSuchKey",
    "InvalidBucketName",
    "AllAccessDisabled",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a request is tried again after a transient failure.

    Attributes
    ----------
    attempts : int
        Tries in all, the first included.
    base_s : float
        The wait before the second try; each wait doubles, with +-25 % jitter so that the
        workers of a loader do not retry in step.
    max_wait_s : float
        The longest single wait.
    """

    attempts: int = 10
    base_s: float = 0.25
    max_wait_s: float = 8.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait after the failure of try ``attempt`` (0-based)."""
        return min(self.max_wait_s, self.base_s * 2**attempt) * random.uniform(0.75, 1.25)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        if isinstance(meta.get("HTTPStatusCode"), int):
            return int(meta["HTTPStatusCode"])
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a request that raised ``exc`` may succeed if tried again.

    Permanent: no such object or bucket (``FileNotFoundError``), access denied
    (``PermissionError``), an invalid request (``EINVAL``), any HTTP 4xx but 408 and 429.
    Transient: timeouts, broken connections, HTTP 5xx, 408, 429, "SlowDown", and the
    client libraries' own connection and timeout errors. Anything else (an invalid
    parameter, a bug) is not retried.
    """
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    text = str(exc)
    if any(code in text for code in PERMANENT_CODES):
        return False
    status = http_status(exc)
    if status is not None:
        return transient_status(status)
    if "SlowDown" in text or "reduce your request rate" in text:
        return True
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in (errno.EINVAL, errno.ENOENT, errno.EACCES, errno.EPERM)
    module = type(exc).__module__.split(".")[0]
    name = type(exc).__name__
    return module in _NETWORK_MODULES and any(word in name for word in _NETWORK_WORDS)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line of at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
