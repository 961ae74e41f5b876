"""The synthetic sample clip: a crop window moving over a bundled photo, with its exact motion.

Real clips cannot be downloaded in our environment, so :func:`sample_clip` synthesises one from a photo
bundled with scikit-image; its motion is known exactly (:class:`ClipMotion`).

Conventions
-----------
* **Pixel coordinates** put pixel centres on integers: ``x`` runs along the width from ``0`` (centre of the
  first column) to ``W - 1``, ``y`` along the height from ``0`` to ``H - 1``. ``grid_sample`` is therefore
  always called with ``align_corners=True``.
* **Flow** is a tensor ``(..., 2, H, W)`` in pixels; channel 0 is the ``x`` (width) displacement, channel 1
  the ``y`` (height) displacement. It is a *backward* flow: ``flow[i]`` maps each pixel ``p`` of frame
  ``i + 1`` to its position ``p + flow[i](p)`` in frame ``i``, so ``warp_frame(frames[i], flow[i])``
  reproduces ``frames[i + 1]`` wherever ``valid[i]`` is true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from csd_exp.data.resample import resize_frames
from csd_exp.data.samples import load_photo
from csd_exp.data.video import DEFAULT_FPS, VideoClip


@dataclass
class ClipMotion:
    """Exact motion of a synthetic clip with ``F`` frames of size ``(h, w)``.

    Attributes:
        flow: ``(F - 1, 2, h, w)`` backward flow in pixels, channel 0 = x, channel 1 = y. Pixel ``p`` of
            frame ``i + 1`` shows the same scene point as position ``p + flow[i](p)`` of frame ``i``.
        valid: ``(F - 1, 1, h, w)`` bool, true where ``p + flow[i](p)`` lies inside frame ``i``.
        source_xy: ``(F, 2, h, w)`` photo pixel coordinates ``(x, y)`` each frame pixel was sampled at.
    """

    flow: torch.Tensor
    valid: torch.Tensor
    source_xy: torch.Tensor


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _frame_coordinates(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(2, H, W)`` pixel coordinates ``(x, y)`` of a frame, centred on the frame centre."""
    ys = torch.arange(height, dtype=dtype) - (height - 1) / 2
    xs = torch.arange(width, dtype=dtype) - (width - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])


