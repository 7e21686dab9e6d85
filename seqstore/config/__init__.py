"""Validated configuration of seqstore's jobs (pydantic models): ``convert``, ``loader`` and
``bench`` hold one job's options each, ``files`` reads them from a dict or a JSON/YAML file."""

from __future__ import annotations

from .bench import BenchConfig
from .convert import ConvertConfig
from .files import load_config
from .loader import LoaderConfig

__all__ = ["BenchConfig", "ConvertConfig", "LoaderConfig", "load_config"]
