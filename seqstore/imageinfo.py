"""What an encoded image is, read from its header without decoding it.

Conversion checks every source file, so the check has to cost far less than reading the file:
the JPEG and PNG headers give the kind, the size and the colour channels, and the end markers
tell a truncated file from a whole one. Other formats that OpenCV decodes (BMP, TIFF, WebP,
PPM/PGM) are recognised by their magic bytes and sized by a real decode, as they are rare in
image datasets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import BadImageError

__all__ = ["ImageInfo", "probe"]

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
    """

    format: str
    width: int
    height: int
    channels: int
    progressive: bool = False

    @property
    def cmyk(self) -> bool:
        """True for a four-component (CMYK or YCCK) JPEG."""
        return self.format == "jpeg" and self.channels == 4


def probe(data: bytes | memoryview, name: str = "<bytes>") -> ImageInfo:
    """Read the kind, size and channels of an encoded image from its header.

    Parameters
    ----------
    data
        The encoded file, whole.
    name
        What to call the file in an error message (its path or key).

    Returns
    -------
    ImageInfo

    Raises
    ------
    BadImageError
        The bytes are empty, truncated, or not an image format seqstore reads.
    """
    buf = bytes(data[:16])
    if len(data) == 0:
        raise BadImageError(
            f"image '{name}' is an empty (zero-byte) file; "
            "re-copy it from the original or use --on-error skip to leave it out"
        )
    if buf[:2] == b"\xff\xd8":
        return _probe_jpeg(memoryview(data), name)
    if buf[:8] == _PNG_MAGIC:
        return _probe_png(memoryview(data), name)
    fmt = _other_format(buf)
    if fmt is None:
        raise BadImageError(
            f"'{name}' is not an image (starts with {buf[:8]!r}); "
            "remove it from the source or use --on-error skip to leave it out"
        )
    return _probe_by_decoding(data, fmt, name)


def extension_format(name: str) -> str | None:
    """The image format a file name's extension promises, or None for other extensions."""
    dot = name.rfind(".")
    return _EXTENSION_FORMATS.get(name[dot:].lower()) if dot >= 0 else None


def _probe_jpeg(mv: memoryview, name: str) -> ImageInfo:
    n = len(mv)
    pos = 2
    info: ImageInfo | None = None
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            raise BadImageError(f"JPEG '{name}' has a corrupt header (no marker at byte {pos})")
        marker = mv[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", mv, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > n:
                break
            height, width = struct.unpack_from(">HH", mv, pos + 5)
            info = ImageInfo("jpeg", width, height, mv[pos + 9], progressive=marker == 0xC2)
        elif marker == 0xDA:  # start of scan: entropy-coded data follows, header is over
            if info is None:
                raise BadImageError(f"JPEG '{name}' has no frame header before its image data")
            # A whole JPEG ends with EOI; some writers append padding or trailers after it.
            if bytes(mv[max(pos, n - 4096) :]).rfind(b"\xff\xd9") < 0:
                raise BadImageError(
                    f"JPEG '{name}' is truncated ({n} bytes, no end-of-image marker); "
                    "re-copy it from the original or use --on-error skip to leave it out"
                )
            if info.width == 0 or info.height == 0:
                raise BadImageError(
                    f"JPEG '{name}' declares a zero size ({info.width}x{info.height})"
                )
            return info
        pos += 2 + length
    raise BadImageError(
        f"JPEG '{name}' is truncated ({n} bytes, header incomplete); "
        "re-copy it from the original or use --on-error skip to leave it out"
    )


def _probe_png(mv: memoryview, name: str) -> ImageInfo:
    if len(mv) < 33 or bytes(mv[12:16]) != b"IHDR":
        raise BadImageError(f"PNG '{name}' is truncated or has no IHDR header")
    width, height = struct.unpack_from(">II", mv, 16)
    color_type = mv[25]
    if bytes(mv[-12:]).find(b"IEND") < 0:
        raise BadImageError(
            f"PNG '{name}' is truncated ({len(mv)} bytes, no IEND chunk); "
            "re-copy it from the original or use --on-error skip to leave it out"
        )
    return ImageInfo("png", width, height, _PNG_CHANNELS.get(color_type, 3))


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


def _probe_by_decoding(data: bytes | memoryview, fmt: str, name: str) -> ImageInfo:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadImageError(
            f"{fmt.upper()} '{name}' cannot be decoded; "
            "re-copy it from the original or use --on-error skip to leave it out"
        )
    channels = 1 if img.ndim == 2 else int(img.shape[2])
    return ImageInfo(fmt, int(img.shape[1]), int(img.shape[0]), channels)
