"""Cameras, view-dependent prompts and shading of the text-to-3D task (:mod:`csd_exp.tasks.generation3d.generation`).

* :class:`CameraSampler` (``task.cameras``): B random cameras per step looking at the scene centre, azimuth,
  elevation, distance and field of view uniform in their ranges, drawn from a generator seeded by
  (seed, step), so a resumed run draws what the uninterrupted one drew and every DDP rank draws the same.
  Azimuth is measured from +x towards +y (:func:`csd_exp.data.cameras.turntable_cameras`), elevation above
  the xy plane (z up); ``front_azimuth`` is the direction the object's front faces.
* :class:`ViewPrompting` (``task.view_prompts``): DreamFusion's view-dependent prompting, the prompt
  "<prompt>, <direction> view" with the direction ``overhead`` above ``overhead_elevation``, else ``front``
  within ``front_half_width`` degrees of ``front_azimuth``, ``back`` within ``back_half_width`` of the
  opposite azimuth, ``side`` between. ``enabled: false`` keeps the bare prompt.
* :class:`LambertianShading` (``task.shading``, optional): DreamFusion's shading augmentation written for any
  :class:`~csd_exp.render.RadianceField`: normals from the rendered depth (finite differences of the
  back-projected points), a directional light from near the camera, ``albedo · (ambient + (1 − ambient)
  max(0, n·l))`` on the foreground (rendered over black; the task composites its background afterwards),
  applied to a view with probability ``probability``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from csd_exp.data.cameras import Cameras, generate_rays, look_at, turntable_cameras

VIEW_DIRECTIONS = ("front", "side", "back", "overhead")


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(
            f"task.cameras.{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}"
        )
    return pair


@dataclass
class CameraBatch:
    """One step's cameras and the angles they were drawn at (degrees)."""

    cameras: Cameras
    azimuth: Tensor  # (B,)
    elevation: Tensor  # (B,)

    def __len__(self) -> int:
        return len(self.cameras)


class CameraSampler:
    """Random cameras around ``center`` (see the module docstring).

    Args:
        azimuth_range: degrees, [min, max] within [-360, 360].
        elevation_range: degrees above the xy plane, within [-89, 89] (the look-at up vector is world z).
        distance_range: camera distance from ``center``, world units.
        fov_range: full horizontal field of view, degrees.
        front_azimuth: the azimuth the object's front faces (view prompts and the turntable start there).
        center: the point every camera looks at.
    """

    def __init__(
        self,
        azimuth_range: Sequence[float] = (-180.0, 180.0),
        elevation_range: Sequence[float] = (0.0, 60.0),
        distance_range: Sequence[float] = (2.6, 3.4),
        fov_range: Sequence[float] = (40.0, 40.0),
        front_azimuth: float = 0.0,
        center: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.azimuth_range = _check_range("azimuth_range", azimuth_range, -360.0, 360.0)
        self.elevation_range = _check_range("elevation_range", elevation_range, -89.0, 89.0)
        self.distance_range = _check_range("distance_range", distance_range, 1e-3, math.inf)
        self.fov_range = _check_range("fov_range", fov_range, 1.0, 179.0)
        self.front_azimuth = float(front_azimuth)
        self.center = tuple(float(c) for c in center)
        if len(self.center) != 3:
            raise ValueError(f"task.cameras.center must have 3 coordinates, got {list(center)}")

    def __repr__(self) -> str:
        return (
            f"CameraSampler(azimuth={self.azimuth_range}, elevation={self.elevation_range}, "
            f"distance={self.distance_range}, fov={self.fov_range})"
        )

    @staticmethod
    def _uniform(bounds: tuple[float, float], count: int, generator: torch.Generator) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)

    def sample(self, count: int, size: tuple[int, int], generator: torch.Generator) -> CameraBatch:
        """``count`` cameras of ``size`` = (height, width) pixels, drawn from ``generator`` (CPU)."""
        azimuth = self._uniform(self.azimuth_range, count, generator)
        elevation = self._uniform(self.elevation_range, count, generator)
        distance = self._uniform(self.distance_range, count, generator)
        fov = self._uniform(self.fov_range, count, generator)
        return CameraBatch(self.cameras(azimuth, elevation, distance, fov, size), azimuth.float(), elevation.float())

    def cameras(
        self, azimuth: Tensor, elevation: Tensor, distance: Tensor, fov: Tensor, size: tuple[int, int]
    ) -> Cameras:
        """Cameras at the given angles (degrees), distances and horizontal fields of view, looking at ``center``."""
        height, width = size
        az, el = torch.deg2rad(azimuth.double()), torch.deg2rad(elevation.double())
        offsets = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1) * distance.double()[:, None]
        eye = (torch.tensor(self.center, dtype=torch.float64) + offsets).float()
        focal = 0.5 * width / torch.tan(torch.deg2rad(fov.double()) / 2.0)
        return Cameras(
            look_at(eye, self.center), focal.float(), focal.float(), width / 2.0, height / 2.0, width, height
        )

    def turntable(self, num_views: int, elevation: float, distance: float | None, size: tuple[int, int]) -> Cameras:
        """``num_views`` cameras at ``elevation`` degrees, evenly spaced in azimuth from ``front_azimuth``, at
        ``distance`` (None: the middle of ``distance_range``) with the middle field of view."""
        height, width = size
        radius = sum(self.distance_range) / 2.0 if distance is None else float(distance)
        return turntable_cameras(
            center=self.center,
            radius=radius,
            elevation_deg=float(elevation),
            num_views=int(num_views),
            width=width,
            height=height,
            fov_deg=sum(self.fov_range) / 2.0,
            start_azimuth_deg=self.front_azimuth,
        )


