"""The ranks of a distributed conversion (``torchrun ... -m seqstore convert``), and how they
talk: torch is imported in :class:`RankGroup` only, as a conversion on one machine never
needs it."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from ..errors import ConfigError

__all__ = ["RankGroup", "under_torchrun"]

# How long a rank waits for the others: the rank with the most to convert sets the pace.
_GROUP_TIMEOUT = timedelta(days=7)
# The environment torch.distributed's env:// initialisation reads (torchrun sets it).
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """Whether this process is a rank that torchrun started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and all(v in os.environ for v in _TORCHRUN_ENV)


class RankGroup:
    """The gloo process group the ranks of a distributed conversion talk through.

    torch is imported here only: a conversion on one machine never needs it.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self._owned = not dist.is_initialized()
        if self._owned:
            missing = [v for v in _TORCHRUN_ENV if v not in os.environ]
            if missing:
                raise ConfigError(
                    "a distributed convert needs the environment torchrun sets "
                    f"({', '.join(missing)} missing); start it with torchrun, or leave out "
                    "--distributed"
                )
            dist.init_process_group("gloo", timeout=_GROUP_TIMEOUT)
            self._group = None
        else:  # a job's own group may be NCCL's: objects travel over a gloo one
            self._group = dist.new_group(backend="gloo", timeout=_GROUP_TIMEOUT)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        box = [obj]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def close(self) -> None:
        """Destroy the process group, if this object initialised it."""
        if self._owned:
            self._dist.destroy_process_group()
