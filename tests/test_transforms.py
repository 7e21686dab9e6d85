"""Transforms keep torchvision's parameter semantics on numpy / OpenCV arrays."""

from __future__ import annotations

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from seqstore import transforms as T
from seqstore.errors import ConfigError
from seqstore.imaging.decode import decode
from seqstore.testing.data import make_image


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torchvision_rrc_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, transcribed, drawing from torch's RNG."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,)).item())
            j = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(("width", "height"), [(500, 375), (300, 1200), (64, 64)])
def test_random_resized_crop_statistics_match_torchvision(width: int, height: int) -> None:
    rrc = T.RandomResizedCrop(224)
    rng = _rng(1)
    torch.manual_seed(1)
    n = 4000
    ours = np.array([rrc.get_params(width, height, rng) for _ in range(n)], np.float64)
    ref = np.array(
        [_torchvision_rrc_params(width, height, rrc.scale, rrc.ratio) for _ in range(n)],
        np.float64,
    )
    for boxes in (ours, ref):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= height).all() and (left + w <= width).all()
    area = width * height
    for stat in (
        lambda b: b[:, 2] * b[:, 3] / area,  # area fraction
        lambda b: np.log(b[:, 3] / b[:, 2]),  # log aspect ratio
        lambda b: (b[:, 0] + b[:, 2] / 2) / height,  # vertical centre
        lambda b: (b[:, 1] + b[:, 3] / 2) / width,  # horizontal centre
    ):
        a, b = stat(ours), stat(ref)
        assert abs(a.mean() - b.mean()) < 4 * math.hypot(a.std(), b.std()) / math.sqrt(n) + 1e-3
        assert abs(a.std() - b.std()) < 0.1 * max(b.std(), 1e-3) + 1e-3


def test_random_resized_crop_bounds_and_fallback() -> None:
    rrc = T.RandomResizedCrop(32, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    rng = _rng(2)
    for _ in range(500):
        top, left, h, w = rrc.get_params(400, 300, rng)
        frac = h * w / (400 * 300)
        assert 0.24 <= frac <= 0.51
        assert 0.49 <= w / h <= 2.05
    # No box of the requested area and ratio fits a 1000x10 strip: central crop, ratio clamped.
    top, left, h, w = T.RandomResizedCrop(8, scale=(0.9, 1.0)).get_params(1000, 10, rng)
    assert (h, w) == (10, round(10 * 4 / 3)) and top == 0 and left == (1000 - w) // 2


def test_random_resized_crop_output_and_determinism() -> None:
    img = make_image(_rng(3), 120, 90)
    rrc = T.RandomResizedCrop((48, 64))
    out = rrc(img, _rng(5))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rrc(img, _rng(5)))
    # It is the crop box resized with INTER_LINEAR: crop first, then resize.
    top, left, h, w = rrc.get_params(120, 90, _rng(5))
    want = cv2.resize(img[top : top + h, left : left + w], (64, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, want)


def test_flip_probability_and_content() -> None:
    img = make_image(_rng(4), 33, 21)
    rng = _rng(6)
    flip = T.RandomHorizontalFlip()
    flips = sum(flip(img, rng) is not img for _ in range(4000))
    assert abs(flips / 4000 - 0.5) < 0.03
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0)(img, rng), img[:, ::-1])
    assert T.RandomHorizontalFlip(0.0)(img, rng) is img
    with pytest.raises(ConfigError, match="p=1.5"):
        T.RandomHorizontalFlip(1.5)


@pytest.mark.parametrize(
    ("width", "height", "size", "want"),
    [
        (500, 375, 256, (256, 341)),  # torchvision: int(256 * 500 / 375)
        (375, 500, 256, (341, 256)),
        (333, 333, 256, (256, 256)),
        (1000, 3, 8, (8, 2666)),
        (40, 30, (20, 50), (20, 50)),
    ],
)
def test_resize_shorter_side_rounding(
    width: int, height: int, size: int | tuple[int, int], want: tuple[int, int]
) -> None:
    resize = T.Resize(size)
    assert resize.output_size((height, width)) == want
    out = resize(np.zeros((height, width, 3), np.uint8), _rng())
    assert out.shape == (*want, 3)