class ViewPrompting:
    """DreamFusion's view-dependent prompt suffixes (see the module docstring)."""

    def __init__(
        self,
        enabled: bool = True,
        front_half_width: float = 45.0,
        back_half_width: float = 45.0,
        overhead_elevation: float = 60.0,
    ) -> None:
        if not (0.0 <= front_half_width and 0.0 <= back_half_width and front_half_width + back_half_width <= 180.0):
            raise ValueError(
                "task.view_prompts: front_half_width and back_half_width must be >= 0 with a sum <= 180, got "
                f"{front_half_width} and {back_half_width}"
            )
        self.enabled = bool(enabled)
        self.front_half_width = float(front_half_width)
        self.back_half_width = float(back_half_width)
        self.overhead_elevation = float(overhead_elevation)

    def directions(self, azimuth: Tensor, elevation: Tensor, front_azimuth: float = 0.0) -> list[str]:
        """One of :data:`VIEW_DIRECTIONS` per view."""
        # Angle from the front in [0, 180]: wrap the difference into (-180, 180] first.
        offset = torch.remainder(azimuth.double() - front_azimuth + 180.0, 360.0) - 180.0
        away = offset.abs()
        names = []
        for angle, height in zip(away.tolist(), elevation.tolist()):
            if height >= self.overhead_elevation:
                names.append("overhead")
            elif angle <= self.front_half_width:
                names.append("front")
            elif angle >= 180.0 - self.back_half_width:
                names.append("back")
            else:
                names.append("side")
        return names

    def prompts(self, prompt: str, azimuth: Tensor, elevation: Tensor, front_azimuth: float = 0.0) -> list[str]:
        """The prompt of every view: ``"<prompt>, <direction> view"``, or ``prompt`` itself when disabled."""
        if not self.enabled:
            return [prompt] * int(azimuth.numel())
        return [f"{prompt}, {d} view" for d in self.directions(azimuth, elevation, front_azimuth)]


def prompt_batch(prompts: Sequence[str]) -> tuple[str | list[str], Tensor | None]:
    """(prompt, prompt_weights) for the guidance: one string when every view has the same prompt, else the
    distinct prompts (first-seen order) with one-hot weights (B, K), the guidance's multi-prompt path."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) == 1:
        return distinct[0], None
    weights = torch.zeros(len(prompts), len(distinct))
    for row, text in enumerate(prompts):
        weights[row, distinct.index(text)] = 1.0
    return distinct, weights


class LambertianShading:
    """Shade renders from their own depth (see the module docstring).

    Args:
        probability: chance that a view is shaded in a step (DreamFusion samples albedo / shaded renders).
        ambient: the unlit fraction of the albedo.
        light_jitter_deg: the light sits at the camera's position rotated by up to this many degrees.
    """

    def __init__(self, probability: float = 0.5, ambient: float = 0.3, light_jitter_deg: float = 30.0) -> None:
        if not 0.0 <= probability <= 1.0 or not 0.0 <= ambient <= 1.0:
            raise ValueError(f"task.shading: probability and ambient must be in [0, 1], got {probability}, {ambient}")
        self.probability, self.ambient = float(probability), float(ambient)
        self.light_jitter_deg = float(light_jitter_deg)

    def __repr__(self) -> str:
        return f"LambertianShading(probability={self.probability}, ambient={self.ambient})"

    @staticmethod
    def depth_normals(depth: Tensor, cameras: Cameras) -> Tensor:
        """(V, 3, H, W) unit world-space normals from z-depth (V, 1, H, W), facing the camera."""
        origins, directions = generate_rays(cameras)
        points = origins + depth.permute(0, 2, 3, 1) * directions  # (V, H, W, 3)
        du = torch.nn.functional.pad(
            (points[:, :, 2:] - points[:, :, :-2]).permute(0, 3, 1, 2), (1, 1), mode="replicate"
        )
        dv = torch.nn.functional.pad(
            (points[:, 2:] - points[:, :-2]).permute(0, 3, 1, 2), (0, 0, 1, 1), mode="replicate"
        )
        normals = torch.linalg.cross(dv, du, dim=1)
        facing = torch.sign((normals * -directions.permute(0, 3, 1, 2)).sum(dim=1, keepdim=True))
        return torch.nn.functional.normalize(normals * torch.where(facing == 0, 1.0, facing), dim=1)

    def __call__(self, foreground: Tensor, depth: Tensor, cameras: Cameras, generator: torch.Generator) -> Tensor:
        """Shaded ``foreground`` (V, 3, H, W): a render over a black background, so the task composites the
        background after shading. Each view is shaded with probability ``probability`` (drawn from ``generator``)."""
        views = foreground.shape[0]
        shaded_views = torch.rand(views, generator=generator) < self.probability
        jitter = torch.randn(views, 3, generator=generator) * math.radians(self.light_jitter_deg)
        if not bool(shaded_views.any()):
            return foreground
        normals = self.depth_normals(depth, cameras)
        centers = cameras.centers
        light = torch.nn.functional.normalize(centers + jitter.to(centers) * centers.norm(dim=-1, keepdim=True), dim=-1)
        lambert = (normals * light[:, :, None, None]).sum(dim=1, keepdim=True).clamp_min(0.0)
        shaded = foreground * (self.ambient + (1.0 - self.ambient) * lambert)
        return torch.where(shaded_views.to(foreground.device).view(-1, 1, 1, 1), shaded, foreground)
