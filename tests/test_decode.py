"""Decoding gives what PIL's ``convert("RGB")`` gives, for every image mode datasets hold."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from seqstore.errors import BadImageError, ConfigError
from seqstore.imaging.decode import (
    HAS_WINDOW_DECODER,
    decode,
    decode_pil,
    decode_window,
    reduced_size,
)
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


def _windows(
    rng: np.random.Generator, width: int, height: int, n: int
) -> list[tuple[int, int, int, int]]:
    out = [(0, height, 0, width), (0, 1, 0, 1), (height - 1, height, width - 1, width)]
    for _ in range(n):
        top, left = int(rng.integers(height)), int(rng.integers(width))
        out.append(
            (
                top,
                int(rng.integers(top + 1, height + 1)),
                left,
                int(rng.integers(left + 1, width + 1)),
            )
        )
    return out


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda im: _pil_bytes(im, "JPEG", quality=90), id="420"),
        pytest.param(lambda im: _pil_bytes(im, "JPEG", quality=90, subsampling=0), id="444"),
        pytest.param(lambda im: _pil_bytes(im, "JPEG", quality=90, subsampling=1), id="422"),
        pytest.param(lambda im: _pil_bytes(im, "JPEG", progressive=True), id="progressive"),
        pytest.param(lambda im: _pil_bytes(im.convert("L"), "JPEG"), id="grey"),
        pytest.param(
            lambda im: cv2.imencode(
                ".jpg", np.asarray(im)[..., ::-1].copy(), [cv2.IMWRITE_JPEG_RST_INTERVAL, 3]
            )[1].tobytes(),
            id="restart-markers",
        ),
        pytest.param(lambda im: _pil_bytes(im.convert("CMYK"), "JPEG"), id="cmyk"),
        pytest.param(lambda im: _pil_bytes(im, "PNG"), id="png"),
    ],
)
@pytest.mark.parametrize("reduce", [1, 2, 8])
def test_window_decode_equals_cropping_a_full_decode(encode: Any, reduce: int) -> None:
    photo = make_image(np.random.default_rng(5), 203, 157)
    data = encode(Image.fromarray(photo))
    full = decode(data, reduce=reduce)
    rng = np.random.default_rng(reduce)
    for window in _windows(rng, full.shape[1], full.shape[0], 40):
        top, bottom, left, right = window
        got = decode_window(data, window, reduce=reduce)
        np.testing.assert_array_equal(got, full[top:bottom, left:right], err_msg=str(window))
        assert got.flags.writeable


@pytest.mark.skipif(not HAS_WINDOW_DECODER, reason="the window decoder was built without libjpeg")
def test_window_decoder_takes_ycbcr_and_grey_and_leaves_the_rest() -> None:
    from seqstore.imaging import libjpeg_window

    img = Image.fromarray(make_image(np.random.default_rng(6), 64, 48))
    ycc, grey = _pil_bytes(img, "JPEG"), _pil_bytes(img.convert("L"), "JPEG")

    def crop(data: bytes, top: int, left: int, height: int, width: int, scale: int) -> bool:
        out = np.zeros((height, width, 3), np.uint8)
        return libjpeg_window.crop(data, out, top, left, height, width, scale)

    assert crop(ycc, 8, 8, 16, 16, 1) and crop(grey, 8, 8, 16, 16, 2)
    assert not crop(_pil_bytes(img.convert("CMYK"), "JPEG"), 8, 8, 16, 16, 1)
    assert not crop(ycc[: len(ycc) // 2], 0, 0, 40, 40, 1)  # truncated within the window
    assert not crop(ycc, 40, 0, 9, 8, 1)  # outside the image
    assert not crop(ycc, 2**31 - 5, 0, 9, 8, 1)  # no overflow
    assert not crop(b"not a jpeg", 0, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="out must be"):
        libjpeg_window.crop(ycc, np.zeros((4, 4, 3), np.uint8), 0, 0, 5, 4, 1)


def test_window_decode_of_bad_input() -> None:
    data = cv2.imencode(".jpg", make_image(np.random.default_rng(7), 64, 48))[1].tobytes()
    with pytest.raises(BadImageError, match="cut.jpg"):
        decode_window(data[: len(data) // 3], (0, 40, 0, 40), name="cut.jpg")
    # Damage below the window is found too, as a full decode finds it.
    with pytest.raises(BadImageError, match="truncated"):
        decode_window(data[: len(data) * 9 // 10], (0, 2, 0, 2), name="cut.jpg")
    with pytest.raises(ConfigError, match="empty"):
        decode_window(data, (5, 5, 0, 8))
    with pytest.raises(ConfigError, match="outside"):
        decode_window(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1], (0, 9, 0, 8))


def test_window_decode_on_real_photos(shared_data: Path) -> None:
    # Every photograph of imagen200 (progressive, greyscale, CMYK, odd sizes) with a
    # RandomResizedCrop window, as the training pipeline draws them.
    from seqstore.backends import open_store
    from seqstore.transforms import RandomResizedCrop

    reader = open_store(shared_data / "imagen200")
    rrc, rng = RandomResizedCrop(224), np.random.default_rng(0)
    for record in reader.read_block(0, len(reader)):
        plan = rrc.plan_decode(record.width, record.height, rng)
        reduce, window = plan.reduce, plan.window
        assert window is not None
        top, bottom, left, right = window
        want = decode(record.data, reduce=reduce)[top:bottom, left:right]
        got = decode_window(record.data, window, reduce=reduce, name=record.key)
        np.testing.assert_array_equal(got, want, err_msg=record.key)


def test_a_missing_window_decoder_is_said_in_info_and_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An install without libjpeg's headers loses about a quarter of decoding time: said,
    not silent."""
    import seqstore.bench.report as report
    import seqstore.imaging.decode as decoding
    from seqstore.cli import main
    from seqstore.testing import make_image_folder

    folder = make_image_folder(tmp_path / "f", classes=2, per_class=2)
    monkeypatch.setattr(decoding, "HAS_WINDOW_DECODER", False)
    monkeypatch.setattr(report, "HAS_WINDOW_DECODER", False)
    assert main(["info", str(folder)]) == 0
    assert "crop-window JPEG decoder is not built" in capsys.readouterr().out
    machine = report.describe_machine()
    assert machine["window_decoder"] is False
    cfg = {"transform": "imagenet_train", "workers": 2, "batch_size": 8, "formats": ["lmdb"]}
    table = report.format_table(report.BenchResult(cfg, machine, 4, 0.1, [], []))
    assert "note: seqstore's crop-window JPEG decoder is not built" in table
    monkeypatch.setattr(decoding, "HAS_WINDOW_DECODER", True)
    assert main(["info", str(folder)]) == 0
    assert "crop-window" not in capsys.readouterr().out
