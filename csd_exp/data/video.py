"""Reading video clips: video files and folders of frames, with a memory guard.

Frames are a float tensor ``(F, 3, H, W)`` (frames, RGB channels, height, width) in ``[0, 1]``; sizes
are always ``(height, width)``. Writing lives in :mod:`csd_exp.data.video_write`, resizing in
:mod:`csd_exp.data.resample`, the synthetic sample clip in :mod:`csd_exp.data.sample_clip`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from csd_exp.arguments import checked
from csd_exp.data.images import read_image_size, read_rgb

if TYPE_CHECKING:
    from csd_exp.schema.fields import NonNegativeInt, PositiveFloat, PositiveInt

#: Container formats decoded with PyAV (through imageio's ``pyav`` plugin).
_AV_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")
#: Every file extension :func:`read_video` accepts (GIF is decoded with Pillow).
READ_VIDEO_EXTENSIONS = (*_AV_EXTENSIONS, ".gif")
#: Image extensions recognised as frames inside a folder.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# Bytes held per decoded value while reading: the uint8 decode buffer plus the float32 output.
_READ_BYTES_PER_VALUE = 1 + 4
#: Frames per second assumed for a folder of frames (the official code writes its mp4s at 10 fps).
DEFAULT_FPS = 10.0


@checked
@dataclass
class VideoClip:
    """A clip held in memory.

    Attributes:
        frames: float32 tensor ``(F, 3, H, W)``, RGB in ``[0, 1]``.
        fps: playback rate of *these* frames. When frames were selected with ``stride`` > 1 it is the
            source rate divided by the stride, so the clip keeps its real-time duration.
        source: where the frames came from (a file or folder path, or ``"skimage:<photo>"`` for
            synthetic clips).
        frame_names: one name per frame: the file name for a folder of frames, ``frame_<index>`` (index
            in the source, zero-padded to 5 digits) for a video file or a synthetic clip.
    """

    frames: torch.Tensor
    fps: PositiveFloat
    source: str
    frame_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(f"VideoClip.frames must be (F, 3, H, W), got {tuple(self.frames.shape)}")
        if not self.frames.is_floating_point():
            raise ValueError(f"VideoClip.frames must be a float tensor in [0, 1], got {self.frames.dtype}")
        if not self.frame_names:
            self.frame_names = [_frame_name(i) for i in range(self.num_frames)]
        if len(self.frame_names) != self.num_frames:
            raise ValueError(f"VideoClip has {self.num_frames} frames but {len(self.frame_names)} frame names")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame."""
        return self.frames.shape[2], self.frames.shape[3]


def _frame_name(index: int) -> str:
    return f"frame_{index:05d}"


# ---------------------------------------------------------------------------------------------------
# Memory guard
# ---------------------------------------------------------------------------------------------------


def default_memory_budget() -> int:
    """Half the RAM available now, in bytes (psutil when installed, else ``os.sysconf``)."""
    try:
        import psutil
    except ImportError:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        available = psutil.virtual_memory().available
    return int(available) // 2


def check_fits_in_memory(
    num_frames: int,
    height: int,
    width: int,
    channels: int = 3,
    budget_bytes: int | None = None,
    *,
    bytes_per_value: int = 4,
) -> int:
    """Raise ``ValueError`` if ``num_frames`` frames do not fit in the memory budget.

    Args:
        num_frames, height, width, channels: the clip's shape.
        budget_bytes: bytes allowed; ``None`` means :func:`default_memory_budget` (half the available RAM).
        bytes_per_value: bytes held per value (4 for float32 frames).

    Returns:
        The number of bytes the clip needs.

    Raises:
        ValueError: naming the number of frames that would fit.
    """
    budget = default_memory_budget() if budget_bytes is None else int(budget_bytes)
    per_frame = channels * height * width * bytes_per_value
    needed = num_frames * per_frame
    if needed > budget:
        fits = budget // per_frame if per_frame > 0 else 0
        raise ValueError(
            f"{num_frames} frames of {channels}x{height}x{width} need {needed / 2**20:.1f} MiB "
            f"({bytes_per_value} bytes per value) but the memory budget is {budget / 2**20:.1f} MiB; "
            f"at most {fits} frames fit. Read fewer frames (max_frames / stride) or pass a larger budget."
        )
    return needed


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


