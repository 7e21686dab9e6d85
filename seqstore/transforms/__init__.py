"""Augmentation of RGB ``uint8`` HWC arrays, with torchvision's parameter semantics.

Each transform is a small object called as ``transform(img, rng)``: every random draw comes from
the ``numpy.random.Generator`` passed in, so a sample's augmentation is a function of that
generator alone (the engine seeds one per record and epoch, see
:func:`seqstore.engine.stream.sample_rng`). Parameters mean what they mean in
``torchvision.transforms``, and the random parameters are drawn by the same algorithms, so
recipes carry over unchanged; images are resized with OpenCV rather than PIL.

:class:`Pipeline` is what the loader calls on each record: it decodes and transforms. Each
transform declares its output size and dtype, and one that is first may plan a reduced JPEG
decode (see :class:`Transform`); the pipeline reads only these declarations.

The rooms: ``pipeline`` (the protocol, :class:`Pipeline`, :class:`Compose`), ``geometry``
(crops, resize, flip), ``color`` (jitter, lighting, normalisation), ``named`` (the ready-made
pipelines and :data:`NAMED_TRANSFORMS`, the table of names a Loader accepts). A new transform
goes in the room it belongs to and is exported here.
"""

from __future__ import annotations

from ..imaging.imagenet import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN, IMAGENET_STD
from .color import ColorJitter, Lighting, Normalize
from .geometry import CenterCrop, RandomHorizontalFlip, RandomResizedCrop, Resize
from .named import NAMED_TRANSFORMS, decode_only, imagenet_train, imagenet_val
from .pipeline import Compose, DecodePlan, Pipeline, Transform, TransformFn

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NAMED_TRANSFORMS",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "DecodePlan",
    "Lighting",
    "Normalize",
    "Pipeline",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "Transform",
    "TransformFn",
    "decode_only",
    "imagenet_train",
    "imagenet_val",
]
