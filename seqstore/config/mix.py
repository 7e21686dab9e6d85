"""The sources of a mixed Loader: ``Loader([src_a, src_b], weights=[...])``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MixSource", "mix_sources"]


class MixSource(BaseModel):
    """One source of a mix, and its share of each epoch.

    Parameters
    ----------
    path : str or Path
        Any store, folder or format seqstore reads, local or at a URL.
    weight : float or None
        Its share of the records that the ``repeat`` and ``choose`` sources leave: it gives
        ``weight / sum(weights)`` of them per epoch (default 1 where neither of the others
        is given).
    repeat : float or None
        Records per epoch as a multiple of its size (0.5: half of it, 2: twice over).
    choose : int or None
        Records per epoch, an absolute count.
    backend : str or None
        Its backend, where it is not recognised from its layout.
    reader_options : dict
        Its reader's options (``split``, ``label_field`` ...).
    label_offset : int or None
        Added to its labels: for a source without class names mixed with named ones.
    """

    model_config = ConfigDict(extra="forbid")

    path: Path | str
    weight: float | None = Field(None, gt=0)
    repeat: float | None = Field(None, gt=0)
    choose: int | None = Field(None, ge=0)
    backend: str | None = None
    reader_options: dict[str, Any] = Field(default_factory=dict)
    label_offset: int | None = None

    @model_validator(mode="after")
    def _one_share(self) -> MixSource:
        given = [k for k in ("weight", "repeat", "choose") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"source '{self.path}' has {' and '.join(given)}: give one")
        if not given:
            self.weight = 1.0
        return self

    def fixed(self, size: int) -> int | None:
        """Its absolute count per epoch for a source of ``size`` records, or None for a
        weighted one (``repeat`` rounds half up)."""
        if self.choose is not None:
            return self.choose
        if self.repeat is not None:
            return int(self.repeat * size + 0.5)
        return None


def mix_sources(paths: list[Any], weights: list[float] | None) -> list[MixSource]:
    """The sources of a Loader's ``path`` list: each a path (taking its weight from
    ``weights``, default 1), a :class:`MixSource`, or a dict of one.

    Raises
    ------
    ValueError
        ``weights`` is not one per source, or is given beside sources that set their own.
    """
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"weights has {len(weights)} entries for {len(paths)} sources")
    out = []
    for i, entry in enumerate(paths):
        source = MixSource.model_validate(
            entry if isinstance(entry, (dict, MixSource)) else {"path": entry}
        )
        if weights is not None:
            if isinstance(entry, (dict, MixSource)) and (source.repeat or source.choose):
                raise ValueError(f"source {i} sets repeat or choose; weights= gives weights only")
            source = MixSource.model_validate({**source.model_dump(), "weight": weights[i]})
        out.append(source)
    return out
