"""Methods: the axis of comparison. A run's label follows the maths that runs, never the reverse.

``method=<label>`` (conf/method/<label>.yaml) chooses a guidance preset (the distillation methods) or the
baseline's task within the experiment's modality (``modality``, set by the task and the experiment). The
label a run records (``method`` in the config, ``summary.json``, the W&B tags and the run folder) is then
*derived* from what runs (:func:`derive_label`):

- a distillation (a guidance with ``_target_``): from (baseline, kernel family, prior family): the source
  branch with a coupling kernel is ``csd_edit`` (the kernel recorded beside it), with ``identity_mean``
  ``csd_edit_no_svgd``, with ``identity`` ``dds``; random noise with an identity kernel is ``sds``, with a
  coupling kernel ``csd_edit_random_noise`` on an instruction prior and ``csd`` on a text-to-image prior;
- a baseline that samples (no guidance object): the label its task config declares (``method``).

A method brings the prior family it needs (:data:`METHODS`): ``model`` when it is of that family (so in a
single-method run ``model=`` / ``model.*`` choose the prior as before), else the family's own setting,
``priors.instruction`` / ``priors.text_to_image`` (conf/config.yaml). A model given on the command line that
does not fit is refused, as is a method of another modality, in one line naming the methods that fit.

The prior family of a model node is read from the class it builds without importing it (its ``prior_family``,
else ``supports_image_condition``: csd_exp/prior_families.py on :mod:`csd_exp.ast_signatures`), so the compose-time
check stays free of torch.

``trainer.max_steps`` has one documented meaning per method (:data:`STEPS_MEANING`): distillation methods and
IN2N count updates; the sampling baselines take it as ``task.num_inference_steps`` (denoising steps over the
whole t range) unless that is given; FateZero and Pix2Video run that many inversion steps and as many editing
steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from csd_exp.guidance_names import KERNEL_FAMILIES, baseline_of, kernel_family
from csd_exp.guidance_names import short_name as _short
from csd_exp.prior_families import DEPTH, INSTRUCTION, TEXT_TO_IMAGE, latent_factor, model_options_for, prior_family

#: Modalities whose experiments a distillation method runs on, with the experiment's own task.
DISTILL_MODALITIES = ("panorama", "panorama_region", "video", "scene3d", "generation3d")
UPDATES = "updates"
DENOISING = "denoising steps over the whole t range"
INVERT_EDIT = "inversion steps and editing steps each"


@dataclass(frozen=True)
class Method:
    modalities: tuple[str, ...]
    family: str | None  # the prior family it needs; None: the prior chosen (any family)
    steps_meaning: str
    distills: bool = True
    also: tuple[str, ...] = ()  # other families it runs on when ``model`` is of one (a variant, recorded as such)


_EDIT = tuple(m for m in DISTILL_MODALITIES if m != "generation3d")  # a source image to branch from
METHODS: dict[str, Method] = {
    "csd_edit": Method(_EDIT, INSTRUCTION, UPDATES),
    "csd_edit_no_svgd": Method(_EDIT, INSTRUCTION, UPDATES),
    "dds": Method(_EDIT, None, UPDATES),
    "csd_edit_coupled": Method(_EDIT, INSTRUCTION, UPDATES),
    "csd_edit_random_noise": Method(_EDIT, INSTRUCTION, UPDATES),
    "csd": Method(DISTILL_MODALITIES, TEXT_TO_IMAGE, UPDATES),
    "sds": Method(DISTILL_MODALITIES, None, UPDATES),
    "per_frame": Method(("video",), INSTRUCTION, DENOISING, False),
    "multidiffusion": Method(("panorama",), INSTRUCTION, DENOISING, False),
    "per_window": Method(("panorama",), INSTRUCTION, DENOISING, False),
    "downscaled": Method(("panorama",), INSTRUCTION, DENOISING, False),
    "fatezero": Method(("video",), TEXT_TO_IMAGE, INVERT_EDIT, False),
    "pix2video": Method(("video",), DEPTH, INVERT_EDIT, False, (TEXT_TO_IMAGE,)),
    "in2n": Method(("scene3d",), INSTRUCTION, UPDATES, False),
}


class MethodError(ValueError):
    """A method that does not fit the experiment's modality or the chosen model (one line)."""


