"""Weight-free multi-view consistency: warp one view into another with rendered depth.

For every pixel of view *a* with z-depth ``depth_a`` the 3D point is back-projected with camera *a*,
projected into camera *b*, and view *b* is sampled there bilinearly. The error is the mean absolute
colour difference over pixels that are

* valid in *a* (``mask_a``, e.g. rendered opacity > 0.5, and depth > 0),
* in front of camera *b* and inside its image (edge pixels are replicated within the last half pixel),
* not occluded in *b*: if ``depth_b`` is given, the point's z-depth in *b* must agree with
  ``depth_b`` sampled there to within ``occlusion_tol`` (relative).

Conventions as in :mod:`csd_exp.data.cameras` (OpenGL c2w, pixel centres at +0.5, z-depth).
Images are ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1]; depths ``(1, H, W)`` or ``(1, 1, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csd_exp.data.cameras import Cameras, generate_rays

__all__ = ["warp_to_view", "reprojection_error"]


def _chw(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"{name}: expected one view, got batch of {x.shape[0]}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != channels:
        raise ValueError(f"{name}: expected ({channels}, H, W), got {tuple(x.shape)}")
    return x.float()


def _one(cam: Cameras, name: str) -> Cameras:
    if len(cam) != 1:
        raise ValueError(f"{name}: expected one camera, got {len(cam)}")
    return cam


def warp_to_view(
    depth_a: torch.Tensor,
    cam_a: Cameras,
    image_b: torch.Tensor,
    cam_b: Cameras,
    depth_b: torch.Tensor | None = None,
    occlusion_tol: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image_b`` (``(C, H_b, W_b)``) at the reprojection of every pixel of view *a*.

    Returns the warped image ``(C, H_a, W_a)`` and a boolean validity mask ``(H_a, W_a)`` (depth > 0,
    in front of *b*, inside *b*'s image rectangle, and — with ``depth_b`` — unoccluded).
    """
    depth_a = _chw(depth_a, 1, "depth_a")[0]
    cam_a, cam_b = _one(cam_a, "cam_a"), _one(cam_b, "cam_b")
    if tuple(depth_a.shape) != (cam_a.height, cam_a.width):
        raise ValueError(f"depth_a is {tuple(depth_a.shape)} but cam_a is {cam_a.height}x{cam_a.width}")
    image_b = image_b[0] if image_b.ndim == 4 else image_b
    if tuple(image_b.shape[-2:]) != (cam_b.height, cam_b.width):
        raise ValueError(f"image_b is {tuple(image_b.shape[-2:])} but cam_b is {cam_b.height}x{cam_b.width}")
    origins, directions = generate_rays(cam_a.to(depth_a.device))
    points = origins[0] + depth_a[..., None] * directions[0]  # (H, W, 3); t along direction = z-depth
    uv, z_b = cam_b.to(depth_a.device).project(points[None])
    uv, z_b = uv[0], z_b[0]
    Wb, Hb = cam_b.width, cam_b.height
    grid = torch.stack([uv[..., 0] / Wb * 2 - 1, uv[..., 1] / Hb * 2 - 1], dim=-1)[None]
    warped = F.grid_sample(image_b.float()[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    valid = (depth_a > 0) & (z_b > 1e-6)
    valid &= (uv[..., 0] >= 0) & (uv[..., 0] <= Wb) & (uv[..., 1] >= 0) & (uv[..., 1] <= Hb)
    if depth_b is not None:
        db = _chw(depth_b, 1, "depth_b")
        seen = F.grid_sample(db[None], grid, mode="nearest", padding_mode="border", align_corners=False)[0, 0]
        valid &= (seen > 0) & ((z_b - seen).abs() <= occlusion_tol * z_b)
    return warped, valid


def reprojection_error(
    rgb_a: torch.Tensor,
    depth_a: torch.Tensor,
    cam_a: Cameras,
    rgb_b: torch.Tensor,
    cam_b: Cameras,
    *,
    depth_b: torch.Tensor | None = None,
    mask_a: torch.Tensor | None = None,
    occlusion_tol: float = 0.05,
    min_valid_fraction: float = 0.01,
) -> float:
    """Mean absolute colour difference between view *a* and view *b* warped into *a*.

    Args:
        rgb_a, rgb_b: ``(3, H, W)`` images in [0, 1] (``(1, 3, H, W)`` accepted).
        depth_a: z-depth of view *a* (rendered), 0 where nothing is hit.
        cam_a, cam_b: one camera each.
        depth_b: z-depth of view *b* for the occlusion test (recommended).
        mask_a: optional ``(H, W)`` / ``(1, H, W)`` boolean or [0, 1] mask (> 0.5 counts) of pixels of
            *a* to score, e.g. rendered opacity.
        occlusion_tol: relative depth tolerance of the occlusion test.
        min_valid_fraction: if fewer pixels of *a* are valid, return ``nan`` (views do not overlap).

    Returns:
        The masked mean over valid pixels and channels (a float in [0, 1]), or ``nan``.
    """
    rgb_a = _chw(rgb_a, 3, "rgb_a")
    warped, valid = warp_to_view(depth_a, cam_a, _chw(rgb_b, 3, "rgb_b"), cam_b, depth_b, occlusion_tol)
    if mask_a is not None:
        mask = mask_a.reshape(valid.shape) if mask_a.numel() == valid.numel() else None
        if mask is None:
            raise ValueError(f"mask_a has {mask_a.numel()} values, expected {valid.numel()}")
        valid &= mask.float() > 0.5
    if valid.float().mean().item() < min_valid_fraction:
        return float("nan")
    diff = (rgb_a.to(warped.device) - warped).abs().mean(dim=0)
    return diff[valid].mean().item()
