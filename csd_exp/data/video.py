"""Video clips for CSD video editing: read, resize, write, and a synthetic sample clip with exact motion.

Conventions used throughout this module
---------------------------------------
* **Frames** are a float tensor of shape ``(F, 3, H, W)`` (frames, RGB channels, height, width) with values
  in ``[0, 1]``. Sizes are always given as ``(height, width)``.
* **Pixel coordinates** put pixel centres on integers: ``x`` runs along the width from ``0`` (centre of the
  first column) to ``W - 1``, ``y`` along the height from ``0`` to ``H - 1``. ``grid_sample`` is therefore
  always called with ``align_corners=True``.
* **Flow** is a tensor ``(..., 2, H, W)`` in pixels; channel 0 is the ``x`` (width) displacement, channel 1
  the ``y`` (height) displacement. It is a *backward* flow: ``flow[i]`` maps each pixel ``p`` of frame
  ``i + 1`` to its position ``p + flow[i](p)`` in frame ``i``, so ``warp_frame(frames[i], flow[i])``
  reproduces ``frames[i + 1]`` wherever ``valid[i]`` is true.

The paper's video setting ([P] §4.2, notes §2.3) resizes every frame to 512×512, edits, and resizes the
result back to the source size: see :func:`resize_frames` and :func:`restore_size`. Real clips cannot be
downloaded in our environment, so :func:`sample_clip` synthesises one from a photo bundled with
scikit-image by moving a crop window across it; its motion is known exactly (:class:`ClipMotion`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BUNDLED_PHOTOS",
    "FRAME_EXTENSIONS",
    "READ_VIDEO_EXTENSIONS",
    "SAMPLE_CLIPS",
    "WRITE_VIDEO_EXTENSIONS",
    "ClipMotion",
    "VideoClip",
    "check_fits_in_memory",
    "current_umask",
    "default_memory_budget",
    "follow_umask",
    "frame_grid",
    "load_photo",
    "make_pan_clip",
    "read_image_size",
    "read_rgb",
    "read_video",
    "resize_frames",
    "restore_size",
    "sample_clip",
    "save_frame_grid",
    "set_max_image_pixels",
    "warp_frame",
    "write_frames",
    "write_video",
]

#: Container formats decoded with PyAV (through imageio's ``pyav`` plugin).
_AV_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")
#: Every file extension :func:`read_video` accepts (GIF is decoded with Pillow).
READ_VIDEO_EXTENSIONS = (*_AV_EXTENSIONS, ".gif")
#: Image extensions recognised as frames inside a folder.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
#: Output extension -> (container format, video codec) used by :func:`write_video`.
WRITE_VIDEO_EXTENSIONS = {
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
#: Photos that ship inside the scikit-image wheel (no download) and work as clip sources.
BUNDLED_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")

# Bytes held per decoded value while reading: the uint8 decode buffer plus the float32 output.
_READ_BYTES_PER_VALUE = 1 + 4
# Frames per second assumed for a folder of frames (the official code writes its mp4s at 10 fps).
_DEFAULT_FPS = 10.0


# ---------------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------------


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
    fps: float
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
        if not self.fps > 0:
            raise ValueError(f"VideoClip.fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame."""
        return self.frames.shape[2], self.frames.shape[3]


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


