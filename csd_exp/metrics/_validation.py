"""Input checks shared by the metrics: images are float tensors (F, 3, H, W) with values in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

# bicubic resampling and 8-bit round trips can overshoot [0, 1] by a hair; anything beyond this is a bug
RANGE_TOLERANCE = 1e-3


def check_images(images: Tensor, name: str) -> Tensor:
    """Return ``images`` as float32 after checking shape (F, 3, H, W), finiteness and the [0, 1] range."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (F, 3, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (F, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: no frames (F = 0)")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor in [0, 1], got dtype {images.dtype}")
    images = images.detach().float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{low:.4f}, {high:.4f}]")
    return images.clamp(0.0, 1.0)


def check_pair(source: Tensor, edited: Tensor) -> tuple[Tensor, Tensor]:
    """Check both image stacks and that they have the same number of frames and the same size."""
    source = check_images(source, "source")
    edited = check_images(edited, "edited")
    if source.shape[0] != edited.shape[0]:
        raise ValueError(
            f"source has {source.shape[0]} frames but edited has {edited.shape[0]}; they must correspond one to one"
        )
    if source.shape[-2:] != edited.shape[-2:]:
        raise ValueError(
            f"source frames are {tuple(source.shape[-2:])} (H, W) but edited frames are "
            f"{tuple(edited.shape[-2:])}; resize one of them first (csd-exp-eval --resize HxW)"
        )
    return source, edited
