"""The bundled sample scene: a textured sphere, box and ground, ray-traced analytically (no download).

Images are exact renders (anti-aliased by supersampling) with exact z-depths, so reconstruction and
reprojection can be checked against ground truth.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import replace as dc_replace

import numpy as np
import torch
import torch.nn.functional as F

from csd_exp.data.cameras import Cameras, generate_rays, turntable_cameras
from csd_exp.data.resample import resize_frames
from csd_exp.data.scene import SceneDataset, SceneError
from csd_exp.data.scene_formats import write_nerfstudio_scene

# Geometry (world units, z up): a ground square [-1, 1]^2 at z = -0.5 textured with scikit-image's
# "coffee", a sphere of radius 0.45 at (-0.15, 0.1, -0.05) textured with "chelsea" (equirectangular),
# and a box [0.25, 0.75] x [-0.75, -0.25] x [-0.5, 0.0] textured with "astronaut". Lambertian shading
# from a fixed light; white background.
_GROUND_Z = -0.5
_SPHERE_C = (-0.15, 0.1, -0.05)
_SPHERE_R = 0.45
_BOX = ((0.25, -0.75, -0.5), (0.75, -0.25, 0.0))
_LIGHT = (0.4, -0.3, 0.85)


@functools.lru_cache(maxsize=8)
def _texture(name: str, size: tuple[int, int]) -> torch.Tensor:
    """``(1, 3, h, w)`` area-downsampled scikit-image photo (cached; callers must not modify it)."""
    from skimage import data as skdata  # bundled images, no download

    arr = getattr(skdata, name)()
    img = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255.0).permute(2, 0, 1)[:3]
    return resize_frames(img[None], *size, mode="area")


def _sample_tex(tex: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup; ``u, v`` in [0, 1] with v = 0 at the top row. Returns ``(N, 3)``."""
    grid = torch.stack([u * 2 - 1, v * 2 - 1], dim=-1).view(1, 1, -1, 2)
    return F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def _trace_sample(origins: torch.Tensor, dirs: torch.Tensor, textures: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour ``(N, 3)`` (NaN-free, background white) and z-depth ``(N,)`` (0 on background)."""
    n = origins.shape[0]
    inf = torch.full((n,), float("inf"))
    # ground
    dz = torch.where(dirs[:, 2].abs() < 1e-12, torch.full_like(dirs[:, 2], 1e-12), dirs[:, 2])
    t_g = (_GROUND_Z - origins[:, 2]) / dz
    p_g = origins + t_g[:, None] * dirs
    t_g = torch.where((t_g > 1e-4) & (p_g[:, 0].abs() <= 1) & (p_g[:, 1].abs() <= 1), t_g, inf)
    # sphere
    c = torch.tensor(_SPHERE_C)
    oc = origins - c
    a = (dirs * dirs).sum(-1)
    b = 2 * (oc * dirs).sum(-1)
    cc = (oc * oc).sum(-1) - _SPHERE_R**2
    disc = b * b - 4 * a * cc
    t_s = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    t_s = torch.where((disc > 0) & (t_s > 1e-4), t_s, inf)
    # box (slab test)
    lo, hi = torch.tensor(_BOX[0]), torch.tensor(_BOX[1])
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (lo - origins) / safe, (hi - origins) / safe
    tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
    t_b_near, face_axis = tmin.max(dim=-1)
    t_b = torch.where((t_b_near < tmax.min(dim=-1).values) & (t_b_near > 1e-4), t_b_near, inf)

    t_all = torch.stack([t_g, t_s, t_b], dim=-1)
    t_hit, which = t_all.min(dim=-1)
    hit = torch.isfinite(t_hit)
    p = origins + torch.where(hit, t_hit, torch.zeros_like(t_hit))[:, None] * dirs
    color = torch.ones(n, 3)
    normal = torch.zeros(n, 3)
    # ground colour
    m = hit & (which == 0)
    color[m] = _sample_tex(textures["ground"], (p[m, 0] + 1) / 2, (1 - p[m, 1]) / 2)
    normal[m] = torch.tensor([0.0, 0.0, 1.0])
    # sphere colour
    m = hit & (which == 1)
    nrm = (p[m] - c) / _SPHERE_R
    u = torch.atan2(nrm[:, 1], nrm[:, 0]) / (2 * math.pi) + 0.5
    v = torch.acos(nrm[:, 2].clamp(-1, 1)) / math.pi
    color[m] = _sample_tex(textures["sphere"], u, v)
    normal[m] = nrm
    # box colour: project onto the two axes of the face
    m = hit & (which == 2)
    axis = face_axis[m]
    rel = (p[m] - lo) / (hi - lo)
    u = torch.where(axis == 0, rel[:, 1], rel[:, 0])
    v = 1 - torch.where(axis == 2, rel[:, 1], rel[:, 2])
    color[m] = _sample_tex(textures["box"], u, v)
    rows = torch.arange(int(m.sum()))
    face_normal = torch.zeros(rows.numel(), 3)
    face_normal[rows, axis] = -torch.sign(dirs[m][rows, axis])  # faces the camera
    normal[m] = face_normal
    light = torch.tensor(_LIGHT) / torch.tensor(_LIGHT).norm()
    shade = 0.55 + 0.45 * (normal @ light).clamp_min(0)
    color = torch.where(hit[:, None], color * shade[:, None], color)
    depth = torch.where(hit, t_hit, torch.zeros_like(t_hit))
    return color.clamp(0, 1), depth


def render_sample_views(cameras: Cameras, supersample: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytically render the sample scene: ``images (V, 3, H, W)`` and exact z-``depths (V, 1, H, W)``.

    Colour is averaged over ``supersample x supersample`` sub-pixel rays (anti-aliasing); depth is
    the exact z-depth of the pixel-centre ray (0 on background).
    """
    textures = {
        "ground": _texture("coffee", (96, 128)),
        "sphere": _texture("chelsea", (64, 128)),
        "box": _texture("astronaut", (96, 96)),
    }
    V, H, W = len(cameras), cameras.height, cameras.width
    fine = Cameras(
        cameras.c2w,
        cameras.fx * supersample,
        cameras.fy * supersample,
        cameras.cx * supersample,
        cameras.cy * supersample,
        W * supersample,
        H * supersample,
    )
    o, d = generate_rays(fine)
    color, _ = _trace_sample(o.reshape(-1, 3), d.reshape(-1, 3), textures)
    images = F.avg_pool2d(color.reshape(V, H * supersample, W * supersample, 3).permute(0, 3, 1, 2), supersample)
    o, d = generate_rays(cameras)
    _, depth = _trace_sample(o.reshape(-1, 3), d.reshape(-1, 3), textures)
    return images.contiguous(), depth.reshape(V, 1, H, W)


def make_sample_scene(
    num_views: int = 30,
    num_val: int = 6,
    size: tuple[int, int] = (48, 48),
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    radius: float = 3.2,
    fov_deg: float = 40.0,
    elevation_range_deg: tuple[float, float] = (20.0, 50.0),
) -> SceneDataset:
    """The bundled sample scene: textured sphere, box and ground, rendered analytically.

    ``num_views`` cameras on a ring of ``radius`` around the origin (evenly spaced azimuths, elevations
    drawn uniformly from ``elevation_range_deg`` with a ``torch.Generator(seed)``), looking at the
    origin; ``num_val`` of them, evenly interleaved, are held out. ``size`` is ``(H, W)``. Images are
    quantised to 8 bits so a written-and-reloaded copy is bit-identical. ``depths`` holds exact
    z-depths. With ``out_dir`` the scene is also written there as a nerfstudio folder (which must
    not exist yet) and ``image_paths`` / ``source`` point at it. Needs no download.
    """
    if num_views < 1 or not 0 <= num_val < num_views:
        raise SceneError(f"need num_views >= 1 and 0 <= num_val < num_views, got {num_views}, {num_val}")
    H, W = size
    gen = torch.Generator().manual_seed(seed)
    lo, hi = elevation_range_deg
    elevation = lo + (hi - lo) * torch.rand(num_views, generator=gen)
    start = float(torch.rand((), generator=gen)) * 360.0 / num_views
    cameras = turntable_cameras(
        radius=radius,
        elevation_deg=elevation,
        num_views=num_views,
        width=W,
        height=H,
        fov_deg=fov_deg,
        start_azimuth_deg=start,
    )
    images, depths = render_sample_views(cameras)
    images = (images * 255.0).round() / 255.0
    val = sorted({int((k + 0.5) * num_views / num_val) for k in range(num_val)})  # interleaved
    train = [i for i in range(num_views) if i not in set(val)]
    dataset = SceneDataset(
        images=images,
        cameras=cameras,
        image_paths=[None] * num_views,
        train_indices=train,
        val_indices=val,
        scene_box=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
        depths=depths,
    )
    if out_dir is not None:
        json_path = write_nerfstudio_scene(dataset, out_dir)
        root = json_path.parent
        dataset = dc_replace(
            dataset, image_paths=[root / f"images/frame_{i:05d}.png" for i in range(num_views)], source=root
        )
    return dataset
