"""seqstore convert: order, determinism, checks of source files, and what reaches the user."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import seqstore
from seqstore.backends import get_backend
from seqstore.cli import main
from seqstore.convert import convert
from seqstore.errors import (
    BadImageError,
    ConfigError,
    NotAStoreError,
    SeqstoreError,
    StoreExistsError,
)
from seqstore.testing import make_image_folder, make_records


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", classes=4, per_class=12, max_side=80)


def _content(path: Path) -> list[tuple[str, int, bytes]]:
    reader = seqstore.open(path)
    return [(r.key, r.label, r.data) for r in reader.read_block(0, len(reader))]


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_same_store_whatever_the_worker_count(images: Path, tmp_path: Path, fmt: str) -> None:
    convert(images, tmp_path / "w0", format=fmt, workers=0, progress=False)
    convert(images, tmp_path / "w2", format=fmt, workers=2, progress=False)
    assert _content(tmp_path / "w0") == _content(tmp_path / "w2")


def test_training_trees_are_shuffled_by_seed(images: Path, tmp_path: Path) -> None:
    source = _content(images)
    convert(images, tmp_path / "s0", format="lmdb", seed=0, progress=False)
    convert(images, tmp_path / "s0b", format="lmdb", seed=0, progress=False)
    convert(images, tmp_path / "s1", format="lmdb", seed=1, progress=False)
    convert(images, tmp_path / "plain", format="lmdb", shuffle=False, progress=False)
    s0 = _content(tmp_path / "s0")
    assert s0 == _content(tmp_path / "s0b")
    assert s0 != _content(tmp_path / "s1")
    assert s0 != source and sorted(s0) == sorted(source)
    assert _content(tmp_path / "plain") == source


def test_store_to_store_keeps_order(images: Path, tmp_path: Path) -> None:
    convert(images, tmp_path / "a", format="hdf5", progress=False)
    convert(tmp_path / "a", tmp_path / "b", format="lmdb", progress=False)
    assert _content(tmp_path / "a") == _content(tmp_path / "b")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("class00/zero.JPEG", b"", "empty"),
        ("class01/cut.JPEG", None, "truncated"),
        ("class02/notes.JPEG", b"bounding boxes: 1 2 3 4\n", "not an image"),
    ],
)
def test_bad_image_fails_naming_the_file_and_leaves_no_store(
    images: Path, tmp_path: Path, name: str, data: bytes | None, message: str
) -> None:
    if data is None:
        data = next(images.glob("class01/*.JPEG")).read_bytes()[:-300]
    (images / name).write_bytes(data)
    with pytest.raises(BadImageError, match=message) as err:
        convert(images, tmp_path / "out", format="hdf5", progress=False)
    # The Python API's words in Python; the command line's flag where the CLI prints it.
    assert name in str(err.value) and "on_error='skip'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_skip_lists_bad_files_in_manifest_and_report(images: Path, tmp_path: Path) -> None:
    (images / "class00" / "zero.JPEG").write_bytes(b"")
    report = convert(images, tmp_path / "out", format="lmdb", on_error="skip", progress=False)
    assert [s.key for s in report.skipped] == ["class00/zero.JPEG"]
    manifest = seqstore.open(tmp_path / "out").manifest
    assert [s.key for s in manifest.provenance.skipped] == ["class00/zero.JPEG"]
    assert manifest.num_records == 48


def test_png_named_jpeg_and_cmyk_are_kept_with_a_warning(images: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes()
    (images / "class00" / "disguised.JPEG").write_bytes(png)
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(images / "class01" / "cmyk.JPEG")
    report = convert(images, tmp_path / "out", format="hdf5", progress=False)
    text = "\n".join(report.warnings)
    assert "disguised.JPEG' is a PNG file named .JPEG" in text
    assert "cmyk.JPEG' is a CMYK JPEG" in text
    stored = {key: data for key, _, data in _content(tmp_path / "out")}
    assert stored["class00/disguised.JPEG"] == png


def test_max_side_reencodes_large_images(images: Path, tmp_path: Path) -> None:
    convert(images, tmp_path / "out", format="lmdb", max_side=40, quality=80, progress=False)
    reader = seqstore.open(tmp_path / "out")
    for r in reader.read_block(0, len(reader)):
        assert max(r.width, r.height) <= 40
        img = cv2.imdecode(np.frombuffer(r.data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (r.height, r.width)


def test_damaged_image_data_under_a_sound_header_follows_on_error(
    images: Path, tmp_path: Path
) -> None:
    # Only re-encoding decodes every image; a file that then fails is skipped or fails
    # the conversion as --on-error says, like a file whose header is bad.
    png = cv2.imencode(".png", np.full((30, 40, 3), 90, np.uint8))[1].tobytes()
    start = png.index(b"IDAT") + 8
    bad = png[:start] + bytes(len(png) - start - 12) + png[-12:]  # IDAT zeroed, IEND kept
    (images / "class01" / "broken.png").write_bytes(bad)
    with pytest.raises(BadImageError, match="broken.png"):
        convert(images, tmp_path / "a", format="lmdb", max_side=20, progress=False)
    assert not (tmp_path / "a").exists()
    report = convert(
        images, tmp_path / "b", format="lmdb", max_side=20, on_error="skip", progress=False
    )
    assert [s.key for s in report.skipped] == ["class01/broken.png"]
    assert report.manifest.num_records == 48


def test_classes_option_maps_labels_by_name(images: Path, tmp_path: Path) -> None:
    names = seqstore.open(images).classes
    # An unsorted file (Tiny-ImageNet's wnids.txt is one) is used in sorted order, the order
    # of a training folder, so splits converted with and without it agree.
    (tmp_path / "classes.txt").write_text("\n".join(["class99", *reversed(names)]) + "\n")
    report = convert(images, tmp_path / "out", format="hdf5", classes=tmp_path / "classes.txt")
    assert any("out of order" in w for w in report.warnings)
    reader = seqstore.open(tmp_path / "out")
    assert reader.classes == [*names, "class99"]
    for r in reader.read_block(0, len(reader)):
        assert reader.classes[r.label] == r.key.split("/")[0]
    (tmp_path / "some.txt").write_text(names[0] + "\n")
    with pytest.raises(ConfigError, match="lacks 3 class"):
        convert(images, tmp_path / "x", format="hdf5", classes=tmp_path / "some.txt")


def test_tiny_imagenet_layout_ignores_box_files(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for wnid in ("n01", "n02"):
        make_image_folder(root / wnid / "images", classes=1, per_class=3)
        (root / wnid / f"{wnid}_boxes.txt").write_text("img_0.JPEG 0 0 10 10\n")
    report = convert(root, tmp_path / "out", format="hdf5", progress=False)
    assert report.manifest.num_records == 6
    assert report.manifest.classes == ["n01", "n02"]
    assert "n01/n01_boxes.txt" in report.warnings[0]


def test_destination_problems(images: Path, tmp_path: Path) -> None:
    convert(images, tmp_path / "out", format="lmdb", progress=False)
    with pytest.raises(StoreExistsError, match="already holds a store"):
        convert(images, tmp_path / "out", format="lmdb", progress=False)
    convert(images, tmp_path / "out", format="hdf5", overwrite=True, progress=False)
    assert seqstore.open(tmp_path / "out").manifest.format == "hdf5"
    with pytest.raises(ConfigError, match="same path"):
        convert(tmp_path / "out", tmp_path / "out", format="lmdb", progress=False)


def test_source_problems(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match="does not exist"):
        convert(tmp_path / "missing", tmp_path / "out", format="lmdb", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError):
        convert(tmp_path / "empty", tmp_path / "out", format="lmdb", progress=False)


def test_invalid_option_is_one_clear_error(images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        convert(images, tmp_path / "out", format="lmdb", workers=-1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "{tmp}/nope", "{tmp}/out", "--format", "lmdb"], "nope' does not exist"),
        (["convert", "{images}", "{tmp}/out", "--format", "zarr"], "unknown backend 'zarr'"),
        (["info", "{images}/class00"], "no class sub-folders"),
        (["convert", "{images}", "{tmp}/o2", "--format", "hdf5", "--quality", "300"], "quality"),
        (
            ["convert", "{images}", "{images}/class00/img_00000.JPEG/x", "--format", "lmdb"],
            "{images}",
        ),
        (["bench", "{images}", "--formats", ",", "--out", "{tmp}/b"], "formats"),
    ],
)
def test_cli_errors_are_one_line(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.format(tmp=tmp_path, images=images) for a in argv]
    message = message.format(images=images)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqstore: error:") and message in err and "\n" not in err


def test_cli_convert_and_info(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(images), str(tmp_path / "s"), "--format", "hdf5", "-q"]) == 0
    assert "wrote 48 records" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "s"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "format: hdf5" in out and "48 of 48 records match" in out


def test_cli_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--classes", "3", "--per-class", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("bytes, labels and epoch coverage identical") == 3


def test_shared_imagen200_to_lmdb(shared_data: Path, tmp_path: Path) -> None:
    report = convert(
        shared_data / "imagen200", tmp_path / "s", format="lmdb", workers=2, progress=False
    )
    assert report.manifest.num_records == 1000 and len(report.manifest.classes) == 200
    # Every real photo there, progressive and greyscale ones included, decodes as the Loader
    # will: nothing is skipped and nothing needs a warning.
    assert report.skipped == [] and report.warnings == []
    reader = seqstore.open(tmp_path / "s")
    assert all(r.verify() for r in reader.read_block(0, len(reader)))


def test_store_options_and_backends_that_do_not_fit(images: Path, tmp_path: Path) -> None:
    convert(images, tmp_path / "h5", format="hdf5", progress=False)
    with pytest.raises(ConfigError, match="is a hdf5 store, not lmdb"):
        seqstore.open(tmp_path / "h5", "lmdb")
    with pytest.raises(ConfigError, match="takes no option 'labels'"):
        seqstore.open(tmp_path / "h5", labels=tmp_path / "labels.txt")


def test_cli_verify_of_an_image_folder_claims_no_match(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(images), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: nothing to check: folder data stores no checksums" in out
    assert "records match" not in out


def test_relabelled_records_carry_checksums_of_their_new_labels(
    images: Path, tmp_path: Path
) -> None:
    names = seqstore.open(images).classes
    # A class sorted before the source's own shifts every label by one.
    (tmp_path / "classes.txt").write_text("\n".join(["aaa", *names]) + "\n")
    convert(images, tmp_path / "out", format="lmdb", classes=tmp_path / "classes.txt")
    reader = seqstore.open(tmp_path / "out")
    records = reader.read_block(0, len(reader))
    assert {r.label for r in records} == set(range(1, len(names) + 1))
    assert all(r.verify() for r in records)
    assert main(["info", str(tmp_path / "out"), "--verify"]) == 0


def test_a_record_damaged_in_the_source_store_is_not_laundered(
    images: Path, tmp_path: Path
) -> None:
    convert(images, tmp_path / "src", format="lmdb", progress=False)
    reader = seqstore.open(tmp_path / "src")
    victim = reader.read(7)
    reader.close()
    data_file = tmp_path / "src" / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    raw[raw.find(victim.data) + len(victim.data) // 2] ^= 0x40
    data_file.write_bytes(bytes(raw))
    with pytest.raises(BadImageError, match=f"'{victim.key}'.*fails its checksum"):
        convert(tmp_path / "src", tmp_path / "a", format="hdf5", progress=False)
    report = convert(tmp_path / "src", tmp_path / "b", format="hdf5", on_error="skip")
    assert [s.key for s in report.skipped] == [victim.key]
    assert report.manifest.num_records == len(reader) - 1


def test_a_writer_refuses_a_record_whose_checksum_does_not_match(tmp_path: Path) -> None:
    from dataclasses import replace

    record = make_records(1)[0]
    with pytest.raises(SeqstoreError, match="checksum"):
        with get_backend("lmdb").open_writer(tmp_path / "s") as writer:
            writer.write(replace(record, label=record.label + 1))
    assert not (tmp_path / "s").exists()


def test_names_that_are_not_utf8_round_trip_through_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept, a warned and a skipped file, each named with bytes that are not UTF-8: the
    store is written, its manifest read back by convert, info and open alike."""
    import os

    rec = make_records(2, seed=1)
    jpeg = next(r.data for r in rec if r.key.endswith(".JPEG"))
    png = cv2.imencode(".png", np.full((9, 9, 3), 90, np.uint8))[1].tobytes()
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    names = {b"kept\xff.jpg": jpeg, b"png\xfe.jpg": png, b"cut\xfd.jpg": jpeg[: len(jpeg) // 3]}
    for name, data in names.items():
        with open(os.path.join(os.fsencode(root / "a"), name), "wb") as f:
            f.write(data)
    dst = tmp_path / "s"
    argv = ["convert", str(root), str(dst), "--format", "lmdb", "--on-error", "skip", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "wrote 2 records" in printed.out
    manifest = seqstore.open(dst).manifest
    assert [s.key for s in manifest.provenance.skipped] == [os.fsdecode(b"a/cut\xfd.jpg")]
    assert any(os.fsdecode(b"png\xfe.jpg") in w for w in manifest.provenance.warnings)
    keys = sorted(r.key for r in seqstore.open(dst).read_block(0, 2))
    assert keys == sorted(os.fsdecode(b"a/" + n) for n in (b"kept\xff.jpg", b"png\xfe.jpg"))
    assert main(["info", str(dst)]) == 0
    assert "skipped: 1 source file(s)" in capsys.readouterr().out


def test_bad_image_messages_speak_the_words_of_where_they_are_read(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI says --on-error skip; a summary of skipped files gives no advice to skip them;
    'raise' is convert's word as it is the Loader's, and the old 'fail' still works."""
    cut = next(images.glob("class01/*.JPEG")).read_bytes()[:-300]
    (images / "class01" / "cut.JPEG").write_bytes(cut)
    argv = ["convert", str(images), str(tmp_path / "a"), "--format", "lmdb", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "use --on-error skip to leave it out" in err and "on_error=" not in err
    assert main([*argv, "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped: " in out and "cut.JPEG" in out and "leave it out" not in out
    for word in ("raise", "fail"):
        with pytest.raises(BadImageError, match="on_error='skip'"):
            convert(images, tmp_path / word, format="lmdb", on_error=word, progress=False)
