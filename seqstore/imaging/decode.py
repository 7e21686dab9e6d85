"""Encoded image bytes -> RGB ``uint8`` arrays, through OpenCV (libjpeg-turbo, libpng).

:func:`decode` gives what ``PIL.Image.open(f).convert("RGB")`` gives, as a C-contiguous
``(height, width, 3)`` ``uint8`` array in RGB order, for every mode found in image datasets:

- RGB, progressive and greyscale JPEGs; greyscale is repeated into the three channels.
- CMYK and YCCK JPEGs (Adobe's inverted CMYK, as Photoshop writes them): both libraries compute
  ``R = (255 - C) * (255 - K) / 255`` on the inverted values and differ only in rounding, by at
  most 2 levels (a mean under 1).
- Palette PNGs are expanded through their palette.
- RGBA and greyscale+alpha PNGs lose their alpha channel; the colour is *not* composited onto a
  background, which is what ``convert("RGB")`` does too.
- 16-bit PNGs keep the high byte of each sample (``value // 256``). PIL does the same for 16-bit
  colour, but opens 16-bit greyscale as mode ``I;16`` and ``convert("RGB")`` *clips* it to 255,
  so nearly every pixel turns white; here such an image keeps its tones instead.

EXIF orientation is ignored by default: the pixels come out as stored, as they do from
``convert("RGB")`` and from torchvision's ``ImageFolder``, so a model trained here sees what the
same model trained there saw. ``exif_orientation=True`` rotates and mirrors the image as its EXIF
orientation tag says (JPEG and PNG alike), as ``PIL.ImageOps.exif_transpose`` does.

A JPEG can be decoded straight to 1/2, 1/4 or 1/8 of its size (``reduce``): libjpeg-turbo then
skips most of the inverse DCT and colour conversion work, which makes decoding 2-3 times faster
when the augmentation would throw the resolution away anyway. The output is
``ceil(width / reduce)`` by ``ceil(height / reduce)``; other formats are decoded whole and shrunk
with area interpolation to the same size, so callers can rely on it for every format.

:func:`decode_window` decodes only a window of the image, which is what a random crop keeps:
for JPEGs in greyscale or YCbCr (nearly all photographs) the small C extension
:mod:`.libjpeg_window` has libjpeg skip the inverse DCT, upsampling and colour conversion
outside the window and stop after its last row, about 1.3x faster over ImageNet-style crops; the
pixels are identical to cropping a full decode. Other images, and builds without the
extension (it needs libjpeg's headers at install time), decode whole and crop.

Images with more pixels than ``max_pixels`` (by default PIL's decompression-bomb limit,
:data:`~seqstore.imaging.header.MAX_PIXELS`) are refused from their header, before any decoding;
anything else OpenCV cannot take, a ``cv2.error`` included, is a :class:`BadImageError`.

OpenCV runs one thread per process once :func:`decode` has been called in it (see
:func:`_single_threaded`); this setting is process-wide, so it also applies to any other OpenCV
call made in that process afterwards. OpenCV comes quietened from :mod:`seqstore.imaging.opencv`.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadImageError, ConfigError, SeqstoreError
from .header import MAX_PIXELS, ImageInfo, check_pixels, header_size, is_apng, probe
from .messages import c_stderr_lines, damage_of
from .opencv import cv2, cv2_reason

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "REDUCE_FACTORS",
    "HAS_WINDOW_DECODER",
    "NO_WINDOW_DECODER",
    "JPEG_MAGIC",
    "decode",
    "decode_pil",
    "decode_window",
    "is_jpeg",
    "reduced_size",
]

#: The ``reduce`` factors :func:`decode` accepts: the JPEG DCT scalings OpenCV exposes.
REDUCE_FACTORS = (1, 2, 4, 8)

# The bits of IMREAD_REDUCED_COLOR_<r> that ask for the reduction, without the colour bit.
_REDUCE_BITS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_COLOR_2 & ~cv2.IMREAD_COLOR,
    4: cv2.IMREAD_REDUCED_COLOR_4 & ~cv2.IMREAD_COLOR,
    8: cv2.IMREAD_REDUCED_COLOR_8 & ~cv2.IMREAD_COLOR,
}
# IMREAD_COLOR_RGB (OpenCV >= 4.10) has the codec write RGB directly, saving a cvtColor pass;
# it replaces IMREAD_COLOR (OpenCV refuses both at once).
_RGB_FLAG: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_COLOR_FLAG = cv2.IMREAD_COLOR if _RGB_FLAG is None else _RGB_FLAG
#: The first two bytes of every JPEG file (the start-of-image marker).
JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_threads_set = False

try:
    from . import libjpeg_window
except ImportError:  # built without libjpeg's headers
    libjpeg_window = None  # type: ignore[assignment]

#: Whether :func:`decode_window` decodes JPEG windows directly (the C extension is built).
HAS_WINDOW_DECODER = libjpeg_window is not None
#: What ``seqstore info`` and ``seqstore bench`` say where the decoder was not built.
NO_WINDOW_DECODER = (
    "seqstore's crop-window JPEG decoder is not built (libjpeg's headers were missing at "
    "install): JPEGs are decoded whole, about 25% more decoding time; install libjpeg-dev "
    "(Debian/Ubuntu) or libjpeg-turbo-devel and reinstall seqstore"
)


def _single_threaded() -> None:
    """Limit OpenCV to one thread in this process (and the processes it forks later).

    The loader parallelises over worker processes, one per core; OpenCV's own thread pool
    inside each of them (cv2.resize and colour conversions split rows across all cores) only
    adds contention and context switches on top, and its idle threads spin. With one thread per
    process the workers scale with the cores instead of fighting over them.
    """
    global _threads_set
    if not _threads_set:
        cv2.setNumThreads(1)
        _threads_set = True


def reduced_size(width: int, height: int, reduce: int) -> tuple[int, int]:
    """The ``(width, height)`` :func:`decode` returns for an image of this size.

    Parameters
    ----------
    width, height
        The full size of the image, in pixels.
    reduce
        One of :data:`REDUCE_FACTORS`.

    Returns
    -------
    tuple of int
        ``(ceil(width / reduce), ceil(height / reduce))``, libjpeg's rounding.
    """
    return -(-width // reduce), -(-height // reduce)


def decode(
    data: bytes | memoryview | np.ndarray,
    *,
    reduce: int = 1,
    exif_orientation: bool = False,
    name: str = "<bytes>",
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Decode an encoded image to an RGB ``uint8`` array, as PIL's ``convert("RGB")`` would.

    Parameters
    ----------
    data
        The encoded file, whole: bytes, a memoryview, or a 1-D ``uint8`` array.
    reduce
        1, 2, 4 or 8: return the image at ``1/reduce`` of its size, ``ceil(width / reduce)``
        by ``ceil(height / reduce)``. JPEGs are decoded at that size directly (in the DCT
        domain, much faster); other formats are decoded whole and shrunk with area
        interpolation.
    exif_orientation
        Apply the EXIF orientation tag (rotate / mirror). Off by default, like PIL's
        ``convert("RGB")`` and torchvision's ``ImageFolder``; see the module docstring.
        With ``reduce``, the reduced size is that of the image as stored, rotated after.
    name
        What to call the image in an error message (its file name or key).
    max_pixels
        Refuse an image whose header claims more pixels than this, before decoding it;
        None for no limit of seqstore's own (OpenCV still refuses more than 2**30).

    Returns
    -------
    numpy.ndarray
        C-contiguous ``(height, width, 3)`` ``uint8`` array, channels in RGB order.

    Raises
    ------
    BadImageError
        The bytes are not a decodable image (empty, truncated, corrupt, unknown format), or
        the image has more than ``max_pixels`` pixels.
    ConfigError
        ``reduce`` is not 1, 2, 4 or 8, or ``data`` is an array of another dtype.
    """
    if reduce not in _REDUCE_BITS:
        raise ConfigError(f"reduce={reduce!r} is not supported; use one of {REDUCE_FACTORS}")
    buf = _as_buffer(data)
    _check_size(buf, name, max_pixels)
    _single_threaded()
    jpeg = is_jpeg(buf)
    # Only libjpeg can decode at a reduced size; OpenCV shrinks other formats itself, to
    # floor() sizes with linear interpolation, so they are decoded whole and shrunk below.
    flags = _COLOR_FLAG | _REDUCE_BITS[reduce if jpeg else 1]
    if not exif_orientation:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    if not jpeg and bytes(buf[:8]) == _PNG_MAGIC and is_apng(buf.data):
        img = _first_frame(buf, name)
    elif jpeg:
        with c_stderr_lines() as printed:
            img = _imdecode(buf, flags, name)
        damage = damage_of(printed)
        if damage:
            raise BadImageError(
                f"'{name}' has damaged image data (libjpeg: {damage[0]}); re-copy it from the "
                "original or pass on_error='skip' to leave it out"
            )
    else:
        img = _imdecode(buf, flags, name)
    if reduce > 1 and not jpeg:
        width, height = reduced_size(img.shape[1], img.shape[0], reduce)
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


