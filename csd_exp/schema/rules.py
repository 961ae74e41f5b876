"""Rules across config groups, and the entry points :func:`validate_config` / :func:`validate_composed`.

A node's own keys are checked by its schema (:mod:`csd_exp.schema.nodes`); what only the combination of groups
can get wrong (a kernel chosen for a task that uses none, a flag that only one guidance preset honours) is
checked here, each with a one-line message that names the override that fixes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.schema.checks import ConfigError, _fields, check_value
from csd_exp.schema.inputs import check_inputs
from csd_exp.schema.nodes import (
    GUIDANCE,
    IDENTITY_KERNEL,
    IMAGE_KERNELS,
    IN2N_EDITOR,
    SAMPLING_TASKS,
    SOURCE_BRANCH,
    VIEW_TASKS,
    CheckpointFilesSchema,
    ExtrasSchema,
    ResumeSchema,
    RunSchema,
    TrainerSchema,
)
from csd_exp.schema.targets import check_node, check_target

#: Choices of the zero-shot video baselines (csd_exp/priors/attention_control.py, csd_exp/tasks/video_fatezero.py).
TEMPORAL_ATTENTION_FRAMES = ("first", "previous", "self", "middle", "last")
UNET_PLACES = ("down", "mid", "up")
#: FateZero and Pix2Video run on a Stable Diffusion text-to-image prior: these targets, these model groups.
TEXT_TO_IMAGE_TASKS = SAMPLING_TASKS[-2:]
TEXT_TO_IMAGE_PRIORS = ("csd_exp.priors.StableDiffusionPrior", "csd_exp.priors.tiny_stable_diffusion_prior")
TEXT_TO_IMAGE_MODEL_GROUPS = ("sd15", "sd21", "tiny_sd")

#: The presets of conf/guidance, for the message that asks for one.
GUIDANCE_PRESETS = "guidance=csd_edit | csd | sds | csd_edit_no_svgd | csd_edit_random_noise"


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def _baseline(guidance: Mapping[str, Any]) -> str:
    """The guidance's baseline as messages name it: its short name, or its class for a ``_target_`` node."""
    baseline = guidance.get("baseline")
    if isinstance(baseline, Mapping):
        target = baseline.get("_target_")
        return "source_branch" if target == SOURCE_BRANCH else _short(target)
    return str(baseline)


def guidance_label(guidance: Mapping[str, Any], choices: Mapping[str, str]) -> str:
    """How messages name the guidance: its preset (``guidance=...``, Hydra's choice, as run names do) or,
    without Hydra's record of the choices, its two axes."""
    if choices.get("guidance"):
        return str(choices["guidance"])
    kernel = guidance.get("kernel") or {}
    return f"{_baseline(guidance)} baseline with {_short(kernel.get('_target_', 'no kernel'))}"


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


def _check_guidance(cfg: Mapping[str, Any], choices: Mapping[str, str]) -> None:
    """The two axes of a distillation guidance: a kernel is always chosen, and the presets keep their meaning."""
    guidance = cfg.get("guidance") or {}
    if "_target_" not in guidance:
        return  # sampling baselines: _check_task has checked the groups
    label = guidance_label(guidance, choices)
    kernel = guidance.get("kernel") or {}
    # Guidance has no default kernel on purpose (SDS and CSD differ only there), and kernel=none composes
    # to an empty node that instantiate would pass on as a dict.
    if not kernel and (guidance["_target_"] == GUIDANCE or "kernel" in guidance):
        raise ConfigError(
            f"guidance={label} couples its particles through a kernel but none is chosen; "
            "add kernel=rbf (or kernel=identity for SDS, kernel=identity_mean for the no-SVGD ablation)"
        )
    kernel_target = kernel.get("_target_")
    # A preset with an overriding kernel (guidance=sds kernel=rbf) is relabelled, not refused (csd_exp/methods.py).
    task_target = str((cfg.get("task") or {}).get("_target_", ""))
    # Only the project's own tasks are known here; a task from outside the package may pass renders itself.
    if kernel_target in IMAGE_KERNELS and task_target.startswith("csd_exp.tasks.") and task_target not in VIEW_TASKS:
        raise ConfigError(
            f"kernel={choices.get('kernel') or _short(kernel_target)} compares rendered views, which only "
            f"task=generation3d passes to the guidance; task={choices.get('task') or _short(task_target)} couples "
            "its particles on the noisy latents: choose kernel=rbf (or kernel=consensus)"
        )
    no_svgd = kernel_target == IDENTITY_KERNEL and kernel.get("normalize_by_count") is True
    if guidance.get("official_scaling") and not (_baseline(guidance) == "source_branch" and no_svgd):
        raise ConfigError(
            "guidance.official_scaling=true is the official panorama path without SVGD and needs the "
            "source_branch baseline with kernel=identity_mean (guidance=csd_edit_no_svgd), not "
            f"guidance={label} (baseline {_baseline(guidance)}, kernel {_short(kernel_target)})"
        )


