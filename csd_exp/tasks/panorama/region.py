"""Region-wise (compositional) panorama editing: each instruction edits its own region (paper App. B.1).

``task.regions`` lists any number of ``{prompt, box: [top, left, height, width], units: fraction | pixels}``
or ``{prompt, mask: <image path, white = region>}`` entries (a region without ``prompt`` takes the run's).
Boxes in pixels and masks are in the pixels of the input image (``data.path``); fractions are of its size,
so a fraction layout suits any image. The windows (particles) are those of :class:`PanoramaTask`.

Each window i gets weights α_ik = the fraction of its pixels inside region k (exact pixel-area overlap,
soft at a box edge that cuts a pixel), normalised over k to sum to 1. Its residual is then the mixture
Σ_k α_ik ΔE_k (App. B.1's ε(x_t; {y_k}) = Σ_k α_k ε^ω(x_t; y_k), applied to Eq. 9's residual as the official
``csdedit_image_region.py`` does), through :class:`csd_exp.distill.Guidance`'s ``prompt_weights``; the kernel
still couples the windows (Eq. 9). The official code hard-codes these weights for 12 windows of a 1920×512
image (``WEIGHTS_2/3/4``: 2, 3 or 4 equal vertical strips); here they follow from any layout, image size
and window count, and four equal strips on that image give the official table.

With the exact prior every region is scored against its own instruction's modes, over the windows that lie
mostly in it (α_ik > 0.5): ``region/<k>/consistency/mode_agreement`` and
``region/<k>/consistency/mode_fraction/<mode>`` in ``summary.json``. Modes of different instructions do not
compare, so the global mode metrics (and the ``val/`` mode curve) exist only when every region shares one
prompt. ``regions.json`` records every window's pixel box and weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import torch.nn.functional as F

from csd_exp.arguments import checked
from csd_exp.data.images import image_file_size, load_image
from csd_exp.data.resample import resize_frames
from csd_exp.data.sources import ImageSource
from csd_exp.priors.base import ModeOracle
from csd_exp.schema.regions import Region, check_box_inside, parse_regions
from csd_exp.tasks.base import RunInputs
from csd_exp.tasks.panorama.windows import PanoramaTask, WindowGrid
from csd_exp.tasks.results import TaskResult, mode_fractions

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.schema.fields import PositiveInt
    from csd_exp.tasks.panorama.windows import WindowSampler

log = logging.getLogger(__name__)

#: α_ik above this puts window i "mostly" in region k: the windows its metrics score.
MAJORITY = 0.5


def axis_coverage(start: float, stop: float, length: int) -> torch.Tensor:
    """(length,) float64: how much of each pixel [p, p + 1) the interval [start, stop) covers."""
    edges = torch.arange(length, dtype=torch.float64)
    return ((edges + 1).clamp(max=stop) - edges.clamp(min=start)).clamp(min=0.0)


def box_coverage(box_px: Sequence[float], canvas: tuple[int, int]) -> torch.Tensor:
    """(H, W) float64 pixel-area coverage of a box [top, left, height, width] given in canvas pixels."""
    top, left, height, width = box_px
    return torch.outer(axis_coverage(top, top + height, canvas[0]), axis_coverage(left, left + width, canvas[1]))


def region_coverage(region: Region, image_size: tuple[int, int], canvas: tuple[int, int]) -> torch.Tensor:
    """(H, W) float64 in [0, 1] on the canvas: how much of each canvas pixel lies in ``region``.

    ``image_size`` is the input image's (height, width) px: pixel boxes and masks are in its pixels (the
    canvas is that image resized, so a box keeps its place relative to the content).
    """
    height, width = image_size
    if region.mask is not None:
        return _mask_coverage(region, image_size, canvas)
    check_box_inside(region, image_size)
    top, left, box_height, box_width = region.box
    scale_y, scale_x = (canvas[0], canvas[1]) if region.units == "fraction" else (canvas[0] / height, canvas[1] / width)
    return box_coverage((top * scale_y, left * scale_x, box_height * scale_y, box_width * scale_x), canvas)


def _mask_coverage(region: Region, image_size: tuple[int, int], canvas: tuple[int, int]) -> torch.Tensor:
    path = Path(region.mask).expanduser()
    if not path.is_file():
        raise ValueError(f"{region.name}.mask: no such image file {path} (white = region, the input image's size)")
    mask_size = image_file_size(path)
    if tuple(mask_size) != tuple(image_size):
        raise ValueError(
            f"{region.name}.mask {path} is {mask_size[0]}x{mask_size[1]} px but the image is "
            f"{image_size[0]}x{image_size[1]} px (HxW): make the mask the image's size"
        )
    # Thresholded, so JPEG noise in the black part gives no window a stray weight; the area resize then
    # makes each canvas pixel's coverage the fraction of its source pixels inside the region.
    inside = (load_image(path, min_side=1).mean(dim=0) > 0.5).double()
    return resize_frames(inside[None, None], *canvas, mode="area")[0, 0]


def window_overlaps(coverage: torch.Tensor, grid: WindowGrid, scale: int) -> torch.Tensor:
    """(windows, K) fraction of each window's pixels inside each region; ``coverage`` is (K, H, W) canvas px.

    Windows are in ``grid.origins`` order (rows, then columns), which is average pooling's output order.
    """
    pooled = F.avg_pool2d(coverage[:, None].double(), kernel_size=grid.size * scale, stride=grid.stride * scale)
    return pooled.flatten(1).T.contiguous()


def normalised_weights(overlaps: torch.Tensor, pixel_boxes: Sequence[Sequence[int]], canvas: tuple[int, int]):
    """α (windows, K): ``overlaps`` normalised to sum to 1 per window (App. B.1); an uncovered window is an error."""
    totals = overlaps.sum(dim=1)
    uncovered = (totals <= 0).nonzero().flatten().tolist()
    if uncovered:
        first = uncovered[0]
        more = f" (and {len(uncovered) - 1} more)" if len(uncovered) > 1 else ""
        raise ValueError(
            f"task.regions leave window {first}{more} uncovered: pixels [top, left, height, width] = "
            f"{list(pixel_boxes[first])} of the {canvas[0]}x{canvas[1]} px canvas lie in no region; extend a box "
            "or mask over it, or add a region that covers it"
        )
    return overlaps / totals[:, None]


class PanoramaRegionTask(PanoramaTask):
    """CSD-Edit over a panorama's windows with one instruction per region (App. B.1; see the module docstring).

    ``canvas_size`` ([height, width] px) forces the canvas size, as the official region script resizes every
    input to 512×1920; None keeps ``data.resize_policy``'s. Both sides must tile: multiples of the prior's
    latent scale × ``window_stride``.
    """

    @checked
    def __init__(
        self,
        prior: Any,
        guidance: Any,
        optimizer,
        lr_scheduler=None,
        *,
        inputs: RunInputs,
        data: ImageSource,
        regions: Sequence[Mapping[str, Any]] | None = None,
        canvas_size: (
            Annotated[Sequence[PositiveInt], Field(min_length=2, max_length=2, description="[height, width] in px")]
            | None
        ) = None,
        window_size: PositiveInt = 64,
        window_stride: PositiveInt = 16,
        windows_per_step: PositiveInt = 4,
        window_sampler: WindowSampler = "uniform",
    ):
        # The whole layout is checked first: geometry is cheap, and a bad region must fail before the image loads.
        parsed = parse_regions(regions, inputs.prompt)
        for region in parsed:
            prior.validate_prompt(region.prompt)  # an instruction the prior cannot follow: the prior's own error
        scale = int(prior.latent_scale_factor)
        object.__setattr__(self, "_forced_canvas", _check_canvas_size(canvas_size, scale, int(window_stride)))
        image_size = data.size()
        canvas = self.canvas_pixels(data, image_size, prior, int(window_size), int(window_stride))
        grid = WindowGrid(canvas[0] // scale, canvas[1] // scale, int(window_size), int(window_stride))
        coverage = torch.stack([region_coverage(region, image_size, canvas) for region in parsed])
        for region, covered in zip(parsed, coverage):
            if not covered.sum() > 0:
                raise ValueError(
                    f"{region.name} ({region.describe()}) covers no pixel of the {canvas[0]}x{canvas[1]} canvas"
                )
        boxes = [(top * scale, left * scale, grid.size * scale, grid.size * scale) for top, left in grid.origins]
        weights = normalised_weights(window_overlaps(coverage, grid, scale), boxes, canvas)

        super().__init__(
            prior,
            guidance,
            optimizer,
            lr_scheduler,
            inputs=inputs,
            data=data,
            window_size=window_size,
            window_stride=window_stride,
            windows_per_step=windows_per_step,
            window_sampler=window_sampler,
        )
        self.regions = parsed
        self.region_weights = weights.float()  # (windows, regions) α; plain CPU tensors: never in a checkpoint
        # Regions that share an instruction share one prompt column, so a step asks the prior once per prompt.
        self.prompts = list(dict.fromkeys(region.prompt for region in parsed))
        columns = torch.tensor([self.prompts.index(region.prompt) for region in parsed])
        self.prompt_weights = torch.zeros(len(grid), len(self.prompts), dtype=torch.float64)
        self.prompt_weights.index_add_(1, columns, weights)
        self.prompt_weights = self.prompt_weights.float()
        # What the CLIP directional similarity scores the whole edit against (base finalize): every instruction.
        self.prompt = "; ".join(self.prompts)
        for region in parsed:
            log.info(
                "panorama_region: region %d %r (%s): %d of %d windows mostly inside",
                region.index,
                region.prompt,
                region.describe(),
                int((weights[:, region.index] > MAJORITY).sum()),
                len(grid),
            )

    def canvas_pixels(self, data, image_size, prior, window_size, window_stride) -> tuple[int, int]:
        if self._forced_canvas is not None:
            return self._forced_canvas
        return PanoramaTask.canvas_pixels(data, image_size, prior, window_size, window_stride)

    def guidance_prompts(self, windows: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        return self.prompts, self.prompt_weights[windows]

    # ----------------------------------------------------------------- outputs
    def _responsibilities(self, windows, prompt: str) -> torch.Tensor:
        with torch.no_grad():
            return self.prior.mode_responsibilities(
                self.grid.crop(self.canvas.detach(), windows), self.grid.crop(self.image_condition, windows), prompt
            ).cpu()

    def mode_responsibilities(self) -> torch.Tensor | None:
        if len(self.prompts) > 1 or not isinstance(self.prior, ModeOracle):
            return None  # modes of different instructions do not compare: see region_metrics
        return self._responsibilities(range(len(self.grid)), self.prompts[0])

    def region_metrics(self) -> dict[str, float]:
        """``region/<k>/consistency/*`` over the windows mostly in region k (exact prior only)."""
        if not isinstance(self.prior, ModeOracle):
            return {}
        from csd_exp.metrics import ModeAgreement

        metrics: dict[str, float] = {}
        for region in self.regions:
            inside = (self.region_weights[:, region.index] > MAJORITY).nonzero().flatten().tolist()
            if not inside:
                log.warning("panorama_region: no window lies mostly in %s; it has no region metrics", region.name)
                continue
            responsibilities = self._responsibilities(inside, region.prompt)
            agreement = ModeAgreement(sync_on_compute=False)
            agreement.update(responsibilities)
            prefix = f"region/{region.index}/"
            metrics[prefix + "consistency/mode_agreement"] = float(agreement.compute())
            fractions = mode_fractions(responsibilities, self.prior.mode_names(region.prompt))
            metrics.update({prefix + name: value for name, value in fractions.items()})
        return metrics

    def final_result(self) -> TaskResult:
        edited, source = self.edited_image(), self.source_image
        responsibilities = self.mode_responsibilities()
        return TaskResult(
            edited=edited[None],
            source=source[None],
            media={"source": source[None], "edited": edited[None]},
            windows=self.window_pixel_boxes(),
            mode_responsibilities=responsibilities,
            mode_names=None if responsibilities is None else self.prior.mode_names(self.prompts[0]),
            metrics=self.region_metrics(),
        )

    def write_outputs(self, output_dir: Path, result: TaskResult) -> dict[str, Path]:
        videos = super().write_outputs(output_dir, result)
        scale = int(self.prior.latent_scale_factor)
        layout = {
            "canvas": [self.grid.height * scale, self.grid.width * scale],
            "regions": [{"prompt": r.prompt, "where": r.describe()} for r in self.regions],
            "windows": [
                {"box": list(box), "weights": [round(float(w), 6) for w in row]}
                for box, row in zip(self.window_pixel_boxes(), self.region_weights)
            ],
        }
        (Path(output_dir) / "regions.json").write_text(json.dumps(layout, indent=1))
        return videos


def _check_canvas_size(canvas_size: Sequence[int] | None, scale: int, stride: int) -> tuple[int, int] | None:
    if canvas_size is None:
        return None
    unit = scale * stride  # [height, width] of positive ints, the stride positive: their annotations
    if canvas_size[0] % unit or canvas_size[1] % unit:
        raise ValueError(
            f"task.canvas_size={list(canvas_size)} does not tile: both sides must be multiples of {unit} px "
            f"(latent scale {scale} x task.window_stride {stride})"
        )
    return int(canvas_size[0]), int(canvas_size[1])