# ------------------------------------------------------------------ labels
def kernel_name(kernel: Mapping[str, Any] | None) -> str | None:
    """The kernel as recorded beside the label (summary ``kernel``, W&B tag ``kernel:<name>``)."""
    if not kernel or "_target_" not in kernel:
        return None
    family = kernel_family(kernel)
    return (
        family
        if family not in ("coupling", "released_coupling")
        else _short(kernel["_target_"]).removesuffix("Kernel").lower()
    )


def distill_label(baseline: str, kernel: str | None, family: str | None) -> str:
    """The label of a distillation's maths (module docstring)."""
    if kernel is not None and kernel not in ("identity_mean", *KERNEL_FAMILIES):
        return f"{baseline}_{kernel}"  # a kernel class from outside the package that declares a family of its own
    if baseline == "source_branch":
        labels = {"released_coupling": "csd_edit_coupled", "identity_mean": "csd_edit_no_svgd", "identity": "dds"}
        return labels.get(kernel, "csd_edit")
    if baseline == "random_noise":
        if kernel in ("identity", "identity_mean"):
            return "sds"
        return "csd" if family == TEXT_TO_IMAGE else "csd_edit_random_noise"
    return f"{baseline}_{kernel or 'no_kernel'}"  # a baseline class from outside the package


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def running_prior(cfg: Any, requested: str | None) -> tuple[Any, str]:
    """(the model node the run uses, where it comes from: ``model`` or ``priors.<family>``)."""
    method = METHODS.get(str(requested)) if requested else None
    model = cfg.get("model")
    if method is None or method.family is None:
        return model, "model"
    if prior_family(_plain(model)) in (method.family, None, *method.also):
        return model, "model"
    priors = cfg.get("priors") or {}
    if method.family in priors:
        return priors[method.family], f"priors.{method.family}"
    return model, "model"


def derive_label(cfg: Any, requested: str | None = None) -> str:
    """The run's label from what runs (module docstring); ``requested`` is the ``method=`` choice, if any."""
    guidance = cfg.get("guidance") or {}
    if "_target_" not in guidance:
        task = cfg.get("task") or {}
        return str(task.get("method") or "sampling")
    model, _ = running_prior(cfg, requested)
    return distill_label(baseline_of(guidance), kernel_family(_plain(cfg.get("kernel"))), prior_family(_plain(model)))


def _label_resolver(requested: Any = None, *, _root_: Any) -> str:
    return derive_label(_root_, None if requested in (None, "None", "null") else str(requested))


def register_resolvers() -> None:
    """``${method_label:<method choice>}`` (conf/config.yaml ``method``): the run's derived label."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("method_label"):
        OmegaConf.register_new_resolver("method_label", _label_resolver)


# ------------------------------------------------------------------ fitting a method to the run
def fitting(modality: str | None, family: str | None = None) -> list[str]:
    """Methods of ``modality`` (and of the prior ``family``, when given)."""
    return [
        name
        for name, method in METHODS.items()
        if (modality is None or modality in method.modalities)
        and (family is None or method.family in (None, family) or family in method.also)
    ]


def _options(cfg: Any, method: Method) -> str:
    """``model=sd15, model=sd21, model=tiny_sd``: the models the method's task takes, for the message."""
    task_target = (cfg.get("task") or {}).get("_target_")
    options = model_options_for(task_target, (method.family, *method.also))
    return ", ".join(f"model={option}" for option in options) or f"a {method.family} model"


def _with_article(family: str) -> str:
    word = family.replace("_", "-")
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _model_given(overrides: list[str]) -> str | None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "model" or key.lstrip("+~").startswith("model."):
            return f"{key}={value}"
    return None


