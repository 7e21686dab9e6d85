"""Where a Loader runs: its rank among the processes of a job."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["default_rank_world"]


def default_rank_world() -> tuple[int, int]:
    """This process's rank and the world size: torch.distributed's once it is initialised,
    else the ``RANK`` and ``WORLD_SIZE`` environment variables (0 and 1 without them).

    Raises
    ------
    ConfigError
        ``RANK`` or ``WORLD_SIZE`` is not an integer.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            "are not integers; fix the environment or pass rank= and world_size="
        ) from None
