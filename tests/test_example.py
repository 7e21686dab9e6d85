"""The ImageNet example trains on CPU, checkpoints mid-epoch and resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqstore.convert import convert
from seqstore.testing import make_image_folder

MAIN = Path(__file__).resolve().parents[1] / "examples" / "imagenet" / "main.py"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with a shuffled LMDB train store and a val image folder."""
    root = tmp_path_factory.mktemp("imagenet")
    images = make_image_folder(root / "images", classes=4, per_class=6, max_side=80)
    convert(images, root / "train.lmdb", format="lmdb", progress=False)
    make_image_folder(root / "val", classes=4, per_class=2, seed=1, max_side=80)
    return root


def _train(root: Path, checkpoint: Path, *extra: str) -> str:
    cmd = [sys.executable, str(MAIN), str(root), "--batch-size", "8", "--workers", "2"]
    cmd += ["--image-size", "32", "--print-freq", "1", "--checkpoint", str(checkpoint), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_example_trains_and_resumes_exactly(root: Path, tmp_path: Path) -> None:
    # 24 training images in batches of 8: 3 steps per epoch, so 5 steps cross an epoch end.
    straight = _train(root, tmp_path / "a.pt", "--max-steps", "5")
    assert "epoch 0 val top-1" in straight and "stopped after 5 steps" in straight

    _train(root, tmp_path / "b.pt", "--max-steps", "2")
    resumed = _train(root, tmp_path / "b.pt", "--max-steps", "5", "--resume")
    assert "resumed at epoch 0, step 2" in resumed

    a = torch.load(tmp_path / "a.pt", weights_only=False)
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    assert a["step"] == b["step"] == 5
    assert a["loader"] == b["loader"]
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_example_runs_data_parallel_under_torchrun(root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(MAIN), str(root), "--batch-size", "4", "--workers", "1", "--image-size", "32"]
    cmd += ["--max-steps", "4", "--checkpoint", str(tmp_path / "ddp.pt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp.pt", weights_only=False)
    # One loader state per rank; 24 images over 2 ranks in batches of 4: 3 steps per epoch.
    assert [s["rank"] for s in ckpt["loader"]] == [0, 1]
    assert all(s["epoch"] == 1 and s["batches_done"] == 1 for s in ckpt["loader"])