def _pixel_to_grid(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates ``(N, 2, H', W')`` -> ``grid_sample`` grid ``(N, H', W', 2)``, align_corners=True."""
    scale = xy.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)]).view(1, 2, 1, 1)
    return (xy * scale - 1.0).permute(0, 2, 3, 1)


def make_pan_clip(
    image: str | torch.Tensor,
    num_frames: int,
    frame_size: int | Sequence[int],
    pixels_per_frame: Sequence[float] = (1.0, 0.0),
    zoom_per_frame: float = 1.0,
    *,
    start_center: Sequence[float] | None = None,
    fps: float = DEFAULT_FPS,
) -> tuple[VideoClip, ClipMotion]:
    """A clip made by moving a crop window over a photo, and its exact motion.

    Geometry (photo pixel coordinates, pixel centres on integers): frame ``i`` samples photo point
    ``c_i + (p - p_c) / s_i`` at frame pixel ``p``, where ``p_c`` is the frame centre, the window centre
    moves ``c_i = c_0 + i * pixels_per_frame`` (photo pixels, ``(dx, dy)``) and the scale grows
    ``s_i = zoom_per_frame ** i`` (> 1 zooms in). Every frame is sampled from the float photo with
    ``grid_sample`` (bilinear) at those exact sub-pixel positions, so the motion between frames is known
    exactly: the photo content moves by ``-pixels_per_frame * s_i`` per frame, and the backward flow is
    ``flow[i](p) = s_i * pixels_per_frame + (1 / zoom_per_frame - 1) * (p - p_c)``.
    Warping frame ``i`` with it matches frame ``i + 1`` exactly for integer pans, and up to bilinear
    re-interpolation error for sub-pixel pans and zooms (``ClipMotion.source_xy`` warps exactly in every
    case). Zooming out (< 1) samples the photo more sparsely than its pixels and may alias.

    Args:
        image: a name in :data:`BUNDLED_PHOTOS` or a float ``(3, H, W)`` tensor in [0, 1].
        num_frames: ``F`` >= 2.
        frame_size: ``(height, width)`` or an int for square frames.
        pixels_per_frame: window motion ``(dx, dy)`` in photo pixels per frame.
        zoom_per_frame: scale factor between consecutive frames.
        start_center: ``c_0`` as ``(x, y)``; default puts the middle of the path at the photo centre.
        fps: playback rate stored in the clip.

    Raises:
        ValueError: if any window leaves the photo (every frame pixel must show real photo content).
    """
    photo = load_photo(image) if isinstance(image, str) else image
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(photo.shape)}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if not zoom_per_frame > 0:
        raise ValueError(f"zoom_per_frame must be positive, got {zoom_per_frame}")
    height, width = _as_size(frame_size)
    photo = photo.to(torch.float64)
    photo_h, photo_w = photo.shape[1:]
    step = torch.tensor([float(v) for v in pixels_per_frame], dtype=torch.float64).view(1, 2, 1, 1)
    if start_center is None:
        center0 = torch.tensor([(photo_w - 1) / 2, (photo_h - 1) / 2], dtype=torch.float64).view(1, 2, 1, 1)
        center0 = center0 - (num_frames - 1) / 2 * step
    else:
        center0 = torch.tensor([float(v) for v in start_center], dtype=torch.float64).view(1, 2, 1, 1)

    index = torch.arange(num_frames, dtype=torch.float64).view(-1, 1, 1, 1)
    scales = float(zoom_per_frame) ** index
    offsets = _frame_coordinates(height, width, torch.float64)[None]
    source_xy = center0 + index * step + offsets / scales  # (F, 2, h, w)
    _check_inside_photo(source_xy, photo_h, photo_w)

    grid = _pixel_to_grid(source_xy, photo_h, photo_w)
    frames = F.grid_sample(
        photo[None].expand(num_frames, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    flow = scales[:-1] * step + (1.0 / zoom_per_frame - 1.0) * offsets
    target = offsets + flow  # where each pixel of frame i + 1 lands in frame i, centred coordinates
    half = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64).view(1, 2, 1, 1)
    eps = 1e-6
    valid = (target.abs() <= half + eps).all(dim=1, keepdim=True)
    source = f"skimage:{image}" if isinstance(image, str) else "tensor"
    clip = VideoClip(frames.to(torch.float32).clamp_(0, 1), float(fps), source)
    motion = ClipMotion(flow.to(torch.float32), valid, source_xy.to(torch.float32))
    return clip, motion


def _check_inside_photo(source_xy: torch.Tensor, photo_h: int, photo_w: int) -> None:
    eps = 1e-6
    xs, ys = source_xy[:, 0], source_xy[:, 1]
    outside = (xs < -eps) | (xs > photo_w - 1 + eps) | (ys < -eps) | (ys > photo_h - 1 + eps)
    per_frame = outside.flatten(1).any(dim=1)
    if per_frame.any():
        first = int(per_frame.nonzero()[0])
        raise ValueError(
            f"the crop window of frame {first} leaves the {photo_h}x{photo_w} photo (x in "
            f"[{float(xs[first].min()):.1f}, {float(xs[first].max()):.1f}], y in "
            f"[{float(ys[first].min()):.1f}, {float(ys[first].max()):.1f}]); only frames 0..{first - 1} fit: "
            "use fewer frames, slower motion, a smaller frame_size or a larger photo"
        )


def warp_frame(frame: torch.Tensor, flow: torch.Tensor, *, padding_mode: str = "border") -> torch.Tensor:
    """Backward-warp: ``out(p) = frame(p + flow(p))``, bilinear.

    Args:
        frame: ``(C, H, W)`` or ``(N, C, H, W)``.
        flow: ``(2, H, W)`` or ``(N, 2, H, W)`` in pixels (channel 0 = x, 1 = y), same ``H, W`` as ``frame``.
        padding_mode: what a sample outside the frame reads: ``"border"`` (default) the nearest edge
            pixel, ``"zeros"`` zero, ``"reflection"`` the mirrored pixel. Such pixels are outside
            :attr:`ClipMotion.valid` and carry no information either way.
    """
    single = frame.ndim == 3
    frames = frame[None] if single else frame
    flows = flow[None] if flow.ndim == 3 else flow
    if frames.ndim != 4 or flows.ndim != 4 or flows.shape[1] != 2 or flows.shape[-2:] != frames.shape[-2:]:
        raise ValueError(
            f"need frame (N, C, H, W) and flow (N, 2, H, W) of the same size, got {tuple(frame.shape)} "
            f"and {tuple(flow.shape)}"
        )
    height, width = frames.shape[-2:]
    xy = _frame_coordinates(height, width, flows.dtype)[None] + torch.tensor(
        [(width - 1) / 2, (height - 1) / 2], dtype=flows.dtype
    ).view(1, 2, 1, 1)
    grid = _pixel_to_grid(xy + flows, height, width).to(frames.dtype)
    if grid.shape[0] != frames.shape[0]:
        grid = grid.expand(frames.shape[0], -1, -1, -1)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out[0] if single else out


#: Presets of :func:`sample_clip`: window motion ``(dx, dy)`` in photo pixels per frame and zoom per frame.
SAMPLE_CLIPS = {
    "pan": {"pixels_per_frame": (1.5, 0.5), "zoom_per_frame": 1.0},
    "zoom": {"pixels_per_frame": (0.5, 0.25), "zoom_per_frame": 1.02},
}


def sample_clip(
    name: str = "pan",
    *,
    num_frames: int = 12,
    frame_size: int | Sequence[int] = 64,
    photo: str = "astronaut",
    photo_size: int | None = None,
    fps: float = DEFAULT_FPS,
) -> tuple[VideoClip, ClipMotion]:
    """The default synthetic sample clip: 12 frames of 64×64 panning over scikit-image's ``astronaut``.

    The photo is first resized (antialiased bicubic) so its shorter side is ``photo_size`` pixels
    (default: twice the larger frame side, i.e. 128 for 64×64 frames), so a frame shows a quarter of the
    photo and neighbouring pixels are smooth enough for sub-pixel warping. Presets (:data:`SAMPLE_CLIPS`):
    ``"pan"`` moves the window by (1.5, 0.5) px per frame; ``"zoom"`` by (0.5, 0.25) px while zooming in
    2 % per frame. Deterministic: no randomness is involved.
    """
    if name not in SAMPLE_CLIPS:
        raise ValueError(f"unknown sample clip {name!r}; choose one of {', '.join(SAMPLE_CLIPS)}")
    height, width = _as_size(frame_size)
    short_side = 2 * max(height, width) if photo_size is None else int(photo_size)
    image = load_photo(photo)
    image_h, image_w = image.shape[1:]
    ratio = short_side / min(image_h, image_w)
    image = resize_frames(image, round(image_h * ratio), round(image_w * ratio))
    clip, motion = make_pan_clip(image, num_frames, (height, width), fps=fps, **SAMPLE_CLIPS[name])
    clip.source = f"skimage:{photo} ({name})"
    return clip, motion
