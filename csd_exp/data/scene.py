"""Multi-view scenes: nerfstudio / Blender readers, a bundled sample scene, and editable image sets.

Conventions: images are ``(V, 3, H, W)`` float32 in ``[0, 1]``; cameras are
:class:`csd_exp.data.cameras.Cameras` (OpenGL camera-to-world, z-up world, pixel centres at +0.5,
z-depths). Images with alpha are composited over ``background`` (white by default, as nerfstudio and
the Blender synthetic scenes do).

Formats read:

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
atomically, and :class:`EditableImageSet` keeps originals untouched and saves edits elsewhere.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from csd_exp.data.cameras import CameraError, Cameras, generate_rays, turntable_cameras
from csd_exp.data.video import follow_umask, read_image_size, read_rgb

__all__ = [
    "SceneError",
    "SceneDataset",
    "load_nerfstudio_scene",
    "load_blender_scene",
    "load_scene",
    "write_nerfstudio_scene",
    "estimate_scene_box",
    "make_sample_scene",
    "sample_scene",
    "render_sample_views",
    "EditableImageSet",
]

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}
_BLENDER_BOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


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


# ====================================================================== image I/O
def _read_image(path: Path, background: Sequence[float]) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1]; alpha composited over ``background`` (see :func:`read_rgb`)."""
    try:
        rgba = torch.from_numpy(read_rgb(path, what="image", alpha=True)).permute(2, 0, 1)
    except ValueError as exc:  # the message already names the file
        raise SceneError(str(exc)) from exc
    alpha = rgba[3:]
    bg = torch.as_tensor(background, dtype=torch.float32).view(3, 1, 1)
    return (rgba[:3] * alpha + bg * (1.0 - alpha)).clamp(0.0, 1.0)


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the file header."""
    try:
        return read_image_size(path, what="image")
    except ValueError as exc:
        raise SceneError(str(exc)) from exc


def _write_png(image: torch.Tensor, path: Path) -> None:
    """Write ``(3, H, W)`` in [0, 1] as an 8-bit PNG via a temporary file and rename."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resize ``(3, H, W)`` to ``(H', W')``."""
    return F.interpolate(image[None], size=size, mode="area")[0]


# ====================================================================== helpers shared by loaders
def _read_json(path: Path) -> dict:
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


def _frames(meta: dict, json_path: Path) -> list[dict]:
    frames = meta.get("frames")
    if not isinstance(frames, list) or len(frames) == 0:
        raise SceneError(f"{json_path}: no cameras (missing or empty 'frames' list)")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise SceneError(f"{json_path}: frame {i} is not an object")
        if "file_path" not in frame:
            raise SceneError(f"{json_path}: frame {i} has no 'file_path'")
        if "transform_matrix" not in frame:
            raise SceneError(f"{json_path}: frame {i} ({frame['file_path']}) has no 'transform_matrix' (camera pose)")
    return frames


