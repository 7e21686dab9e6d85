"""What an encoded image is, read from its header without decoding it.

Conversion checks every source file, so the check has to cost far less than reading the file:
the JPEG and PNG headers give the kind, the size and the colour channels, and the end markers
tell a truncated file from a whole one. Other formats that OpenCV decodes (BMP, TIFF, WebP,
PPM/PGM) are recognised by their magic bytes, sized from their headers, and checked by a real
decode, as they are rare in image datasets.

Every size is checked against a pixel limit before anything is decoded: a header that claims
65000x65000 pixels would otherwise have the decoder allocate gigabytes, or OpenCV raise its own
error. The default limit is PIL's (:data:`MAX_PIXELS`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import BadImageError

__all__ = ["MAX_PIXELS", "ImageInfo", "check_pixels", "header_size", "is_apng", "probe"]

#: Images with more pixels are refused: PIL's decompression-bomb limit (twice
#: ``PIL.Image.MAX_IMAGE_PIXELS``), above which ``Image.open`` raises.
MAX_PIXELS = 2 * 89_478_485

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_EXTENSION_FORMATS = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".bmp": "bmp",
    ".ppm": "pnm",
    ".pgm": "pnm",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
}


@dataclass(frozen=True)
class ImageInfo:
    """The header facts of one encoded image.

    Attributes
    ----------
    format : str
        ``"jpeg"``, ``"png"``, ``"bmp"``, ``"pnm"``, ``"tiff"`` or ``"webp"``.
    width, height : int
        Size in pixels, before any EXIF rotation.
    channels : int
        Colour components as stored: 1 (grey), 2 (grey+alpha), 3, or 4 (RGBA, or CMYK for JPEG).
    progressive : bool
        True for progressive JPEGs.
    bits : int
        Bits per sample as stored (8 for nearly every image; 12 or 16 for some JPEG, PNG,
        TIFF and PGM files).
    animated : bool
        True for an animated PNG (APNG); decoders that read it show its first frame.
    """

    format: str
    width: int
    height: int
    channels: int
    progressive: bool = False
    bits: int = 8
    animated: bool = False

    @property
    def cmyk(self) -> bool:
        """True for a four-component (CMYK or YCCK) JPEG."""
        return self.format == "jpeg" and self.channels == 4


def probe(
    data: bytes | memoryview, name: str = "<bytes>", *, max_pixels: int | None = MAX_PIXELS
) -> ImageInfo:
    """Read the kind, size and channels of an encoded image from its header.

    Parameters
    ----------
    data
        The encoded file, whole.
    name
        What to call the file in an error message (its path or key).
    max_pixels
        Refuse images with more pixels than this (checked before any decoding); None for no
        limit of seqstore's own (OpenCV still refuses more than 2**30).

    Returns
    -------
    ImageInfo

    Raises
    ------
    BadImageError
        The bytes are empty, truncated, not an image format seqstore reads, a 12-bit JPEG,
        or an image over ``max_pixels``.
    """
    buf = bytes(data[:16])
    if len(data) == 0:
        raise BadImageError(
            f"image '{name}' is an empty (zero-byte) file; "
            "re-copy it from the original or pass on_error='skip' to leave it out"
        )
    if buf[:2] == b"\xff\xd8":
        return check_pixels(_probe_jpeg(memoryview(data), name), name, max_pixels)
    if buf[:8] == _PNG_MAGIC:
        return check_pixels(_probe_png(memoryview(data), name), name, max_pixels)
    fmt = _other_format(buf)
    if fmt is None:
        raise BadImageError(
            f"'{name}' is not an image (starts with {buf[:8]!r}); "
            "remove it from the source or pass on_error='skip' to leave it out"
        )
    size = _other_size(memoryview(data), fmt)
    if size is not None:
        check_pixels(ImageInfo(fmt, *size, channels=0), name, max_pixels)
    return check_pixels(_probe_by_decoding(data, fmt, name), name, max_pixels)


def header_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` as the header states it, without decoding or checking the file.

    Parameters
    ----------
    data
        The encoded file (its first bytes suffice for every format but JPEG, whose frame
        header can follow large metadata segments).

    Returns
    -------
    tuple of int or None
        None when the bytes are not a format seqstore reads or the header is cut short.
    """
    mv = memoryview(data)
    head = bytes(mv[:16])
    if head[:2] == b"\xff\xd8":
        info = _jpeg_frame(mv)
        return None if info is None else (info.width, info.height)
    if head[:8] == _PNG_MAGIC:
        if len(mv) < 24:
            return None
        width, height = struct.unpack_from(">II", mv, 16)
        return width, height
    fmt = _other_format(head)
    return None if fmt is None else _other_size(mv, fmt)


