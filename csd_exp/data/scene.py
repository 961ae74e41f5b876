"""Multi-view scenes: the :class:`SceneDataset` container and what every scene format shares.

Conventions: images are ``(V, 3, H, W)`` float32 in ``[0, 1]``; cameras are
:class:`csd_exp.data.cameras.Cameras` (OpenGL camera-to-world, z-up world, pixel centres at +0.5,
z-depths). Images with alpha are composited over ``background`` (white by default, as nerfstudio and
the Blender synthetic scenes do).

Formats read (by :mod:`csd_exp.data.scene_formats`):

* **nerfstudio** ``transforms.json``: ``frames[i].file_path`` (relative to the json's folder),
  ``frames[i].transform_matrix`` (4x4 or 3x4 camera-to-world, OpenGL), intrinsics ``fl_x, fl_y,
  cx, cy, w, h`` at top level or per frame (a frame's value wins). ``camera_angle_x`` is accepted
  when ``fl_x`` is absent (instant-ngp style); ``cx, cy`` default to the image centre and ``w, h``
  to the image size. Non-zero distortion (``k1..k4, p1, p2``) and non-pinhole ``camera_model``\\ s
  are rejected. Optional ``train_filenames`` / ``val_filenames`` / ``test_filenames`` fix the
  split; otherwise nerfstudio's rule is used (90 % evenly spaced views for training, the rest
  held out). Optional ``scene_box`` ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` (written by
  :func:`write_nerfstudio_scene`) gives the reconstruction box; otherwise it is estimated from
  the cameras (:func:`estimate_scene_box`).
* **Blender synthetic** ``transforms_{train,val,test}.json``: ``camera_angle_x`` (horizontal field of
  view, radians), ``frames[i].file_path`` without extension (``.png`` is appended), RGBA images;
  scene box ``[-1.5, 1.5]^3``.

Loaders only ever read the scene folder. :func:`write_nerfstudio_scene` writes a *new* folder
atomically, and :class:`csd_exp.data.editable.EditableImageSet` keeps originals untouched and saves edits elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from csd_exp.data.cameras import Cameras
from csd_exp.data.images import read_image_size, read_rgb
from csd_exp.data.resample import resize_frames

log = logging.getLogger(__name__)


class SceneError(ValueError):
    """A scene folder cannot be read or written; the message names the offending file."""


# ====================================================================== dataset container
@dataclass
class SceneDataset:
    """Posed images of one scene.

    Attributes:
        images: ``(V, 3, H, W)`` float32 in ``[0, 1]``.
        cameras: ``V`` cameras (see :mod:`csd_exp.data.cameras`).
        image_paths: one path per view (``None`` for views that exist only in memory).
        train_indices, val_indices: disjoint view indices of the training / held-out split.
        scene_box: ``(2, 3)`` axis-aligned box ``[min, max]`` that contains the scene.
        depths: optional ``(V, 1, H, W)`` exact z-depths (0 on background), e.g. for the sample scene.
        source: the folder the scene was read from or written to (never written to by this module
            after creation).
    """

    images: torch.Tensor = field(repr=False)
    cameras: Cameras = field(repr=False)
    image_paths: list[Path | None] = field(repr=False)
    train_indices: list[int]
    val_indices: list[int]
    scene_box: torch.Tensor
    depths: torch.Tensor | None = field(default=None, repr=False)
    source: Path | None = None

    def __post_init__(self) -> None:
        V = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise SceneError(f"images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        if len(self.cameras) != V or len(self.image_paths) != V:
            raise SceneError(f"{V} images but {len(self.cameras)} cameras and {len(self.image_paths)} paths")
        if (self.cameras.height, self.cameras.width) != tuple(self.images.shape[-2:]):
            raise SceneError(
                f"camera size {self.cameras.width}x{self.cameras.height} != image size "
                f"{self.images.shape[-1]}x{self.images.shape[-2]}"
            )
        self.train_indices = [int(i) for i in self.train_indices]
        self.val_indices = [int(i) for i in self.val_indices]
        for i in self.train_indices + self.val_indices:
            if not 0 <= i < V:
                raise SceneError(f"split index {i} out of range for {V} views")
        if set(self.train_indices) & set(self.val_indices):
            raise SceneError("train and val indices overlap")
        self.scene_box = torch.as_tensor(self.scene_box, dtype=torch.float32).reshape(2, 3)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[-2]

    @property
    def width(self) -> int:
        return self.images.shape[-1]

    @property
    def train_images(self) -> torch.Tensor:
        return self.images[self.train_indices]

    @property
    def train_cameras(self) -> Cameras:
        return self.cameras[self.train_indices]

    @property
    def val_images(self) -> torch.Tensor:
        return self.images[self.val_indices]

    @property
    def val_cameras(self) -> Cameras:
        return self.cameras[self.val_indices]


def warn_cameras_inside_box(scene: SceneDataset) -> list[int]:
    """Warn (once, naming the first few views) about cameras whose centre lies inside the scene box; return
    their view indices. The radiance field fills that box, so it can put density right in front of such a
    camera (a floater that covers its view) and spends its resolution on the space the cameras move in."""
    box = scene.scene_box.to(scene.cameras.c2w.dtype)
    centers = scene.cameras.centers
    inside = [int(i) for i in ((centers >= box[0]) & (centers <= box[1])).all(dim=-1).nonzero()[:, 0]]
    if inside:
        names = [str(scene.image_paths[i].name) if scene.image_paths[i] is not None else f"view {i}" for i in inside]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        where = f" of {scene.source}" if scene.source is not None else ""
        log.warning(
            "scene%s: %d of %d cameras lie inside the scene box %s (%s): the field can put density right in "
            "front of them; give transforms.json a 'scene_box' that holds the object but not the cameras "
            "(or remove it to estimate one from the cameras)",
            where,
            len(inside),
            len(scene),
            [[round(v, 3) for v in corner] for corner in box.tolist()],
            shown,
        )
    return inside


def read_scene_image(path: Path, background: Sequence[float]) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1]; alpha composited over ``background`` (see :func:`read_rgb`)."""
    try:
        rgba = torch.from_numpy(read_rgb(path, what="image", alpha=True)).permute(2, 0, 1)
    except ValueError as exc:  # the message already names the file
        raise SceneError(str(exc)) from exc
    alpha = rgba[3:]
    bg = torch.as_tensor(background, dtype=torch.float32).view(3, 1, 1)
    return (rgba[:3] * alpha + bg * (1.0 - alpha)).clamp(0.0, 1.0)