def decode_window(
    data: bytes | memoryview | np.ndarray,
    window: tuple[int, int, int, int],
    *,
    reduce: int = 1,
    name: str = "<bytes>",
    probed: bool = False,
) -> np.ndarray:
    """``decode(data, reduce=reduce)[top:bottom, left:right]``, decoding only that window.

    Parameters
    ----------
    data
        The encoded file, whole.
    window
        ``(top, bottom, left, right)`` in the coordinates of the image at ``1/reduce`` of its
        size (:func:`reduced_size`); must lie within it.
    reduce
        1, 2, 4 or 8, as in :func:`decode`.
    name
        What to call the image in an error message (its file name or key).
    probed
        The caller has already checked ``data`` with :func:`seqstore.imaging.header.probe` (as
        it must to know the image's size); skip checking it again.

    Returns
    -------
    numpy.ndarray
        ``(bottom - top, right - left, 3)`` ``uint8`` RGB; the same pixels as cropping a full
        decode. EXIF orientation is ignored.

    Raises
    ------
    BadImageError
        The bytes are not a decodable image.
    ConfigError
        ``reduce`` is not 1, 2, 4 or 8, or the window is empty.
    """
    buf = data if isinstance(data, (bytes, memoryview)) else _as_buffer(data).data
    if not probed and is_jpeg(buf):
        # The window decoder reads no further than the window's last row: check the whole
        # file (header, end-of-image marker) first, as a full decode would.
        probe(buf, name)
    return _decode_window(buf, window, reduce, name)


