"""Still images for the panorama / high-resolution editing task: reading, the bundled sample, sizes, saving.

Images are float tensors ``(3, H, W)`` in ``[0, 1]``.

Resizing is :func:`csd_exp.data.video.resize_frames` (one resampler for frames and images).

The bundled sample is a real photograph that ships inside scikit-image's wheel, so it needs no
download: the launch of DSCOVR on a Falcon 9 (SpaceX, released into the public domain; see
``skimage.data.rocket``), cropped to a wide 200 x 640 strip (aspect 3.2, like the paper's panoramas).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from csd_exp.data.video import load_photo, read_image_size, read_rgb

SAMPLE_NAMES = ("rocket", "coffee")
_SAMPLE_CROPS = {  # rows kept from scikit-image's photo: a panorama-shaped strip
    "rocket": (slice(130, 330), slice(None)),
    "coffee": (slice(100, 300), slice(None)),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def sample_image(name: str = "rocket") -> torch.Tensor:
    """A bundled panorama-shaped real photo, ``(3, 200, W)`` in [0, 1]."""
    if name not in _SAMPLE_CROPS:
        raise ValueError(f"unknown sample image {name!r}; bundled samples: {', '.join(SAMPLE_NAMES)}")
    rows, cols = _SAMPLE_CROPS[name]
    return load_photo(name)[:, rows, cols]


def load_image(path: str | Path | None, *, min_size: tuple[int, int] | None = None, min_side: int = 8) -> torch.Tensor:
    """Read an RGB image file as ``(3, H, W)`` in [0, 1]; ``None`` or ``"sample:<name>"`` returns a bundled sample.

    ``min_size`` is the smallest ``(h, w)`` the caller will resize to: big images are then decoded at a
    reduced size that is still at least that (see :func:`csd_exp.data.video.read_rgb`). Files whose short
    side is below ``min_side`` pixels are refused before decoding (upscaling them only invents content).
    """
    if path is None or (isinstance(path, str) and path.startswith("sample:")):
        return sample_image() if path is None else sample_image(path.split(":", 1)[1])
    height, width = image_file_size(path)
    if min(height, width) < min_side:
        raise ValueError(
            f"{path}: image is {height}x{width} (HxW), its short side is below the minimum of {min_side} px; "
            "use a larger image"
        )
    image = read_rgb(Path(path).expanduser(), what="image", min_size=min_size)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


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


def fit_to_multiple(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Target size with the short side ``short_side`` (aspect kept) and both sides multiples of ``multiple``.

    The official code makes both sides multiples of 8 * stride so that the windows tile the canvas
    exactly; this is the same rule with the multiple passed in.
    """
    if short_side < multiple:
        raise ValueError(f"data.short_side={short_side} is smaller than one tiling unit ({multiple} px)")
    scale = short_side / min(height, width)
    round_to = lambda size: max(multiple, int(round(size * scale / multiple)) * multiple)
    return round_to(height), round_to(width)


def official_size(height: int, width: int, min_short_side: int, multiple: int) -> tuple[int, int]:
    """The official CSD panorama resize: upscale (aspect kept) only if the short side is below
    ``min_short_side`` (512 px for Stable Diffusion), never shrink, then floor both sides to ``multiple``."""
    scale = max(1.0, min_short_side / min(height, width))
    floor_to = lambda size: max(multiple, int(round(size * scale)) // multiple * multiple)
    return floor_to(height), floor_to(width)


def canvas_size(height: int, width: int, *, policy: str, short_side: int, scale: int, stride: int) -> tuple[int, int]:
    """Pixel size of the canvas for an image of ``height`` x ``width`` px.

    ``short_side`` is in latent px (the prior's ``scale`` = its VAE factor turns it into pixels), so the
    same config suits every prior: 64 latent px are 64 px for the exact prior and 512 px for Stable
    Diffusion. Both sides end as multiples of ``scale * stride`` so the windows tile the canvas exactly.

    ``policy``: ``short_side`` (resize so the short side is exactly ``short_side``) or ``official`` (the
    official code: upscale only up to ``short_side``, never shrink, floor to the tiling unit).
    """
    unit = scale * stride
    if policy == "short_side":
        return fit_to_multiple(height, width, short_side * scale, unit)
    if policy == "official":
        return official_size(height, width, short_side * scale, unit)
    raise ValueError(f"data.resize_policy={policy!r} is not one of short_side, official")


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write ``(3, H, W)`` in [0, 1] as PNG atomically (temp file, then rename)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)
    return path
