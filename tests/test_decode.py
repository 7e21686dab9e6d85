"""Decoding gives what PIL's ``convert("RGB")`` gives, for every image mode datasets hold."""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
import pytest

from seqstore.decode import decode, decode_pil, reduced_size
from seqstore.errors import BadImageError, ConfigError
from seqstore.testing.data import make_image

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")


def _pil_bytes(img: object, fmt: str, **kwargs: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **kwargs)  # type: ignore[attr-defined]
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture
def photo() -> np.ndarray:
    return make_image(np.random.default_rng(7), 97, 61)


def _assert_close(got: np.ndarray, want: np.ndarray, max_diff: int, mean_diff: float) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= max_diff, diff.max()
    assert diff.mean() <= mean_diff, diff.mean()


@pytest.mark.parametrize("progressive", [False, True])
def test_rgb_jpeg_matches_pil(photo: np.ndarray, progressive: bool) -> None:
    data = _pil_bytes(Image.fromarray(photo), "JPEG", quality=90, progressive=progressive)
    got = decode(data)
    assert got.flags.c_contiguous
    # Both use libjpeg-turbo's default (ISLOW DCT, fancy upsampling); versions may differ.
    _assert_close(got, _pil_rgb(data), max_diff=2, mean_diff=0.2)


def test_greyscale_jpeg_is_repeated_into_three_channels(photo: np.ndarray) -> None:
    grey = Image.fromarray(photo).convert("L")
    data = _pil_bytes(grey, "JPEG", quality=90)
    got = decode(data)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    _assert_close(got, _pil_rgb(data), max_diff=1, mean_diff=0.1)


def test_cmyk_jpeg_matches_pil_within_rounding(photo: np.ndarray) -> None:
    data = _pil_bytes(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    with Image.open(BytesIO(data)) as img:
        assert img.mode == "CMYK"
    _assert_close(decode(data), _pil_rgb(data), max_diff=3, mean_diff=1.0)


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "RGB"])
def test_png_modes_match_pil_exactly(photo: np.ndarray, mode: str) -> None:
    img = Image.fromarray(photo)
    if mode == "P":
        img = img.quantize(64)
    elif mode in ("RGBA", "LA"):
        base = img.convert(mode[:-1])
        alpha = Image.fromarray(
            np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None].repeat(photo.shape[0], 0)
        )
        img = Image.merge(mode, [*base.split(), alpha])
    else:
        img = img.convert(mode)
    data = _pil_bytes(img, "PNG")
    with Image.open(BytesIO(data)) as check:
        assert check.mode == mode
    np.testing.assert_array_equal(decode(data), _pil_rgb(data))


def test_16bit_png_keeps_the_high_byte(photo: np.ndarray) -> None:
    wide = photo.astype(np.uint16) * 256 + (photo.astype(np.uint16) * 7) % 256  # any low byte
    colour = cv2.imencode(".png", wide[..., ::-1].copy())[1].tobytes()
    np.testing.assert_array_equal(decode(colour), photo)
    np.testing.assert_array_equal(decode(colour), _pil_rgb(colour))
    grey = cv2.imencode(".png", wide[..., 0].copy())[1].tobytes()
    np.testing.assert_array_equal(decode(grey), np.repeat(photo[..., :1], 3, axis=2))


def _with_orientation(photo: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = orientation
    return _pil_bytes(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_ignored_unless_asked(photo: np.ndarray, orientation: int) -> None:
    data = _with_orientation(photo, orientation)
    as_stored = decode(data)
    _assert_close(as_stored, _pil_rgb(data), max_diff=2, mean_diff=0.2)
    rotated = decode(data, exif_orientation=True)
    with Image.open(BytesIO(data)) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    _assert_close(rotated, want, max_diff=2, mean_diff=0.2)
    if orientation in (6, 8):
        assert rotated.shape[:2] == as_stored.shape[1::-1]


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_reduced_decode_size_and_content(reduce: int, fmt: str) -> None:
    odd = cv2.imencode(fmt, make_image(np.random.default_rng(3), 203, 150))[1].tobytes()
    width, height = reduced_size(203, 150, reduce)
    assert decode(odd, reduce=reduce).shape == (height, width, 3)
    # The reduced image is the full one, smaller: compare with an area-shrunk full decode,
    # on a size that whole 8x8 blocks tile so that both grids line up.
    photo = make_image(np.random.default_rng(3), 256, 192)
    data = cv2.imencode(fmt, photo[..., ::-1].copy())[1].tobytes()
    got = decode(data, reduce=reduce)
    width, height = 256 // reduce, 192 // reduce
    full = decode(data)
    want = cv2.resize(full, (width, height), interpolation=cv2.INTER_AREA)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.mean() < 3.0, (reduce, fmt, diff.mean())


def test_accepts_bytes_memoryview_and_arrays(photo: np.ndarray) -> None:
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    want = decode(data)
    np.testing.assert_array_equal(decode(memoryview(data)), want)
    np.testing.assert_array_equal(decode(np.frombuffer(data, np.uint8)), want)
    with pytest.raises(ConfigError, match="dtype"):
        decode(np.frombuffer(data, np.uint8).astype(np.int32))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"hello, this is a text file", "not"),
    ],
)
def test_bad_bytes_name_the_image(data: bytes, match: str) -> None:
    with pytest.raises(BadImageError, match=match) as err:
        decode(data, name="n01443537/x.JPEG")
    assert "n01443537/x.JPEG" in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_jpeg_names_the_image(photo: np.ndarray) -> None:
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    with pytest.raises(BadImageError, match="a.jpg"):
        decode(data[: len(data) // 3], name="a.jpg")


def test_unsupported_reduce_is_a_config_error(photo: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="reduce=3"):
        decode(cv2.imencode(".jpg", photo)[1].tobytes(), reduce=3)


def test_decode_pil_is_pil_convert_rgb(photo: np.ndarray) -> None:
    data = _pil_bytes(Image.fromarray(photo).convert("L"), "PNG")
    img = decode_pil(data)
    assert img.mode == "RGB" and img.size == (97, 61)
    with pytest.raises(BadImageError, match="bad.png"):
        decode_pil(b"nope", name="bad.png")