def _decode_window(
    buf: bytes | memoryview, window: tuple[int, int, int, int], reduce: int, name: str
) -> np.ndarray:
    """:func:`decode_window` of bytes whose header :func:`probe` has checked."""
    top, bottom, left, right = window
    if not (0 <= top < bottom and 0 <= left < right):
        raise ConfigError(f"window {window!r} of image '{name}' is empty or negative")
    _check_size(buf, name, MAX_PIXELS)
    if libjpeg_window is not None and reduce in _REDUCE_BITS and is_jpeg(buf):
        out = np.empty((bottom - top, right - left, 3), np.uint8)
        if libjpeg_window.crop(buf, out.data, top, left, bottom - top, right - left, reduce):
            return out
    # Not a JPEG, not greyscale or YCbCr, or damaged: the full decoder handles and reports it.
    img = decode(buf, reduce=reduce, name=name)
    if bottom > img.shape[0] or right > img.shape[1]:
        raise ConfigError(
            f"window {window!r} is outside image '{name}' ({img.shape[1]}x{img.shape[0]} "
            f"at 1/{reduce})"
        )
    return img[top:bottom, left:right]


def _first_frame(buf: np.ndarray, name: str) -> np.ndarray:
    """An animated PNG's first frame, as PIL composes it (OpenCV returns the default image,
    which is not the first frame where the animation leaves it out, and ignores the frame's
    offset, dispose and blend operations)."""
    try:
        return np.ascontiguousarray(np.asarray(decode_pil(buf, name=name)))
    except SeqstoreError as exc:
        if isinstance(exc, BadImageError):
            raise
        raise BadImageError(
            f"'{name}' is an animated PNG, whose first frame seqstore composes as PIL does, "
            "with Pillow, which is not installed: run pip install 'seqstore[pil]', or pass "
            "on_error='skip' to leave it out"
        ) from None


def is_jpeg(data: bytes | memoryview | np.ndarray) -> bool:
    """Whether ``data`` starts as a JPEG file does (:data:`JPEG_MAGIC`)."""
    return bytes(data[:2]) == JPEG_MAGIC


def decode_pil(data: bytes | memoryview | np.ndarray, *, name: str = "<bytes>") -> Image.Image:
    """Decode with PIL, for user transforms written for PIL images (torchvision's).

    Parameters
    ----------
    data
        The encoded file, whole.
    name
        What to call the image in an error message (its file name or key).

    Returns
    -------
    PIL.Image.Image
        ``Image.open(BytesIO(data)).convert("RGB")``: EXIF orientation ignored, alpha dropped.

    Raises
    ------
    BadImageError
        PIL cannot read the bytes as an image.
    SeqstoreError
        Pillow is not installed.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise SeqstoreError(
            "image_format='pil' needs Pillow, which is not installed; "
            "run: pip install 'seqstore[pil]'"
        ) from err
    try:
        with Image.open(BytesIO(_as_buffer(data).tobytes())) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(
            f"image '{name}' cannot be decoded by PIL ({err}); "
            "re-copy it from the original or pass on_error='skip' to leave it out"
        ) from err


def _as_buffer(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ConfigError(
                f"encoded image array has dtype {data.dtype}; pass the file's bytes as uint8"
            )
        return data.reshape(-1)
    return np.frombuffer(data, np.uint8)


def _check_size(buf: bytes | memoryview | np.ndarray, name: str, max_pixels: int | None) -> None:
    """Refuse a decompression bomb from its header; malformed headers are the decoder's job."""
    if max_pixels is None:
        return
    size = header_size(buf if not isinstance(buf, np.ndarray) else buf.data)
    if size is not None:
        check_pixels(ImageInfo("", size[0], size[1], 0), name, max_pixels)


def _imdecode(buf: np.ndarray, flags: int, name: str) -> np.ndarray:
    try:
        # OpenCV asserts on an empty buffer rather than returning None.
        img = cv2.imdecode(buf, flags) if buf.size else None
    except cv2.error as exc:  # a header it refuses (a size over its own limit, ...)
        raise BadImageError(
            f"image '{name}' cannot be decoded by OpenCV ({cv2_reason(exc)}); "
            "pass on_error='skip' to leave it out"
        ) from None
    if img is None:
        # The header check names the fault (empty, truncated, not an image) when it can;
        # it costs nothing on the path that succeeds.
        probe(buf.tobytes(), name)
        raise BadImageError(
            f"image '{name}' cannot be decoded (corrupt image data); "
            "re-copy it from the original or pass on_error='skip' to leave it out"
        )
    if _RGB_FLAG is None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img