def read_video(
    path: str | os.PathLike,
    *,
    start: int = 0,
    stride: int = 1,
    max_frames: int | None = None,
    min_frames: int = 1,
    fps: float | None = None,
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
    _check_selection_args(start, stride, max_frames, min_frames)
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


def _check_selection_args(start: int, stride: int, max_frames: int | None, min_frames: int) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")


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


# Pillow modes read as 8-bit (their channels are 0..255) and converted to RGB(A) by Pillow itself:
# "1" becomes 0/255, palettes are looked up (with their transparency), CMYK uses (1 - C)(1 - K) and
# YCbCr the JPEG (full-range BT.601) matrix.
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
# 16-bit grayscale in every byte order Pillow names.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# What each non-8-bit mode's full scale is: "I" (32-bit int) is how Pillow has long represented 16-bit
# grayscale, so it is read as 16-bit and refused if a value leaves 0..65535; "F" is taken as-is.
_FULL_SCALE = {**dict.fromkeys(_SIXTEEN_BIT_MODES, 65535.0), "I": 65535.0, "F": 1.0}
_MAX_PIXELS_KEY = "data.max_image_pixels"


def set_max_image_pixels(pixels: int | None) -> int | None:
    """Set the decompression-bomb guard: images with more than ``pixels`` pixels are refused before
    decoding (``None``: no limit). This is ``PIL.Image.MAX_IMAGE_PIXELS``; returns the previous value."""
    from PIL import Image

    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
        raise ValueError(f"{_MAX_PIXELS_KEY} must be a positive integer or null, got {pixels!r}")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    return previous


def _too_many_pixels(path: Path, what: str, err: Exception) -> ValueError:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = found.group(1) if found else "too many"
    return ValueError(
        f"{what} {path} has {pixels} pixels, over the limit of {Image.MAX_IMAGE_PIXELS} (a guard against "
        f"decompression bombs); if the file is trusted, set {_MAX_PIXELS_KEY}={pixels} (or null for no limit)"
    )


def _open_image(path: Path, what: str):
    """``PIL.Image.open`` (header only) with bombs and unreadable files as ``ValueError`` naming the file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow only warns between 1x and 2x its limit; a warning is easy to miss, so refuse there too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_many_pixels(path, what, err) from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from err


def read_image_size(path: str | os.PathLike, *, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header without decoding the pixels."""
    with _open_image(Path(path), what) as image:
        width, height = image.size
    return height, width


def _working_image(image, alpha: bool, path: Path, what: str):
    """``(image, full_scale)``: 8-bit data as RGB(A), deeper data as one float "F" channel."""
    if image.mode in _EIGHT_BIT_MODES:
        target = "RGBA" if alpha else "RGB"
        return (image if image.mode == target else image.convert(target)), 255.0
    if image.mode in _FULL_SCALE:
        return (image if image.mode == "F" else image.convert("F")), _FULL_SCALE[image.mode]
    supported = ", ".join((*_EIGHT_BIT_MODES, *_FULL_SCALE))
    raise ValueError(
        f"cannot read {what} {path}: unsupported pixel mode {image.mode!r}; convert it to RGB (supported: {supported})"
    )


def _check_range(array: np.ndarray, scale: float, mode: str, path: Path, what: str) -> None:
    """Refuse values outside the mode's range: silently clipping them would change the picture."""
    if array.size == 0 or (np.isfinite(array).all() and array.min() >= 0 and array.max() <= scale):
        return
    bound = "[0, 1]" if mode == "F" else "0..65535 (16-bit)"
    raise ValueError(
        f"cannot read {what} {path}: mode {mode!r} pixels must lie in {bound}, found "
        f"{np.nanmin(array):g}..{np.nanmax(array):g} (or NaN/inf); save it as 8- or 16-bit"
    )


def _reduce(image, min_size: tuple[int, int] | None):
    """Box-shrink by the largest integer factor that keeps at least ``min_size`` ``(h, w)``."""
    if min_size is None:
        return image
    factor = min(image.size[0] // max(1, min_size[1]), image.size[1] // max(1, min_size[0]))
    # reduce() rounds the output size up, so a factor <= W // w keeps the width >= w (same for h).
    return image.reduce(factor) if factor >= 2 else image


def _to_channels(array: np.ndarray, alpha: bool) -> np.ndarray:
    """``(H, W)`` gray or ``(H, W, 3|4)`` -> ``(H, W, 3)``, or ``(H, W, 4)`` with ``alpha``."""
    if array.ndim == 3:
        return array
    channels = [array] * 3 + ([np.ones_like(array)] if alpha else [])
    return np.stack(channels, axis=-1)


def read_rgb(
    path: str | os.PathLike,
    *,
    what: str = "frame",
    alpha: bool = False,
    min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """An image file as float32 ``(H, W, 3)`` RGB in [0, 1] (``(H, W, 4)`` RGBA with ``alpha``).

    The one image reader of the project. Values are scaled by the format's real range: 8-bit data by
    255 (modes ``1 L LA P PA RGB RGBA RGBX CMYK YCbCr``), 16-bit grayscale (``I;16``, ``I;16B``, ...) and
    32-bit integer ``I`` by 65535 (``I`` outside 0..65535 is refused), float ``F`` as-is (outside [0, 1]
    is refused). Pillow reduces 16-bit RGB(A) PNGs to their high byte, so those read within 1/257 of
    ``value / 65535``. Without ``alpha`` the alpha channel is dropped; with it, images without one get 1.

    Args:
        path: the image file.
        what: what the file is to the user (a frame, an image), used in error messages.
        alpha: return RGBA.
        min_size: the smallest ``(h, w)`` the caller needs (it resizes afterwards). JPEGs are then
            decoded at 1/2, 1/4 or 1/8 scale and other images box-shrunk by an integer factor, so the
            result is the smallest such size that is still at least ``min_size``.

    Raises:
        ValueError: naming the file: unreadable, unsupported mode, values out of range, or more pixels
            than :func:`set_max_image_pixels` allows.
    """
    path = Path(path)
    with _open_image(path, what) as image:
        if min_size is not None:
            image.draft(None, (max(1, min_size[1]), max(1, min_size[0])))  # JPEG only; no-op elsewhere
        try:
            image.load()
        except (OSError, ValueError) as err:  # truncated or corrupt data
            raise ValueError(f"cannot read {what} {path}: {err}") from err
        working, scale = _working_image(image, alpha, path, what)
        array = np.asarray(_reduce(working, min_size), dtype=np.float32)
    if scale != 255.0:
        _check_range(array, scale, image.mode, path, what)
    return _to_channels(array / np.float32(scale), alpha)


def current_umask() -> int:
    """The process umask, read from ``/proc`` where possible (setting it to read it races with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a ``tempfile`` file (0600) or folder (0700) the mode a plain ``open`` / ``mkdir`` would:
    ``0666`` / ``0777`` minus the umask, so collaborators on a shared machine can read outputs."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


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
    source_fps = _DEFAULT_FPS if fps is None else float(fps)
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
            fps = 1000.0 / duration_ms if duration_ms > 0 else _DEFAULT_FPS
        else:
            count = iio.improps(path, plugin="pyav").n_images or 0
            fps = float(iio.immeta(path, plugin="pyav").get("fps") or _DEFAULT_FPS)
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


# ---------------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------------


def resize_frames(frames: torch.Tensor, height: int, width: int, *, mode: str = "bicubic") -> torch.Tensor:
    """Resize ``(F, C, H, W)`` (or ``(C, H, W)``) frames to ``(height, width)``.

    Antialiased when shrinking (``F.interpolate(antialias=True)``); ``mode`` is ``"bicubic"`` (default)
    or ``"bilinear"``. Bicubic overshoot is clamped back into ``[0, 1]``. The aspect ratio is not kept:
    the paper resizes every video frame to 512×512 and back (notes §2.3).
    """
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    single = frames.ndim == 3
    batch = frames[None] if single else frames
    if batch.ndim != 4:
        raise ValueError(f"frames must be (F, C, H, W) or (C, H, W), got {tuple(frames.shape)}")
    if tuple(batch.shape[-2:]) == (height, width):
        out = batch.clone()
    else:
        out = F.interpolate(batch, size=(height, width), mode=mode, align_corners=False, antialias=True)
        out = out.clamp_(0.0, 1.0)
    return out[0] if single else out


def restore_size(frames: torch.Tensor, original_hw: tuple[int, int], *, mode: str = "bicubic") -> torch.Tensor:
    """Resize frames back to their source ``(height, width)``, e.g. ``clip.size`` before editing."""
    height, width = original_hw
    return resize_frames(frames, height, width, mode=mode)


# ---------------------------------------------------------------------------------------------------
# Writing (atomic: temp file in the same folder, then rename)
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(handle)
    tmp = Path(tmp_name)
    follow_umask(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = _DEFAULT_FPS, *, crf: int = 18) -> Path:
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
    with _atomic_path(path) as tmp:
        _encode(array, tmp, container_format, codec, fps, crf)
    return path


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


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
            _save_png(image, staging / name)
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
    with _atomic_path(path) as tmp:
        _save_png(image, tmp)
    return path


# ---------------------------------------------------------------------------------------------------
# Synthetic clips with exact motion
# ---------------------------------------------------------------------------------------------------


def load_photo(name: str = "astronaut") -> torch.Tensor:
    """A photo bundled with scikit-image (works offline) as float32 ``(3, H, W)`` in [0, 1].

    ``name`` is one of :data:`BUNDLED_PHOTOS`: ``astronaut`` (512×512), ``coffee`` (400×600),
    ``chelsea`` (300×451), ``rocket`` (427×640).
    """
    if name not in BUNDLED_PHOTOS:
        raise ValueError(f"unknown bundled photo {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}")
    import skimage.data

    array = _to_rgb_uint8(getattr(skimage.data, name)())
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)


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
    fps: float = _DEFAULT_FPS,
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
    fps: float = _DEFAULT_FPS,
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
