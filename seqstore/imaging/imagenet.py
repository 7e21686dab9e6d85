"""ImageNet's colour statistics, on the 0..1 scale: normalisation and PCA lighting noise."""

from __future__ import annotations

__all__ = ["IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Per-channel RGB mean of ImageNet on the 0..1 scale (torchvision's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet on the 0..1 scale (torchvision's).
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Eigenvalues of ImageNet's RGB covariance, for 0..1 images (fb.resnet.torch).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
#: Eigenvectors (columns) of ImageNet's RGB covariance (fb.resnet.torch).
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
