"""Two real ranks under torch.distributed.run (gloo, CPU) share an epoch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from seqstore.convert import convert
from seqstore.testing import make_image_folder

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from seqstore import Loader

    dist.init_process_group("gloo")
    loader = Loader(sys.argv[1], batch_size=8, image_size=16, num_workers=1,
                    shuffle_buffer=20, with_indices=True, seed=5)
    seen, batches = [], 0
    for images, labels, indices in loader:
        seen += indices.tolist()
        batches += 1
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


@pytest.mark.parametrize("n", [96, 91])
def test_two_ranks_cover_the_epoch_with_equal_batches(tmp_path: Path, n: int) -> None:
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
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert ranks[0]["batches"] == ranks[1]["batches"] == [ranks[0]["len"]] * 2
    a, b = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert a | b == set(range(n))
    # 96 splits evenly: disjoint. 91 pads one rank by wrapping: one record seen twice.
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == -(-n // 2)
    assert len(a & b) == (0 if n % 2 == 0 else 1)
