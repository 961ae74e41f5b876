"""Resizing images and frames, and the canvas-size rules; sizes are always ``(height, width)``.

The paper's video setting ([P] §4.2, notes §2.3) resizes every frame to 512×512, edits, and resizes the
result back to the source size (:func:`resize_frames`, :func:`restore_size`); the panorama task picks
its canvas with :func:`canvas_size`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def resize_frames(
    frames: torch.Tensor, height: int, width: int, *, mode: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Resize ``(F, C, H, W)`` (or ``(C, H, W)``) frames to ``(height, width)``.

    ``mode`` is ``"bicubic"`` (default), ``"bilinear"`` (both antialiased when shrinking unless
    ``antialias=False``) or ``"area"`` (pixel averaging, for shrinking by large factors). Bicubic
    overshoot is clamped back into ``[0, 1]``. The aspect ratio is not kept:
    the paper resizes every video frame to 512×512 and back (notes §2.3).
    """
    if mode not in ("bicubic", "bilinear", "area"):
        raise ValueError(f"mode must be 'bicubic', 'bilinear' or 'area', got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    single = frames.ndim == 3
    batch = frames[None] if single else frames
    if batch.ndim != 4:
        raise ValueError(f"frames must be (F, C, H, W) or (C, H, W), got {tuple(frames.shape)}")
    if tuple(batch.shape[-2:]) == (height, width):
        out = batch.clone()
    elif mode == "area":  # an average: no corners to align and nothing to antialias
        out = F.interpolate(batch, size=(height, width), mode="area").clamp_(0.0, 1.0)
    else:
        out = F.interpolate(batch, size=(height, width), mode=mode, align_corners=False, antialias=antialias)
        out = out.clamp_(0.0, 1.0)
    return out[0] if single else out


def resize_rows(image: torch.Tensor, height: int, width: int, *, max_pixels: int = 1 << 19) -> Iterator[torch.Tensor]:
    """:func:`resize_frames` (bicubic, antialiased) of one ``(C, h, w)`` image to ``(height, width)``, a strip
    of rows at a time: yields float ``(C, rows, width)`` strips in [0, 1], top to bottom, of at most
    ``max_pixels`` pixels each (at least one row).

    Each strip is the whole resize's rows, not a resize of a crop: the rows are resampled across the
    width from the few source rows the strip needs (the same horizontal pass), then combined with
    ``resize_frames``' own vertical weights (read off by resizing an identity matrix). So the strips join
    without seams and equal the whole resize up to float summation order, while memory stays one strip,
    the source and an ``(height, h)`` weight matrix however big ``(height, width)`` is.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    image = image.float()
    source_height = image.shape[-2]
    identity = torch.eye(source_height, dtype=image.dtype, device=image.device)[None, None]
    # Row r of ``weights`` says how much of each source row output row r takes (the identity's columns
    # stay put: a resize to the same width is exact).
    weights = F.interpolate(identity, size=(height, source_height), mode="bicubic", align_corners=False, antialias=True)
    weights = weights[0, 0]
    # The source rows each output row reads: from its first to its last non-zero weight.
    reads = weights != 0
    firsts = reads.to(torch.uint8).argmax(dim=1)
    lasts = source_height - reads.flip(1).to(torch.uint8).argmax(dim=1)
    rows = max(1, max_pixels // width)
    for top in range(0, height, rows):
        part = weights[top : top + rows]
        first, last = int(firsts[top : top + rows].min()), int(lasts[top : top + rows].max())
        band = F.interpolate(
            image[None, :, first:last],
            size=(last - first, width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )[0]
        yield torch.einsum("rk,ckw->crw", part[:, first:last], band).clamp_(0.0, 1.0)


def restore_size(frames: torch.Tensor, original_hw: tuple[int, int], *, mode: str = "bicubic") -> torch.Tensor:
    """Resize frames back to their source ``(height, width)``, e.g. ``clip.size`` before editing."""
    height, width = original_hw
    return resize_frames(frames, height, width, mode=mode)


def fit_to_multiple(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Target size with the short side ``short_side`` (aspect kept) and both sides multiples of ``multiple``.

    The official code makes both sides multiples of 8 * stride so that the windows tile the canvas
    exactly; this is the same rule with the multiple passed in.
    """
    if short_side < multiple:
        raise ValueError(f"data.short_side={short_side} is smaller than one tiling unit ({multiple} px)")
    scale = short_side / min(height, width)
    round_to = lambda size: max(multiple, int(round(size * scale / multiple)) * multiple)
    return round_to(height), round_to(width)


def official_size(height: int, width: int, min_short_side: int, multiple: int) -> tuple[int, int]:
    """The official CSD panorama resize: upscale (aspect kept) only if the short side is below
    ``min_short_side`` (512 px for Stable Diffusion), never shrink, then floor both sides to ``multiple``."""
    scale = max(1.0, min_short_side / min(height, width))
    floor_to = lambda size: max(multiple, int(round(size * scale)) // multiple * multiple)
    return floor_to(height), floor_to(width)


def canvas_size(height: int, width: int, *, policy: str, short_side: int, scale: int, stride: int) -> tuple[int, int]:
    """Pixel size of the canvas for an image of ``height`` x ``width`` px.

    ``short_side`` is in latent px (the prior's ``scale`` = its VAE factor turns it into pixels), so the
    same config suits every prior: 64 latent px are 64 px for the exact prior and 512 px for Stable
    Diffusion. Both sides end as multiples of ``scale * stride`` so the windows tile the canvas exactly.

    ``policy``: ``short_side`` (resize so the short side is exactly ``short_side``) or ``official`` (the
    official code: upscale only up to ``short_side``, never shrink, floor to the tiling unit).
    """
    unit = scale * stride
    if policy == "short_side":
        return fit_to_multiple(height, width, short_side * scale, unit)
    if policy == "official":
        return official_size(height, width, short_side * scale, unit)
    raise ValueError(f"data.resize_policy={policy!r} is not one of short_side, official")
