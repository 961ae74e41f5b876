"""Pinhole cameras, ray generation, look-at and turntable paths.

Conventions (shared by every module in :mod:`csd_exp.render` and by :mod:`csd_exp.data.scene`):

* **World frame**: right-handed, **z up** (the nerfstudio / Blender convention).
* **Camera-to-world** ``c2w`` is a ``(V, 4, 4)`` float tensor in the **OpenGL** convention used by
  nerfstudio's ``transform_matrix`` and Blender's ``transforms_*.json``: the camera looks along its
  **-z** axis, **+x** points right in the image and **+y** points up in the image. Column 3 is the
  camera centre. The rotation block must be orthonormal with determinant +1 (checked by
  :meth:`Cameras.validate`).
* **Pixels**: pixel ``(u, v)`` (column, row; row 0 at the top) has its centre at
  ``(u + 0.5, v + 0.5)`` in the continuous image coordinates in which ``cx, cy`` are given, i.e. the
  image's top-left corner is ``(0, 0)`` and the centre of a ``W x H`` image is ``(W/2, H/2)``. This is
  the nerfstudio / COLMAP convention, so ``fl_x, fl_y, cx, cy`` from ``transforms.json`` are used as is.
* **Rays**: :func:`generate_rays` returns *un-normalised* directions whose component along the
  camera's viewing axis is exactly 1, so the ray parameter ``t`` of a point equals its **z-depth**
  (distance along the viewing axis, positive in front of the camera). All depths in this package are
  z-depths.

Everything is pure torch and runs on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Cameras",
    "CameraError",
    "generate_rays",
    "look_at",
    "turntable_cameras",
    "focal_from_fov",
]


class CameraError(ValueError):
    """A camera is malformed: bad shape, NaN, non-orthonormal rotation, non-positive focal length."""


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` spanning ``size`` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise CameraError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def _as_vector(value: float | Sequence[float] | torch.Tensor, num: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if tensor.numel() == 1:
        tensor = tensor.expand(num).clone()
    if tensor.numel() != num:
        raise CameraError(f"{name} has {tensor.numel()} values for {num} cameras")
    return tensor


@dataclass
class Cameras:
    """A batch of ``V`` pinhole cameras sharing one image size.

    Attributes:
        c2w: ``(V, 4, 4)`` camera-to-world, OpenGL convention (see module docstring).
        fx, fy: ``(V,)`` focal lengths in pixels.
        cx, cy: ``(V,)`` principal point in pixels (image top-left corner at 0, pixel centres at +0.5).
        width, height: image size in pixels, shared by all views.
    """

    c2w: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        c2w = torch.as_tensor(self.c2w, dtype=torch.float32)
        if c2w.ndim == 2:
            c2w = c2w.unsqueeze(0)
        if c2w.ndim != 3 or c2w.shape[-2:] not in ((4, 4), (3, 4)):
            raise CameraError(f"c2w must be (V, 4, 4) or (V, 3, 4), got {tuple(c2w.shape)}")
        if c2w.shape[-2] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device).expand(c2w.shape[0], 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        num = c2w.shape[0]
        self.c2w = c2w
        self.fx = _as_vector(self.fx, num, "fx").to(c2w.device)
        self.fy = _as_vector(self.fy, num, "fy").to(c2w.device)
        self.cx = _as_vector(self.cx, num, "cx").to(c2w.device)
        self.cy = _as_vector(self.cy, num, "cy").to(c2w.device)
        self.width = int(self.width)
        self.height = int(self.height)

    # ------------------------------------------------------------------ basic container protocol
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> Cameras:
        """A sub-batch; an integer index keeps the batch dimension (returns one camera)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(index, dtype=torch.long) if not isinstance(index, slice) else index
        return Cameras(
            self.c2w[idx],
            self.fx[idx],
            self.fy[idx],
            self.cx[idx],
            self.cy[idx],
            self.width,
            self.height,
        )

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def centers(self) -> torch.Tensor:
        """``(V, 3)`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            self.c2w.to(device),
            self.fx.to(device),
            self.fy.to(device),
            self.cx.to(device),
            self.cy.to(device),
            self.width,
            self.height,
        )

    def world_to_camera(self) -> torch.Tensor:
        """``(V, 4, 4)`` inverse of ``c2w`` (rigid inverse, assumes a valid rotation)."""
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3:]
        w2c = torch.zeros_like(self.c2w)
        w2c[:, :3, :3] = R.transpose(1, 2)
        w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
        w2c[:, 3, 3] = 1.0
        return w2c

    def scaled(self, downscale: float) -> Cameras:
        """Cameras for images resized by ``1 / downscale`` (``width // downscale`` pixels).

        Intrinsics scale by the exact size ratio, so the image corners stay fixed.
        """
        if downscale <= 0:
            raise CameraError(f"downscale must be positive, got {downscale}")
        if downscale == 1:
            return self
        width = max(1, int(self.width // downscale))
        height = max(1, int(self.height // downscale))
        sx, sy = width / self.width, height / self.height
        return Cameras(self.c2w, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points into every camera.

        Args:
            points: ``(V, ..., 3)`` world points (one set per camera).

        Returns:
            ``uv`` ``(V, ..., 2)`` continuous pixel coordinates (pixel ``(u, v)``'s centre is at
            ``(u + 0.5, v + 0.5)``) and ``depth`` ``(V, ...)`` z-depth (positive in front).
        """
        w2c = self.world_to_camera()
        shape = points.shape
        flat = points.reshape(shape[0], -1, 3)
        cam = flat @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        depth = -cam[..., 2]
        safe = torch.where(depth.abs() < 1e-12, torch.full_like(depth, 1e-12), depth)
        u = self.fx[:, None] * cam[..., 0] / safe + self.cx[:, None]
        v = -self.fy[:, None] * cam[..., 1] / safe + self.cy[:, None]
        uv = torch.stack([u, v], dim=-1)
        return uv.reshape(*shape[:-1], 2), depth.reshape(shape[:-1])

    def validate(self, source: str = "cameras", atol: float = 1e-3, names: Sequence[str] | None = None) -> Cameras:
        """Raise :class:`CameraError` naming ``source`` and the view for any degenerate camera.

        Checks: finite values, bottom row ``[0, 0, 0, 1]``, orthonormal rotation with det +1 (to
        ``atol``), positive finite focal lengths, positive image size. ``names`` (one per view, e.g.
        the frame's ``file_path``) are used in the messages instead of the bare view index.
        """
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f"{source}: image size must be positive, got {self.width}x{self.height}")
        eye = torch.eye(3, device=self.device)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=self.device)
        for i in range(len(self)):
            view = f"view {i}" if names is None else f"view {i} ({names[i]})"
            m = self.c2w[i]
            if not torch.isfinite(m).all():
                raise CameraError(f"{source}: {view} has a non-finite camera-to-world matrix")
            if not torch.allclose(m[3], bottom, atol=atol):
                raise CameraError(f"{source}: {view} c2w bottom row is {m[3].tolist()}, expected [0, 0, 0, 1]")
            R = m[:3, :3].double()
            err = (R.T @ R - eye.double()).abs().max().item()
            if err > atol:
                raise CameraError(
                    f"{source}: {view} rotation is not orthonormal (max |R^T R - I| = {err:.3g} > {atol}); "
                    "scaled or sheared camera-to-world matrices are not supported"
                )
            det = torch.linalg.det(R).item()
            if det < 0:
                raise CameraError(f"{source}: {view} rotation has determinant {det:.3g} (a reflection)")
            for name in ("fx", "fy", "cx", "cy"):
                value = getattr(self, name)[i].item()
                if not math.isfinite(value):
                    raise CameraError(f"{source}: {view} has non-finite {name} = {value}")
            for name in ("fx", "fy"):
                value = getattr(self, name)[i].item()
                if value <= 0:
                    raise CameraError(f"{source}: {view} has non-positive focal length {name} = {value}")
        return self

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate camera batches with the same image size."""
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise CameraError(f"cannot concatenate cameras with different image sizes {sorted(sizes)}")
        return Cameras(
            torch.cat([c.c2w for c in cameras]),
            torch.cat([c.fx for c in cameras]),
            torch.cat([c.fy for c in cameras]),
            torch.cat([c.cx for c in cameras]),
            torch.cat([c.cy for c in cameras]),
            cameras[0].width,
            cameras[0].height,
        )


def generate_rays(cameras: Cameras, downscale: float = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre.

    Args:
        cameras: ``V`` cameras.
        downscale: render at ``1 / downscale`` of the camera's resolution (intrinsics rescaled).

    Returns:
        ``origins`` and ``directions``, each ``(V, H, W, 3)`` in world coordinates. Directions are
        not unit length: their component along the viewing axis is 1, so ``origin + t * direction``
        has z-depth ``t``.
    """
    cams = cameras.scaled(downscale)
    device = cams.device
    v, u = torch.meshgrid(
        torch.arange(cams.height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(cams.width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    x = (u[None] - cams.cx[:, None, None]) / cams.fx[:, None, None]
    y = -(v[None] - cams.cy[:, None, None]) / cams.fy[:, None, None]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (V, H, W, 3), OpenGL camera frame
    R = cams.c2w[:, :3, :3]
    directions = torch.einsum("vij,vhwj->vhwi", R, d_cam)
    origins = cams.c2w[:, None, None, :3, 3].expand_as(directions)
    return origins.contiguous(), directions.contiguous()


def look_at(
    eye: torch.Tensor | Sequence[float],
    target: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
    up: torch.Tensor | Sequence[float] = (0.0, 0.0, 1.0),
) -> torch.Tensor:
    """OpenGL camera-to-world matrices for cameras at ``eye`` looking at ``target``.

    ``eye`` may be ``(3,)`` or ``(V, 3)``; returns ``(V, 4, 4)``. The camera's -z axis points at the
    target and its +y axis is the projection of ``up`` (world z by default). Raises
    :class:`CameraError` when the viewing direction is parallel to ``up`` or eye equals target.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=torch.float32).reshape(-1, 3).expand_as(eye)
    up = torch.as_tensor(up, dtype=torch.float32).reshape(-1, 3).expand_as(eye)
    back = eye - target  # camera +z points away from the target
    norm = back.norm(dim=-1, keepdim=True)
    if (norm < 1e-9).any():
        raise CameraError("look_at: eye coincides with target")
    back = back / norm
    right = torch.linalg.cross(up, back, dim=-1)
    rnorm = right.norm(dim=-1, keepdim=True)
    if (rnorm < 1e-6).any():
        raise CameraError("look_at: viewing direction is parallel to the up vector")
    right = right / rnorm
    cam_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def turntable_cameras(
    center: Sequence[float] = (0.0, 0.0, 0.0),
    radius: float = 3.0,
    elevation_deg: float | Sequence[float] | torch.Tensor = 30.0,
    num_views: int = 24,
    *,
    width: int = 64,
    height: int = 64,
    fov_deg: float | None = 40.0,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    start_azimuth_deg: float = 0.0,
    azimuths_deg: Sequence[float] | torch.Tensor | None = None,
) -> Cameras:
    """Cameras on a circle around ``center`` (z up), all looking at ``center``.

    Azimuths are evenly spaced over 360 degrees starting at ``start_azimuth_deg`` (measured from +x
    towards +y) unless ``azimuths_deg`` is given. ``elevation_deg`` (above the xy plane) is one value
    or one per view. Intrinsics: ``fx``/``fy`` in pixels if given, otherwise from the horizontal
    ``fov_deg``; the principal point defaults to the image centre.
    """
    if num_views < 1:
        raise CameraError(f"num_views must be >= 1, got {num_views}")
    if radius <= 0:
        raise CameraError(f"radius must be positive, got {radius}")
    if azimuths_deg is None:
        azimuth = start_azimuth_deg + torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    else:
        azimuth = torch.as_tensor(azimuths_deg, dtype=torch.float32).reshape(-1)
        num_views = azimuth.numel()
    elevation = _as_vector(elevation_deg, num_views, "elevation_deg")
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    c = torch.as_tensor(center, dtype=torch.float32)
    eye = c + radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    c2w = look_at(eye, c)
    if fx is None:
        if fov_deg is None:
            raise CameraError("turntable_cameras needs fov_deg or fx")
        fx = focal_from_fov(fov_deg, width)
    fy = fx if fy is None else fy
    cx = width / 2.0 if cx is None else cx
    cy = height / 2.0 if cy is None else cy
    return Cameras(c2w, fx, fy, cx, cy, width, height)
