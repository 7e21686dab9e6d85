"""Real ranks under torch.distributed.run (gloo, CPU): two share an epoch; two or three
convert one sharded store, also after one of them was killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import seqstore
from seqstore.convert import convert
from seqstore.errors import PartialStoreError
from seqstore.testing import make_image_folder
from seqstore.testing.shards import held_image, layout, staged_shards, staging_pid, wait_for

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from seqstore import Loader

    dist.init_process_group("gloo")
    exact = sys.argv[3] == "exact"  # evaluation: every record once, no barrier per batch
    loader = Loader(sys.argv[1], batch_size=8, image_size=16, num_workers=1,
                    shuffle_buffer=20, with_indices=True, seed=5, pad_ranks=not exact)
    seen, batches = [], 0
    for images, labels, indices in loader:
        seen += indices.tolist()
        batches += 1
        if not exact:
            dist.barrier()  # a rank with fewer batches would hang here
    counts = [torch.tensor([batches]) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([batches]))
    out = {"rank": loader.rank, "world": loader.world_size, "len": len(loader),
           "batches": [int(c) for c in counts], "seen": seen}
    with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    """
)


def _two_ranks(tmp_path: Path, n: int, mode: str) -> list[dict[str, Any]]:
    """What each of two ranks under torchrun saw of an epoch of ``n`` records."""
    images = make_image_folder(tmp_path / "images", classes=1, per_class=n, max_side=64)
    convert(images, tmp_path / "store", format="hdf5", progress=False)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "store"),
        str(tmp_path),
        mode,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("n", [96, 91])
def test_two_ranks_cover_the_epoch_with_equal_batches(tmp_path: Path, n: int) -> None:
    ranks = _two_ranks(tmp_path, n, "train")
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert ranks[0]["batches"] == ranks[1]["batches"] == [ranks[0]["len"]] * 2
    a, b = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert a | b == set(range(n))
    # 96 splits evenly: disjoint. 91 pads one rank by wrapping: one record seen twice.
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == -(-n // 2)
    assert len(a & b) == (0 if n % 2 == 0 else 1)


def test_exact_evaluation_gives_every_record_once_over_the_ranks(tmp_path: Path) -> None:
    """``pad_ranks=False``: 81 records over 2 ranks are 41 + 40, no record twice; the
    ranks' batch counts differ (6 and 5 batches of 8) and each rank's len() is its own."""
    ranks = _two_ranks(tmp_path, 81, "exact")
    assert ranks[0]["batches"] == [6, 5] and [r["len"] for r in ranks] == [6, 5]
    a, b = ranks[0]["seen"], ranks[1]["seen"]
    assert sorted(a + b) == list(range(81)) and (len(a), len(b)) == (41, 40)


# -- conversion under torchrun ---------------------------------------------------------------

SHARD_MB = 0.025  # 60 images of at most 80 px: 5 shards of 13, 13, 13, 13 and 8 records
ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(seqstore.__file__).parents[1]),
    "OMP_NUM_THREADS": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(nproc: int, *args: object, nnodes: int = 1) -> list[subprocess.Popen[str]]:
    """``torchrun --nnodes N --node_rank R --nproc_per_node P ... -m seqstore convert ARGS``:
    one launcher per node, every node on 127.0.0.1."""
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(nnodes),
                "--node_rank",
                str(node),
                "--nproc_per_node",
                str(nproc),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "-m",
                "seqstore",
                "convert",
                *map(str, args),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(nnodes)
    ]


def _content(path: Path) -> list[tuple[str, int, bytes]]:
    reader = seqstore.open(path)
    return [(r.key, r.label, r.data) for r in reader.read_block(0, len(reader))]


