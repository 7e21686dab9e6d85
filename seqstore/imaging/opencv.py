"""OpenCV, imported quietly: every part of seqstore that decodes takes ``cv2`` from here.

Importing this module sets OpenCV's own logging to errors only, unless ``OPENCV_LOG_LEVEL``
is set: libpng and libjpeg warn on stderr about harmless things (an sRGB profile, padding
after the end marker) once per file, which buries a conversion's output under hundreds of
lines; the errors that matter reach the caller as :class:`~seqstore.errors.BadImageError`
instead.

It also stops OpenCV's thread pool across every ``fork()`` of the process: a child gets no
copy of the pool's threads, and its first OpenCV call that uses or resizes the pool (a
worker's ``cv2.setNumThreads(1)``, a ``cv2.resize``) would wait for them forever. A user's
own ``cv2.resize`` of a large image before a Loader forks its workers would otherwise hang
them.
"""

from __future__ import annotations

import os

# Read when OpenCV is first imported, here or in a spawned worker process that imports this
# module; a user's own setting wins.
_QUIET = "OPENCV_LOG_LEVEL" not in os.environ
if _QUIET:
    os.environ["OPENCV_LOG_LEVEL"] = "ERROR"

import cv2  # noqa: E402

if _QUIET:
    # OpenCV may have been imported before this module, when the variable comes too late.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

__all__ = ["cv2", "cv2_reason"]

_threads_before_fork = 0


def _stop_threads() -> None:
    """Before a fork: OpenCV's pool stopped (its threads joined), its size kept."""
    global _threads_before_fork
    _threads_before_fork = cv2.getNumThreads()
    if _threads_before_fork != 1:
        cv2.setNumThreads(1)


def _restore_threads() -> None:
    """After a fork, in both processes: the pool's size as it was; threads start on use."""
    if _threads_before_fork != 1:
        cv2.setNumThreads(_threads_before_fork)


os.register_at_fork(
    before=_stop_threads, after_in_parent=_restore_threads, after_in_child=_restore_threads
)


def cv2_reason(exc: Exception) -> str:
    """The one line of a ``cv2.error`` that says what failed, without OpenCV's source location.

    Parameters
    ----------
    exc
        The exception OpenCV raised.

    Returns
    -------
    str
        The last non-empty line of its message, after OpenCV's ``" error: "`` prefix.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text.split(" error: ", 1)[-1]
