"""The folder backend reads trees exactly as torchvision's ImageFolder does, and val layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

import seqstore
from seqstore.errors import ConfigError, NotAStoreError
from seqstore.testing.data import make_image_folder, make_records

JPEG = make_records(1, seed=9)[0].data


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG if rel.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")) else b"x")


def test_class_indices_and_order_follow_torchvision_rules(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        [
            "b_class/x.JPG",
            "b_class/notes.txt",
            "b_class/.hidden.jpg",
            "b_class/sub/y.png",
            "b_class/sub/deeper/z.jpeg",
            "b_class/sub-a/w.jpg",
            "a_class/1.Jpeg",
            "a_class/0.bmp",
            "a_class/README",
            ".hidden_dir/h.jpg",
            "top_level_file.jpg",
        ],
    )
    reader = seqstore.open(tmp_path)
    # torchvision: classes are sorted sub-directories, hidden ones included; files come from
    # sorted(os.walk(class_dir)) with sorted names, kept by lower-cased extension.
    assert reader.classes == [".hidden_dir", "a_class", "b_class"]
    assert [(r.key, r.label) for r in reader.read_block(0, len(reader))] == [
        (".hidden_dir/h.jpg", 0),
        ("a_class/0.bmp", 1),
        ("a_class/1.Jpeg", 1),
        ("b_class/.hidden.jpg", 2),
        ("b_class/x.JPG", 2),
        ("b_class/sub/y.png", 2),
        ("b_class/sub-a/w.jpg", 2),  # sorted walk roots: "sub-a" < "sub/deeper" ('-' < '/')
        ("b_class/sub/deeper/z.jpeg", 2),
    ]
    assert sorted(reader.ignored) == ["a_class/README", "b_class/notes.txt"]


def test_class_without_images_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path, ["a/x.jpg", "b/readme.txt"])
    with pytest.raises(NotAStoreError, match="no images in class folder"):
        seqstore.open(tmp_path)


def test_folder_without_class_folders_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path, ["x.jpg"])
    with pytest.raises(NotAStoreError, match="no class sub-folders"):
        seqstore.open(tmp_path)


def _val(tmp_path: Path, lines: list[str], images: list[str]) -> tuple[Path, Path, Path]:
    train = tmp_path / "train"
    _tree(train, ["n01/a.jpg", "n02/b.jpg", "n03/c.jpg"])
    val = tmp_path / "val"
    _tree(val, images)
    labels = tmp_path / "val_annotations.txt"
    labels.write_text("\n".join(lines) + "\n")
    return train, val, labels


def test_val_layout_maps_names_onto_training_classes(tmp_path: Path) -> None:
    train, val, labels = _val(
        tmp_path,
        ["val_1.JPEG\tn03\t0\t1\t2\t3", "val_0.JPEG\tn01\t4\t5\t6\t7"],
        ["val_0.JPEG", "val_1.JPEG"],
    )
    reader = seqstore.open(val, labels=labels, classes=train)
    assert reader.classes == ["n01", "n02", "n03"]
    assert [(r.key, r.label) for r in reader.read_block(0, 2)] == [
        ("val_0.JPEG", 0),
        ("val_1.JPEG", 2),
    ]


def test_val_layout_with_integer_labels(tmp_path: Path) -> None:
    _, val, labels = _val(tmp_path, ["v2.jpg 1", "v1.jpg 0"], ["v1.jpg", "v2.jpg"])
    reader = seqstore.open(val, labels=labels)
    assert [r.label for r in reader.read_block(0, 2)] == [0, 1]


@pytest.mark.parametrize(
    ("lines", "images", "message"),
    [
        (["v1.jpg n01"], ["v1.jpg", "v2.jpg"], "has no label for"),
        (["v1.jpg n01", "v9.jpg n02"], ["v1.jpg"], "not in"),
        (["v1.jpg n99"], ["v1.jpg"], "not among the training classes"),
        (["v1.jpg"], ["v1.jpg"], "line 1 has no label"),
    ],
)
def test_val_layout_mismatch_is_a_clear_error(
    tmp_path: Path, lines: list[str], images: list[str], message: str
) -> None:
    train, val, labels = _val(tmp_path, lines, images)
    with pytest.raises(ConfigError, match=message):
        seqstore.open(val, labels=labels, classes=train)


def test_export_keeps_class_indices_when_a_class_is_empty(tmp_path: Path) -> None:
    records = [r for r in make_records(12, classes=4) if r.label != 1]
    backend = seqstore.get_backend("folder")
    with backend.open_writer(tmp_path / "out", classes=["c0", "c1", "c2", "c3"]) as writer:
        for record in records:
            writer.write(record)
    reader = seqstore.open(tmp_path / "out")
    assert reader.classes == ["c0", "c1", "c2", "c3"]
    assert sorted(r.label for r in reader.read_block(0, len(reader))) == sorted(
        r.label for r in records
    )


def test_shared_tiny_imagenet_train_and_val(shared_data: Path) -> None:
    root = shared_data / "tiny10"
    train = seqstore.open(root / "train")
    assert len(train) == 5000 and len(train.classes) == 10
    assert any(key.endswith("_boxes.txt") for key in train.ignored)
    val = seqstore.open(
        root / "val" / "images", labels=root / "val" / "val_annotations.txt", classes=root / "train"
    )
    assert len(val) == 500 and val.classes == train.classes


def test_readme_val_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The README's: seqstore convert VAL/images val.h5 --format hdf5 --labels L --classes TRAIN
    from seqstore.cli import main

    train, val, labels = _val(
        tmp_path,
        ["val_1.JPEG\tn03\t0\t1\t2\t3", "val_0.JPEG\tn01\t4\t5\t6\t7"],
        ["val_0.JPEG", "val_1.JPEG"],
    )
    argv = ["convert", str(val), str(tmp_path / "val.h5"), "--format", "hdf5"]
    assert main([*argv, "--labels", str(labels), "--classes", str(train), "-q"]) == 0
    assert main(["info", str(tmp_path / "val.h5"), "--verify"]) == 0
    assert "2 of 2 records match" in capsys.readouterr().out
    reader = seqstore.open(tmp_path / "val.h5")
    assert reader.classes == ["n01", "n02", "n03"]
    assert [(r.key, r.label) for r in reader.read_block(0, 2)] == [
        ("val_0.JPEG", 0),
        ("val_1.JPEG", 2),
    ]


def test_a_dataset_root_of_splits_is_not_read_as_two_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from seqstore.cli import main

    make_image_folder(tmp_path / "data" / "train", classes=3, per_class=2)
    make_image_folder(tmp_path / "data" / "val", classes=3, per_class=1)
    with pytest.raises(ConfigError, match=r"dataset root holding the splits train, val.*split="):
        seqstore.open(tmp_path / "data")
    train = seqstore.open(tmp_path / "data", split="train")
    assert len(train) == 6 and len(train.classes) == 3
    from seqstore import Loader

    assert Loader(tmp_path / "data", split="train", batch_size=2, num_workers=0).num_records == 6
    with pytest.raises(ConfigError, match=r"no split 'test' \(its folders: train, val\)"):
        seqstore.open(tmp_path / "data", split="test")
    dst = str(tmp_path / "val.h5")
    argv = ["convert", str(tmp_path / "data"), dst, "--format", "hdf5", "-q"]
    assert main(argv) == 2
    assert "--reader-option split=train" in capsys.readouterr().err
    assert main([*argv, "--reader-option", "split=val"]) == 0
    assert len(seqstore.open(dst)) == 3
    # One folder named like a split beside class folders is a class, as before.
    make_image_folder(tmp_path / "classes", classes=2, per_class=1)
    image = next(p for p in (tmp_path / "data" / "val").rglob("*") if p.is_file())
    (tmp_path / "classes" / "test").mkdir()
    (tmp_path / "classes" / "test" / "x.png").write_bytes(image.read_bytes())
    assert len(seqstore.open(tmp_path / "classes").classes) == 3


def test_tiny_imagenets_root_names_its_splits(shared_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"splits train, val"):
        seqstore.open(shared_data / "tiny10")
    assert len(seqstore.open(shared_data / "tiny10", split="train").classes) == 10


def test_a_folder_read_in_place_follows_the_bad_record_policy(tmp_path: Path) -> None:
    """A truncated JPEG in a folder is one bad record: skipped with on_error='skip',
    named with on_error='raise', as in any store."""
    from seqstore import Loader
    from seqstore.errors import BadRecordError, BadRecordWarning
    from seqstore.testing import collect_epoch

    root = make_image_folder(tmp_path / "f", classes=2, per_class=6)
    victim = sorted((root / sorted(p.name for p in root.iterdir())[0]).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    opts = dict(batch_size=4, image_size=32, num_workers=2, with_indices=True)
    with pytest.warns(BadRecordWarning, match=victim.name):
        indices, _, _ = collect_epoch(Loader(root, on_error="skip", **opts))
    assert len(indices) == 12
    with pytest.raises(BadRecordError, match=rf"{victim.name}.*on_error='skip'"):
        collect_epoch(Loader(root, **opts))