@pytest.mark.parametrize(
    ("nnodes", "nproc", "flags"),
    [(2, 1, ["--resume"]), (1, 3, ["--distributed"])],  # --resume with nothing to resume
)
def test_torchrun_convert_equals_one_process(
    tmp_path: Path, nnodes: int, nproc: int, flags: list[str]
) -> None:
    images = make_image_folder(tmp_path / "images", classes=4, per_class=15, max_side=80)
    convert(images, tmp_path / "ref", format="hdf5", shard_mb=SHARD_MB, progress=False)
    args = [images, tmp_path / "dst", "--format", "hdf5", "--shard-mb", SHARD_MB, "-q", *flags]
    nodes = _torchrun(nproc, *args, nnodes=nnodes)
    outs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0] * nnodes, [err[-3000:] for _, err in outs]
    out = "".join(out for out, _ in outs)
    wrote = [line for line in out.splitlines() if line.startswith("wrote")]
    assert len(wrote) == 1  # rank 0 alone speaks for the conversion
    assert wrote[0].startswith(
        f"wrote 60 records (0.1 MB, 4 classes) to {tmp_path / 'dst'} as hdf5 in 5 shards in "
    )
    assert layout(tmp_path / "dst") == layout(tmp_path / "ref")
    assert _content(tmp_path / "dst") == _content(tmp_path / "ref")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "images", "ref"]


def test_a_killed_rank_leaves_the_store_partial_and_resume_writes_the_rest(
    tmp_path: Path,
) -> None:
    images = make_image_folder(tmp_path / "images", classes=4, per_class=15, max_side=80)
    dst = tmp_path / "dst"
    args = [images, dst, "--format", "hdf5", "--shard-mb", SHARD_MB, "-q"]
    with held_image(sorted((images / "class02").glob("*.JPEG"))[3]) as held:
        held.release()
        convert(images, tmp_path / "ref", format="hdf5", shard_mb=SHARD_MB, progress=False)
        (run,) = _torchrun(2, *args)
        # 4 shards finish; the rank writing the 5th waits on the held image: kill that rank.
        wait_for(lambda: len(staged_shards(dst)[0]) == 4, run, "4 shards finished")
        wait_for(lambda: len(staged_shards(dst)[1]) == 1, run, "the 5th shard began")
        os.kill(staging_pid(staged_shards(dst)[1][0]), signal.SIGKILL)
        run.communicate(timeout=120)
        assert run.returncode != 0
        finished = {p.name: seqstore.open(p).manifest.store_id for p in staged_shards(dst)[0]}
        with pytest.raises(PartialStoreError, match="killed before it finished.*--resume"):
            seqstore.open(dst)
        info = subprocess.run(
            [sys.executable, "-m", "seqstore", "info", str(dst)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert info.returncode == 2 and info.stderr.count("\n") == 1
        assert info.stderr.startswith(f"seqstore: error: store '{dst}' is incomplete")
        held.release()
        (run,) = _torchrun(3, *args, "--resume")  # on another number of ranks
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    assert "kept its 4 finished shard(s)" in out
    shards = seqstore.open(dst).manifest.shards or []
    assert {s.name: seqstore.open(dst / s.name).manifest.store_id for s in shards}.items() >= (
        finished.items()
    )
    assert layout(dst) == layout(tmp_path / "ref")
    assert _content(dst) == _content(tmp_path / "ref")


def test_a_bad_image_on_one_rank_leaves_no_store(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", classes=4, per_class=15, max_side=80)
    (images / "class01" / "notes.JPEG").write_bytes(b"bounding boxes: 1 2 3 4\n")
    dst = tmp_path / "dst"
    (run,) = _torchrun(2, images, dst, "--format", "lmdb", "--shard-mb", SHARD_MB, "-q")
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0
    # The rank that met the image says so; the other says which rank failed, unless torchrun
    # ended it first (it ends the other ranks as soon as one exits with an error).
    errors = [line for line in err.splitlines() if line.startswith("seqstore: error:")]
    assert errors and all("notes.JPEG' is not an image" in line for line in errors), err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing left behind
