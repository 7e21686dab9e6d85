from __future__ import annotations

import cv2
import numpy as np
import pytest

from seqstore.errors import BadImageError
from seqstore.imaging.header import probe


def _jpeg(width: int, height: int, **params: int) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    flags = [k for kv in params.items() for k in (getattr(cv2, kv[0]), kv[1])]
    return cv2.imencode(".jpg", img, flags)[1].tobytes()


def test_jpeg_size_channels_progressive() -> None:
    info = probe(_jpeg(37, 21, IMWRITE_JPEG_PROGRESSIVE=1))
    assert (info.format, info.width, info.height, info.channels, info.progressive) == (
        "jpeg",
        37,
        21,
        3,
        True,
    )


def test_png_and_bmp() -> None:
    img = np.zeros((5, 9), np.uint8)
    assert probe(cv2.imencode(".png", img)[1].tobytes()).channels == 1
    bmp = probe(cv2.imencode(".bmp", np.zeros((4, 6, 3), np.uint8))[1].tobytes())
    assert (bmp.format, bmp.width, bmp.height) == ("bmp", 6, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (_jpeg(64, 64)[:300], "truncated"),
        (_jpeg(64, 64)[:-200], "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "IHDR"),
        (b"n01443537_0.JPEG 0 0 10 10\n", "not an image"),
    ],
)
def test_bad_bytes_are_named(data: bytes, message: str) -> None:
    with pytest.raises(BadImageError, match=message) as err:
        probe(data, "dir/file.JPEG")
    assert "dir/file.JPEG" in str(err.value)
