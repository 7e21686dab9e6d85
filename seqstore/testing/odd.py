"""Odd and broken image files, made on the spot: what convert must keep or refuse.

``KEPT`` are files seqstore decodes exactly as PIL's ``convert("RGB")`` does; ``REFUSED``
are files it refuses with one line (and why), because OpenCV cannot decode them, decodes them
unlike PIL, or they claim more pixels than the decompression-bomb limit. Pillow is needed for
the files it writes (APNG, tRNS, CMYK).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["KEPT", "REFUSED", "jpeg", "make_odd_folder"]

_RNG = np.random.default_rng(8)


def _rgb(height: int = 24, width: int = 32) -> np.ndarray:
    return _RNG.integers(0, 256, (height, width, 3), np.uint8)


def jpeg() -> bytes:
    """A small, sound JPEG."""
    return bytes(cv2.imencode(".jpg", _rgb())[1].tobytes())


def _jpeg12() -> bytes:
    data = bytearray(jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 4] = 12  # the frame header's sample precision
    return bytes(data)


def _uint16(ext: str, channels: int) -> bytes:
    shape = (24, 32, channels) if channels > 1 else (24, 32)
    return bytes(cv2.imencode(ext, _RNG.integers(0, 65536, shape, np.uint16))[1].tobytes())


def _pil(img: Any, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _apng() -> bytes:
    from PIL import Image

    frames = [Image.fromarray(_rgb()) for _ in range(3)]
    return _pil(frames[0], "PNG", save_all=True, append_images=frames[1:])


def _trns_png() -> bytes:
    from PIL import Image

    img = Image.fromarray(_RNG.integers(0, 16, (24, 32), np.uint8), "P")
    img.putpalette(_RNG.integers(0, 256, 48, np.uint8).tolist())
    return _pil(img, "PNG", transparency=3)


def cmyk_jpeg() -> bytes:
    """A CMYK JPEG (decoded within 2 levels of PIL)."""
    from PIL import Image

    return _pil(Image.fromarray(_rgb()).convert("CMYK"), "JPEG")


def _huge_png() -> bytes:
    data = bytearray(cv2.imencode(".png", _rgb())[1].tobytes())
    struct.pack_into(">II", data, 16, 65000, 65000)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # a valid IHDR
    return bytes(data)


def _huge_jpeg() -> bytes:
    data = bytearray(jpeg())
    struct.pack_into(">HH", data, data.find(b"\xff\xc0") + 5, 65000, 65000)
    return bytes(data)


def _huge_bmp() -> bytes:
    data = bytearray(cv2.imencode(".bmp", _rgb())[1].tobytes())
    struct.pack_into("<ii", data, 18, 65535, 65535)
    return bytes(data)


#: Stored, with PIL's pixels: file name -> maker.
KEPT: dict[str, Callable[[], bytes]] = {
    "png16_rgb.png": lambda: _uint16(".png", 3),
    "apng.png": _apng,
    "trns.png": _trns_png,
}
#: Refused with one line: file name -> (maker, what the line says).
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "jpeg12.jpg": (_jpeg12, "12-bit samples"),
    "png16_grey.png": (lambda: _uint16(".png", 1), "16-bit greyscale PNG"),
    "tiff16_rgb.tif": (lambda: _uint16(".tiff", 3), "16-bit TIFF"),
    "tiff16_grey.tif": (lambda: _uint16(".tiff", 1), "16-bit TIFF"),
    "pgm16.pgm": (lambda: _uint16(".pgm", 1), "16-bit PNM"),
    "huge.png": (_huge_png, "65000x65000 pixels, over the limit"),
    "huge.jpg": (_huge_jpeg, "65000x65000 pixels, over the limit"),
    "huge.bmp": (_huge_bmp, "65535x65535 pixels, over the limit"),
}


def make_odd_folder(root: str | os.PathLike[str]) -> tuple[Path, set[str]]:
    """An ImageFolder of every odd case: class ``good`` holds plain JPEGs; class ``odd``
    holds the KEPT and REFUSED files, a dangling link, a link loop, a CMYK JPEG and a file
    whose name is not UTF-8.

    Returns
    -------
    root : Path
    refused : set of str
        The keys ``convert --on-error skip`` must leave out.
    """
    root = Path(root)
    for cls in ("good", "odd"):
        (root / cls).mkdir(parents=True)
    for i in range(4):
        (root / "good" / f"{i}.jpg").write_bytes(jpeg())
    for name, make in KEPT.items():
        (root / "odd" / name).write_bytes(make())
    for name, (make, _why) in REFUSED.items():
        (root / "odd" / name).write_bytes(make())
    (root / "odd" / "cmyk.jpg").write_bytes(cmyk_jpeg())
    with open(os.fsencode(root / "odd") + b"/caf\xe9.jpg", "wb") as f:  # a Latin-1 name
        f.write(jpeg())
    (root / "odd" / "dangling.jpg").symlink_to(root / "odd" / "gone.jpg")
    (root / "odd" / "loop.jpg").symlink_to(root / "odd" / "loop.jpg")
    return root, {f"odd/{name}" for name in [*REFUSED, "dangling.jpg", "loop.jpg"]}
