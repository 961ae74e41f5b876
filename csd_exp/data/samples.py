"""Bundled sample photos: scikit-image ships them in its wheel, so they need no download.

The panorama sample is a real photograph: the launch of DSCOVR on a Falcon 9 (SpaceX, released into the
public domain; see ``skimage.data.rocket``), cropped to a wide 200 x 640 strip (aspect 3.2, like the
paper's panoramas).
"""

from __future__ import annotations

import numpy as np
import torch

#: Photos that ship inside the scikit-image wheel (no download) and work as clip sources.
BUNDLED_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SAMPLE_NAMES = ("rocket", "coffee")
_SAMPLE_CROPS = {  # rows kept from scikit-image's photo: a panorama-shaped strip
    "rocket": (slice(130, 330), slice(None)),
    "coffee": (slice(100, 300), slice(None)),
}


def load_photo(name: str = "astronaut") -> torch.Tensor:
    """A photo bundled with scikit-image (works offline) as float32 ``(3, H, W)`` in [0, 1].

    ``name`` is one of :data:`BUNDLED_PHOTOS`: ``astronaut`` (512×512), ``coffee`` (400×600),
    ``chelsea`` (300×451), ``rocket`` (427×640).
    """
    if name not in BUNDLED_PHOTOS:
        raise ValueError(f"unknown bundled photo {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}")
    import skimage.data

    # Every bundled photo is 8-bit RGB already; only the memory layout is normalised.
    array = np.ascontiguousarray(getattr(skimage.data, name)(), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)


def sample_image(name: str = "rocket") -> torch.Tensor:
    """A bundled panorama-shaped real photo, ``(3, 200, W)`` in [0, 1]."""
    if name not in _SAMPLE_CROPS:
        raise ValueError(f"unknown sample image {name!r}; bundled samples: {', '.join(SAMPLE_NAMES)}")
    rows, cols = _SAMPLE_CROPS[name]
    return load_photo(name)[:, rows, cols]
