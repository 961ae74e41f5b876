"""What a run reads, checked when its config is composed: input files, folders and scenes, region boxes
and masks, the ``optimized_metric`` a sweeper maximises, and the packages an extra provides.

These checks read file headers and folder listings only (Pillow for image sizes), never torch, so a missing
file costs a second, not a model load, and a sweep with one bad job starts none. What needs a model (an
instruction the prior does not know) or the image's pixels stays with the task.

What ``data.path`` must be follows from what the data source's class declares it reads (``reads: ClassVar[str]``:
``"image"``, ``"clip"`` or ``"scene"``, as :class:`csd_exp.data.ImageSource`, ``ClipSource`` and ``SceneSource``
do); ``task.regions`` is checked against the image for a task whose constructor takes ``regions``
(:class:`csd_exp.tasks.PanoramaRegionTask`). Both are read from the source, never imported, so a class written
outside the package that declares the same is checked the same.

The names here mirror the readers' (``csd_exp.data``: image and video suffixes, bundled samples) and the
metric keys (``csd_exp.metrics.keys`` and the tasks' own); tests/test_compose_checks.py checks they agree.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csd_exp.ast_signatures import class_attribute, read_signature
from csd_exp.schema.checks import ConfigError
from csd_exp.schema.regions import check_box_inside, parse_regions

#: csd_exp.data.images.IMAGE_SUFFIXES
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: csd_exp.data.video.READ_VIDEO_EXTENSIONS and FRAME_EXTENSIONS
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: ``sample:<name>`` images (csd_exp.data.samples) and their (height, width) px.
SAMPLE_IMAGE_SIZES = {"rocket": (200, 640), "coffee": (200, 600)}
#: ``sample:<name>`` clips (csd_exp.data.sample_clip.SAMPLE_CLIPS).
SAMPLE_CLIPS = ("pan", "zoom")
SCENE_FILES = ("transforms.json", "transforms_train.json")

#: Final metrics a run can write to ``summary.json`` (what ``optimized_metric`` may name); which of them a
#: run has depends on its task, prior and metric weights (csd-exp still refuses one absent at the end).
SUMMARY_METRICS = (
    "clip/directional",
    "clip/image_similarity",
    "clip/consistency",
    "clip/text_similarity",
    "clip/depth_text_similarity",
    "lpips/consecutive",
    "fidelity/psnr",
    "fidelity/ssim",
    "fidelity/ideal_psnr",
    "fidelity/ideal_ssim",
    "fidelity/ideal_psnr_majority",
    "fidelity/ideal_ssim_majority",
    "fidelity/reference_psnr",
    "fidelity/heldout_psnr",
    "fidelity/heldout_psnr_pretrain",
    "consistency/seam_error",
    "consistency/warp_error",
    "consistency/mode_agreement",
    "consistency/mode_agreement_edited_views",
    "consistency/view_agreement",
    "consistency/reprojection_error",
    "edit/edited_fraction",
    "edit/num_view_edits",
    "edit/distinct_views_edited",
    "fid/rgb",
)
#: Families of names with a part chosen by the run: a mode's name, a region's number.
SUMMARY_METRIC_PATTERNS = (r"consistency/mode_fraction/.+", r"region/\d+/consistency/mode_(agreement|fraction/.+)")

#: Hydra plugin config -> (the module that provides it, its distribution, the csd-exp extra that installs it).
PLUGIN_EXTRAS = {
    "hydra/sweeper/optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "sweeps"),
    "hydra/launcher/joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "sweeps"),
    "hydra/launcher/submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "cluster"),
    "hydra/launcher/submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "cluster"),
}
FID_MODULE = "torch_fidelity"


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (from a checkout: ``pip install -e '.[extra]'``, the same packages)."""
    return f"pip install 'csd-exp[{extra}]'"


