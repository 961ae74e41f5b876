"""Scene folders on disk: nerfstudio (read and write) and Blender synthetic (read).

The formats are described in :mod:`csd_exp.data.scene`. Loaders only ever read the scene folder;
:func:`write_nerfstudio_scene` writes a *new* folder atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from csd_exp.data.cameras import CameraError, Cameras
from csd_exp.data.images import follow_umask, save_image
from csd_exp.data.resample import resize_frames
from csd_exp.data.scene import (
    SceneDataset,
    SceneError,
    estimate_scene_box,
    read_json,
    read_scene_image,
    scene_image_size,
)

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}
_BLENDER_BOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


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
        height, width = scene_image_size(p)
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
    meta = read_json(json_path)
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
        img = read_scene_image(p, background)
        images.append(img if target == (H, W) else resize_frames(img, *target, mode="area"))
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
            save_image(dataset.images[i], tmp / name)
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
    c2w, fx, counts = [], [], []
    size = None
    for k, name in enumerate(splits):
        json_path = root / f"transforms_{name}.json"
        if not json_path.is_file():
            if k == 0:
                raise SceneError(f"{json_path}: no cameras (file not found)")
            continue
        meta = read_json(json_path)
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
