"""Images that pass a header check but not a decoder, or that decoders disagree on.

Every file is made here (cv2, PIL, numpy) and checked through the public API and the CLI:
each is stored with PIL's pixels, or refused with one line that --on-error skip handles.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import seqstore
from seqstore.backends import get_backend
from seqstore.convert import convert
from seqstore.errors import BadImageError, ConfigError
from seqstore.imaging.decode import decode
from seqstore.records import Record
from seqstore.testing.odd import KEPT, REFUSED, cmyk_jpeg, jpeg

_RNG = np.random.default_rng(8)


def _rgb(height: int = 24, width: int = 32) -> np.ndarray:
    return _RNG.integers(0, 256, (height, width, 3), np.uint8)


_jpeg = jpeg
_cmyk_jpeg = cmyk_jpeg


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    """An ImageFolder: class 'good' holds two plain JPEGs, class 'odd' the given files."""
    for cls in ("good", "odd"):
        (root / cls).mkdir(parents=True)
    for i in range(2):
        (root / "good" / f"{i}.jpg").write_bytes(_jpeg())
    for name, data in files.items():
        (root / "odd" / name).write_bytes(data)
    return root


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqstore", "convert", *map(str, args), "-q"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
        | {"PYTHONPATH": str(Path(seqstore.__file__).parents[1])},
    )


@pytest.mark.parametrize("name", sorted(KEPT))
def test_kept_images_decode_to_pils_pixels(name: str) -> None:
    data = KEPT[name]()
    np.testing.assert_array_equal(decode(data, name=name), _pil_rgb(data))


def test_cmyk_jpeg_is_within_two_levels_of_pil() -> None:
    data = _cmyk_jpeg()
    diff = np.abs(decode(data).astype(int) - _pil_rgb(data))
    assert diff.max() <= 2


@pytest.mark.parametrize("check", ["header", "decode"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_odd_image_is_refused_in_one_line(name: str, check: str, tmp_path: Path) -> None:
    make, why = REFUSED[name]
    src = _tree(tmp_path / "src", {name: make(), "fine.png": KEPT["trns.png"]()})
    with pytest.raises(BadImageError, match=why) as info:
        convert(src, tmp_path / "fail", format="folder", check=check, progress=False)
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "fail").exists()
    report = convert(
        src, tmp_path / "skip", format="folder", check=check, on_error="skip", progress=False
    )
    assert [s.key for s in report.skipped] == [f"odd/{name}"]
    assert report.manifest.num_records == 3


def test_kept_images_are_stored_as_pil_sees_them(tmp_path: Path) -> None:
    files = {name: make() for name, make in KEPT.items()}
    src = _tree(tmp_path / "src", files)
    report = convert(src, tmp_path / "out", format="folder", progress=False)
    assert report.skipped == []
    assert any("animated PNG" in w and "apng.png" in w for w in report.warnings)
    store = seqstore.open(tmp_path / "out")
    for record in store.read_block(0, len(store)):
        name = record.key.split("/")[-1]
        if name in files:
            np.testing.assert_array_equal(decode(record.data), _pil_rgb(files[name]))


def test_decode_refuses_giant_headers_before_decoding() -> None:
    for data in (REFUSED[name][0]() for name in ("huge.png", "huge.jpg", "huge.bmp")):
        with pytest.raises(BadImageError, match="over the limit of 178,956,970"):
            decode(data, name="giant")
    # Without seqstore's limit OpenCV's own refusal is still one BadImageError, not cv2.error.
    with pytest.raises(BadImageError, match="cannot be decoded by OpenCV"):
        decode(REFUSED["huge.png"][0](), name="giant", max_pixels=None)


def test_max_pixels_is_a_convert_option(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"big.jpg": cv2.imencode(".jpg", _rgb(40, 50))[1].tobytes()})
    with pytest.raises(BadImageError, match="40x50|50x40"):
        convert(src, tmp_path / "a", format="folder", max_pixels=1999, progress=False)
    convert(src, tmp_path / "b", format="folder", max_pixels=2000, progress=False)


def test_check_decode_finds_damaged_data_the_header_check_misses(tmp_path: Path) -> None:
    data = bytearray(cv2.imencode(".png", _rgb())[1].tobytes())
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 40] = bytes(32)  # sound header and IEND, corrupt pixels
    src = _tree(tmp_path / "src", {"damaged.png": bytes(data)})
    convert(src, tmp_path / "h", format="folder", check="header", progress=False)
    with pytest.raises(BadImageError, match="damaged.png"):
        convert(src, tmp_path / "d", format="folder", check="decode", progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_broken_links_are_skipped_not_fatal(tmp_path: Path, workers: int) -> None:
    src = _tree(tmp_path / "src", {})
    odd = src / "odd"
    (odd / "fine.jpg").write_bytes(_jpeg())
    os.symlink("nowhere.jpg", odd / "dangling.jpg")
    os.symlink("loop_b.jpg", odd / "loop_a.jpg")
    os.symlink("loop_a.jpg", odd / "loop_b.jpg")
    report = convert(
        src, tmp_path / "out", format="folder", on_error="skip", workers=workers, progress=False
    )
    reasons = {s.key: s.reason for s in report.skipped}
    assert set(reasons) == {"odd/dangling.jpg", "odd/loop_a.jpg", "odd/loop_b.jpg"}
    assert "dangling symbolic link" in reasons["odd/dangling.jpg"]
    assert "loops" in reasons["odd/loop_a.jpg"]
    assert report.manifest.num_records == 3
    with pytest.raises(BadImageError, match="dangling.jpg"):
        convert(src, tmp_path / "fail", format="folder", progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_a_bad_image(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"secret.jpg": _jpeg()})
    (src / "odd" / "secret.jpg").chmod(0)
    with pytest.raises(BadImageError, match="secret.jpg.*Permission denied"):
        convert(src, tmp_path / "out", format="folder", progress=False)


def test_non_utf8_file_name_keeps_its_bytes(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {})
    with open(os.fsencode(src / "odd") + b"/caf\xe9.jpg", "wb") as f:
        f.write(_jpeg())
    report = convert(src, tmp_path / "out", format="folder", progress=False)
    assert report.manifest.num_records == 3
    assert b"caf\xe9.jpg" in os.listdir(os.fsencode(tmp_path / "out" / "odd"))
    keys = seqstore.open(tmp_path / "out").keys  # type: ignore[attr-defined]
    assert "odd/caf\udce9.jpg" in keys


def test_nul_in_a_key_is_one_line_naming_it(tmp_path: Path) -> None:
    record = Record.make("a/x\x00y.jpg", 0, _jpeg(), 32, 24)
    with pytest.raises(ConfigError, match=r"'a/x\\x00y.jpg' holds a NUL byte"):
        with get_backend("folder").open_writer(tmp_path / "out", classes=["a"]) as writer:
            writer.write(record)


def test_classes_file_out_of_order_agrees_with_the_training_folder(tmp_path: Path) -> None:
    train = tmp_path / "train"
    val = tmp_path / "val"
    val.mkdir()
    lines = []
    for i, wnid in enumerate(["n03", "n01", "n02"]):
        (train / wnid).mkdir(parents=True)
        (train / wnid / "t.jpg").write_bytes(_jpeg())
        (val / f"v{i}.jpg").write_bytes(_jpeg())
        lines.append(f"v{i}.jpg\t{wnid}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "wnids.txt").write_text("n03\nn01\nn02\n")  # Tiny-ImageNet's is unsorted too
    convert(train, tmp_path / "t", format="folder", progress=False)
    convert(
        val,
        tmp_path / "v",
        format="folder",
        labels=tmp_path / "val.txt",
        classes=tmp_path / "wnids.txt",
        progress=False,
    )
    t, v = seqstore.open(tmp_path / "t"), seqstore.open(tmp_path / "v")
    assert t.classes == v.classes == ["n01", "n02", "n03"]
    labels = {r.key.split("/")[-1]: v.classes[r.label] for r in v.read_block(0, len(v))}
    assert labels == {"v0.jpg": "n03", "v1.jpg": "n01", "v2.jpg": "n02"}


def test_cli_refuses_in_one_line_and_skips(tmp_path: Path) -> None:
    files = {name: make() for name, (make, _) in REFUSED.items()}
    src = _tree(tmp_path / "src", files)
    os.symlink("nowhere.jpg", src / "odd" / "dangling.jpg")
    failed = _cli(src, tmp_path / "fail", "--format", "folder")
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqstore: error: ")
    skipped = _cli(
        src, tmp_path / "skip", "--format", "lmdb", "--on-error", "skip", "--workers", "2"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "Traceback" not in skipped.stderr
    assert f"{len(files) + 1} file(s) skipped" in skipped.stdout


def test_libjpeg_warnings_become_convert_warnings_naming_the_file(tmp_path: Path) -> None:
    # Extra bytes before the end-of-image marker: the image decodes, and libjpeg (inside
    # OpenCV) prints "Corrupt JPEG data: 2 extraneous bytes" on stderr, without a file name.
    # (whether libjpeg notices depends on the scan's last bits: this image's do)
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    src = _tree(tmp_path / "src", {"extra.jpg": data[:-2] + b"\x00\x00\x00" + data[-2:]})
    p = _cli(src, tmp_path / "dst", "--format", "lmdb")
    assert p.returncode == 0, p.stderr
    assert "Corrupt JPEG data" not in p.stderr
    assert "extra.jpg' decodes, but libjpeg says: Corrupt JPEG data" in p.stdout


def test_check_decode_refuses_jpeg_data_that_libjpeg_fills_with_grey(tmp_path: Path) -> None:
    # Cut short, with its end marker put back: the header check passes, and OpenCV decodes
    # it with the lost rows grey, saying "premature end of data segment" only on stderr.
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    cut = data[: len(data) * 2 // 3] + b"\xff\xd9"
    src = _tree(tmp_path / "src", {"cut.jpg": cut})
    p = _cli(src, tmp_path / "dst", "--format", "lmdb")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cut.jpg' has damaged image data (libjpeg: Corrupt JPEG data" in p.stderr
    report = convert(src, tmp_path / "dst", format="lmdb", on_error="skip", progress=False)
    assert [s.key for s in report.skipped] == ["odd/cut.jpg"]
    assert convert(src, tmp_path / "hdr", format="lmdb", check="header", progress=False)


@pytest.mark.parametrize("transform", ["imagenet_train", "imagenet_val"])
def test_the_loader_refuses_jpeg_data_that_libjpeg_fills_with_grey(
    tmp_path: Path, transform: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """As convert does: damage that libjpeg only reports on stderr makes a bad record, left
    out with on_error='skip' and named with 'raise'; nothing reaches stderr."""
    from seqstore import Loader
    from seqstore.errors import BadRecordError, BadRecordWarning
    from seqstore.testing import collect_epoch, make_image_folder

    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    root = make_image_folder(tmp_path / "f", classes=2, per_class=4)
    cut = root / sorted(p.name for p in root.iterdir())[0] / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3] + b"\xff\xd9")
    opts = dict(batch_size=3, image_size=32, num_workers=2, transform=transform, with_indices=True)
    with pytest.warns(BadRecordWarning, match=r"cut.jpg.*cannot be decoded"):
        collect_epoch(Loader(root, on_error="skip", **opts))
    with pytest.raises(BadRecordError, match=r"cut.jpg.*damaged image data \(libjpeg: Corrupt"):
        collect_epoch(Loader(root, **opts))
    assert "Corrupt JPEG data" not in capfd.readouterr().err


@pytest.mark.parametrize("default_image", [False, True])
@pytest.mark.parametrize("disposal", [0, 1, 2])
def test_an_animated_png_decodes_to_pils_first_frame(default_image: bool, disposal: int) -> None:
    """Its first frame as PIL composes it, whatever the animation leaves out or blends:
    OpenCV's own answer differs where the default image is not the first frame."""
    import io

    from PIL import Image

    from seqstore.imaging.decode import decode

    rng = np.random.default_rng(disposal)
    frames = [
        Image.fromarray(rng.integers(0, 256, (12, 16, 4), np.uint8), "RGBA") for _ in range(3)
    ]
    buf = io.BytesIO()
    frames[0].save(
        buf,
        "PNG",
        save_all=True,
        append_images=frames[1:],
        default_image=default_image,
        disposal=disposal,
        blend=1,
    )
    data = buf.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode(data), expected)
