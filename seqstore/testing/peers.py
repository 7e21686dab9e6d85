"""Other projects' writers, for tests that check seqstore against files it did not write.

mosaicml-streaming's package imports torchvision and transformers on import (its vision
datasets and its dataloader), neither of which its writer needs. :func:`mds_writer` imports
``streaming.base.format.mds.writer`` without running the package's ``__init__``, so that
the writer works where mosaicml-streaming was installed without its dependencies
(``pip install --no-deps``, as ``.ci/run`` does; see the README).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

__all__ = ["litdata_optimize", "mds_writer"]


def mds_writer() -> Any:
    """``streaming.MDSWriter``, imported without ``streaming/__init__``.

    Raises
    ------
    ImportError
        mosaicml-streaming is not installed.
    """
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or spec.origin is None:
            raise ImportError("mosaicml-streaming is not installed")
        root = os.path.dirname(spec.origin)
        for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    module = importlib.import_module("streaming.base.format.mds.writer")
    return module.MDSWriter


def litdata_optimize() -> Any:
    """``litdata.optimize``.

    Raises
    ------
    ImportError
        litdata is not installed.
    """
    return importlib.import_module("litdata").optimize