def _check_task(cfg: Mapping[str, Any], choices: Mapping[str, str]) -> None:
    task = cfg.get("task") or {}
    target = task.get("_target_")
    check_target("task", task)
    check_target("data", cfg.get("data") or {})  # the data source class (if it has a schema)
    editor = task.get("editor")
    samples = target in SAMPLING_TASKS or (isinstance(editor, Mapping) and editor.get("_target_") == IN2N_EDITOR)
    guidance = cfg.get("guidance") or {}
    distills = "_target_" in guidance
    if samples and distills:
        raise ConfigError(
            f"{'editor=in2n' if target not in SAMPLING_TASKS else 'this sampling baseline'} uses only "
            f"the guidance scales (guidance.guidance_scale, guidance.image_guidance_scale); drop "
            f"guidance={guidance_label(guidance, choices)}"
        )
    model_target = (cfg.get("model") or {}).get("_target_")
    if target in TEXT_TO_IMAGE_TASKS and model_target not in TEXT_TO_IMAGE_PRIORS:
        chosen = choices.get("model") or _short(model_target)
        raise ConfigError(
            f"task={choices.get('task') or _short(target)} edits with a Stable Diffusion text-to-image prior, not "
            f"model={chosen}: choose model={', model='.join(TEXT_TO_IMAGE_MODEL_GROUPS)} (any SD 1.x / 2.x "
            "folder: model=sd15 model.pretrained_model_name_or_path=/path)"
        )
    if not samples and not distills:
        raise ConfigError(f"this task distils the prior and needs a guidance preset: {GUIDANCE_PRESETS}")
    if samples:
        for group in ("kernel", "schedule"):
            if cfg.get(group):
                raise ConfigError(
                    f"this task samples without distillation, so the {group} group would do "
                    f"nothing; drop the {group} override ({group}=none)"
                )


def validate_config(cfg: Mapping[str, Any], choices: Mapping[str, str] | None = None) -> None:
    """Check a resolved config (plain containers); raise :class:`ConfigError` naming the first bad key.

    ``choices`` are Hydra's group choices (``hydra.runtime.choices``: group -> option) where known; the
    rules that depend on a preset's name (not only on its values) apply only with them.
    """
    choices = choices or {}
    for key, annotation in _fields(RunSchema).items():
        check_value(key, cfg.get(key), annotation)
    _check_steps(cfg.get("trainer") or {})
    if isinstance(cfg.get("resume"), Mapping):
        check_node("resume", cfg["resume"], ResumeSchema)
    if isinstance(cfg.get("extras"), Mapping):
        check_node("extras", cfg["extras"], ExtrasSchema)
    checkpoint = (cfg.get("callbacks") or {}).get("checkpoint")
    if isinstance(checkpoint, Mapping):  # its file settings; the rest is ModelCheckpoint's, checked by it
        fields = _fields(CheckpointFilesSchema)
        check_node("callbacks.checkpoint", {k: v for k, v in checkpoint.items() if k in fields}, CheckpointFilesSchema)
    check_target("model", cfg.get("model"))
    check_target("kernel", cfg.get("kernel"))  # before guidance, which holds them too: name the
    check_target("schedule", cfg.get("schedule"))  # key the way the user set it
    check_target("guidance", cfg.get("guidance"))
    _check_task(cfg, choices)
    _check_guidance(cfg, choices)
    _check_metrics(cfg.get("metrics"))
    check_inputs(cfg)  # last: the files are read only once every value is known to be well-formed


def _check_metrics(metrics: Any) -> None:
    """``metrics`` is a node with a ``_target_`` (checked by its schema), or empty (no evaluator)."""
    if isinstance(metrics, Mapping) and metrics and "_target_" not in metrics:
        raise ConfigError(
            f"metrics sets {', '.join(map(str, metrics))} but names no _target_; use metrics=default, "
            "or metrics=none for the weight-free metrics only"
        )
    check_target("metrics", metrics)


#: Top-level nodes the checks read (of ``callbacks`` only the checkpoint's file settings); the others (paths,
#: logger, hydra) hold no run settings that the schemas cover, and resolving them may need a job's run folder,
#: which a sweep has not made yet.
CHECKED_NODES = (
    "prompt",
    "method",
    "optimized_metric",
    "source_prompt",
    "seed",
    "ckpt_path",
    "tags",
    "extras",
    "trainer",
    "callbacks",
    "resume",
    "model",
    "guidance",
    "kernel",
    "schedule",
    "task",
    "data",
    "metrics",
)


def hydra_choices(cfg: Any) -> dict[str, str]:
    """Hydra's group choices for ``cfg``: its own ``hydra`` node if it has one (``compose(...,
    return_hydra_config=True)``, as the sweep check composes each job), else the running job's; {} outside Hydra.

    The sweep check must pass its own: while it runs, the global Hydra config is the multirun's, not the job's.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if "hydra" in cfg:
        node = OmegaConf.select(cfg, "hydra.runtime.choices")
    elif HydraConfig.initialized():
        node = HydraConfig.get().runtime.choices
    else:
        return {}
    plain = OmegaConf.to_container(node) if OmegaConf.is_config(node) else dict(node or {})
    return {group: option for group, option in plain.items() if isinstance(option, str)}


def validate_composed(cfg: Any) -> None:
    """:func:`validate_config` on a composed ``DictConfig`` (interpolations resolved node by node)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from csd_exp.methods import MethodError, apply_to_composed

    try:  # the method's prior family (cfg.model may become ${priors.<family>}) and its fit, first
        apply_to_composed(cfg)
    except MethodError as error:
        raise ConfigError(str(error)) from None
    plain: dict[str, Any] = {}
    for key in CHECKED_NODES:
        if key not in cfg:
            continue
        try:
            node = cfg[key]
            if key == "trainer":  # only the keys checked: others name the run folder, not made yet in a sweep
                node = OmegaConf.create({k: node[k] for k in _fields(TrainerSchema) if k in node})
            elif key == "callbacks":  # likewise: the checkpoint's file settings, not its folder
                checkpoint = node.get("checkpoint") if OmegaConf.is_dict(node) else None
                fields = _fields(CheckpointFilesSchema) if OmegaConf.is_dict(checkpoint) else {}
                node = OmegaConf.create({"checkpoint": {k: checkpoint[k] for k in fields if k in checkpoint}})
            plain[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException as error:
            raise ConfigError(f"{key}: {error}".splitlines()[0]) from None
    validate_config(plain, hydra_choices(cfg))