def check_pixels(info: ImageInfo, name: str, max_pixels: int | None) -> ImageInfo:
    """Return ``info``, or raise :class:`BadImageError` when the image exceeds ``max_pixels``.

    Parameters
    ----------
    info
        The image's header facts.
    name
        What to call the file in an error message.
    max_pixels
        The limit; None for none.

    Returns
    -------
    ImageInfo
        ``info`` itself.

    Raises
    ------
    BadImageError
        ``info.width * info.height`` is over ``max_pixels``.
    """
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise BadImageError(
            f"image '{name}' claims {info.width}x{info.height} pixels, over the limit of "
            f"{max_pixels:,} (a decompression bomb or a corrupt header); pass on_error='skip' "
            "to leave it out, or raise max_pixels if the image is real"
        )
    return info


def extension_format(name: str) -> str | None:
    """The image format a file name's extension promises, or None for other extensions."""
    dot = name.rfind(".")
    return _EXTENSION_FORMATS.get(name[dot:].lower()) if dot >= 0 else None


def _jpeg_segments(mv: memoryview) -> Iterator[tuple[int, int]]:
    """``(position, marker)`` of each header segment of a JPEG, up to its start of scan.

    Fill bytes and the markers that stand alone are passed over. A byte that should be a
    marker and is not ends the walk with marker -1.
    """
    n = len(mv)
    pos = 2
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            yield pos, -1
            return
        marker = mv[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        yield pos, marker
        if marker == 0xDA:
            return
        pos += 2 + struct.unpack_from(">H", mv, pos + 2)[0]


def _jpeg_frame_at(mv: memoryview, pos: int, marker: int) -> ImageInfo | None:
    """The frame header at ``pos`` (size, components, precision); None if cut short."""
    if pos + 10 > len(mv):
        return None
    height, width = struct.unpack_from(">HH", mv, pos + 5)
    return ImageInfo(
        "jpeg", width, height, mv[pos + 9], progressive=marker == 0xC2, bits=mv[pos + 4]
    )


def _jpeg_frame(mv: memoryview) -> ImageInfo | None:
    """The JPEG's frame header, or None if none is found."""
    for pos, marker in _jpeg_segments(mv):
        if marker in _JPEG_SOF:
            return _jpeg_frame_at(mv, pos, marker)
    return None


def _probe_jpeg(mv: memoryview, name: str) -> ImageInfo:
    n = len(mv)
    info: ImageInfo | None = None
    for pos, marker in _jpeg_segments(mv):
        if marker == -1:
            raise BadImageError(f"JPEG '{name}' has a corrupt header (no marker at byte {pos})")
        if marker in _JPEG_SOF:
            info = _jpeg_frame_at(mv, pos, marker)
            if info is None:
                break
            if info.bits != 8:
                # libjpeg-turbo reads 12-bit data only through a separate API that neither
                # OpenCV's decoder nor PIL's uses: training would fail on it at decode time.
                raise BadImageError(
                    f"JPEG '{name}' has {info.bits}-bit samples, which neither OpenCV nor PIL "
                    "decodes; re-save it as an 8-bit JPEG or pass on_error='skip' to leave it out"
                )
        elif marker == 0xDA:  # start of scan: entropy-coded data follows, header is over
            if info is None:
                raise BadImageError(f"JPEG '{name}' has no frame header before its image data")
            # A whole JPEG ends with EOI; some writers append padding or trailers after it.
            if bytes(mv[max(pos, n - 4096) :]).rfind(b"\xff\xd9") < 0:
                raise BadImageError(
                    f"JPEG '{name}' is truncated ({n} bytes, no end-of-image marker); "
                    "re-copy it from the original or pass on_error='skip' to leave it out"
                )
            if info.width == 0 or info.height == 0:
                raise BadImageError(
                    f"JPEG '{name}' declares a zero size ({info.width}x{info.height})"
                )
            return info
    raise BadImageError(
        f"JPEG '{name}' is truncated ({n} bytes, header incomplete); "
        "re-copy it from the original or pass on_error='skip' to leave it out"
    )


def _probe_png(mv: memoryview, name: str) -> ImageInfo:
    if len(mv) < 33 or bytes(mv[12:16]) != b"IHDR":
        raise BadImageError(f"PNG '{name}' is truncated or has no IHDR header")
    width, height = struct.unpack_from(">II", mv, 16)
    bits, color_type = mv[24], mv[25]
    if bytes(mv[-12:]).find(b"IEND") < 0:
        raise BadImageError(
            f"PNG '{name}' is truncated ({len(mv)} bytes, no IEND chunk); "
            "re-copy it from the original or pass on_error='skip' to leave it out"
        )
    return ImageInfo(
        "png", width, height, _PNG_CHANNELS.get(color_type, 3), bits=bits, animated=is_apng(mv)
    )


def is_apng(mv: memoryview | bytes) -> bool:
    """Whether a PNG file is animated: an acTL chunk (animation control) precedes its image
    data, as APNG requires."""
    mv = memoryview(mv)
    pos = 8
    while pos + 8 <= len(mv):
        length = struct.unpack_from(">I", mv, pos)[0]
        kind = bytes(mv[pos + 4 : pos + 8])
        if kind == b"acTL":
            return True
        if kind == b"IDAT":
            return False
        pos += 12 + length
    return False


def _other_format(head: bytes) -> str | None:
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:1] == b"P" and head[1:2] in (b"5", b"6"):
        return "pnm"
    return None