def missing(module: str) -> bool:
    """True if ``module`` cannot be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package that is absent
        return True


def closest(name: str, candidates: Any, limit: int = 3, cutoff: float = 0.75) -> list[str]:
    """The candidates nearest ``name`` (difflib's ratio, at least ``cutoff``), best first; only those about as
    near as the best (within 0.05), so a clear match comes alone."""
    scored = sorted((-difflib.SequenceMatcher(None, name, c).ratio(), c) for c in set(candidates))
    if not scored or -scored[0][0] < cutoff:
        return []
    floor = max(cutoff, -scored[0][0] - 0.05)
    return [c for score, c in scored[:limit] if -score >= floor]


# ------------------------------------------------------------------------------------------ files
def _read_image_size(path: Path, key: str) -> tuple[int, int]:
    """(height, width) from the header; an unreadable file is a :class:`ConfigError` naming ``key``.

    Pillow's decompression-bomb guard is off for this read (no pixel is decoded); :func:`_check_pixels`
    applies the run's own limit (``data.max_image_pixels``).
    """
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as error:
        raise ConfigError(f"{key}={path}: cannot read the image ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return height, width


def _existing(key: str, value: Any, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}={value}: no such {what}; point {key} at an existing one")
    return path


def _image_size(data: Mapping[str, Any]) -> tuple[int, int]:
    """Check ``data.path`` of an image source; its (height, width) px."""
    value = data.get("path")
    if value is None or str(value).startswith("sample:"):
        name = "rocket" if value is None else str(value).split(":", 1)[1]
        if name not in SAMPLE_IMAGE_SIZES:
            raise ConfigError(
                f"data.path={value}: no such bundled sample; choose sample:{' or sample:'.join(SAMPLE_IMAGE_SIZES)}"
            )
        return SAMPLE_IMAGE_SIZES[name]
    path = _existing("data.path", value, "image file")
    if path.is_dir():
        raise ConfigError(f"data.path={value} is a folder; this task edits one image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"data.path={value}: not an image file; use one of {', '.join(IMAGE_SUFFIXES)}")
    height, width = _read_image_size(path, "data.path")
    limit = data.get("max_image_pixels")
    if limit is not None and height * width > limit:
        raise ConfigError(
            f"data.path={value} has {height * width} pixels, over data.max_image_pixels={limit} (a guard "
            f"against decompression bombs); if the file is trusted, set data.max_image_pixels={height * width}"
        )
    return height, width


def _check_clip(data: Mapping[str, Any]) -> None:
    value = data.get("path")
    if value is None or str(value).startswith("sample:"):
        name = "pan" if value is None else str(value).split(":", 1)[1]
        if name not in SAMPLE_CLIPS:
            choices = " or ".join(f"sample:{clip}" for clip in SAMPLE_CLIPS)
            raise ConfigError(f"data.path={value}: no such bundled clip; choose {choices}")
        return
    path = _existing("data.path", value, "video file or frame folder")
    if path.is_dir():
        if not any(p.is_file() and p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir()):
            raise ConfigError(f"data.path={value}: the folder holds no {', '.join(FRAME_SUFFIXES)} frames")
    elif path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(
            f"data.path={value}: not a video file; use one of {', '.join(VIDEO_SUFFIXES)} or a folder of frames"
        )


def _check_scene(data: Mapping[str, Any]) -> None:
    value = data.get("path")
    if value is None or str(value) == "sample":
        return
    path = _existing("data.path", value, "scene folder")
    if path.is_file():
        if not (path.name == "transforms.json" or (path.name.startswith("transforms_") and path.suffix == ".json")):
            raise ConfigError(f"data.path={value}: not a transforms.json / transforms_<split>.json file")
    elif not any((path / name).is_file() for name in SCENE_FILES):
        raise ConfigError(f"data.path={value}: no cameras in the folder (neither {' nor '.join(SCENE_FILES)})")


def _check_regions(task: Mapping[str, Any], image_size: tuple[int, int], prompt: Any) -> None:
    try:
        regions = parse_regions(task.get("regions"), str(prompt or "the run's prompt"))
        for region in regions:
            if region.mask is None:
                check_box_inside(region, image_size)
                continue
            mask = _existing(f"{region.name}.mask", region.mask, "mask image (white = region)")
            size = _read_image_size(mask, f"{region.name}.mask")
            if size != tuple(image_size):
                raise ConfigError(
                    f"{region.name}.mask {mask} is {size[0]}x{size[1]} px but the image is "
                    f"{image_size[0]}x{image_size[1]} px (HxW): make the mask the image's size"
                )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_task_files(task: Mapping[str, Any]) -> None:
    folder = task.get("fid_reference_dir")
    if folder is not None:
        if not _existing("task.fid_reference_dir", folder, "folder").is_dir():
            raise ConfigError(f"task.fid_reference_dir={folder} is a file; give a folder of reference images")
        if missing(FID_MODULE):
            raise ConfigError(
                f"task.fid_reference_dir (fid/rgb) needs torch-fidelity, of the fid extra: {install_hint('fid')}"
            )
    weights = task.get("fid_inception_weights")
    if weights is not None and not _existing("task.fid_inception_weights", weights, "file").is_file():
        raise ConfigError(f"task.fid_inception_weights={weights} is a folder; give the weights file")


def check_optimized_metric(name: Any) -> None:
    """``optimized_metric`` names a metric some run writes to ``summary.json`` (null: nothing optimised)."""
    if name is None:
        return
    if name in SUMMARY_METRICS or any(re.fullmatch(pattern, str(name)) for pattern in SUMMARY_METRIC_PATTERNS):
        return
    near = closest(str(name), SUMMARY_METRICS) or [m for m in SUMMARY_METRICS if m.rsplit("/", 1)[1] == name]
    hint = f"did you mean {' or '.join(near)}?" if near else f"choose one of {', '.join(SUMMARY_METRICS)}"
    raise ConfigError(f"optimized_metric={name} is not a metric csd-exp writes to summary.json; {hint}")


def reads(data: Any) -> str | None:
    """What the data source reads (``image``, ``clip``, ``scene``): its class's ``reads``; None if it declares
    nothing or its source cannot be read."""
    target = data.get("_target_") if isinstance(data, Mapping) else None
    declared = class_attribute(target, "reads") if isinstance(target, str) else None
    return declared if isinstance(declared, str) else None


def takes_regions(task: Any) -> bool:
    """The task's constructor takes ``regions`` (``task.regions`` entries, :mod:`csd_exp.schema.regions`)."""
    target = task.get("_target_") if isinstance(task, Mapping) else None
    signature = read_signature(target) if isinstance(target, str) else None
    return signature is not None and "regions" in signature.parameters


def check_inputs(cfg: Mapping[str, Any]) -> None:
    """Everything the run would read, and ``optimized_metric``; raise :class:`ConfigError` naming the key."""
    check_optimized_metric(cfg.get("optimized_metric"))
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not _existing("ckpt_path", ckpt, "checkpoint").is_file():
        raise ConfigError(f"ckpt_path={ckpt} is a folder; give the checkpoint file (e.g. .../checkpoints/last.ckpt)")
    data = cfg.get("data")
    task = cfg.get("task")
    source = reads(data)
    if source == "image":
        size = _image_size(data)
        if takes_regions(task):
            _check_regions(task, size, cfg.get("prompt"))
    elif source == "clip":
        _check_clip(data)
    elif source == "scene":
        _check_scene(data)
    if isinstance(task, Mapping):
        _check_task_files(task)
