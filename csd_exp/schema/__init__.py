"""Typed schemas of the config groups, checked as soon as a config is composed.

The check runs before torch, diffusers or any model is imported (``csd-exp`` calls
:func:`validate_composed` first; the sweeper calls it for every job of a multirun before the first one
starts), so a bad value costs a second, not a model load, and a sweep with one bad value starts no job.

* :mod:`csd_exp.schema.checks`: typed fields (``Annotated[int, Range(min=1)]`` for bounded numbers,
  ``Literal[...]`` for choices, ``X | None`` where null is allowed) and :func:`check_value`;
* :mod:`csd_exp.schema.nodes`: one dataclass per ``_target_`` whose fields are the constructor parameters a
  config node may set (:data:`TARGET_SCHEMAS`, the ``data`` sources included);
* :mod:`csd_exp.schema.targets`: :func:`check_node` / :func:`check_target`, a node against its target's schema;
* :mod:`csd_exp.schema.rules`: what only a combination of groups can get wrong, and the entry points;
* :mod:`csd_exp.schema.inputs`: what the run would read (input files, folders, scenes, region boxes and masks,
  the checkpoint) and ``optimized_metric``, checked from file headers and folder listings (Pillow, no torch);
* :mod:`csd_exp.schema.regions`: the ``task.regions`` entries of region editing, shared with the task;
* :mod:`csd_exp.schema.composition`: Hydra's composition errors in a line (a mistyped key names the nearest
  ones) and the extra a launcher or sweeper needs (``csd-exp`` uses it before and around Hydra).

A node is matched to its schema by its ``_target_`` (no import needed). A key that the schema does not list
is an error: a key that does nothing must not exist (tests/test_config_keys.py checks that the schemas and
the constructors name the same parameters). A ``_target_`` with no schema is not checked here: its
constructor refuses unknown keys when Hydra instantiates it, so a new class needs no entry to run.

This package imports nothing heavier than the standard library (omegaconf and hydra lazily, in
:func:`validate_composed`; Pillow to read an image header). tests/test_compose_checks.py checks that a refused
run has not imported torch.
"""

from csd_exp.schema.checks import (
    MAX_SEED,
    ConfigError,
    Node,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
    UnitFraction,
    _fields,  # noqa: F401  (tests and tools read a schema's fields through it)
    check_value,
)
from csd_exp.schema.nodes import (
    ANNEALING_RULES,
    BANDWIDTH_RULES,
    CLIP_PRECISIONS,
    DECODERS,
    EDIT_INITS,
    GUIDANCE,
    GUIDANCE_BASELINES,
    IDENTITY_KERNEL,
    IN2N_EDITOR,
    LPIPS_NETS,
    PANORAMA_SAMPLING_METHODS,
    RESIZE_POLICIES,
    SAMPLING_TASKS,
    TARGET_SCHEMAS,
    TORCH_DTYPES,
    VAE_TILE_LATENT,
    WINDOW_SAMPLERS,
    AdamSchema,
    CSDEditEditorSchema,
    DiffusersPriorSchema,
    EditEvaluatorSchema,
    ExactPriorSchema,
    ExtrasSchema,
    FieldSchema,
    GuidanceSchema,
    IdentityKernelSchema,
    ImageDataSchema,
    IN2NEditorSchema,
    InstructPix2PixSchema,
    LoadClipSchema,
    PanoramaSamplingTaskSchema,
    PanoramaTaskSchema,
    RBFKernelSchema,
    ResumeSchema,
    RunSchema,
    Scene3DTaskSchema,
    SceneDataSchema,
    SGDSchema,
    StepLRSchema,
    TaskInputsSchema,
    TimestepScheduleSchema,
    TinyInstructPix2PixSchema,
    TinyPriorSchema,
    TrainerSchema,
    VideoDataSchema,
    VideoSamplingTaskSchema,
    VideoTaskSchema,
)
from csd_exp.schema.rules import (
    CHECKED_NODES,
    GUIDANCE_PRESETS,
    guidance_label,
    hydra_choices,
    validate_composed,
    validate_config,
)
from csd_exp.schema.targets import check_node, check_target

__all__ = [
    "ANNEALING_RULES",
    "DECODERS",
    "AdamSchema",
    "BANDWIDTH_RULES",
    "CHECKED_NODES",
    "CLIP_PRECISIONS",
    "CSDEditEditorSchema",
    "ConfigError",
    "DiffusersPriorSchema",
    "EditEvaluatorSchema",
    "EDIT_INITS",
    "ExactPriorSchema",
    "FieldSchema",
    "GUIDANCE",
    "GUIDANCE_BASELINES",
    "GUIDANCE_PRESETS",
    "GuidanceSchema",
    "IDENTITY_KERNEL",
    "IN2NEditorSchema",
    "IN2N_EDITOR",
    "IdentityKernelSchema",
    "LoadClipSchema",
    "ImageDataSchema",
    "InstructPix2PixSchema",
    "LPIPS_NETS",
    "MAX_SEED",
    "Node",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PANORAMA_SAMPLING_METHODS",
    "PanoramaSamplingTaskSchema",
    "PanoramaTaskSchema",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "RBFKernelSchema",
    "RESIZE_POLICIES",
    "Range",
    "ExtrasSchema",
    "ResumeSchema",
    "RunSchema",
    "SAMPLING_TASKS",
    "SGDSchema",
    "Scene3DTaskSchema",
    "SceneDataSchema",
    "StepLRSchema",
    "TARGET_SCHEMAS",
    "TORCH_DTYPES",
    "VAE_TILE_LATENT",
    "TaskInputsSchema",
    "TimestepScheduleSchema",
    "TinyInstructPix2PixSchema",
    "TinyPriorSchema",
    "TrainerSchema",
    "UnitFraction",
    "VideoDataSchema",
    "VideoSamplingTaskSchema",
    "VideoTaskSchema",
    "WINDOW_SAMPLERS",
    "check_node",
    "check_target",
    "check_value",
    "guidance_label",
    "hydra_choices",
    "validate_composed",
    "validate_config",
]
