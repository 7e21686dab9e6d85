"""Where bytes come from, knowing no format.

A :class:`~seqstore.io.ranges.Source` is one file read by byte range: a local file
(:mod:`.local`: ``pread``, ``O_DIRECT``, page-cache residency), an object in object storage
(:mod:`.object`: ranged GETs with retries, :mod:`.presigned` over urllib3 where it can,
:mod:`.retry` for what a retry mends), or a cached local copy of one (:mod:`.cached`, over
the bounded cache of :mod:`.cache`). A :class:`~seqstore.io.places.Place` opens a store's
files by name wherever they are; :mod:`.fileobj` makes a source a file object for libraries
that want one.
"""

from __future__ import annotations

from .places import LocalPlace, ObjectPlace, Place, is_url
from .ranges import GAP, Source

__all__ = ["GAP", "LocalPlace", "ObjectPlace", "Place", "Source", "is_url"]