def _other_size(mv: memoryview, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` from a BMP, TIFF, WebP or PNM header; None if it cannot be read."""
    try:
        if fmt == "bmp":
            if struct.unpack_from("<I", mv, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack_from("<HH", mv, 18)
            else:
                width, height = struct.unpack_from("<ii", mv, 18)
            return abs(width), abs(height)  # a negative height means rows stored top-down
        if fmt == "pnm":
            fields = _pnm_fields(bytes(mv[:512]), 3)
            return None if fields is None else (fields[1], fields[2])
        if fmt == "webp":
            return _webp_size(mv)
        return _tiff_size(mv)
    except struct.error:  # header cut short
        return None


def _pnm_fields(head: bytes, count: int) -> list[int] | None:
    """The first ``count`` numbers of a PNM header (width, height, maxval), comments skipped."""
    tokens: list[int] = []
    for line in head[2:].split(b"\n"):
        for token in line.split(b"#", 1)[0].split():
            if not token.isdigit():
                return None
            tokens.append(int(token))
            if len(tokens) == count:
                return tokens
    return None


def _webp_size(mv: memoryview) -> tuple[int, int] | None:
    chunk = bytes(mv[12:16])
    if chunk == b"VP8X":
        w = int.from_bytes(mv[24:27], "little") + 1
        h = int.from_bytes(mv[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", mv, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", mv, 26)
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(mv: memoryview) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of a TIFF's first directory."""
    order = "<" if bytes(mv[:2]) == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", mv, 4)
    (count,) = struct.unpack_from(order + "H", mv, offset)
    size: dict[int, int] = {}
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from(order + "HH", mv, entry)
        if tag in (256, 257):
            # SHORT (3) or LONG (4), stored left-aligned in the value field.
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), mv, entry + 8)[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _probe_by_decoding(data: bytes | memoryview, fmt: str, name: str) -> ImageInfo:
    # Imported here: probing JPEGs and PNGs, nearly every image, needs no OpenCV.
    from .opencv import cv2, cv2_reason

    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # a header OpenCV refuses (say, a size over its own limit)
        raise BadImageError(
            f"{fmt.upper()} '{name}' cannot be decoded by OpenCV ({cv2_reason(exc)}); "
            "pass on_error='skip' to leave it out"
        ) from None
    if img is None:
        raise BadImageError(
            f"{fmt.upper()} '{name}' cannot be decoded; "
            "re-copy it from the original or pass on_error='skip' to leave it out"
        )
    channels = 1 if img.ndim == 2 else int(img.shape[2])
    bits = 8 * img.dtype.itemsize
    return ImageInfo(fmt, int(img.shape[1]), int(img.shape[0]), channels, bits=bits)
