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
# The README's torchrun line, flag for flag.
README_TORCHRUN = ["--batch-size", "32", "--workers", "1", "--image-size", "64", "--max-steps"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with a shuffled LMDB train store and a val image folder."""
    root = tmp_path_factory.mktemp("imagenet")
    images = make_image_folder(root / "images", classes=4, per_class=6, max_side=80)
    convert(images, root / "train.lmdb", format="lmdb", progress=False)
    make_image_folder(root / "val", classes=4, per_class=2, seed=1, max_side=80)
    return root


def _run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def _train(root: Path, ckpt_dir: Path, *extra: str) -> str:
    cmd = [sys.executable, str(MAIN), str(root), "--batch-size", "8", "--workers", "2"]
    cmd += ["--image-size", "32", "--print-freq", "1", "--checkpoint-dir", str(ckpt_dir), *extra]
    return _run(cmd).stdout


def _resume(root: Path, ckpt_dir: Path, *extra: str, ok: bool = True) -> str:
    cmd = [sys.executable, str(MAIN), str(root), "--checkpoint-dir", str(ckpt_dir), "--resume"]
    done = _run([*cmd, *extra], ok=ok)
    return done.stdout if ok else done.stderr


def _torchrun(root: Path, ckpt_dir: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return _run([*cmd, str(MAIN), str(root), "--checkpoint-dir", str(ckpt_dir), *extra]).stdout


def _load(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "checkpoint.pt", weights_only=False)


def test_example_trains_and_resumes_exactly(root: Path, tmp_path: Path) -> None:
    # 24 training images in batches of 8: 3 steps per epoch, so 5 steps cross an epoch end.
    straight = _train(root, tmp_path / "a", "--max-steps", "5")
    assert "epoch 0 val top-1" in straight and "stopped after 5 steps" in straight

    _train(root, tmp_path / "b", "--max-steps", "2")
    # Only --resume (and the new stop): the rest of the arguments come from the checkpoint.
    resumed = _resume(root, tmp_path / "b", "--max-steps", "5")
    assert "resumed at epoch 0, step 2" in resumed

    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert a["step"] == b["step"] == 5
    assert a["loader"] == b["loader"]
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_arguments_that_differ_from_the_run(root: Path, tmp_path: Path) -> None:
    _train(root, tmp_path, "--max-steps", "1")
    err = _resume(root, tmp_path, "--batch-size", "4", ok=False)
    assert err.strip().splitlines() == [
        f"main.py: error: --batch-size 4 differs from the resumed run's 8 "
        f"({tmp_path / 'checkpoint.pt'}); leave it out to resume with the run's own arguments"
    ]
    # The same value as the run's is no conflict.
    assert "resumed at epoch 0, step 1" in _resume(root, tmp_path, "--batch-size", "8")


def test_checkpoints_default_to_a_folder_under_the_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_image_folder(root / "train", classes=2, per_class=4, max_side=48)
    make_image_folder(root / "val", classes=2, per_class=1, seed=1, max_side=48)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, str(MAIN), str(root), "--batch-size", "4", "--workers", "0"]
    done = subprocess.run(
        [*cmd, "--image-size", "16", "--max-steps", "1"], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "checkpoints" / "checkpoint.pt").is_file() and not any(cwd.iterdir())


def test_readme_torchrun_line_and_its_checkpoint_on_one_and_two_ranks(
    tmp_path: Path, root: Path
) -> None:
    # The README's line on 4 classes x 40 images: 80 per rank in batches of 32, 3 steps each.
    data = tmp_path / "data"
    make_image_folder(data / "train", classes=4, per_class=40, max_side=80)
    (data / "val").symlink_to(root / "val")
    _torchrun(data, tmp_path / "ddp", *README_TORCHRUN, "4")
    ckpt = _load(tmp_path / "ddp")
    # Rank 0's loader state: every rank ran as many batches, so it tells what all delivered.
    state = ckpt["loader"]
    assert (state["world_size"], state["epoch"], state["batches_done"]) == (2, 1, 1)
    assert not any(k.startswith("module.") for k in ckpt["model"])

    # One process continues it: same weights in, the 96 records epoch 1 had not delivered
    # (160 - 2 ranks x 32) in 3 batches of 32.
    out = _resume(data, tmp_path / "ddp", "--max-steps", "5")
    assert "checkpoint of 2 rank(s) resumed on 1: epoch 1 goes on with 3 batches per rank" in out
    ckpt = _load(tmp_path / "ddp")
    assert ckpt["step"] == 5 and ckpt["loader"]["remaining"]["count"] == 96
    # And two ranks again, from the one-process checkpoint: 64 records left, 1 batch each.
    out = _torchrun(data, tmp_path / "ddp", "--resume", "--max-steps", "6")
    assert "checkpoint of 1 rank(s) resumed on 2: epoch 1 goes on with 1 batches per rank" in out
    assert _load(tmp_path / "ddp")["loader"]["world_size"] == 2


def test_a_checkpoint_with_the_ddp_prefix_loads_into_one_process(
    root: Path, tmp_path: Path
) -> None:
    _train(root, tmp_path, "--max-steps", "1")
    ckpt = _load(tmp_path)
    ckpt["model"] = {f"module.{k}": v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert "resumed at epoch 0, step 1" in _resume(root, tmp_path, "--max-steps", "2")


def test_example_mixes_an_extra_source_by_weight(root: Path, tmp_path: Path) -> None:
    """--extra PATH:WEIGHT: another source (an HDF5 store of other images) mixed into the
    train split 1:1: 24 + 24 records per epoch, 6 steps of 8; and a mid-epoch resume."""
    extra = make_image_folder(tmp_path / "extra", classes=4, per_class=3, seed=5, max_side=80)
    convert(extra, tmp_path / "extra.h5", format="hdf5", progress=False)
    mix = ["--extra", f"{tmp_path / 'extra.h5'}:1"]
    out = _train(root, tmp_path / "a", *mix, "--max-steps", "6")
    assert "epoch 0 val top-1" in out and "stopped after 6 steps" in out
    _train(root, tmp_path / "b", *mix, "--max-steps", "2")
    assert "resumed at epoch 0, step 2" in _resume(root, tmp_path / "b", "--max-steps", "6")
    assert _load(tmp_path / "a")["loader"] == _load(tmp_path / "b")["loader"]
