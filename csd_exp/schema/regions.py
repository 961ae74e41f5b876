"""``task.regions`` of region editing (paper App. B.1), read without torch: the entries, their boxes and masks.

:class:`csd_exp.tasks.PanoramaRegionTask` turns them into window weights; :mod:`csd_exp.schema.inputs` checks
them at compose time (a box outside the image, a missing mask or one of the wrong size), before a model loads.
Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REGION_KEYS = ("prompt", "box", "units", "mask")
BOX_UNITS = ("fraction", "pixels")
# Fractions computed in float64 (e.g. 0.1 * 3) must not fail the in-image check by a rounding error.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Region:
    """One ``task.regions`` entry: an instruction and where it applies (a box or a mask)."""

    index: int
    prompt: str
    box: tuple[float, float, float, float] | None = None
    units: str = "fraction"
    mask: str | None = None

    @property
    def name(self) -> str:
        return f"task.regions[{self.index}]"

    def describe(self) -> str:
        return f"mask {self.mask}" if self.mask is not None else f"box {list(self.box)} ({self.units})"


def parse_regions(specs: Sequence[Mapping[str, Any]] | None, default_prompt: str) -> list[Region]:
    """The regions of ``task.regions`` (None: one region, the whole image, with the run's prompt)."""
    if specs is None:
        return [Region(0, default_prompt, box=(0.0, 0.0, 1.0, 1.0))]
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence) or not specs:
        raise ValueError(
            "task.regions must be a non-empty list of {prompt, box, units} or {prompt, mask} entries, "
            f"got {specs!r}"
        )
    return [_parse_region(spec, index, default_prompt) for index, spec in enumerate(specs)]


def _parse_region(spec: Any, index: int, default_prompt: str) -> Region:
    name = f"task.regions[{index}]"
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{name} must be a mapping like {{prompt: ..., box: [top, left, height, width]}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(REGION_KEYS))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; a region takes {', '.join(REGION_KEYS)}")
    prompt = spec.get("prompt")
    prompt = default_prompt if prompt is None else prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{name}.prompt must be a non-empty string, got {prompt!r}")
    if ("box" in spec) == ("mask" in spec):
        raise ValueError(f"{name} needs exactly one of box: [top, left, height, width] or mask: <image path>")
    if "mask" in spec:
        if "units" in spec:
            raise ValueError(f"{name}.units applies to a box; a mask is always in the image's pixels: drop units")
        if not isinstance(spec["mask"], str) or not spec["mask"]:
            raise ValueError(f"{name}.mask must be an image path, got {spec['mask']!r}")
        return Region(index, prompt, mask=spec["mask"])
    units = spec.get("units", "fraction")
    if units not in BOX_UNITS:
        raise ValueError(f"{name}.units must be one of {', '.join(BOX_UNITS)}, got {units!r}")
    box = spec["box"]
    numbers = isinstance(box, Sequence) and not isinstance(box, str) and len(box) == 4
    if not numbers or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
    ):
        raise ValueError(f"{name}.box must be 4 finite numbers [top, left, height, width], got {box!r}")
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{name}.box {list(box)} needs a positive height and width")
    return Region(index, prompt, box=tuple(float(v) for v in box), units=units)


def check_box_inside(region: Region, image_size: tuple[int, int]) -> None:
    """Refuse a box that leaves the ``(height, width)`` px input image (pixel boxes are in its pixels)."""
    height, width = image_size
    top, left, box_height, box_width = region.box
    extent = (1.0, 1.0) if region.units == "fraction" else (float(height), float(width))
    if (
        top < -TOLERANCE
        or left < -TOLERANCE
        or top + box_height > extent[0] * (1 + TOLERANCE)
        or (left + box_width > extent[1] * (1 + TOLERANCE))
    ):
        keep = (
            "0 <= top, left and top + height, left + width <= 1"
            if region.units == "fraction"
            else (f"0 <= top, left, top + height <= {height} and left + width <= {width}")
        )
        raise ValueError(
            f"{region.name}.box {list(region.box)} ({region.units}) lies outside the {height}x{width} px (HxW) "
            f"image: keep {keep}"
        )
