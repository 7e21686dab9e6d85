"""Small, deterministic, ImageNet-like datasets made on the spot.

The images are smooth colour fields with a few shapes, so they compress like photographs
rather than noise, in varied sizes and aspect ratios, with a few grayscale and progressive
JPEGs and one PNG among them, as in ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..records import Record

__all__ = ["make_image", "make_image_folder", "make_records", "replicate_store"]


def make_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An RGB uint8 image of smooth gradients and a few filled shapes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(0.01, 0.08, 2).tolist() + [rng.uniform(0, 6.28)]
        img[:, :, c] = 127 + 100 * np.sin(a * x + b * y + phase)
    out = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    for _ in range(3):
        center = (int(rng.integers(width)), int(rng.integers(height)))
        radius = int(rng.integers(2, max(3, min(width, height) // 3)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(out, center, radius, color, -1)
    return out


def _encode(
    rng: np.random.Generator, index: int, min_side: int, max_side: int
) -> tuple[bytes, str, int, int]:
    width = int(rng.integers(min_side, max_side + 1))
    height = int(rng.integers(min_side, max_side + 1))
    img = make_image(rng, width, height)[:, :, ::-1]  # OpenCV writes BGR
    if index % 17 == 5:
        return cv2.imencode(".png", img)[1].tobytes(), ".png", width, height
    params = [cv2.IMWRITE_JPEG_QUALITY, 85]
    if index % 13 == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if index % 11 == 7:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    return cv2.imencode(".jpg", img, params)[1].tobytes(), ".JPEG", width, height


def make_records(
    n: int, *, classes: int = 4, seed: int = 0, min_side: int = 24, max_side: int = 64
) -> list[Record]:
    """``n`` records with keys ``c<label>/img_<i>.<ext>``, labels round-robin over classes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        data, ext, width, height = _encode(rng, i, min_side, max_side)
        label = i % classes
        out.append(Record.make(f"class{label:02d}/img_{i:05d}{ext}", label, data, width, height))
    return out


def make_image_folder(
    root: str | Path,
    *,
    classes: int = 10,
    per_class: int = 20,
    seed: int = 0,
    min_side: int = 48,
    max_side: int = 160,
) -> Path:
    """Write an ImageFolder tree ``root/class<k>/img_<i>.<ext>`` and return ``root``."""
    root = Path(root)
    for record in make_records(
        classes * per_class, classes=classes, seed=seed, min_side=min_side, max_side=max_side
    ):
        path = root / record.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(record.data)
    return root


def replicate_store(src: str | Path, dst: str | Path, times: int, *, format: str) -> Path:
    """A ``format`` store at ``dst`` holding every record of the store ``src`` ``times``
    times over, keys prefixed ``<copy>/``: a larger store of the same images, for
    measuring how things scale with size."""
    from ..backends import get_backend, open_store

    reader = open_store(src)
    records = reader.read_block(0, len(reader))
    with get_backend(format).open_writer(dst, classes=reader.classes, overwrite=True) as writer:
        for copy in range(times):
            for r in records:
                writer.write(Record.make(f"{copy}/{r.key}", r.label, r.data, r.width, r.height))
    return Path(dst)
