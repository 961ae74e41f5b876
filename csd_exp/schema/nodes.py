"""The schema of every config node, by ``_target_``, and of every task's ``data`` block.

Each schema is a dataclass whose fields are the constructor parameters a config node may set, typed (see
:mod:`csd_exp.schema.checks`). tests/test_config_keys.py checks that schemas and constructors name the same
parameters. A ``_target_`` without an entry here is not checked (its constructor refuses unknown keys when
Hydra instantiates it), so a new class runs before it has a schema. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from csd_exp.schema.checks import (
    MAX_SEED,
    Node,
    NonNegativeFloat,
    NonNegativeInt,
    Pattern,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
    UnitFraction,
)
from csd_exp.schema.video_baselines import VideoFateZeroTaskSchema, VideoPix2VideoTaskSchema

# Choices, imported by the classes that implement them (one list per concept).
WINDOW_SAMPLERS = ("uniform", "coverage_balanced")
RESIZE_POLICIES = ("auto", "official", "short_side")
PANORAMA_SAMPLING_METHODS = ("per_window", "downscaled", "multidiffusion")
#: Short names of the guidance baselines (csd_exp.distill.baselines.BASELINES): ε (Eqs. 5, 8) or the source
#: branch (Eq. 9); any other baseline is a node with its ``_target_``.
GUIDANCE_BASELINES = ("random_noise", "source_branch")
SOURCE_BRANCH = "csd_exp.distill.baselines.SourceBranch"
BANDWIDTH_RULES = ("median", "median_log_n", "fixed")
ANNEALING_RULES = ("constant", "linear", "sqrt")
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
DECODERS = ("vae", "consistency")
VAE_TILE_LATENT = 64  # side of a VAE tile in latent px (csd_exp/priors/vae_tiles.py): a larger stride leaves gaps
EDIT_INITS = ("render", "source")
LPIPS_NETS = ("alex", "vgg", "squeeze")
CLIP_PRECISIONS = ("fp32", "fp16", "bf16")

GUIDANCE = "csd_exp.distill.Guidance"
IDENTITY_KERNEL = "csd_exp.distill.IdentityKernel"
#: Kernels on rendered views (``on_images``) and the project's tasks that pass the renders to the guidance.
IMAGE_KERNELS = ("csd_exp.distill.LPIPSRBFKernel", "csd_exp.distill.FeatureRBFKernel")
VIEW_TASKS = ("csd_exp.tasks.generation3d.Generation3DTask",)
IN2N_EDITOR = "csd_exp.tasks.scene3d_editors.IN2NEditor"


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
    vae_tile_stride: Annotated[int, Range(min=1, max=VAE_TILE_LATENT)] | None
    decoder: Literal[DECODERS]
    decoder_path: str | None


@dataclass
class InstructPix2PixSchema(DiffusersPriorSchema):
    official_condition_latents: bool
    official_source_latents: bool
    condition_seed: Annotated[int, Range(min=0, max=MAX_SEED)]


@dataclass
class TinyPriorSchema:
    cache_dir: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    torch_dtype: Literal[TORCH_DTYPES]
    max_rows_per_call: PositiveInt | None
    vae_tile_stride: Annotated[int, Range(min=1, max=VAE_TILE_LATENT)] | None
    decoder: Literal[DECODERS]
    decoder_path: str | None


@dataclass
class DeepFloydIFSchema:
    pretrained_model_name_or_path: str
    torch_dtype: Literal[TORCH_DTYPES]
    max_rows_per_call: PositiveInt | None
    local_files_only: bool | None
    variant: str | None


@dataclass
class TinyDeepFloydIFSchema:
    cache_dir: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    torch_dtype: Literal[TORCH_DTYPES]
    max_rows_per_call: PositiveInt | None


@dataclass
class TinyInstructPix2PixSchema(TinyPriorSchema):
    official_condition_latents: bool
    official_source_latents: bool
    condition_seed: Annotated[int, Range(min=0, max=MAX_SEED)]


# ------------------------------------------------------------------------------------ distillation
@dataclass
class GuidanceSchema:
    baseline: Literal[GUIDANCE_BASELINES] | Node
    kernel: Node
    schedule: Node | None
    guidance_scale: float
    image_guidance_scale: float
    grad_clip: PositiveFloat | None
    official_scaling: bool
    negative_prompt: str
    source_prompt: str


@dataclass
class RBFKernelSchema:
    bandwidth: Literal[BANDWIDTH_RULES]
    gamma: PositiveFloat | None
    bandwidth_multiplier: PositiveFloat


@dataclass
class ConsensusKernelSchema:
    target_coupling: PositiveFloat


@dataclass
class IdentityKernelSchema:
    normalize_by_count: bool


@dataclass
class ImageRBFKernelSchema:
    image_size: PositiveInt | None
    bandwidth: Literal[BANDWIDTH_RULES]
    gamma: PositiveFloat | None
    bandwidth_multiplier: PositiveFloat


@dataclass
class LPIPSRBFKernelSchema(ImageRBFKernelSchema):
    distance: Node | None


@dataclass
class FeatureRBFKernelSchema(ImageRBFKernelSchema):
    channels: list
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]


@dataclass
class LoadLPIPSSchema:
    net: Literal[LPIPS_NETS]
    device: str | None


@dataclass
class TimestepScheduleSchema:
    min_fraction: Annotated[float, Range(min=0, max=1, open_min=True, open_max=True)]
    max_fraction: Annotated[float, Range(min=0, max=1, open_min=True, open_max=True)]
    annealing: Literal[ANNEALING_RULES]
    step_scale: PositiveFloat = 1.0
    step_scale_from: Annotated[float, Range(min=0, max=1, open_max=True)] = 0.0


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
class PanoramaRegionTaskSchema(PanoramaTaskSchema):
    """Region editing (App. B.1): ``regions`` entries are checked by the task (csd_exp/tasks/panorama_region.py)."""

    regions: list | None
    canvas_size: list | None


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
    alpha_background: Annotated[str, Pattern(r"white|black|#[0-9a-f]{6}", "white, black or '#rrggbb'")] | None


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
class LoadClipSchema:
    """``metrics.clip`` (csd_exp.metrics.load_clip)."""

    model_name: str
    pretrained: str | None
    device: str | None
    precision: Literal[CLIP_PRECISIONS]
    batch_size: PositiveInt
    cache_dir: str | None
    allow_download: bool


@dataclass
class EditEvaluatorSchema:
    """``metrics`` (csd_exp.metrics.EditEvaluator). ``lpips`` (an LPIPS object) and the default texts are for
    Python callers and csd-exp eval: a run passes its own texts to ``evaluate``."""

    clip: Node | None
    lpips_net: Literal[LPIPS_NETS] | None
    device: str | None


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
class CheckpointFilesSchema:
    """The checked keys of ``callbacks.checkpoint`` (csd_exp/infra/checkpoint_files.py): how often a periodic
    checkpoint is written and how many of the newest are kept (null: all)."""

    every_n_train_steps: PositiveInt | None
    keep_last: PositiveInt | None


@dataclass
class ExtrasSchema:
    print_config: bool


@dataclass
class RunSchema:
    prompt: str
    source_prompt: str
    method: str
    optimized_metric: str | None
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    ckpt_path: str | None
    tags: list


#: ``_target_`` -> schema of that node's keys.
TARGET_SCHEMAS: dict[str, type] = {
    "csd_exp.priors.ExactScorePrior": ExactPriorSchema,
    "csd_exp.priors.InstructPix2PixPrior": InstructPix2PixSchema,
    "csd_exp.priors.StableDiffusionPrior": DiffusersPriorSchema,
    "csd_exp.priors.tiny_instruct_pix2pix_prior": TinyInstructPix2PixSchema,
    "csd_exp.priors.tiny_stable_diffusion_prior": TinyPriorSchema,
    "csd_exp.priors.DeepFloydIFPrior": DeepFloydIFSchema,
    "csd_exp.priors.tiny_deepfloyd_if_prior": TinyDeepFloydIFSchema,
    GUIDANCE: GuidanceSchema,
    "csd_exp.distill.RBFKernel": RBFKernelSchema,
    "csd_exp.distill.ConsensusKernel": ConsensusKernelSchema,
    IDENTITY_KERNEL: IdentityKernelSchema,
    "csd_exp.distill.LPIPSRBFKernel": LPIPSRBFKernelSchema,
    "csd_exp.distill.FeatureRBFKernel": FeatureRBFKernelSchema,
    "csd_exp.metrics.lpips.load_lpips": LoadLPIPSSchema,
    "csd_exp.metrics.EditEvaluator": EditEvaluatorSchema,
    "csd_exp.metrics.load_clip": LoadClipSchema,
    "csd_exp.distill.TimestepSchedule": TimestepScheduleSchema,
    "torch.optim.SGD": SGDSchema,
    "torch.optim.Adam": AdamSchema,
    "torch.optim.lr_scheduler.StepLR": StepLRSchema,
    "csd_exp.tasks.PanoramaTask": PanoramaTaskSchema,
    "csd_exp.tasks.PanoramaRegionTask": PanoramaRegionTaskSchema,
    "csd_exp.tasks.panorama_sampling.PanoramaSamplingTask": PanoramaSamplingTaskSchema,
    "csd_exp.tasks.VideoTask": VideoTaskSchema,
    "csd_exp.tasks.video_sampling.VideoSamplingTask": VideoSamplingTaskSchema,
    "csd_exp.tasks.video_fatezero.VideoFateZeroTask": VideoFateZeroTaskSchema,
    "csd_exp.tasks.video_pix2video.VideoPix2VideoTask": VideoPix2VideoTaskSchema,
    "csd_exp.tasks.scene3d.Scene3DTask": Scene3DTaskSchema,
    "csd_exp.render.VoxelRadianceField": FieldSchema,
    "csd_exp.tasks.scene3d_editors.CSDEditEditor": CSDEditEditorSchema,
    IN2N_EDITOR: IN2NEditorSchema,
    "csd_exp.data.ImageSource": ImageDataSchema,
    "csd_exp.data.ClipSource": VideoDataSchema,
    "csd_exp.data.SceneSource": SceneDataSchema,
}
SAMPLING_TASKS = (
    "csd_exp.tasks.panorama_sampling.PanoramaSamplingTask",
    "csd_exp.tasks.video_sampling.VideoSamplingTask",
    "csd_exp.tasks.video_fatezero.VideoFateZeroTask",
    "csd_exp.tasks.video_pix2video.VideoPix2VideoTask",
)
