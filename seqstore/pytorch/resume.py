"""Where a Loader is in its epochs, as a checkpoint saves it: the state's version, its
upgrade from older seqstores, and the checks and arithmetic of resuming from it, on the
same shape or another (see :meth:`seqstore.pytorch.loader.Loader.load_state_dict`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..engine.elastic import remaining_after
from ..engine.order import TABLE_LIMIT
from ..engine.plan import SCHEME, EpochSpec, Remaining
from ..errors import ResumeError

__all__ = ["STATE_VERSION", "ResumePoint", "resume_point", "shape", "upgrade_state"]

# 2: the store's identity and the epoch's bad-record count joined the state.
# 3: the epoch spec's fields by their names: shuffle_capacity became capacity.
# 4: a state resumes on another shape (ranks, workers, batch size); "remaining" holds the
#    records an epoch resumed so runs over.
# 5: the shuffle scheme and split batches joined the spec (scheme 2: full buffers; split:
#    batches made of every worker's part); a version 4 state is of scheme 1, unsplit, and
#    continues on this seqstore's scheme as an epoch resumed on another shape does.
#: The version of the state :meth:`~seqstore.pytorch.loader.Loader.state_dict` saves.
STATE_VERSION = 5


@dataclass(frozen=True)
class ResumePoint:
    """Where a loader continues from a saved state.

    Attributes
    ----------
    epoch : int
        The epoch the next iteration runs.
    batches_done : int
        Batches of it already delivered (the next iteration starts after them).
    remaining : Remaining or None
        The records the epoch runs over, resumed on another shape; None: all of them.
    bad_in_epoch : int
        Bad records the epoch has met so far.
    """

    epoch: int
    batches_done: int
    remaining: Remaining | None
    bad_in_epoch: int


def resume_point(state: dict[str, Any], spec: EpochSpec, identity: str, where: str) -> ResumePoint:
    """Where a loader of ``spec`` over the store ``identity`` (at ``where``) continues from
    ``state``, any rank's :meth:`~seqstore.pytorch.loader.Loader.state_dict`.

    Parameters
    ----------
    state
        The saved state.
    spec
        The resuming loader's epoch spec.
    identity
        The resuming loader's store identity.
    where
        The store's path or URL, for messages.

    Returns
    -------
    ResumePoint

    Raises
    ------
    ResumeError
        The state comes from a loader of another store, seed or shuffle setting, is
        damaged, or was saved by an older seqstore (state version 1).
    """
    state = upgrade_state(state)
    version = state.get("version")
    if version != STATE_VERSION:
        raise ResumeError(
            f"loader state version {version!r} is not supported (this seqstore saves and "
            f"reads version {STATE_VERSION}); start the epoch afresh with set_epoch()"
        )
    if state.get("store") != identity:
        raise ResumeError(
            f"cannot resume: the saved loader state is of store '{state.get('store_path')}' "
            f"(id {state.get('store')}), not of '{where}' "
            f"(id {identity}); resume on the store it was saved on, or start "
            "the epoch afresh with set_epoch()"
        )
    for key in ("seed", "shuffle"):
        if state.get(key) != getattr(spec, key):
            raise ResumeError(
                f"cannot resume: the saved loader state has {key}={state.get(key)!r}, "
                f"this loader {key}={getattr(spec, key)!r}; resume with the same "
                f"{key}, or start the epoch afresh with set_epoch()"
            )
    try:
        fields = {
            f.name: state[f.name]
            for f in dataclasses.fields(EpochSpec)
            # A field added with a default: states saved before it have its default.
            if f.name in state or f.default is dataclasses.MISSING
        }
        saved = EpochSpec(**fields)
        if saved.num_records != spec.num_records:
            raise ValueError(f"num_records {saved.num_records} != {spec.num_records}")
        remaining = state["remaining"]
        if remaining is not None:
            remaining = Remaining.from_state(remaining, saved.num_records)
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        bad = int(state["bad_in_epoch"])
    except (KeyError, TypeError, ValueError) as err:
        raise ResumeError(
            f"the saved loader state of store '{where}' is damaged ({err}); "
            "start the epoch afresh with set_epoch()"
        ) from None
    total = saved.batches_over(remaining)
    if not 0 <= done <= total:
        raise ResumeError(f"saved batches_done={done} is outside 0..{total}")
    if saved.mix != spec.mix:
        raise ResumeError(
            "cannot resume: the saved loader state mixes its sources in other sizes or counts "
            f"({saved.mix}, this loader {spec.mix}); resume with the same sources, weights "
            "and epoch_size, or start the epoch afresh with set_epoch()"
        )
    if shape(saved) != shape(spec) and done:
        remaining, done = remaining_after(saved, epoch, done, remaining), 0
    if (done or remaining is not None) and done >= spec.batches_over(remaining):
        # Nothing left that this loader would yield: the epoch is over.
        epoch, done, remaining = epoch + 1, 0, None
    return ResumePoint(epoch, done, remaining, bad)


def shape(spec: EpochSpec) -> dict[str, Any]:
    """What must match for an epoch to continue exactly: all but the rank, which a state
    of any rank tells as well as that rank's own."""
    return {k: v for k, v in spec.as_dict().items() if k != "rank"}


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A version 2, 3 or 4 state (older seqstore) in the current form; any other state
    unchanged.

    Raises
    ------
    ResumeError
        A version 3 state of a shuffled store of more than TABLE_LIMIT blocks, whose block
        order this seqstore no longer draws.
    """
    if state.get("version") == 2:
        state = {**state, "version": 3}
        capacity = state.pop("shuffle_capacity", None)
        # Version 2 kept the buffer size an unshuffled loader does not use; the spec's is 1.
        state["capacity"] = capacity if state.get("shuffle") else 1
    if state.get("version") == 3:
        n, block = state.get("num_records"), state.get("block")
        blocks = -(-n // block) if isinstance(n, int) and isinstance(block, int) and block else 0
        if state.get("shuffle") and blocks > TABLE_LIMIT:
            raise ResumeError(
                f"loader state version 3 is of a store of {blocks} blocks, whose order this "
                f"seqstore draws differently (beyond {TABLE_LIMIT} blocks); start the epoch "
                "afresh with set_epoch()"
            )
        # Otherwise the order is version 4's: all the state lacks is "remaining".
        state = {**state, "version": 4, "remaining": None}
    if state.get("version") == 4:
        # Its shuffled epochs were drawn by scheme 1: the rest of one is found by replaying
        # that. Storage order is the same in every scheme.
        scheme = 1 if state.get("shuffle") else SCHEME
        state = {**state, "version": STATE_VERSION, "scheme": scheme, "split": False}
    return state