def _matrix(frame: dict, json_path: Path, index: int) -> torch.Tensor:
    try:
        m = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        where = f"{json_path}: frame {index} ({frame['file_path']})"
        raise SceneError(f"{where} transform_matrix is not numeric: {exc}") from exc
    if m.shape == (3, 4):
        m = torch.cat([m, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    if m.shape != (4, 4):
        where = f"{json_path}: frame {index} ({frame['file_path']})"
        raise SceneError(f"{where} transform_matrix has shape {tuple(m.shape)}, expected 4x4")
    return m.float()


def _resolve_image(root: Path, file_path: str, json_path: Path, default_ext: str | None) -> Path:
    path = root / file_path
    if not path.is_file() and default_ext is not None and path.suffix == "":
        path = path.with_name(path.name + default_ext)
    return path


def _check_images(paths: list[Path], json_path: Path) -> tuple[int, int]:
    """All images exist and share one size; returns (W, H)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SceneError(f"{json_path}: {len(missing)} image(s) missing: {', '.join(missing[:3])}{more}")
    sizes: dict[tuple[int, int], Path] = {}
    for p in paths:
        height, width = _image_size(p)
        sizes.setdefault((width, height), p)
    if len(sizes) > 1:
        listing = "; ".join(f"{p} is {w}x{h}" for (w, h), p in sizes.items())
        raise SceneError(f"{json_path}: images have mixed sizes ({listing}); all views must share one size")
    return next(iter(sizes))


def _evenly_spaced(num: int, keep: int) -> list[int]:
    if keep >= num:
        return list(range(num))
    return sorted({int(round(x)) for x in np.linspace(0, num - 1, keep)})


def _number(value, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SceneError(f"{where}: '{name}' must be a number, got {value!r}")
    return float(value)


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


# ====================================================================== nerfstudio
def _intrinsic(frame: dict, meta: dict, key: str):
    return frame.get(key, meta.get(key))


def load_nerfstudio_scene(
    path: str | os.PathLike,
    downscale: int = 1,
    max_views: int | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> SceneDataset:
    """Read a nerfstudio scene (a folder with ``transforms.json``, or the json file itself).

    Args:
        downscale: integer factor; images are area-resized to ``(W // downscale, H // downscale)``
            and the intrinsics rescaled to match.
        max_views: keep at most this many frames, evenly spaced in file order (before the split).
        background: RGB in [0, 1] behind transparent pixels.
    """
    json_path = Path(path)
    if json_path.is_dir():
        json_path = json_path / "transforms.json"
    if not json_path.is_file():
        raise SceneError(f"{json_path}: no cameras (transforms.json not found)")
    meta = _read_json(json_path)
    frames = _frames(meta, json_path)
    root = json_path.parent
    if max_views is not None:
        if max_views < 1:
            raise SceneError(f"max_views must be >= 1, got {max_views}")
        frames = [frames[i] for i in _evenly_spaced(len(frames), max_views)]

    model = meta.get("camera_model", "OPENCV")
    if str(model).upper() not in _PINHOLE_MODELS:
        raise SceneError(f"{json_path}: camera_model {model!r} is not supported (pinhole models only)")
    image_paths = [_resolve_image(root, str(f["file_path"]), json_path, None) for f in frames]
    W, H = _check_images(image_paths, json_path)

    c2w, fx, fy, cx, cy = [], [], [], [], []
    for i, frame in enumerate(frames):
        where = f"{json_path} frame {i} ({frame['file_path']})"
        for key in _DISTORTION_KEYS:
            value = _intrinsic(frame, meta, key)
            if value is not None and _number(value, key, where) != 0.0:
                raise SceneError(f"{where}: lens distortion {key}={value} is not supported; undistort the images first")
        w = _intrinsic(frame, meta, "w")
        h = _intrinsic(frame, meta, "h")
        if w is not None and h is not None and (int(_number(w, "w", where)), int(_number(h, "h", where))) != (W, H):
            raise SceneError(f"{where}: declares size {int(w)}x{int(h)} but the image is {W}x{H}")
        f_x = _intrinsic(frame, meta, "fl_x")
        if f_x is None:
            angle = _intrinsic(frame, meta, "camera_angle_x")
            if angle is None:
                raise SceneError(f"{where}: no focal length (neither 'fl_x' nor 'camera_angle_x')")
            angle = _number(angle, "camera_angle_x", where)
            f_x = 0.5 * W / math.tan(0.5 * angle) if 0 < angle < math.pi else float("nan")
        f_x = _number(f_x, "fl_x", where)
        f_y = _intrinsic(frame, meta, "fl_y")
        if f_y is None and _intrinsic(frame, meta, "camera_angle_y") is not None:
            angle = _number(_intrinsic(frame, meta, "camera_angle_y"), "camera_angle_y", where)
            f_y = 0.5 * H / math.tan(0.5 * angle) if 0 < angle < math.pi else float("nan")
        f_y = f_x if f_y is None else _number(f_y, "fl_y", where)
        c_x = _intrinsic(frame, meta, "cx")
        c_y = _intrinsic(frame, meta, "cy")
        c2w.append(_matrix(frame, json_path, i))
        fx.append(f_x)
        fy.append(f_y)
        cx.append(W / 2.0 if c_x is None else _number(c_x, "cx", where))
        cy.append(H / 2.0 if c_y is None else _number(c_y, "cy", where))
    cameras = _validated_cameras(torch.stack(c2w), fx, fy, cx, cy, W, H, json_path, frames)

    train, val = _nerfstudio_split(meta, frames, json_path)
    if "scene_box" in meta:
        try:
            box = torch.tensor(meta["scene_box"], dtype=torch.float32).reshape(2, 3)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise SceneError(
                f"{json_path}: 'scene_box' must be [[xmin, ymin, zmin], [xmax, ymax, zmax]]: {exc}"
            ) from exc
        if not torch.isfinite(box).all() or not (box[1] > box[0]).all():
            raise SceneError(f"{json_path}: 'scene_box' {box.tolist()} is empty or not finite")
    else:
        box = estimate_scene_box(cameras)
    images = _load_images(image_paths, background, downscale, (H, W))
    return SceneDataset(
        images=images,
        cameras=cameras.scaled(downscale),
        image_paths=image_paths,
        train_indices=train,
        val_indices=val,
        scene_box=box,
        source=root,
    )


def _validated_cameras(c2w, fx, fy, cx, cy, W, H, json_path, frames) -> Cameras:
    cameras = Cameras(c2w, fx, fy, cx, cy, W, H)
    try:
        cameras.validate(source=str(json_path), names=[str(f["file_path"]) for f in frames])
    except CameraError as exc:
        raise SceneError(str(exc)) from exc
    return cameras


def _load_images(paths: list[Path], background, downscale: int, size: tuple[int, int]) -> torch.Tensor:
    if int(downscale) != downscale or downscale < 1:
        raise SceneError(f"downscale must be a positive integer, got {downscale}")
    H, W = size
    target = (max(1, H // int(downscale)), max(1, W // int(downscale)))
    images = []
    for p in paths:
        img = _read_image(p, background)
        images.append(img if target == (H, W) else _resize(img, target))
    return torch.stack(images)


def _nerfstudio_split(meta: dict, frames: list[dict], json_path: Path) -> tuple[list[int], list[int]]:
    names = [os.path.normpath(str(f["file_path"])) for f in frames]
    if "train_filenames" in meta:
        lookup = {n: i for i, n in enumerate(names)}

        def indices(key: str) -> list[int]:
            listed = meta.get(key, [])
            if not isinstance(listed, list):
                raise SceneError(f"{json_path}: '{key}' must be a list of file paths")
            return sorted(lookup[n] for n in map(os.path.normpath, map(str, listed)) if n in lookup)

        train = indices("train_filenames")
        val = sorted((set(indices("val_filenames")) | set(indices("test_filenames"))) - set(train))
        return train, val
    n = len(frames)
    train = _evenly_spaced(n, math.ceil(0.9 * n))
    return train, [i for i in range(n) if i not in set(train)]


def write_nerfstudio_scene(dataset: SceneDataset, folder: str | os.PathLike) -> Path:
    """Write ``dataset`` as a new nerfstudio folder (``transforms.json`` + ``images/*.png``).

    The folder must not exist or be empty; everything is written into a temporary sibling folder
    which is then renamed into place, so a failure never leaves a half-written scene. Images are
    stored as 8-bit PNG. Returns the path of ``transforms.json``.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SceneError(f"{folder} already exists and is not empty; refusing to overwrite a scene")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        follow_umask(tmp)  # mkdtemp makes 0700; a scene should be as readable as any other output
        (tmp / "images").mkdir()
        cams = dataset.cameras
        frames, names = [], []
        shared = all(
            torch.allclose(getattr(cams, k), getattr(cams, k)[:1].expand(len(cams))) for k in ("fx", "fy", "cx", "cy")
        )
        for i in range(len(dataset)):
            name = f"images/frame_{i:05d}.png"
            _write_png(dataset.images[i], tmp / name)
            frame = {"file_path": name, "transform_matrix": cams.c2w[i].tolist()}
            if not shared:
                frame.update(fl_x=cams.fx[i].item(), fl_y=cams.fy[i].item(), cx=cams.cx[i].item(), cy=cams.cy[i].item())
            frames.append(frame)
            names.append(name)
        meta = {"camera_model": "OPENCV", "w": dataset.width, "h": dataset.height}
        if shared:
            meta.update(fl_x=cams.fx[0].item(), fl_y=cams.fy[0].item(), cx=cams.cx[0].item(), cy=cams.cy[0].item())
        meta.update(k1=0.0, k2=0.0, p1=0.0, p2=0.0)
        meta["frames"] = frames
        meta["train_filenames"] = [names[i] for i in dataset.train_indices]
        meta["val_filenames"] = [names[i] for i in dataset.val_indices]
        meta["scene_box"] = dataset.scene_box.tolist()
        with open(tmp / "transforms.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "transforms.json"


# ====================================================================== Blender synthetic
def load_blender_scene(
    path: str | os.PathLike,
    split: str = "train",
    *,
    holdout_split: str | None = "val",
    downscale: int = 1,
    max_views: int | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> SceneDataset:
    """Read a Blender-synthetic scene folder.

    ``transforms_{split}.json`` gives the training views; ``transforms_{holdout_split}.json`` (if
    ``holdout_split`` is not ``None`` and the file exists) is appended as held-out views.
    ``max_views`` caps each split (evenly spaced).
    """
    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"{root}: not a folder")
    splits = [split] + ([holdout_split] if holdout_split and holdout_split != split else [])
    all_paths: list[Path] = []
    c2w, fx, all_frames, counts = [], [], [], []
    size = None
    for k, name in enumerate(splits):
        json_path = root / f"transforms_{name}.json"
        if not json_path.is_file():
            if k == 0:
                raise SceneError(f"{json_path}: no cameras (file not found)")
            continue
        meta = _read_json(json_path)
        frames = _frames(meta, json_path)
        if max_views is not None:
            if max_views < 1:
                raise SceneError(f"max_views must be >= 1, got {max_views}")
            frames = [frames[i] for i in _evenly_spaced(len(frames), max_views)]
        if "camera_angle_x" not in meta:
            raise SceneError(f"{json_path}: no 'camera_angle_x' (horizontal field of view)")
        angle = _number(meta["camera_angle_x"], "camera_angle_x", str(json_path))
        paths = [_resolve_image(root, str(f["file_path"]), json_path, ".png") for f in frames]
        split_size = _check_images(paths, json_path)
        if size is not None and split_size != size:
            raise SceneError(
                f"{json_path}: images are {split_size[0]}x{split_size[1]} but other splits are {size[0]}x{size[1]}"
            )
        size = split_size
        focal = 0.5 * size[0] / math.tan(0.5 * angle) if 0 < angle < math.pi else float("nan")
        c2w += [_matrix(f, json_path, i) for i, f in enumerate(frames)]
        fx += [focal] * len(frames)
        all_paths += paths
        all_frames += frames
        counts.append(len(frames))
        _validated_cameras(
            torch.stack(c2w[-len(frames) :]),
            focal,
            focal,
            size[0] / 2,
            size[1] / 2,
            size[0],
            size[1],
            json_path,
            frames,
        )
    W, H = size
    cameras = Cameras(torch.stack(c2w), fx, fx, W / 2.0, H / 2.0, W, H)
    n_train = counts[0]
    images = _load_images(all_paths, background, downscale, (H, W))
    return SceneDataset(
        images=images,
        cameras=cameras.scaled(downscale),
        image_paths=all_paths,
        train_indices=list(range(n_train)),
        val_indices=list(range(n_train, len(all_paths))),
        scene_box=torch.tensor(_BLENDER_BOX),
        source=root,
    )


def load_scene(path: str | os.PathLike, **kwargs) -> SceneDataset:
    """Detect the format (nerfstudio ``transforms.json`` or Blender ``transforms_train.json``) and load."""
    path = Path(path)
    if path.is_file():
        if path.name == "transforms.json":
            return load_nerfstudio_scene(path, **kwargs)
        if path.name.startswith("transforms_") and path.suffix == ".json":
            return load_blender_scene(path.parent, path.stem[len("transforms_") :], **kwargs)
        raise SceneError(f"{path}: not a transforms.json / transforms_<split>.json file")
    if not path.is_dir():
        raise SceneError(f"{path}: scene folder not found")
    if (path / "transforms.json").is_file():
        return load_nerfstudio_scene(path, **kwargs)
    if (path / "transforms_train.json").is_file():
        return load_blender_scene(path, **kwargs)
    raise SceneError(f"{path}: no cameras (neither transforms.json nor transforms_train.json found)")


# ====================================================================== bundled sample scene
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
    return F.interpolate(img[None], size=size, mode="area")


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


def sample_scene(out_dir: str | os.PathLike | None = None) -> SceneDataset:
    """The default CPU-sized sample: 24 training + 6 held-out views at 48x48."""
    return make_sample_scene(num_views=30, num_val=6, size=(48, 48), seed=0, out_dir=out_dir)


# ====================================================================== editable images (IN2N)
@dataclass
class EditableImageSet:
    """The Instruct-NeRF2NeRF dataset-update buffer.

    Holds a private copy of the original views and a separate *current* copy that edits replace one
    view at a time. The originals are never modified (and are cloned on the way in and out), and
    :meth:`save` refuses to write inside ``protected`` folders (the scene folder).

    Build with :meth:`from_scene`. Index by dataset view index.
    """

    originals: torch.Tensor = field(repr=False)
    names: list[str] = field(default_factory=list, repr=False)
    protected: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.originals.ndim != 4 or self.originals.shape[1] != 3:
            raise SceneError(f"originals must be (V, 3, H, W), got {tuple(self.originals.shape)}")
        self.originals = self.originals.detach().to("cpu", torch.float32).clone()
        self._current = self.originals.clone()
        self._edited: set[int] = set()
        if not self.names:
            self.names = [f"view_{i:05d}" for i in range(len(self))]
        if len(self.names) != len(self):
            raise SceneError(f"{len(self.names)} names for {len(self)} views")
        self.protected = [Path(p).resolve() for p in self.protected]

    @classmethod
    def from_scene(cls, scene: SceneDataset) -> EditableImageSet:
        names = [
            f"view_{i:05d}" if p is None else f"view_{i:05d}_{Path(p).stem}" for i, p in enumerate(scene.image_paths)
        ]
        protected = [scene.source] if scene.source is not None else []
        protected += sorted({Path(p).parent for p in scene.image_paths if p is not None})
        return cls(scene.images, names, protected)

    def __len__(self) -> int:
        return self.originals.shape[0]

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"view index {index} out of range for {len(self)} views")
        return index % len(self)

    @property
    def edited_indices(self) -> list[int]:
        return sorted(self._edited)

    def original(self, index: int) -> torch.Tensor:
        """A copy of the unedited view ``(3, H, W)``."""
        return self.originals[self._check_index(index)].clone()

    def current(self, index: int) -> torch.Tensor:
        """A copy of the current (edited or original) view ``(3, H, W)``."""
        return self._current[self._check_index(index)].clone()

    def current_all(self) -> torch.Tensor:
        """A copy of all current views ``(V, 3, H, W)`` (the training targets)."""
        return self._current.clone()

    def replace(self, index: int, image: torch.Tensor) -> None:
        """Set view ``index`` to ``image`` (``(3, H, W)`` or ``(1, 3, H, W)``, values in [0, 1])."""
        index = self._check_index(index)
        image = image.detach().to("cpu", torch.float32)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if tuple(image.shape) != tuple(self.originals.shape[1:]):
            expected = tuple(self.originals.shape[1:])
            raise SceneError(f"edited view {index} has shape {tuple(image.shape)}, expected {expected}")
        if not torch.isfinite(image).all():
            raise SceneError(f"edited view {index} contains NaN or inf")
        self._current[index] = image.clamp(0.0, 1.0)
        self._edited.add(index)

    def reset(self, index: int | None = None) -> None:
        """Restore one view (or all views) to the original."""
        indices = range(len(self)) if index is None else [self._check_index(index)]
        for i in indices:
            self._current[i] = self.originals[i]
            self._edited.discard(i)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the edited views as PNGs plus ``edits.json`` into ``folder`` (e.g. ``<run>/edited``).

        Refuses any folder inside a protected (scene) folder. Returns ``folder``.
        """
        folder = Path(folder)
        resolved = folder.resolve()
        for root in self.protected:
            if resolved == root or root in resolved.parents:
                raise SceneError(f"refusing to write edited images into the scene folder {root} (target {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"num_views": len(self), "edited": {}}
        for i in self.edited_indices:
            name = f"{self.names[i]}.png"
            _write_png(self._current[i], folder / name)
            manifest["edited"][str(i)] = name
        tmp = folder / ".edits.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, folder / "edits.json")
        return folder

    def restore(self, folder: str | os.PathLike) -> None:
        """Load edits written by :meth:`save` (e.g. when resuming a run)."""
        folder = Path(folder)
        manifest = _read_json(folder / "edits.json")
        if manifest.get("num_views") != len(self):
            raise SceneError(
                f"{folder / 'edits.json'} is for {manifest.get('num_views')} views, this set has {len(self)}"
            )
        for key, name in manifest.get("edited", {}).items():
            self.replace(int(key), _read_image(folder / name, (1.0, 1.0, 1.0)))
