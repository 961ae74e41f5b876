"""Fill a voxel field from analytic functions: ground truth for the renderer's tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from csd_exp.render.voxel import VoxelRadianceField


@torch.no_grad()
def analytic_field(
    field: VoxelRadianceField,
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    color_fn: Callable[[torch.Tensor], torch.Tensor],
) -> VoxelRadianceField:
    """Set the grids so that the field renders ``density_fn(points) -> sigma`` and ``color_fn(points) -> rgb``.

    Inverts the field's activations (softplus density with its scale and shift, sigmoid colour clamped to
    [1e-3, 1 - 1e-3] so the logit stays finite).
    """
    points = field.vertex_positions()
    sigma = density_fn(points).clamp_min(1e-6) / field.density_scale
    raw = torch.log(torch.expm1(sigma.clamp_min(1e-6))) - field.density_shift
    rgb = color_fn(points).clamp(1e-3, 1.0 - 1e-3)
    field.density.copy_(raw[None, None])
    field.color.copy_(torch.logit(rgb).permute(3, 0, 1, 2)[None])
    return field
