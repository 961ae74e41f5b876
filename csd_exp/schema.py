"""Typed schemas of the config groups, checked as soon as a config is composed.

The check runs before torch, diffusers or any model is imported (``csd-exp`` calls
:func:`validate_config` first; the sweeper calls it for every job of a multirun before the first one
starts), so a bad value costs a second, not a model load, and a sweep with one bad value starts no job.

Each schema is a dataclass whose fields are the constructor parameters a config node may set, typed:
``Annotated[int, Range(min=1)]`` for bounded numbers, ``Literal[...]`` for choices, ``X | None`` where
null is allowed. A node is matched to its schema by its ``_target_`` (no import needed). A key that the
schema does not list is an error: a key that does nothing must not exist (tests/test_config_keys.py
checks that the schemas and the constructors name the same parameters).

This module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

# Choices, imported by the classes that implement them (one list per concept).
WINDOW_SAMPLERS = ("uniform", "coverage_balanced")
RESIZE_POLICIES = ("auto", "official", "short_side")
PANORAMA_SAMPLING_METHODS = ("per_window", "downscaled", "multidiffusion")
GUIDANCE_METHODS = ("sds", "csd", "csd_edit", "csd_edit_no_svgd", "csd_edit_random_noise")
METHODS_WITHOUT_KERNEL = ("sds", "csd_edit_no_svgd")  # they fix their own (identity) kernel
BANDWIDTH_RULES = ("median", "median_log_n", "fixed")
ANNEALING_RULES = ("constant", "linear", "sqrt")
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
EDIT_INITS = ("render", "source")
LPIPS_NETS = ("alex", "vgg", "squeeze")
CLIP_PRECISIONS = ("fp32", "fp16", "bf16")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


class ConfigError(ValueError):
    """A composed config with a bad value; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number (inclusive unless ``open_min``)."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False

    def describe(self) -> str:
        low = "" if self.min is None else (f"> {self.min}" if self.open_min else f">= {self.min}")
        high = "" if self.max is None else (f"< {self.max}" if self.open_max else f"<= {self.max}")
        return " and ".join(part for part in (low, high) if part)

    def holds(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        return self.max is None or (value < self.max if self.open_max else value <= self.max)


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, open_min=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
UnitFraction = Annotated[float, Range(min=0, max=1, open_min=True)]
Probability = Annotated[float, Range(min=0, max=1)]
#: A sub-config with a ``_target_`` of its own (optimizer, LR scheduler), checked by its own schema if any.
Node = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------- priors
@dataclass
class ExactPriorSchema:
    downsample: PositiveInt
    edit_std: PositiveFloat
    image_std: PositiveFloat
    uncond_std: PositiveFloat
    uncond_mean: float
    torch_dtype: Literal[TORCH_DTYPES]
    num_train_timesteps: Annotated[int, Range(min=2)]
    beta_start: UnitFraction
    beta_end: UnitFraction


@dataclass
class DiffusersPriorSchema:
    pretrained_model_name_or_path: str
    torch_dtype: Literal[TORCH_DTYPES]
    max_rows_per_call: PositiveInt | None
    local_files_only: bool | None


@dataclass
class InstructPix2PixSchema(DiffusersPriorSchema):
    official_condition_latents: bool
    condition_seed: Annotated[int, Range(min=0, max=MAX_SEED)]


@dataclass
class TinyPriorSchema:
    cache_dir: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    torch_dtype: Literal[TORCH_DTYPES]
    max_rows_per_call: PositiveInt | None


@dataclass
class TinyInstructPix2PixSchema(TinyPriorSchema):
    official_condition_latents: bool


# ------------------------------------------------------------------------------------ distillation
@dataclass
class GuidanceSchema:
    method: Literal[GUIDANCE_METHODS]
    kernel: Node | None
    schedule: Node | None
    guidance_scale: float
    image_guidance_scale: float
    grad_clip: PositiveFloat | None
    official_scaling: bool


@dataclass
class RBFKernelSchema:
    bandwidth: Literal[BANDWIDTH_RULES]
    gamma: PositiveFloat | None
    bandwidth_multiplier: PositiveFloat


@dataclass
class IdentityKernelSchema:
    normalize_by_count: bool


@dataclass
class TimestepScheduleSchema:
    min_fraction: Annotated[float, Range(min=0, max=1, open_min=True, open_max=True)]
    max_fraction: Annotated[float, Range(min=0, max=1, open_min=True, open_max=True)]
    annealing: Literal[ANNEALING_RULES]


@dataclass
class SGDSchema:
    lr: PositiveFloat
    weight_decay: NonNegativeFloat


@dataclass
class AdamSchema:
    lr: PositiveFloat | None
    betas: list
    weight_decay: NonNegativeFloat


@dataclass
class StepLRSchema:
    step_size: PositiveInt
    gamma: PositiveFloat


# ------------------------------------------------------------------------------------------ tasks
@dataclass
class TaskInputsSchema:
    """What every task takes from the run, by interpolation in its YAML (``prompt: ${prompt}``, ...)."""

    prompt: str
    source_prompt: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    max_steps: int
    data: Node


@dataclass
class PanoramaTaskSchema(TaskInputsSchema):
    window_size: PositiveInt
    window_stride: PositiveInt
    windows_per_step: PositiveInt
    window_sampler: Literal[WINDOW_SAMPLERS]
    optimizer: Node
    lr_scheduler: Node | None


@dataclass
class PanoramaSamplingTaskSchema(TaskInputsSchema):
    method: Literal[PANORAMA_SAMPLING_METHODS]
    num_inference_steps: PositiveInt
    eta: Probability
    guidance_scale: float
    image_guidance_scale: float
    window_size: PositiveInt
    window_stride: PositiveInt


@dataclass
class VideoTaskSchema(TaskInputsSchema):
    frame_size: PositiveInt
    frames_per_step: PositiveInt | None
    optimizer: Node
    lr_scheduler: Node | None


@dataclass
class VideoSamplingTaskSchema(TaskInputsSchema):
    frame_size: PositiveInt
    num_inference_steps: PositiveInt
    eta: Probability
    strength: UnitFraction
    guidance_scale: float
    image_guidance_scale: float


@dataclass
class CSDEditEditorSchema:
    every: PositiveInt
    views: PositiveInt
    iterations: PositiveInt
    lr: PositiveFloat
    lr_decay: UnitFraction
    lr_decay_every: PositiveInt
    init: Literal[EDIT_INITS]


@dataclass
class IN2NEditorSchema:
    every: PositiveInt
    views: PositiveInt
    diffusion_steps: PositiveInt
    noise_lower: UnitFraction
    noise_upper: UnitFraction
    sampler_eta: Probability
    guidance_scale: float
    image_guidance_scale: float


@dataclass
class FieldSchema:
    """The voxel field (csd_exp.render.VoxelRadianceField); ``aabb`` comes from the scene."""

    resolution: Annotated[int, Range(min=2)]
    num_samples: PositiveInt
    init_opacity: PositiveFloat
    density_scale: PositiveFloat
    background: float
    lr_density: PositiveFloat
    lr_color: PositiveFloat
    tv_weight: NonNegativeFloat
    near: PositiveFloat
    chunk_rays: PositiveInt


@dataclass
class Scene3DTaskSchema(TaskInputsSchema):
    editor: Node
    field: Node
    optimizer: Node
    lr_scheduler: Node | None
    pretrain_steps: NonNegativeInt
    views_per_step: PositiveInt
    jitter: bool
    turntable_views: PositiveInt
    turntable_fps: PositiveFloat


# ------------------------------------------------------------------------------------------- data
@dataclass
class ImageDataSchema:
    path: str | None
    resize_policy: Literal[RESIZE_POLICIES]
    short_side: PositiveInt | None
    max_image_pixels: PositiveInt | None


@dataclass
class VideoDataSchema:
    path: str | None
    start: NonNegativeInt
    stride: PositiveInt
    max_frames: Annotated[int, Range(min=2)] | None


@dataclass
class SceneDataSchema:
    path: str | None
    downscale: PositiveInt
    max_views: Annotated[int, Range(min=2)] | None
    image_size: PositiveInt | None
    num_val: NonNegativeInt | None


# ---------------------------------------------------------------------------------------- metrics
@dataclass
class ClipSchema:
    model_name: str
    pretrained: str | None
    batch_size: PositiveInt
    precision: Literal[CLIP_PRECISIONS]
    cache_dir: str | None
    allow_download: bool


@dataclass
class MetricsSchema:
    clip: Node | None
    lpips_net: Literal[LPIPS_NETS] | None
    device: str | None
    sync_across_processes: bool


# --------------------------------------------------------------------------------------- top level
@dataclass
class TrainerSchema:
    max_steps: int
    max_epochs: int
    val_check_interval: PositiveInt | None
    log_every_n_steps: PositiveInt


@dataclass
class ResumeSchema:
    allow_config_change: bool


@dataclass
class RunSchema:
    prompt: str
    source_prompt: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    ckpt_path: str | None


IN2N_EDITOR = "csd_exp.tasks.scene3d_editors.IN2NEditor"
#: ``_target_`` -> schema of that node's keys.
TARGET_SCHEMAS: dict[str, type] = {
    "csd_exp.priors.ExactScorePrior": ExactPriorSchema,
    "csd_exp.priors.InstructPix2PixPrior": InstructPix2PixSchema,
    "csd_exp.priors.StableDiffusionPrior": DiffusersPriorSchema,
    "csd_exp.priors.tiny_instruct_pix2pix_prior": TinyInstructPix2PixSchema,
    "csd_exp.priors.tiny_stable_diffusion_prior": TinyPriorSchema,
    "csd_exp.distill.Guidance": GuidanceSchema,
    "csd_exp.distill.RBFKernel": RBFKernelSchema,
    "csd_exp.distill.IdentityKernel": IdentityKernelSchema,
    "csd_exp.distill.TimestepSchedule": TimestepScheduleSchema,
    "torch.optim.SGD": SGDSchema,
    "torch.optim.Adam": AdamSchema,
    "torch.optim.lr_scheduler.StepLR": StepLRSchema,
    "csd_exp.tasks.PanoramaTask": PanoramaTaskSchema,
    "csd_exp.tasks.panorama_sampling.PanoramaSamplingTask": PanoramaSamplingTaskSchema,
    "csd_exp.tasks.VideoTask": VideoTaskSchema,
    "csd_exp.tasks.video_sampling.VideoSamplingTask": VideoSamplingTaskSchema,
    "csd_exp.tasks.scene3d.Scene3DTask": Scene3DTaskSchema,
    "csd_exp.render.VoxelRadianceField": FieldSchema,
    "csd_exp.tasks.scene3d_editors.CSDEditEditor": CSDEditEditorSchema,
    IN2N_EDITOR: IN2NEditorSchema,
}
#: task ``_target_`` -> schema of the ``data`` block it reads.
DATA_SCHEMAS: dict[str, type] = {
    "csd_exp.tasks.PanoramaTask": ImageDataSchema,
    "csd_exp.tasks.panorama_sampling.PanoramaSamplingTask": ImageDataSchema,
    "csd_exp.tasks.VideoTask": VideoDataSchema,
    "csd_exp.tasks.video_sampling.VideoSamplingTask": VideoDataSchema,
    "csd_exp.tasks.scene3d.Scene3DTask": SceneDataSchema,
}
SAMPLING_TASKS = (
    "csd_exp.tasks.panorama_sampling.PanoramaSamplingTask",
    "csd_exp.tasks.video_sampling.VideoSamplingTask",
)


# ------------------------------------------------------------------------------------------ checks
def _fields(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _type_error(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return f"{_describe(base)} {' '.join(ranges)}".strip()
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(annotation))
    if annotation is Node or origin in (Mapping, dict):
        return "a config node"
    return getattr(annotation, "__name__", str(annotation))


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` does not fit ``annotation`` (see the module docstring)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        check_value(key, value, base)
        for bound in (m for m in meta if isinstance(m, Range)):
            if not bound.holds(value):
                raise _type_error(key, value, _describe(annotation))
        return
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise _type_error(key, value, _describe(annotation))
        return
    if origin is Union or type(annotation).__name__ == "UnionType":
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return check_value(key, value, option)
            except ConfigError as error:
                errors.append(error)
        raise _type_error(key, value, _describe(annotation))
    if annotation is Any:
        return
    if annotation is Node or origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise _type_error(key, value, "a config node")
        return
    if annotation is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false")
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _type_error(key, value, "a finite number")
    elif annotation is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string")
    elif annotation is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, "a list")


def check_node(prefix: str, node: Mapping[str, Any], schema: type) -> None:
    """Every key of ``node`` is a field of ``schema`` and its value fits the field's type."""
    fields = _fields(schema)
    for key, value in node.items():
        if key in ("_target_", "_partial_", "_recursive_", "_convert_"):
            continue
        if key not in fields:
            raise ConfigError(
                f"{prefix}.{key} is not a setting of {schema.__name__.removesuffix('Schema')}; "
                f"its settings are: {', '.join(fields)}"
            )
        check_value(f"{prefix}.{key}", value, fields[key])
        if isinstance(value, Mapping) and value.get("_target_") in TARGET_SCHEMAS:
            check_node(f"{prefix}.{key}", value, TARGET_SCHEMAS[value["_target_"]])


def _check_target(prefix: str, node: Any) -> None:
    if isinstance(node, Mapping) and node.get("_target_") in TARGET_SCHEMAS:
        check_node(prefix, node, TARGET_SCHEMAS[node["_target_"]])


def _check_steps(trainer: Mapping[str, Any]) -> None:
    max_steps, max_epochs = trainer.get("max_steps"), trainer.get("max_epochs", -1)
    check_value("trainer.max_steps", max_steps, int)
    check_value("trainer.max_epochs", max_epochs, int)
    if max_steps == -1 and max_epochs >= 1:
        return  # sampling baselines: one epoch of reverse steps
    if max_steps < 1:
        raise ConfigError(
            f"trainer.max_steps={max_steps!r} is not allowed: expected an integer >= 1 "
            "(the number of optimisation steps)"
        )


def _check_kernel_use(cfg: Mapping[str, Any]) -> None:
    guidance, kernel = cfg.get("guidance") or {}, cfg.get("kernel")
    method = guidance.get("method")
    if "_target_" in guidance and method not in METHODS_WITHOUT_KERNEL and not guidance.get("kernel"):
        raise ConfigError(
            f"guidance={method} couples its particles through a kernel but none is chosen; "
            "add kernel=rbf (or kernel=identity)"
        )
    if kernel and guidance.get("kernel") is None:
        what = f"guidance={method}" if method else "this task"
        raise ConfigError(
            f"{what} uses no kernel, so kernel={kernel.get('_target_', kernel)} would do nothing; "
            "drop the kernel override (SDS and csd_edit_no_svgd fix their own identity kernel)"
        )


def _check_task(cfg: Mapping[str, Any]) -> None:
    task = cfg.get("task") or {}
    target = task.get("_target_")
    _check_target("task", task)
    if target in DATA_SCHEMAS:
        check_node("data", cfg.get("data") or {}, DATA_SCHEMAS[target])
    editor = task.get("editor")
    samples = target in SAMPLING_TASKS or (isinstance(editor, Mapping) and editor.get("_target_") == IN2N_EDITOR)
    distills = "_target_" in (cfg.get("guidance") or {})
    if samples and distills:
        raise ConfigError(
            f"{'editor=in2n' if target not in SAMPLING_TASKS else 'this sampling baseline'} uses only "
            "the guidance scales; choose guidance=sampling (the task's own config does) instead of "
            f"guidance={cfg['guidance'].get('method')}"
        )
    if not samples and not distills:
        raise ConfigError(
            "this task distils the prior and needs a guidance method: guidance=csd_edit | csd | sds | "
            "csd_edit_no_svgd | csd_edit_random_noise"
        )
    if samples:
        for group in ("kernel", "schedule"):
            if cfg.get(group):
                raise ConfigError(
                    f"this task samples without distillation, so the {group} group would do "
                    f"nothing; drop the {group} override ({group}=none)"
                )


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check a resolved config (plain containers); raise :class:`ConfigError` naming the first bad key."""
    for key, annotation in _fields(RunSchema).items():
        check_value(key, cfg.get(key), annotation)
    _check_steps(cfg.get("trainer") or {})
    if isinstance(cfg.get("resume"), Mapping):
        check_node("resume", cfg["resume"], ResumeSchema)
    _check_target("model", cfg.get("model"))
    _check_target("kernel", cfg.get("kernel"))  # before guidance, which holds them too: name the
    _check_target("schedule", cfg.get("schedule"))  # key the way the user set it
    _check_target("guidance", cfg.get("guidance"))
    _check_task(cfg)
    _check_kernel_use(cfg)
    metrics = cfg.get("metrics")
    if isinstance(metrics, Mapping):
        check_node("metrics", metrics, MetricsSchema)
        if metrics.get("clip"):
            check_node("metrics.clip", metrics["clip"], ClipSchema)


#: Top-level nodes the checks read; the others (paths, logger, callbacks, hydra) hold no run settings
#: that the schemas cover, and resolving them may need a job's run folder, which a sweep has not made yet.
CHECKED_NODES = (
    "prompt",
    "source_prompt",
    "seed",
    "ckpt_path",
    "trainer",
    "resume",
    "model",
    "guidance",
    "kernel",
    "schedule",
    "task",
    "data",
    "metrics",
)


def validate_composed(cfg: Any) -> None:
    """:func:`validate_config` on a composed ``DictConfig`` (interpolations resolved node by node)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain: dict[str, Any] = {}
    for key in CHECKED_NODES:
        if key not in cfg:
            continue
        try:
            node = cfg[key]
            if key == "trainer":  # only the keys checked: others name the run folder, not made yet in a sweep
                node = OmegaConf.create({k: node[k] for k in _fields(TrainerSchema) if k in node})
            plain[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException as error:
            raise ConfigError(f"{key}: {error}".splitlines()[0]) from None
    validate_config(plain)
