"""The old loaders' classes read their ILSVRC-*.lmdb files through the new engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seqstore.compat import ImagenetLoader, LMDBLoader
from seqstore.errors import ConfigError
from seqstore.testing import collect_epoch
from seqstore.testing.data import make_records

RECORDS = make_records(23, classes=5, seed=11)  # what make_tensorpack_file writes


@pytest.fixture
def imagenet_dir(tmp_path: Path, make_tensorpack_file: Callable[[Path, str], Path]) -> Path:
    make_tensorpack_file(tmp_path / "ILSVRC-train.lmdb", "msgpack")
    make_tensorpack_file(tmp_path / "ILSVRC-val.lmdb", "pickle")
    return tmp_path


@pytest.mark.parametrize("mode", ["train", "val"])
def test_imagenet_loader_reads_the_old_files(imagenet_dir: Path, mode: str) -> None:
    loader = ImagenetLoader(
        imagenet_dir,
        mode,
        batch_size=5,
        shuffle=mode == "train",
        num_workers=2,
        drop_last=False,
        image_size=32,
        resize_size=36,
        with_indices=True,
    )
    indices, labels, images = collect_epoch(loader)
    assert sorted(indices) == list(range(23)) and len(loader) == 5
    assert labels == [RECORDS[i].label for i in indices]
    assert (indices != sorted(indices)) == (mode == "train")
    x = torch.cat(images)
    assert x.shape == (23, 3, 32, 32) and x.dtype == torch.float32
    # The old loaders' scale: x / 128 - 1.
    raw = ImagenetLoader(
        imagenet_dir,
        mode,
        batch_size=23,
        num_workers=0,
        image_size=32,
        resize_size=36,
        dtype="uint8",
        with_indices=True,
    )
    u8, _, idx = next(iter(raw))
    if mode == "val":  # no random augmentation: the same pixels in both
        order = {int(i): k for k, i in enumerate(idx)}
        same = u8[[order[i] for i in indices]].float()
        torch.testing.assert_close(x, same / 128 - 1, rtol=0, atol=1e-5)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 - 1 / 128 + 1e-6


def test_imagenet_loader_takes_a_torchvision_style_transform(imagenet_dir: Path) -> None:
    pytest.importorskip("PIL")

    def to_tensor(img: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float()

    loader = ImagenetLoader(imagenet_dir, "val", transform=to_tensor, batch_size=4, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_lmdb_loader_finds_its_files_through_imagenet(
    imagenet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGENET", str(imagenet_dir))
    loader = LMDBLoader("train", batch_size=8, shuffle=True, num_workers=0, image_size=16)
    assert len(loader) == 2 and sum(len(y) for _, y in loader) == 16  # the last batch dropped
    monkeypatch.delenv("IMAGENET")
    with pytest.raises(ConfigError, match="IMAGENET"):
        LMDBLoader("train")
    with pytest.raises(ConfigError, match="mode"):
        ImagenetLoader(imagenet_dir, "test")


def test_the_old_inputs_by_default(imagenet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BGR, 4 workers, the last partial batch dropped, cache as LMDBLoader's fifth
    positional argument, and one warning of what is not copied."""
    import warnings

    from seqstore import compat
    from seqstore.errors import SeqstoreWarning

    monkeypatch.setattr(compat, "_warned", [])
    with pytest.warns(SeqstoreWarning, match="not their colour jitter and PCA lighting"):
        loader = ImagenetLoader(imagenet_dir, "train", batch_size=5)
    assert loader.config.num_workers == 4 and loader.config.drop_last and len(loader) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeqstoreWarning)  # said once
        ImagenetLoader(imagenet_dir, "train", batch_size=5)
    opts: dict[str, Any] = dict(batch_size=23, num_workers=0, image_size=32, resize_size=36)
    bgr = next(iter(ImagenetLoader(imagenet_dir, "val", drop_last=False, **opts)))[0]
    rgb = next(iter(ImagenetLoader(imagenet_dir, "val", drop_last=False, channels="rgb", **opts)))[
        0
    ]
    torch.testing.assert_close(bgr, rgb.flip(1))
    assert not torch.equal(bgr, rgb)
    monkeypatch.setenv("IMAGENET", str(imagenet_dir))
    old = LMDBLoader("val", 5, False, 0, 7, False)
    assert old.config.shuffle_buffer == 7 and old.config.device == "cpu"