def test_center_crop_position_and_padding() -> None:
    img = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9, 1).repeat(3, axis=2)
    out = T.CenterCrop(4)(img, _rng())
    # torchvision: top = round((7 - 4) / 2) = 2, left = round((9 - 4) / 2) = 2 (half to even)
    np.testing.assert_array_equal(out, img[2:6, 2:6])
    small = T.CenterCrop((10, 12))(img, _rng())
    assert small.shape == (10, 12, 3)
    np.testing.assert_array_equal(small[1:8, 1:10], img)  # zero padding around the image
    assert small[0].sum() == 0 and small[:, 0].sum() == 0


def test_normalize_values() -> None:
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = T.Normalize()(img, _rng())
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    mean, std = np.array(T.IMAGENET_MEAN), np.array(T.IMAGENET_STD)
    np.testing.assert_allclose(out[0, 0], (np.array([0, 128, 255]) / 255 - mean) / std, rtol=1e-6)
    with pytest.raises(ConfigError, match="std"):
        T.Normalize(std=(0.2, 0.0, 0.2))


def test_color_jitter_semantics() -> None:
    img = make_image(_rng(8), 40, 30)
    np.testing.assert_array_equal(T.ColorJitter()(img, _rng()), img)
    # Brightness only: a blend with black by a factor drawn in [0.5, 1.5].
    out = T.ColorJitter(brightness=0.5)(img, _rng(9))
    rng = _rng(9)
    rng.permutation(4)
    factor = rng.uniform(0.5, 1.5)
    want = np.rint(np.clip(img.astype(np.float32) * np.float32(factor), 0, 255))
    assert np.abs(out.astype(np.int16) - want).max() <= 1
    # Saturation 0 gives grey; a half-turn of hue makes red cyan.
    grey = T.ColorJitter(saturation=(0.0, 0.0))(img, _rng())
    assert np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() <= 1
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    cyan = T.ColorJitter(hue=(0.5, 0.5))(red, _rng())
    assert cyan[0, 0].tolist() == [0, 200, 200]
    with pytest.raises(ConfigError, match="hue"):
        T.ColorJitter(hue=0.7)


def test_lighting_adds_pca_noise() -> None:
    img = np.full((4, 4, 3), 128, np.uint8)
    assert T.Lighting(0.0)(img, _rng()) is img
    shifts = np.array([T.Lighting(0.1)(img, _rng(s))[0, 0].astype(float) - 128 for s in range(500)])
    assert np.abs(shifts.mean(axis=0)).max() < 1.0  # zero-mean noise
    # Almost all of it along the first eigenvector (all channels move together).
    assert np.corrcoef(shifts[:, 0], shifts[:, 2])[0, 1] > 0.9
    assert 3.0 < shifts[:, 0].std() < 8.0  # 255 * 0.1 * 0.2175 * 0.57 ~ 3.2, plus the rest


