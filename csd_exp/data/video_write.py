"""Writing clips: video files, folders of PNG frames and frame grids, all atomically.

Frames are float ``(F, 3, H, W)`` in ``[0, 1]``. Every file appears at its path only once complete
(temp file in the same folder, then rename).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from csd_exp.data.images import atomic_path, follow_umask, write_png
from csd_exp.data.video import DEFAULT_FPS

#: Output extension -> (container format, video codec) used by :func:`write_video`.
WRITE_VIDEO_EXTENSIONS = {
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}


def _to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """Float ``(F, 3, H, W)`` in [0, 1] -> uint8 ``(F, H, W, 3)``; values are clamped, NaN/inf refused."""
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must be (F, 3, H, W) or (F, 1, H, W), got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to write")
    frames = frames.detach().to("cpu", torch.float32)
    if not torch.isfinite(frames).all():
        raise ValueError("frames contain NaN or inf")
    frames = frames.expand(-1, 3, -1, -1)
    return frames.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so height and width are even (yuv420p needs even sizes)."""
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _palette_frame(frame: np.ndarray):
    """An RGB uint8 frame as a PyAV ``pal8`` frame with its own adaptive 256-colour palette."""
    import av
    from PIL import Image

    quantized = Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    rgb = np.asarray(quantized.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)  # ARGB, as PyAV expects
    palette[:, 0] = 255
    palette[: len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


def _rgb_frame(frame: np.ndarray):
    import av

    return av.VideoFrame.from_ndarray(frame, format="rgb24")


def _encode(frames: np.ndarray, target: Path, container_format: str, codec: str, fps: float, crf: int) -> None:
    """Encode uint8 ``(F, H, W, 3)`` frames into ``target`` with PyAV."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(target), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        if codec == "gif":
            stream.pix_fmt = "pal8"
            to_frame = _palette_frame
        else:
            stream.pix_fmt = "yuv420p"
            # VP9 needs a zero target bitrate to run in pure constant-quality mode.
            stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf), "b": "0"}
            to_frame = _rgb_frame
        for frame in frames:
            container.mux(stream.encode(to_frame(frame)))
        container.mux(stream.encode(None))


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = DEFAULT_FPS, *, crf: int = 18) -> Path:
    """Write float frames ``(F, 3, H, W)`` in [0, 1] to a video file, atomically.

    ``.mp4`` / ``.mov``: H.264 (libx264, yuv420p, constant quality ``crf``; 18 is visually near lossless).
    ``.webm``: VP9 at the same ``crf``. yuv420p needs even sizes, so an odd height or width is padded by
    repeating the last row / column (the file is then one pixel larger; nothing is resampled).
    ``.gif``: every frame gets its own adaptive 256-colour palette; GIF stores delays in 1/100 s, so the
    rate is rounded (24 fps is stored as 25 fps). The file appears at ``path`` only once complete.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_VIDEO_EXTENSIONS:
        raise ValueError(
            f"cannot write {path}: unsupported extension {path.suffix or 'none'!r}; "
            f"supported: {', '.join(WRITE_VIDEO_EXTENSIONS)}"
        )
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    array = _to_uint8_frames(frames)
    container_format, codec = WRITE_VIDEO_EXTENSIONS[suffix]
    if codec != "gif":
        array = _pad_to_even(array)
    with atomic_path(path) as tmp:
        _encode(array, tmp, container_format, codec, fps, crf)
    return path


def write_frames(frames: torch.Tensor, folder: str | os.PathLike, *, prefix: str = "frame_") -> list[Path]:
    """Write float frames ``(F, 3, H, W)`` in [0, 1] as ``<prefix><index:05d>.png`` files in ``folder``.

    All PNGs are first written to a hidden temp folder beside ``folder``. If ``folder`` does not exist the
    temp folder is renamed onto it in one step; otherwise the finished files are moved in one by one
    (each move is atomic; existing files of the same name are replaced). ``read_video(folder)`` reads them
    back in order.
    """
    folder = Path(folder)
    array = _to_uint8_frames(frames)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        follow_umask(staging)
        names = [f"{prefix}{i:05d}.png" for i in range(len(array))]
        for name, image in zip(names, array):
            write_png(image, staging / name)
        if folder.exists():
            for name in names:
                os.replace(staging / name, folder / name)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]


def frame_grid(
    frames: torch.Tensor,
    rows: int | None = None,
    cols: int | None = None,
    *,
    padding: int = 0,
    pad_value: float = 1.0,
) -> torch.Tensor:
    """Tile frames ``(F, C, H, W)`` row by row into one image ``(C, rows*H + (rows-1)*padding, ...)``.

    With neither ``rows`` nor ``cols`` the grid is as square as possible (``cols = ceil(sqrt(F))``); with
    one given the other is derived. Empty cells and the gaps between cells are ``pad_value``. The official
    code shows 24 frames as ``rows=2, cols=12``.
    """
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (F, C, H, W) tensor, got {tuple(frames.shape)}")
    count, channels, height, width = frames.shape
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(count))
    if rows is None:
        rows = math.ceil(count / cols)
    elif cols is None:
        cols = math.ceil(count / rows)
    if rows < 1 or cols < 1 or rows * cols < count:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {count} frames")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    step_h, step_w = height + padding, width + padding
    grid = frames.new_full((channels, rows * step_h - padding, cols * step_w - padding), pad_value)
    for index in range(count):
        top, left = (index // cols) * step_h, (index % cols) * step_w
        grid[:, top : top + height, left : left + width] = frames[index]
    return grid


def save_frame_grid(
    frames: torch.Tensor,
    path: str | os.PathLike,
    rows: int | None = None,
    cols: int | None = None,
    *,
    padding: int = 0,
    pad_value: float = 1.0,
) -> Path:
    """Save :func:`frame_grid` of ``frames`` as a PNG at ``path``, atomically. Returns ``path``."""
    path = Path(path)
    grid = frame_grid(frames, rows, cols, padding=padding, pad_value=pad_value)
    image = _to_uint8_frames(grid[None])[0]
    with atomic_path(path) as tmp:
        write_png(image, tmp)
    return path
