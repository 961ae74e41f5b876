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

from csd_exp.data.video import load_photo, read_rgb

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


def load_image(path: str | Path | None) -> torch.Tensor:
    """Read an RGB image file; ``None`` or ``"sample:<name>"`` returns a bundled sample."""
    if path is None:
        return sample_image()
    if isinstance(path, str) and path.startswith("sample:"):
        return sample_image(path.split(":", 1)[1])
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path} (set data.path to an existing image file)")
    if path.is_dir():
        raise ValueError(f"data.path points at a folder, expected an image file: {path}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    return torch.from_numpy(read_rgb(path, what="image")).permute(2, 0, 1).float().div(255.0)


def fit_to_multiple(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Target size with the short side ``short_side`` (aspect kept) and both sides multiples of ``multiple``.

    The official code makes both sides multiples of 8 * stride so that the windows tile the canvas
    exactly; this is the same rule with the multiple passed in.
    """
    if short_side < multiple:
        raise ValueError(f"data.short_side={short_side} is smaller than one tiling unit ({multiple} px)")
    scale = short_side / min(height, width)
    round_to = lambda size: max(multiple, int(round(size * scale / multiple)) * multiple)  # noqa: E731
    return round_to(height), round_to(width)


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