def apply_method(cfg: Any, requested: str | None, overrides: list[str]) -> str | None:
    """Give the run the prior its method needs (``cfg.model`` becomes ``${priors.<family>}`` where ``model``
    is of another family) and refuse a method that does not fit, raising :class:`MethodError` (one line).
    ``requested`` is the ``method=`` choice, ``overrides`` the job's command-line overrides. Returns where
    the prior comes from (``model`` or ``priors.<family>``); idempotent."""
    from omegaconf import open_dict

    if not requested:
        return "model"
    method = METHODS.get(requested)
    modality = cfg.get("modality")
    if method is None:
        raise MethodError(
            f"method={requested} is unknown; methods for {modality or 'this task'}: {', '.join(fitting(modality))}"
        )
    if modality is not None and modality not in method.modalities:
        raise MethodError(
            f"method={requested} runs on {' / '.join(method.modalities)}, not on this {modality} experiment; "
            f"methods that fit: {', '.join(fitting(modality))}"
        )
    declared = METHODS.get(str(cfg.get("method")))
    if method.distills and declared is not None and not declared.distills:  # the experiment chose a baseline task
        raise MethodError(
            f"method={requested} distils on the experiment's own task, but this experiment runs the "
            f"{cfg.get('method')} baseline's task; methods that fit it: {cfg.get('method')} (compare methods on an "
            f"experiment of the {modality} modality, e.g. experiment={modality}_exact_cpu)"
        )
    if prior_source(cfg).startswith("priors."):
        return prior_source(cfg)  # already applied
    model_family = prior_family(_plain(cfg.get("model")))
    if method.family is None or model_family in (None, method.family, *method.also):
        return "model"
    given = _model_given(overrides)
    if given:
        raise MethodError(
            f"method={requested} needs {_with_article(method.family)} prior"
            f"{''.join(f' (or {_with_article(f)} one, its variant)' for f in method.also)}, but {given} is "
            f"{_with_article(model_family)} one: choose {_options(cfg, method)}, or a method that fits it: "
            f"{', '.join(fitting(modality, model_family))} (or drop {given.split('=')[0]}: the method takes "
            f"priors.{method.family})"
        )
    if method.family not in (cfg.get("priors") or {}):
        raise MethodError(f"method={requested} needs priors.{method.family} (conf/config.yaml), which is not set")
    keep_pixels(cfg, _plain(cfg.get("model")), _plain(cfg.priors[method.family]))
    with open_dict(cfg):
        cfg.model = f"${{priors.{method.family}}}"
    return f"priors.{method.family}"


#: Sizes in latent px (x the prior's VAE factor = pixels) that fix a particle's pixels.
LATENT_SIZE_KEYS = (
    "task.frame_size",
    "task.window_size",
    "task.window_stride",
    "task.image_size",
    "data.short_side",
    "data.image_size",
)


