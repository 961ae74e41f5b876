"""Still image files: the one RGB reader, the one PNG writer, header sizes and the bomb guard.

Images in memory are float ``(3, H, W)`` in ``[0, 1]``; sizes are always ``(height, width)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from csd_exp.data.resample import resize_rows
from csd_exp.data.samples import sample_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
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


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 ``(H, W, 3)`` array as PNG (the project's one PNG writer; callers make it atomic)."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filter_rows(pixels: np.ndarray, above: np.ndarray) -> np.ndarray:
    """PNG scanlines of uint8 ``(rows, bytes)`` ``pixels`` (``above``: the row before them): each row in
    filter "Sub" (minus the byte one pixel left) or "Up" (minus the byte above), whichever leaves the
    smaller sum of |signed bytes|, Pillow's rule for choosing; uint8 arithmetic wraps modulo 256, as PNG wants."""
    rows, width = pixels.shape
    sub = np.empty((rows, 1 + width), dtype=np.uint8)
    sub[:, 0] = 1
    sub[:, 1:4] = pixels[:, :3]
    np.subtract(pixels[:, 3:], pixels[:, :-3], out=sub[:, 4:])
    up = np.empty_like(sub)
    up[:, 0] = 2
    np.subtract(pixels, np.concatenate([above, pixels[:-1]]), out=up[:, 1:])
    cost = lambda lines: np.abs(lines[:, 1:].view(np.int8), dtype=np.int16).sum(axis=1, dtype=np.int64)
    return np.where((cost(up) < cost(sub))[:, None], up, sub)


def write_png_strips(strips: Iterable[np.ndarray], path: str | os.PathLike, size: tuple[int, int]) -> None:
    """Write an RGB PNG of ``size`` ``(H, W)`` from uint8 ``(rows, W, 3)`` strips given top to bottom, each
    filtered and compressed as it comes: memory is one strip, however big the image (callers make it atomic).
    Files are within about 10 % of Pillow's size (same zlib level 6; filters "Sub" / "Up" chosen per row).
    """
    height, width = int(size[0]), int(size[1])
    compressor = zlib.compressobj(6)
    above = np.zeros((1, 3 * width), dtype=np.uint8)  # PNG takes the row above the first as zeros
    written = 0
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for strip in strips:
            if strip.dtype != np.uint8 or strip.ndim != 3 or strip.shape[1:] != (width, 3):
                raise ValueError(f"PNG strips must be uint8 (rows, {width}, 3), got {strip.dtype} {strip.shape}")
            pixels = np.ascontiguousarray(strip).reshape(strip.shape[0], 3 * width)
            handle.write(_png_chunk(b"IDAT", compressor.compress(_filter_rows(pixels, above))))
            above = pixels[-1:].copy()
            written += pixels.shape[0]
        if written != height:
            raise ValueError(f"PNG strips hold {written} rows, expected {height}")
        handle.write(_png_chunk(b"IDAT", compressor.flush()))
        handle.write(_png_chunk(b"IEND", b""))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)``, rounded to the nearest level."""
    return (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def save_image(image: torch.Tensor, path: str | os.PathLike, size: tuple[int, int] | None = None) -> Path:
    """Write ``(3, H, W)`` in [0, 1] as an 8-bit PNG atomically (temp file, then rename).

    ``size`` ``(height, width)`` writes the image resized to that size (``resize_frames``' bicubic) a strip
    of rows at a time (:func:`~csd_exp.data.resample.resize_rows`, :func:`write_png_strips`): the memory it
    takes does not grow with ``size``, so a 144-MP output never exists whole, in float or in 8 bits.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if size is None or tuple(size) == tuple(image.shape[-2:]):
            write_png(_to_uint8(image), tmp)
        else:
            strips = resize_rows(image.detach().cpu(), int(size[0]), int(size[1]))
            # In place (each strip is a fresh tensor in [0, 1]); the same rounding as _to_uint8.
            as_uint8 = (s.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy() for s in strips)
            write_png_strips(as_uint8, tmp, size)
    return path


#: The named backgrounds of :func:`parse_background` (besides ``#rrggbb``).
NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})")


def parse_background(value: str | None, key: str = "data.alpha_background") -> tuple[float, float, float] | None:
    """``white``, ``black`` or ``#rrggbb`` as RGB in [0, 1]; None stays None. ``key`` names the setting in errors."""
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[value.lower()]
    found = _HEX_COLOUR.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"{key}={value!r} is not a colour: use white, black or '#rrggbb' (quoted on the command line)")
    return tuple(int(channel, 16) / 255.0 for channel in found.groups())


def _has_alpha(path: Path) -> bool:
    """Whether the file stores transparency (an alpha channel, or a transparent colour / palette entry)."""
    with _open_image(path, "image") as image:
        return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def load_image(
    path: str | Path | None,
    *,
    min_size: tuple[int, int] | None = None,
    min_side: int = 8,
    background: tuple[float, float, float] | None = None,
    alpha_key: str | None = None,
) -> torch.Tensor:
    """Read an RGB image file as ``(3, H, W)`` in [0, 1]; ``None`` or ``"sample:<name>"`` returns a bundled sample.

    ``min_size`` is the smallest ``(h, w)`` the caller will resize to: big images are then decoded at a
    reduced size that is still at least that (see :func:`read_rgb`). Files whose short
    side is below ``min_side`` pixels are refused before decoding (upscaling them only invents content).

    A file with transparent pixels is composited over ``background`` (RGB in [0, 1], e.g. from
    :func:`parse_background`); without one its alpha is dropped (the colours beneath are kept as they are),
    with a warning naming the setting ``alpha_key`` that chooses a background, if given.
    """
    if path is None or (isinstance(path, str) and path.startswith("sample:")):
        return sample_image() if path is None else sample_image(path.split(":", 1)[1])
    height, width = image_file_size(path)
    if min(height, width) < min_side:
        raise ValueError(
            f"{path}: image is {height}x{width} (HxW), its short side is below the minimum of {min_side} px; "
            "use a larger image"
        )
    path = Path(path).expanduser()
    alpha = _has_alpha(path)
    image = torch.from_numpy(read_rgb(path, what="image", min_size=min_size, alpha=alpha)).permute(2, 0, 1)
    if alpha:
        image, opacity = image[:3], image[3:]
        if bool((opacity < 1).any()):
            if background is not None:
                fill = torch.tensor(background, dtype=image.dtype).view(3, 1, 1)
                image = (image * opacity + fill * (1 - opacity)).clamp_(0, 1)
            elif alpha_key is not None:
                log.warning(
                    "%s has transparent pixels: the alpha channel is dropped and the colours beneath them are "
                    "edited as they are; set %s=white, black or '#rrggbb' to composite it on a background",
                    path,
                    alpha_key,
                )
    return image.contiguous()


def image_file_size(path: str | Path | None) -> tuple[int, int]:
    """``(H, W)`` of what :func:`load_image` would read, from the file header (pixels are not decoded)."""
    if path is None or (isinstance(path, str) and path.startswith("sample:")):
        sample = sample_image() if path is None else sample_image(path.split(":", 1)[1])
        return tuple(sample.shape[1:])
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path} (set data.path to an existing image file)")
    if path.is_dir():
        raise ValueError(f"data.path points at a folder, expected an image file: {path}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    return read_image_size(path, what="image")