def scene_image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the file header."""
    try:
        return read_image_size(path, what="image")
    except ValueError as exc:
        raise SceneError(str(exc)) from exc


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise SceneError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise SceneError(f"{path}: expected a JSON object at top level")
    return meta


def estimate_scene_box(cameras: Cameras, margin: float = 1.0) -> torch.Tensor:
    """Heuristic ``(2, 3)`` scene box for inward-facing captures.

    Centre: the point closest (least squares) to all optical axes. Half-size: ``margin`` x half the
    median camera distance to that centre, the same on every axis.
    """
    origins = cameras.centers.double()
    forward = -cameras.c2w[:, :3, 2].double()
    forward = forward / forward.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
    A = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)
    if len(cameras) < 2 or torch.linalg.matrix_rank(A) < 3:
        center = origins.mean(0)
    else:
        center = torch.linalg.solve(A, b)[:, 0]
    radius = (origins - center).norm(dim=-1).median().item()
    half = max(margin * 0.5 * radius, 1e-3)
    return torch.stack([center - half, center + half]).float()


def resize_scene(scene: SceneDataset, image_size: int, multiple: int) -> SceneDataset:
    """Resize so the short side is ``image_size`` (sides rounded to ``multiple``); intrinsics follow."""
    H, W = scene.height, scene.width
    scale = image_size / min(H, W)
    new_h = max(multiple, int(round(H * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(W * scale / multiple)) * multiple)
    if (new_h, new_w) == (H, W):
        return scene
    mode = "area" if new_h <= H else "bilinear"
    images = resize_frames(scene.images, new_h, new_w, mode=mode, antialias=False)
    sx, sy = new_w / W, new_h / H
    c = scene.cameras
    cameras = Cameras(c.c2w, c.fx * sx, c.fy * sy, c.cx * sx, c.cy * sy, new_w, new_h)
    return SceneDataset(
        images=images,
        cameras=cameras,
        image_paths=scene.image_paths,
        train_indices=scene.train_indices,
        val_indices=scene.val_indices,
        scene_box=scene.scene_box,
        depths=None,  # depth maps at the old size would no longer match the pixels
        source=scene.source,
    )