def test_pipeline_reduced_decode_keeps_draws_and_content() -> None:
    photo = make_image(_rng(10), 1600, 1200)
    data = cv2.imencode(".jpg", photo[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    data = data.tobytes()
    pipe = T.imagenet_train(64)
    rng_a, rng_b = _rng(11), _rng(11)
    fast = pipe(data, rng_a)
    # The same draws on a full-size decode.
    full = decode(data)
    rrc, flip = pipe.transforms
    slow = flip(rrc(full, rng_b), rng_b)
    assert rng_a.random() == rng_b.random()  # same number of draws
    assert fast.shape == slow.shape == (64, 64, 3)
    # A DCT-domain reduction is an area average; a linear downscale aliases. Close, not equal.
    assert np.abs(fast.astype(np.int16) - slow.astype(np.int16)).mean() < 6.0


def test_ready_made_pipelines_and_output_size() -> None:
    img = make_image(_rng(12), 300, 200)
    data = cv2.imencode(".png", img[..., ::-1].copy())[1].tobytes()
    assert T.imagenet_train().output_size == (224, 224)
    assert T.imagenet_val().output_size == (224, 224)
    assert T.decode_only().output_size is None
    assert T.imagenet_train()(data, _rng()).shape == (224, 224, 3)
    val = T.imagenet_val(32, 40)(data, _rng())
    resized = cv2.resize(img, (60, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(val, resized[4:36, 14:46])
    np.testing.assert_array_equal(T.decode_only()(data, _rng()), img)
    composed = T.Pipeline([T.Compose([T.Resize(40), T.CenterCrop(32)])])
    np.testing.assert_array_equal(composed(data, _rng()), val)


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.RandomResizedCrop(0),
        lambda: T.RandomResizedCrop(8, scale=(0.5, 0.1)),
        lambda: T.RandomResizedCrop(8, ratio=(-1.0, 1.0)),
        lambda: T.Resize(8, interpolation=99),
        lambda: T.CenterCrop((1, 2, 3)),  # type: ignore[arg-type]
        lambda: T.Lighting(-0.1),
    ],
)
def test_bad_parameters_are_config_errors(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


class _Invert:
    """A transform seqstore does not know: declares its size and dtype, nothing else."""

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return 255 - img

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return size

    def output_dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype


class _HalfDecode:
    """A first transform that plans a 1/2 decode of the whole image and draws one number."""

    def __init__(self) -> None:
        self.planned: list[tuple[int, int]] = []

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rng.random()
        return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))

    def plan_decode(self, width: int, height: int, rng: np.random.Generator) -> T.DecodePlan:
        self.planned.append((width, height))
        rng.random()
        return T.DecodePlan(2, None, lambda img: img)

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return None if size is None else (size[0] // 2, size[1] // 2)

    def output_dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype


def test_pipeline_reads_what_transforms_declare() -> None:
    # A transform of one's own keeps the fixed output size (and so the loader's batch ring).
    assert T.Pipeline([T.RandomResizedCrop(32), _Invert()]).output_size == (32, 32)
    assert T.Pipeline([T.Resize(40), _Invert(), T.CenterCrop(16)]).output_size == (16, 16)
    assert T.Pipeline([T.RandomResizedCrop(32), _Invert()]).output_dtype == np.uint8
    assert T.Pipeline([T.Resize((24, 20)), T.Normalize()]).output_dtype == np.float32
    # A bare function declares nothing: size and dtype unknown.
    bare = T.Pipeline([T.CenterCrop(8), lambda img, rng: img])
    assert bare.output_size is None and bare.output_dtype is None
    # Sizes follow the input where a transform needs one.
    assert T.Resize(256).output_size((375, 500)) == (256, 341)
    assert T.Resize(256).output_size(None) is None
    assert T.Compose([T.Resize(40), T.CenterCrop((10, 12))]).output_size(None) == (10, 12)


def test_pipeline_plans_the_decode_of_any_first_transform() -> None:
    photo = make_image(_rng(13), 320, 240)
    jpeg = cv2.imencode(".jpg", photo[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    first = _HalfDecode()
    out = T.Pipeline([first, _Invert()])(jpeg.tobytes(), _rng())
    assert first.planned == [(320, 240)]  # from the header, before decoding
    np.testing.assert_array_equal(out, 255 - decode(jpeg.tobytes(), reduce=2))
    # Not a JPEG: full decode, then the transform itself.
    png = cv2.imencode(".png", photo[..., ::-1].copy())[1].tobytes()
    assert T.Pipeline([first])(png, _rng()).shape == (120, 160, 3)
    assert first.planned == [(320, 240)]


def test_named_transforms_are_one_table() -> None:
    from seqstore.cli import build_parser
    from seqstore.config import BenchConfig, LoaderConfig

    assert set(T.NAMED_TRANSFORMS) == {"imagenet_train", "imagenet_val", "decode", "none"}
    train = T.NAMED_TRANSFORMS["imagenet_train"](32, 40)
    val = T.NAMED_TRANSFORMS["imagenet_val"](32, 40)
    assert train is not None and train.output_size == (32, 32)
    assert val is not None and repr(val) == repr(T.imagenet_val(32, 40))
    assert T.NAMED_TRANSFORMS["none"](32, 40) is None
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    choices = next(a.choices for a in bench._actions if a.dest == "transform")
    assert list(choices) == list(T.NAMED_TRANSFORMS)
    for name in T.NAMED_TRANSFORMS:
        BenchConfig(src=".", transform=name)
        LoaderConfig(path=".", transform=name)
    with pytest.raises(ValueError, match="choose one of imagenet_train, imagenet_val"):
        BenchConfig(src=".", transform="imagenet_tran")
    with pytest.raises(ValueError, match="choose one of imagenet_train, imagenet_val"):
        LoaderConfig(path=".", transform="imagenet_tran")


def test_transforms_are_reachable_from_the_package_without_torch() -> None:
    code = (
        "import sys, numpy, seqstore\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules\n"
        "pipe = seqstore.transforms.imagenet_train(8)\n"
        "assert 'torch' not in sys.modules\n"
        "print(pipe.output_size)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(8, 8)"
