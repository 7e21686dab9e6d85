"""LMDB's file read page by page, without LMDB: over any byte source.

LMDB's on-disk structures (mdb.c) are unchanged since its first release: two meta pages, then
pages of a B-tree. A page starts with its number (8 bytes) and, at byte 10, its flags; a
leaf node is its data size (two 16-bit halves), flags and key size, then the key, then the
value, or, for a value too big for the leaf (``F_BIGDATA``), the number of its first
overflow page, where the value lies whole after the page header.

:class:`PageTree` finds where each value of a run of keys lies in the file by reading branch
and leaf pages only, never a value's own pages: a block's values are then read as extents
of the file (:meth:`~seqstore.io.ranges.Source.read_extents`), from a disk or from object
storage alike. Every page number is checked against the meta page's last page and the
file's size, so damaged pages give None (or one error), never a read out of bounds.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence

import lmdb
import numpy as np

from ...errors import CorruptStoreError
from ...io.ranges import Source

__all__ = ["HEAD_BYTES", "PAGE_HEADER", "PageTree", "Value", "cursor_extent", "read_meta"]

_PAGE_FLAGS = struct.Struct("<QHH")  # page number, padding, flags
_PAGE_BOUNDS = struct.Struct("<HH")  # at byte 12: the end of the node offsets, of free space
_NODE = struct.Struct("<HHHH")  # size low, size high, flags, key size
_P_BRANCH, _P_LEAF, _F_BIGDATA, PAGE_HEADER = 0x01, 0x02, 0x01, 16
_META = struct.Struct("<QQQ")  # at byte 128 of a meta page: main root, last page, txn id
_MAGIC = 0xBEEFC0DE  # at byte 16 of a meta page
#: Enough of a file's head to hold both meta pages at LMDB's largest page size.
HEAD_BYTES = 2 * 65536

#: A value: its extent ``(start, end)`` in the file, or its bytes where it lives in its leaf.
Value = tuple[int, int] | bytes


def read_meta(
    head: bytes | bytearray | memoryview, size: int, name: str, remedy: str
) -> tuple[int, int, int]:
    """The page size, the main tree's root page and the number of pages of an LMDB file,
    from its first :data:`HEAD_BYTES` bytes (``head``) and its ``size``.

    Raises
    ------
    CorruptStoreError
        The meta pages are missing or not LMDB's, or the file is shorter than they say
        (mapping it would crash the process on SIGBUS).
    """
    psize = struct.unpack_from("<I", head, 40)[0] if len(head) >= 44 else 0
    metas = []
    for page in (0, 1):
        off = page * psize
        if (
            psize < 512
            or off + 152 > len(head)
            or struct.unpack_from("<I", head, off + 16)[0] != _MAGIC
        ):
            raise CorruptStoreError(
                f"'{name}' is not a whole LMDB file (its meta pages are missing or damaged); "
                f"{remedy}"
            )
        metas.append(_META.unpack_from(head, off + 128))
    root, last, _ = max(metas, key=lambda meta: meta[2])
    if size < (last + 1) * psize:
        raise CorruptStoreError(
            f"LMDB file '{name}' is truncated ({size} bytes; its pages need "
            f"{(last + 1) * psize}); {remedy}"
        )
    return psize, root, last + 1


def cursor_extent(cursor: lmdb.Cursor, key: bytes, psize: int) -> tuple[int, int] | None:
    """Where the value of ``key`` lies in the data file, ``(start, end)``, read from its
    leaf node without touching the value's own pages; None if the node is not as expected.

    A value on overflow pages lies from its first page on; one kept in the leaf is counted
    as its whole leaf page.
    """
    if not cursor.set_key(key):
        return None
    address = int(np.frombuffer(cursor.key(), np.uint8).ctypes.data)
    page = address - address % psize
    pgno, _, page_flags = _PAGE_FLAGS.unpack(ctypes.string_at(page, _PAGE_FLAGS.size))
    node = ctypes.string_at(address - _NODE.size, _NODE.size + len(key) + 8)
    low, high, flags, key_size = _NODE.unpack_from(node)
    if not page_flags & _P_LEAF or key_size != len(key) or node[_NODE.size : -8] != key:
        return None
    if not flags & _F_BIGDATA:
        return pgno * psize, (pgno + 1) * psize
    overflow = struct.unpack_from("<Q", node, _NODE.size + len(key))[0]
    start = overflow * psize + PAGE_HEADER
    return start, start + (low | high << 16)


class PageTree:
    """The main B-tree of an LMDB file, read a page at a time.

    Parameters
    ----------
    read_page
        The bytes of page ``pgno`` (``psize`` bytes).
    psize, root, pages
        The page size, the root's page number and the number of pages (:func:`read_meta`).
    """

    def __init__(
        self, read_page: Callable[[int], bytes], psize: int, root: int, pages: int
    ) -> None:
        self.read_page = read_page
        self.psize, self.root, self.pages = psize, root, pages
        self._branches: dict[int, tuple[list[bytes], list[int]]] = {}

    @classmethod
    def of(
        cls, source: Source, remedy: str, *, cache_pages: int = 4096, ahead: int = 256 << 10
    ) -> PageTree:
        """The tree of the LMDB file ``source``, its pages read through an LRU of
        ``cache_pages`` pages (branch pages are read for every lookup).

        A page missing from it is read with the pages that follow it, ``ahead`` bytes in
        all, in one read: LMDB appends the leaves of ordered keys in file order, so that the
        next leaf a block needs is most often among them (a store of small records has a
        leaf per few records).
        """
        head = source.read(0, min(HEAD_BYTES, source.size))
        psize, root, pages = read_meta(head, source.size, source.name, remedy)
        kept: OrderedDict[int, bytes] = OrderedDict()
        run = max(1, ahead // psize)

        def read_page(pgno: int) -> bytes:
            page = kept.get(pgno)
            if page is not None:
                kept.move_to_end(pgno)
                return page
            count = max(1, min(run, pages - pgno))
            data = bytes(source.read(pgno * psize, count * psize))
            for i in range(count):
                kept[pgno + i] = data[i * psize : (i + 1) * psize]
                kept.move_to_end(pgno + i)
            while len(kept) > cache_pages:
                kept.popitem(last=False)
            return kept[pgno]

        return cls(read_page, psize, root, pages)

    def _nodes(self, pgno: int) -> tuple[int, bytes, list[int]] | None:
        if not 1 < pgno < self.pages:
            return None
        page = self.read_page(pgno)
        number, _, flags = _PAGE_FLAGS.unpack_from(page)
        lower = _PAGE_BOUNDS.unpack_from(page, 12)[0]
        if number != pgno or not PAGE_HEADER <= lower <= self.psize:
            return None
        offsets = list(struct.unpack_from(f"<{(lower - PAGE_HEADER) // 2}H", page, PAGE_HEADER))
        if offsets and not (lower <= min(offsets) and max(offsets) <= self.psize - _NODE.size):
            return None
        return flags, page, offsets

    def _branch(self, pgno: int, page: bytes, offsets: list[int]) -> tuple[list[bytes], list[int]]:
        """Branch page ``pgno``'s separators (of its children from the second on) and its
        children's page numbers, kept: every lookup passes the same few branches."""
        separators, children = [], []
        for i, offset in enumerate(offsets):
            low, high, top, size = _NODE.unpack_from(page, offset)
            if i:
                separators.append(page[offset + _NODE.size : offset + _NODE.size + size])
            children.append(low | high << 16 | top << 32)
        if len(self._branches) >= 4096:
            self._branches.clear()
        self._branches[pgno] = separators, children
        return separators, children

    def leaf(self, key: bytes) -> list[tuple[bytes, Value]] | None:
        """The records of the leaf page where ``key`` belongs, in key order: each key with
        its :data:`Value`. None if a page is not as expected."""
        pgno = self.root
        for _ in range(64):  # deeper than any real tree: a loop in damaged pages
            branch = self._branches.get(pgno)
            if branch is None:
                found = self._nodes(pgno)
                if found is None:
                    return None
                flags, page, offsets = found
                if flags & _P_LEAF:
                    return self._leaf(page, offsets)
                if not flags & _P_BRANCH or not offsets:
                    return None
                branch = self._branch(pgno, page, offsets)
            separators, children = branch
            # The last child whose separator is <= key; the first child has none.
            pgno = children[bisect.bisect_right(separators, key)]
        return None

    def _leaf(self, page: bytes, offsets: list[int]) -> list[tuple[bytes, Value]] | None:
        out: list[tuple[bytes, Value]] = []
        for offset in offsets:
            low, high, flags, key_size = _NODE.unpack_from(page, offset)
            start = offset + _NODE.size
            key, size = page[start : start + key_size], low | high << 16
            if start + key_size + (8 if flags & _F_BIGDATA else size) > self.psize:
                return None
            if flags & _F_BIGDATA:
                overflow = struct.unpack_from("<Q", page, start + key_size)[0]
                begin = overflow * self.psize + PAGE_HEADER
                if overflow >= self.pages or begin + size > self.pages * self.psize:
                    return None
                out.append((key, (begin, begin + size)))
            else:
                out.append((key, page[start + key_size : start + key_size + size]))
        return out

    def values(self, keys: Sequence[bytes]) -> list[Value] | None:
        """The values of ``keys``, in the order given: a run of keys that lie together in
        the tree costs one leaf lookup per leaf. None if a key is missing or a page is not
        as expected."""
        out: list[Value] = []
        while len(out) < len(keys):
            want = keys[len(out)]
            leaf = self.leaf(want)
            found = [key for key, _ in leaf] if leaf is not None else []
            if leaf is None or want not in found:
                return None
            for key, value in leaf[found.index(want) :]:
                if len(out) == len(keys) or key != keys[len(out)]:
                    break
                out.append(value)
        return out

    def get(self, key: bytes, source: Source) -> bytes | None:
        """The value of ``key``, read from ``source`` where it lies on overflow pages; None
        if there is no such key (or a page is not as expected)."""
        found = self.values([key])
        if found is None:
            return None
        value = found[0]
        if isinstance(value, tuple):
            return bytes(source.read(value[0], value[1] - value[0]))
        return value
