"""Rules across config groups, and the entry points :func:`validate_config` / :func:`validate_composed`.

A node's own keys are checked against its constructor (:mod:`csd_exp.schema.targets`); what only the
combination of groups can get wrong is checked here, each with a one-line message that names the override
that fixes it. The rules read what each class declares about itself, never a list of class names:

* a task or editor whose class sets ``uses_guidance = False`` samples (``ReverseSamplingMixin``, the IN2N
  editor) and takes no distillation guidance, kernel or schedule;
* a kernel that sets ``on_images = True`` needs a task that sets ``passes_renders = True``;
* a guidance whose constructor takes ``kernel`` without a default (``csd_exp.distill.Guidance``) needs a kernel;
  ``official_scaling`` needs the baseline whose class declares ``name = "source_branch"`` and a kernel whose class
  declares ``kernel_family = "identity"`` with ``normalize_by_count`` (csd_exp/guidance_names.py);
* a task whose constructor annotates ``prior`` with a class (``prior: StableDiffusionPrior``) needs a model
  that builds one (the model groups offered are those of ``conf/model`` whose ``_target_`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.ast_signatures import (
    built_class,
    class_attribute,
    is_a,
    parameter_classes,
    read_signature,
    required_parameters,
)
from csd_exp.ast_source import Definition
from csd_exp.guidance_names import baseline_of, kernel_family
from csd_exp.guidance_names import short_name as _short
from csd_exp.prior_families import conf_options
from csd_exp.schema.checks import ConfigError, check_keys, check_value
from csd_exp.schema.fields import PositiveInt, Seed
from csd_exp.schema.inputs import check_inputs
from csd_exp.schema.targets import check_target

#: The run's own top-level keys (no constructor takes them as such), and the nodes of infrastructure.
RUN_KEYS = {
    "prompt": str,
    "source_prompt": str,
    "source_caption": str,
    "method": str,
    "optimized_metric": str | None,
    "seed": Seed,
    "ckpt_path": str | None,
    "tags": list,
}
#: The trainer's keys a run's config is read for (the step counts, checked by :func:`_check_steps`; the others
#: are Lightning's, checked by it, and some name the run folder, which a sweep has not made yet).
TRAINER_KEYS = ("max_steps", "max_epochs", "val_check_interval", "log_every_n_steps")
RESUME_KEYS = {"allow_config_change": bool}
EXTRAS_KEYS = {"print_config": bool}
#: The checked keys of ``callbacks.checkpoint`` (csd_exp/infra/checkpoint_files.py): how often a periodic
#: checkpoint is written and how many of the newest are kept (null: all); the rest is ModelCheckpoint's.
CHECKPOINT_FILE_KEYS = {"every_n_train_steps": PositiveInt | None, "keep_last": PositiveInt | None}

#: The presets of conf/guidance, for the message that asks for one.
GUIDANCE_PRESETS = "guidance=csd_edit | csd | sds | csd_edit_no_svgd | csd_edit_random_noise"


def guidance_label(guidance: Mapping[str, Any], choices: Mapping[str, str]) -> str:
    """How messages name the guidance: its preset (``guidance=...``, Hydra's choice, as run names do) or,
    without Hydra's record of the choices, its two axes."""
    if choices.get("guidance"):
        return str(choices["guidance"])
    kernel = guidance.get("kernel") or {}
    return f"{baseline_of(guidance)} baseline with {_short(kernel.get('_target_', 'no kernel'))}"


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
    # Guidance has no default kernel on purpose (SDS and CSD differ only there): a guidance class whose constructor
    # takes ``kernel`` without a default needs one; and kernel=none composes to an empty node that instantiate
    # would pass on as a dict.
    target = guidance["_target_"]
    required = required_parameters(target) if isinstance(target, str) else None
    if not kernel and ("kernel" in guidance or "kernel" in (required or ())):
        raise ConfigError(
            f"guidance={label} couples its particles through a kernel but none is chosen; "
            "add kernel=rbf (or kernel=identity for SDS, kernel=identity_mean for the no-SVGD ablation)"
        )
    kernel_target = kernel.get("_target_")
    # A preset with an overriding kernel (guidance=sds kernel=rbf) is relabelled, not refused (csd_exp/methods.py).
    task_target = (cfg.get("task") or {}).get("_target_")
    # The kernel says it compares renders; the task says whether it passes them (a class that says nothing,
    # or whose source is unreadable, is not refused).
    if (
        isinstance(kernel_target, str)
        and isinstance(task_target, str)
        and class_attribute(kernel_target, "on_images", False) is True
        and class_attribute(task_target, "passes_renders", None) is False
    ):
        raise ConfigError(
            f"kernel={choices.get('kernel') or _short(kernel_target)} compares rendered views, which "
            f"task={choices.get('task') or _short(task_target)} does not pass to the guidance (it couples its "
            "particles on the noisy latents): choose kernel=rbf (or kernel=consensus), or a task that renders "
            "views (task=generation3d)"
        )
    no_svgd = kernel_family(kernel) == "identity_mean"
    if guidance.get("official_scaling") and not (baseline_of(guidance) == "source_branch" and no_svgd):
        raise ConfigError(
            "guidance.official_scaling=true is the official panorama path without SVGD and needs the "
            "source_branch baseline with kernel=identity_mean (guidance=csd_edit_no_svgd), not "
            f"guidance={label} (baseline {baseline_of(guidance)}, kernel {_short(kernel_target)})"
        )


def _samples(target: Any) -> bool:
    """The class says it samples: it sets ``uses_guidance = False`` (itself or through a base)."""
    return isinstance(target, str) and class_attribute(target, "uses_guidance", True) is False


def _builders_of(required: Definition) -> list[str]:
    """The options of conf/model whose ``_target_`` builds a ``required``, by name."""
    return [option for option, target in conf_options("model") if is_a(target, required)]


def _check_prior(cfg: Mapping[str, Any], choices: Mapping[str, str], target: str) -> None:
    """A task whose constructor annotates ``prior`` with classes needs a model that builds one of them; a prior
    class that ``serves_only_tasks_that_name_it`` (a depth-conditioned one) is refused by every other task."""
    required = parameter_classes(target, "prior")
    model_target = (cfg.get("model") or {}).get("_target_")
    if not isinstance(model_target, str):
        return
    task = choices.get("task") or _short(target)
    chosen = choices.get("model") or _short(model_target)
    if required and all(is_a(model_target, cls) is False for cls in required):
        groups = [group for cls in required for group in _builders_of(cls)]
        options = f": choose model={', model='.join(groups)}" if groups else ""
        signature = read_signature(required[0].qualname)
        folder = (
            f" (any folder of such weights: model={groups[0]} model.pretrained_model_name_or_path=/path)"
            if groups and signature is not None and "pretrained_model_name_or_path" in signature.parameters
            else ""
        )
        names = " or a ".join(cls.name for cls in required)
        raise ConfigError(
            f"task={task} edits with a {names} (its constructor's prior), not model={chosen}{options}{folder}"
        )
    built = built_class(model_target)
    if not _exclusive(built):
        return
    if not any(cls.qualname == built.qualname for cls in required):
        takers = _tasks_taking(built)
        others = [group for group, cls in _model_classes() if not _exclusive(cls)]
        raise ConfigError(
            f"model={chosen} ({built.name}) serves only the tasks whose constructor names it as their prior"
            f"{' (task=' + ', task='.join(takers) + ')' if takers else ''}; task={task} needs another model"
            f"{': model=' + ', '.join(others) if others else ''}"
        )


def _exclusive(cls: Definition | None) -> bool:
    return cls is not None and bool(class_attribute(cls.qualname, "serves_only_tasks_that_name_it", False))


def _model_classes() -> list[tuple[str, Definition | None]]:
    """Each option of conf/model with the class its ``_target_`` builds (None where unreadable)."""
    return [(option, built_class(target)) for option, target in conf_options("model")]


def _tasks_taking(prior: Definition) -> list[str]:
    """The options of conf/task whose constructor names ``prior`` among its ``prior`` classes."""
    return [
        option
        for option, target in conf_options("task")
        if any(c.qualname == prior.qualname for c in parameter_classes(target, "prior"))
    ]


def _check_task(cfg: Mapping[str, Any], choices: Mapping[str, str]) -> None:
    task = cfg.get("task") or {}
    target = task.get("_target_")
    check_target("task", task)
    check_target("data", cfg.get("data") or {})  # the data source class (if its source is readable)
    editor = task.get("editor")
    editor_target = editor.get("_target_") if isinstance(editor, Mapping) else None
    task_samples = _samples(target)
    samples = task_samples or _samples(editor_target)
    guidance = cfg.get("guidance") or {}
    distills = "_target_" in guidance
    if samples and distills:
        who = "this sampling baseline" if task_samples else f"editor={choices.get('editor') or _short(editor_target)}"
        raise ConfigError(
            f"{who} uses only the guidance scales (guidance.guidance_scale, guidance.image_guidance_scale); drop "
            f"guidance={guidance_label(guidance, choices)}"
        )
    if isinstance(target, str):
        _check_prior(cfg, choices, target)
        if cfg.get("source_caption") and class_attribute(target, "takes_caption", True) is False:
            raise ConfigError(
                f"task={choices.get('task') or _short(target)} edits no source, so source_caption="
                f"{cfg['source_caption']!r} (old name source_prompt) would do nothing; drop it"
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
    for key, annotation in RUN_KEYS.items():
        check_value(key, cfg.get(key), annotation)
    _check_steps(cfg.get("trainer") or {})
    if isinstance(cfg.get("resume"), Mapping):
        check_keys("resume", cfg["resume"], RESUME_KEYS, "resume")
    if isinstance(cfg.get("extras"), Mapping):
        check_keys("extras", cfg["extras"], EXTRAS_KEYS, "extras")
    checkpoint = (cfg.get("callbacks") or {}).get("checkpoint")
    if isinstance(checkpoint, Mapping):  # its file settings; the rest is ModelCheckpoint's, checked by it
        files = {k: v for k, v in checkpoint.items() if k in CHECKPOINT_FILE_KEYS}
        check_keys("callbacks.checkpoint", files, CHECKPOINT_FILE_KEYS, "the checkpoint files")
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
    "source_caption",
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
    from omegaconf import OmegaConf

    from csd_exp.methods import hydra_node

    node = hydra_node(cfg, "runtime.choices")
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
                node = OmegaConf.create({k: node[k] for k in TRAINER_KEYS if k in node})
            elif key == "callbacks":  # likewise: the checkpoint's file settings, not its folder
                checkpoint = node.get("checkpoint") if OmegaConf.is_dict(node) else None
                fields = CHECKPOINT_FILE_KEYS if OmegaConf.is_dict(checkpoint) else {}
                node = OmegaConf.create({"checkpoint": {k: checkpoint[k] for k in fields if k in checkpoint}})
            plain[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException as error:
            raise ConfigError(f"{key}: {error}".splitlines()[0]) from None
    validate_config(plain, hydra_choices(cfg))