@checked
def read_video(
    path: str | os.PathLike,
    *,
    start: NonNegativeInt = 0,
    stride: PositiveInt = 1,
    max_frames: PositiveInt | None = None,
    min_frames: PositiveInt = 1,
    fps: PositiveFloat | None = None,
    memory_budget_bytes: int | None = None,
) -> VideoClip:
    """Read a video file or a folder of frames into a :class:`VideoClip`.

    Supported: ``.mp4 .mov .webm .mkv`` (PyAV through imageio v3), ``.gif`` (Pillow), or a folder whose
    ``.png .jpg .jpeg .webp`` files are the frames, in natural order of their names (``f2`` before
    ``f10``; other files and sub-folders are ignored). Frames are converted to RGB (alpha dropped).

    Args:
        path: file or folder.
        start: index of the first frame kept.
        stride: keep every ``stride``-th frame from ``start``.
        max_frames: keep at most this many frames (``None``: all).
        min_frames: raise if fewer frames than this are selected (2 for anything that needs motion).
        fps: playback rate for a folder of frames (default 10); ignored for video files, which carry theirs
            (a GIF's rate comes from its first frame's delay).
        memory_budget_bytes: refuse clips larger than this (default: half the available RAM).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unsupported extension, unreadable/corrupt file, empty folder, frames of different
            sizes, ``start`` beyond the clip, too few frames, or a clip that does not fit in memory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    budget = default_memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    if path.is_dir():
        clip = _read_frame_folder(path, start, stride, max_frames, fps, budget)
    elif path.suffix.lower() in READ_VIDEO_EXTENSIONS:
        clip = _read_video_file(path, start, stride, max_frames, budget)
    else:
        raise ValueError(
            f"unsupported video file {path} (extension {path.suffix or 'none'!r}); supported: video "
            f"files {', '.join(READ_VIDEO_EXTENSIONS)} or a folder of {', '.join(FRAME_EXTENSIONS)} frames"
        )
    if clip.num_frames < min_frames:
        raise ValueError(
            f"{path} gives {clip.num_frames} frame(s) with start={start}, stride={stride}, "
            f"max_frames={max_frames}, but at least {min_frames} are required"
        )
    return clip


def _selected_indices(num_available: int, start: int, stride: int, max_frames: int | None) -> range:
    indices = range(start, num_available, stride)
    return indices if max_frames is None else indices[:max_frames]


def _start_beyond_end(path: Path, start: int, num_available: int) -> ValueError:
    return ValueError(f"start={start} is beyond the end of {path}, which has {num_available} frame(s)")


def _natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``f2.png`` < ``f10.png``."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts)


def _list_frame_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
    ]
    if not files:
        expected = ", ".join(FRAME_EXTENSIONS)
        raise ValueError(f"no frames in folder {folder}: expected files ending in {expected}")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_frame_folder(
    folder: Path, start: int, stride: int, max_frames: int | None, fps: float | None, budget: int
) -> VideoClip:
    files = _list_frame_files(folder)
    if start >= len(files):
        raise _start_beyond_end(folder, start, len(files))
    size = read_image_size(files[0], what="frame")
    for file in files[1:]:
        other = read_image_size(file, what="frame")
        if other != size:
            raise ValueError(
                f"frames in {folder} differ in size: {file.name} is {other[0]}x{other[1]} (HxW) but "
                f"the first frame {files[0].name} is {size[0]}x{size[1]}"
            )
    chosen = [files[i] for i in _selected_indices(len(files), start, stride, max_frames)]
    check_fits_in_memory(len(chosen), *size, budget_bytes=budget, bytes_per_value=_READ_BYTES_PER_VALUE)
    # Each frame is read straight into the clip tensor, so only one decoded frame is held at a time.
    frames = torch.empty(len(chosen), 3, *size, dtype=torch.float32)
    for i, file in enumerate(chosen):
        frames[i] = torch.from_numpy(read_rgb(file)).permute(2, 0, 1)
    source_fps = DEFAULT_FPS if fps is None else float(fps)
    return VideoClip(frames, source_fps / stride, str(folder), [file.name for file in chosen])


def _to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Decoded frame (gray, gray+alpha, RGB or RGBA) as ``(H, W, 3)`` uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] in (1, 2):
        array = np.repeat(array[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3]).astype(np.uint8, copy=False)


def _stack_uint8(frames: Sequence[np.ndarray], source: Path) -> torch.Tensor:
    """``(H, W, 3)`` uint8 arrays -> float32 ``(F, 3, H, W)`` in [0, 1], filled frame by frame."""
    height, width = frames[0].shape[:2]
    out = torch.empty(len(frames), 3, height, width, dtype=torch.float32)
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            raise ValueError(
                f"frame {i} of {source} is {frame.shape[0]}x{frame.shape[1]} but frame 0 is {height}x{width}"
            )
        out[i] = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)
    return out


def _decode_errors() -> tuple[type[BaseException], ...]:
    import av

    # imageio reports files it cannot open as OSError; PyAV decode errors derive from FFmpegError
    # (which is also a ValueError); Pillow reports broken images as OSError.
    return (OSError, ValueError, av.error.FFmpegError)


def _video_plugin(path: Path) -> tuple[str, dict]:
    if path.suffix.lower() == ".gif":
        return "pillow", {"mode": "RGB"}
    return "pyav", {"format": "rgb24"}


def _probe_video(path: Path) -> tuple[int, float]:
    """``(frame count or 0 when unknown, fps)`` of a video file."""
    import imageio.v3 as iio

    plugin, _ = _video_plugin(path)
    try:
        if plugin == "pillow":
            count = iio.improps(path, plugin="pillow", index=None).n_images
            duration_ms = iio.immeta(path, plugin="pillow", index=0).get("duration") or 0
            fps = 1000.0 / duration_ms if duration_ms > 0 else DEFAULT_FPS
        else:
            count = iio.improps(path, plugin="pyav").n_images or 0
            fps = float(iio.immeta(path, plugin="pyav").get("fps") or DEFAULT_FPS)
    except _decode_errors() as err:
        raise ValueError(
            f"cannot read video file {path} (corrupt, or a codec FFmpeg cannot decode; supported "
            f"containers: {', '.join(READ_VIDEO_EXTENSIONS)}): {err}"
        ) from err
    return int(count), fps


def _iter_decoded(path: Path) -> Iterator[np.ndarray]:
    """Decoded frames of a video file; decoding errors become ``ValueError`` naming the file."""
    import imageio.v3 as iio

    plugin, kwargs = _video_plugin(path)
    iterator = iio.imiter(path, plugin=plugin, **kwargs)
    try:
        yield from iterator
    except _decode_errors() as err:
        raise ValueError(f"cannot decode video file {path} (corrupt or unsupported codec): {err}") from err
    finally:
        iterator.close()


def _read_video_file(path: Path, start: int, stride: int, max_frames: int | None, budget: int) -> VideoClip:
    count, source_fps = _probe_video(path)
    if count and start >= count:
        raise _start_beyond_end(path, start, count)
    kept: list[np.ndarray] = []
    names: list[str] = []
    index = -1
    for index, frame in enumerate(_iter_decoded(path)):
        if index < start or (index - start) % stride:
            continue
        frame = _to_rgb_uint8(frame)
        # The budget is checked against the expected total up front when the count is known, and
        # frame by frame otherwise, so an oversized clip is refused before it exhausts memory.
        expected = len(_selected_indices(count, start, stride, max_frames)) if count else len(kept) + 1
        check_fits_in_memory(
            max(expected, len(kept) + 1),
            *frame.shape[:2],
            budget_bytes=budget,
            bytes_per_value=_READ_BYTES_PER_VALUE,
        )
        kept.append(frame)
        names.append(_frame_name(index))
        if max_frames is not None and len(kept) == max_frames:
            break
    if not kept:
        if index < 0:
            raise ValueError(f"video file {path} contains no frames")
        raise _start_beyond_end(path, start, index + 1)
    return VideoClip(_stack_uint8(kept, path), source_fps / stride, str(path), names)
