"""The PyTorch side of seqstore, and the only rooms that import torch.

``loader`` (:class:`Loader`, the object a training loop holds), ``placement`` (its rank
among a job's processes), ``transport`` (the way batches take), ``workers`` (what a worker
process runs), ``batches`` (collation and the shared-memory ring), ``delivery`` (batches
onto their device), ``failures`` (bad records and dead workers, as the main process hears
of them) and ``resume`` (the state a checkpoint holds).
"""

from __future__ import annotations

from .loader import Loader

__all__ = ["Loader"]
