"""Other projects' writers, for tests that check seqstore against files it did not write.

mosaicml-streaming's package imports torchvision and transformers on import (its vision
datasets and its dataloader), neither of which its writer needs. :func:`mds_writer` imports
``streaming.base.format.mds.writer`` without running the package's ``__init__``, so that
the writer works where mosaicml-streaming was installed without its dependencies
(``pip install --no-deps``, as ``.ci/run`` does; see the README). litdata imports boto3 for
its S3 client, which its local writer never calls: :func:`litdata_optimize` puts a stand-in
in its place where boto3 is not installed (adding boto3 beside s3fs's pinned botocore sends
pip's resolver through every boto3 release), and starts litdata's workers by fork, so that
they have it too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
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
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [path]
            sys.modules[name] = importlib.util.module_from_spec(spec)
    module = importlib.import_module("streaming.base.format.mds.writer")
    return module.MDSWriter


def litdata_optimize() -> Any:
    """``litdata.optimize``, its workers started by fork.

    Raises
    ------
    ImportError
        litdata is not installed.
    """
    if importlib.util.find_spec("boto3") is None and "boto3" not in sys.modules:
        stand_in = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("boto3", None))
        stand_in.__doc__ = "Stands in for boto3, which litdata's local writer does not use."
        sys.modules["boto3"] = stand_in
    return functools.partial(importlib.import_module("litdata").optimize, start_method="fork")
