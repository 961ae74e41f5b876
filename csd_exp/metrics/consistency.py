"""Weight-free consistency metrics: panorama seams, video warp error, exact-prior mode agreement.

All three need no network weights, so they are reported on every machine. Definitions:

``consistency/seam_error`` (panoramas; lower is better, 0 = no added discontinuity)
    Border lines are the image columns ``c ∈ {left, left + width}`` and rows ``r ∈ {top, top + height}``
    of every window ``(top, left, height, width)`` (image pixels) that lie strictly inside the image
    (``0 < c < W``, ``0 < r < H``); duplicates count once and a line spans the whole image. The
    jump across a vertical line at column ``c`` is ``J(x, c) = mean_{rows, channels} |x[:, :, c] − x[:, :, c−1]|``
    (rows likewise). Per frame and line, the seam error is ``max(0, J(edited, c) − J(source, c))``:
    only discontinuities the edit added count, not edges the source already had there. The metric is
    the mean over all (frame, line) pairs. Caveat: an edit that sharpens texture everywhere raises
    ``J`` on every column, seam or not; compare against a run without windows' borders (e.g. IP2P on
    the downscaled image) rather than reading the value in isolation.

``consistency/warp_error`` (video; lower is better)
    Flow convention: ``flow[i]`` (2, H, W), in pixels, ``(dx, dy)`` channel order, maps frame ``i+1``
    to frame ``i``: the pixel ``(x, y)`` of frame ``i+1`` shows the point at ``(x + dx, y + dy)`` of
    frame ``i``. Frame ``i`` is resampled at those points (bilinear ``grid_sample``,
    ``align_corners=True``) to give ``warp_i``; pixels whose point falls outside frame ``i``, or that
    the caller marks occluded, are masked out. Per pair,
    ``E_i = Σ_p M(p) · mean_c (frame_{i+1}(p) − warp_i(p))² / Σ_p M(p)``
    (Lai et al. 2018, "Learning blind video temporal consistency"), and the metric is the mean of
    ``E_i`` over pairs with at least one valid pixel. The flow should describe the *source* motion
    (known synthetic motion, or an estimator run on the source frames): a consistent edit moves with
    its source.

``consistency/mode_agreement`` (exact-score prior; higher is better, 1 = all particles agree)
    Given responsibilities (N, K) of the prior's K edit modes for N particles (frames, windows or
    views), each particle's mode is its argmax; the metric is the fraction of particles whose mode
    equals the most common mode. All particles seen since the last ``reset`` (on every process) form
    one set: reset between clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from csd_exp.metrics._base import MeanOverPairs
from csd_exp.metrics._validation import check_images, check_pair

Window = tuple[int, int, int, int]  # (top, left, height, width) in image pixels
FlowSource = Tensor | Callable[[Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]


def window_border_lines(windows: Sequence[Sequence[int]], height: int, width: int) -> tuple[list[int], list[int]]:
    """Sorted interior border columns and rows of ``windows``; raises for a window outside the image."""
    columns: set[int] = set()
    rows: set[int] = set()
    for index, window in enumerate(windows):
        if len(window) != 4:
            raise ValueError(f"window {index} must be (top, left, height, width), got {window!r}")
        top, left, window_height, window_width = (int(value) for value in window)
        if window_height <= 0 or window_width <= 0:
            raise ValueError(f"window {index} {tuple(window)} has a non-positive size")
        if top < 0 or left < 0 or top + window_height > height or left + window_width > width:
            raise ValueError(
                f"window {index} (top, left, height, width) = {tuple(window)} lies outside the "
                f"{height}x{width} image; windows are in image pixels (latent windows times the VAE factor)"
            )
        columns.update(c for c in (left, left + window_width) if 0 < c < width)
        rows.update(r for r in (top, top + window_height) if 0 < r < height)
    return sorted(columns), sorted(rows)


def border_jumps(images: Tensor, columns: Sequence[int], rows: Sequence[int]) -> Tensor:
    """Mean absolute jump across each border line: (F, len(columns) + len(rows))."""
    jumps = []
    if columns:
        index = torch.tensor(list(columns), device=images.device)
        across = (images[..., index] - images[..., index - 1]).abs()  # (F, 3, H, C)
        jumps.append(across.mean(dim=(1, 2)))
    if rows:
        index = torch.tensor(list(rows), device=images.device)
        across = (images[..., index, :] - images[..., index - 1, :]).abs()  # (F, 3, R, W)
        jumps.append(across.mean(dim=(1, 3)))
    if not jumps:
        return images.new_zeros(images.shape[0], 0)
    return torch.cat(jumps, dim=1)


def seam_errors(source: Tensor, edited: Tensor, windows: Sequence[Sequence[int]]) -> Tensor:
    """Per (frame, border line) seam errors ``max(0, J(edited) − J(source))``, flattened."""
    columns, rows = window_border_lines(windows, source.shape[-2], source.shape[-1])
    added = border_jumps(edited, columns, rows) - border_jumps(source, columns, rows)
    return added.clamp_min(0.0).reshape(-1)


class SeamError(MeanOverPairs):
    """``consistency/seam_error``; see the module docstring for the definition."""

    higher_is_better = False

    def update(self, source: Tensor, edited: Tensor, windows: Sequence[Sequence[int]]) -> None:
        source, edited = check_pair(source, edited)
        self._accumulate(seam_errors(source, edited, windows))


def warp_previous_frames(frames: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Resample frames[:-1] onto the pixel grid of frames[1:] with ``flow`` (F−1, 2, H, W).

    Returns ``(warped (F−1, C, H, W), in_bounds (F−1, 1, H, W) bool)``; see the module docstring
    for the convention.
    """
    previous = frames[:-1]
    height, width = previous.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=frames.dtype, device=frames.device),
        torch.arange(width, dtype=frames.dtype, device=frames.device),
        indexing="ij",
    )
    sample_x = xs.unsqueeze(0) + flow[:, 0]
    sample_y = ys.unsqueeze(0) + flow[:, 1]
    in_bounds = (sample_x >= 0) & (sample_x <= width - 1) & (sample_y >= 0) & (sample_y <= height - 1)
    grid = torch.stack((2.0 * sample_x / max(width - 1, 1) - 1.0, 2.0 * sample_y / max(height - 1, 1) - 1.0), dim=-1)
    warped = F.grid_sample(previous, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, in_bounds.unsqueeze(1)


def warp_errors(frames: Tensor, flow: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """Per-pair masked warp errors ``E_i`` (F−1,), NaN for a pair without any valid pixel."""
    pairs = frames.shape[0] - 1
    height, width = frames.shape[-2:]
    if flow.shape != (pairs, 2, height, width):
        raise ValueError(
            f"flow must have shape (F-1, 2, H, W) = {(pairs, 2, height, width)} for {frames.shape[0]} "
            f"frames of {height}x{width}, got {tuple(flow.shape)}"
        )
    flow = flow.to(frames.device, frames.dtype)
    if not torch.isfinite(flow).all():
        raise ValueError("flow contains NaN or infinite values")
    warped, mask = warp_previous_frames(frames, flow)
    if valid_mask is not None:
        valid_mask = valid_mask.to(frames.device).bool().reshape(pairs, 1, height, width)
        mask = mask & valid_mask
    squared = (frames[1:] - warped).pow(2).mean(dim=1, keepdim=True)
    mask = mask.to(squared.dtype)
    valid_pixels = mask.sum(dim=(1, 2, 3))
    summed = (squared * mask).sum(dim=(1, 2, 3))
    return torch.where(valid_pixels > 0, summed / valid_pixels.clamp_min(1.0), torch.full_like(summed, math.nan))


def resolve_flow(motion: FlowSource, reference_frames: Tensor) -> tuple[Tensor, Tensor | None]:
    """Turn ``motion`` (a flow tensor, or a callable ``(frames[:-1], frames[1:]) -> flow | (flow, valid_mask)``
    run on the reference frames) into ``(flow, valid_mask or None)``."""
    if isinstance(motion, Tensor):
        return motion, None
    if callable(motion):
        result = motion(reference_frames[:-1], reference_frames[1:])
        if isinstance(result, tuple):
            if len(result) != 2:
                raise ValueError("a motion callable must return flow or (flow, valid_mask)")
            return result[0], result[1]
        return result, None
    raise TypeError(f"motion must be a flow tensor (F-1, 2, H, W) or a callable, got {type(motion).__name__}")


class WarpError(MeanOverPairs):
    """``consistency/warp_error``; see the module docstring for the flow convention and formula.

    ``update(frames, flow, valid_mask=None)``: one whole sequence per call (pairs never span updates).
    """

    higher_is_better = False

    def update(self, frames: Tensor, flow: Tensor, valid_mask: Tensor | None = None) -> None:
        frames = check_images(frames, "frames")
        if frames.shape[0] < 2:
            return
        errors = warp_errors(frames, flow, valid_mask)
        self._accumulate(errors[torch.isfinite(errors)])


class ModeAgreement(Metric):
    """``consistency/mode_agreement``: fraction of particles whose argmax mode is the majority mode.

    ``update(responsibilities)`` with (N, K) responsibilities (or any scores whose argmax is the
    mode). The per-particle modes are gathered across processes ("cat"), so the majority is global.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("particle_modes", default=[], dist_reduce_fx="cat")

    def update(self, responsibilities: Tensor) -> None:
        if not isinstance(responsibilities, Tensor) or responsibilities.ndim != 2 or responsibilities.shape[1] == 0:
            shape = tuple(responsibilities.shape) if isinstance(responsibilities, Tensor) else type(responsibilities)
            raise ValueError(f"mode responsibilities must be a (N, K) tensor with K >= 1, got {shape}")
        if not torch.isfinite(responsibilities).all():
            raise ValueError("mode responsibilities contain NaN or infinite values")
        self.particle_modes.append(responsibilities.detach().argmax(dim=1).to(self.device, torch.long))

    def compute(self) -> Tensor:
        if isinstance(self.particle_modes, list) and not self.particle_modes:
            return torch.tensor(math.nan, dtype=torch.float64)
        modes = dim_zero_cat(self.particle_modes)
        if modes.numel() == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        counts = torch.bincount(modes)
        return counts.max().double() / modes.numel()