def keep_pixels(cfg: Any, model: Mapping[str, Any], prior: Mapping[str, Any]) -> None:
    """The particles of a method that takes another prior than ``model`` keep their size in pixels: the
    latent-px sizes (:data:`LATENT_SIZE_KEYS`, in ``model``'s latent px) are rescaled to ``prior``'s."""
    from omegaconf import OmegaConf

    source, target = latent_factor(model), latent_factor(prior)
    if not source or not target or source == target:
        return
    for key in LATENT_SIZE_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if (value * source) % target:
            raise MethodError(
                f"{key}={value} latent px is {value * source} px, which the prior this method takes "
                f"({target} px per latent px) cannot hold: choose a multiple of {target // math.gcd(source, target)}"
            )
        OmegaConf.update(cfg, key, value * source // target, force_add=False)


def prior_source(cfg: Any) -> str:
    """``model`` or ``priors.<family>``: the setting the run's prior came from."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg) and OmegaConf.is_interpolation(cfg, "model"):
        return str(cfg._get_node("model")._value()).strip("${}")
    return "model"


# ------------------------------------------------------------------ the conditions block of summary.json
def conditions(resolved: Mapping[str, Any], *, latent_scale_factor: int | None, family: str | None) -> dict:
    """What a comparison must hold equal, for the report: input, frames, one particle's size in pixels, steps
    and their meaning, the two scales (ω_s null where the prior reads none), seed and UNet passes per step."""
    task = resolved.get("task") or {}
    data = resolved.get("data") or task.get("data") or {}
    guidance = resolved.get("guidance") or {}
    trainer = resolved.get("trainer") or {}
    label = str(resolved.get("method"))
    method = METHODS.get(label)
    side = next((task[k] for k in ("frame_size", "window_size", "image_size") if task.get(k)), None)
    side = side or data.get("image_size")
    size = [int(side) * int(latent_scale_factor)] * 2 if side and latent_scale_factor else None
    sampling = "num_inference_steps" in task
    steps = task.get("num_inference_steps") if sampling else trainer.get("max_steps")
    meaning = method.steps_meaning if method else (DENOISING if sampling else UPDATES)
    is_clip = "max_frames" in data
    return {
        "input": None if data.get("path") is None else str(data.get("path")),
        "frames": int(data["max_frames"]) if is_clip and data.get("max_frames") is not None else None,
        "size_px": size,
        "steps": steps,
        "steps_meaning": meaning,
        "guidance_scale": guidance.get("guidance_scale"),
        "image_guidance_scale": guidance.get("image_guidance_scale") if family not in (TEXT_TO_IMAGE, DEPTH) else None,
        "seed": resolved.get("seed"),
        "unet_passes_per_step": unet_rows_per_step(resolved, family),
    }


#: UNet rows per particle of one guidance evaluation (classifier-free guidance): the targets' rows (instruction
#: prior: text+image, image, unconditional; text-to-image: text, unconditional), plus the source branch's
#: (image, unconditional; text-to-image: unconditional), plus one with DDS's guidance.source_prompt.
ROWS_PER_PARTICLE = {
    (INSTRUCTION, "random_noise"): 3,
    (INSTRUCTION, "source_branch"): 5,
    (TEXT_TO_IMAGE, "random_noise"): 2,
    (TEXT_TO_IMAGE, "source_branch"): 3,
}


def unet_rows_per_step(resolved: Mapping[str, Any], family: str | None) -> int | None:
    """UNet rows (one row = one image through the UNet, or the exact prior's equivalent) of one step of a
    distillation, or of a per-frame / downscaled sampling step; None where a step's count varies or is unknown
    (scene3d edit rounds, MultiDiffusion / per-window's canvas-dependent windows, FateZero, Pix2Video)."""
    task = resolved.get("task") or {}
    data = resolved.get("data") or {}
    guidance = resolved.get("guidance") or {}
    label = str(resolved.get("method"))
    if "_target_" not in guidance:
        rows = 3 if family == INSTRUCTION else 2
        if label == "per_frame" and data.get("max_frames"):
            return rows * int(data["max_frames"])
        return rows if label == "downscaled" else None
    baseline = baseline_of(guidance)
    rows = ROWS_PER_PARTICLE.get((family, baseline))
    if rows is None or "editor" in task:  # a 3D scene's steps are photometric or a whole edit round
        return None
    rows += 1 if baseline == "source_branch" and guidance.get("source_prompt") else 0
    particles = next((task[k] for k in ("windows_per_step", "views_per_step") if task.get(k)), None)
    if "frame_size" in task:
        particles = task.get("frames_per_step") or data.get("max_frames")
    return rows * int(particles) if particles else None


def hydra_node(cfg: Any, key: str) -> Any:
    """``hydra.<key>`` of ``cfg``'s own hydra node (a sweep check's job), else of the running job; None outside."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if "hydra" in cfg:
        return OmegaConf.select(cfg, f"hydra.{key}")
    return OmegaConf.select(HydraConfig.get(), key) if HydraConfig.initialized() else None


def requested_method(cfg: Any) -> str | None:
    """The ``method=`` choice; without one, a sampling baseline's own label (``task=video_fatezero``)."""
    choices = hydra_node(cfg, "runtime.choices") or {}
    chosen = choices.get("method") if hasattr(choices, "get") else None
    if chosen:
        return str(chosen)
    if "_target_" not in (cfg.get("guidance") or {}):
        label = cfg.get("method")
        return str(label) if str(label) in METHODS else None
    return None


def apply_to_composed(cfg: Any) -> str | None:
    """:func:`apply_method` with the job's own method choice and command-line overrides (Hydra's record)."""
    overrides = [str(item) for item in (hydra_node(cfg, "overrides.task") or [])]
    take_old_caption(cfg)
    return apply_method(cfg, requested_method(cfg), overrides)


def take_old_caption(cfg: Any) -> bool:
    """A top-level ``source_prompt`` (the caption's old name) fills an empty ``source_caption``; True if it was
    given (the run says so once: :data:`OLD_CAPTION_NOTICE`)."""
    from omegaconf import open_dict

    old = cfg.get("source_prompt")
    if not old or "source_caption" not in cfg:
        return False
    if not cfg.get("source_caption"):
        with open_dict(cfg):
            cfg.source_caption = old
    return True


OLD_CAPTION_NOTICE = (
    "source_prompt= is the old name of source_caption= (the CLIP caption, the inversion prompt); "
    "DDS's source-branch text is guidance.source_prompt"
)


register_resolvers()  # the config's ${method_label:...}: whoever composes imports this (csd_exp.conf, run, schema)
