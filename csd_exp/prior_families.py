"""The prior family and the latent factor of a model node, read from the class it builds without importing it
(:mod:`csd_exp.ast_signatures`), so that the compose-time check stays free of torch (csd_exp/methods.py uses both)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csd_exp.ast_signatures import built_class, class_attribute, is_a, parameter_classes
from csd_exp.ast_source import module_constant, module_file

INSTRUCTION, TEXT_TO_IMAGE, DEPTH = "instruction", "text_to_image", "depth"


def _built(model: Mapping[str, Any]) -> str | None:
    """The qualified name of the class a model node builds (its ``_target_``, or the class a factory returns)."""
    target = str(model.get("_target_") or "")
    built = built_class(target) if "." in target else None
    return built.qualname if built is not None else None


def prior_family(model: Mapping[str, Any] | None) -> str | None:
    """The family a class declares as its ``prior_family`` (``depth``: Stable Diffusion 2 depth-to-image), else
    ``instruction`` (``supports_image_condition``: InstructPix2Pix, the exact prior) or ``text_to_image``
    (Stable Diffusion, DeepFloyd IF, the exact generation prior); None (no model, or a class not read)."""
    built = _built(model or {})
    if built is None:
        return None
    declared = class_attribute(built, "prior_family")
    if declared is not None:
        return str(declared)
    image = class_attribute(built, "supports_image_condition")
    return (INSTRUCTION if image else TEXT_TO_IMAGE) if isinstance(image, bool) else None


def latent_factor(model: Mapping[str, Any] | None) -> int | None:
    """Image pixels per latent pixel of a model node, read without building it: the exact priors'
    ``downsample``; the ``latent_scale_factor`` the built class sets (DeepFloyd IF: 1); a diffusers folder's VAE
    (2^(levels - 1) from vae/config.json; 8, Stable Diffusion's, for a hub id); the tiny pipelines' VAE
    (csd_exp/priors/tiny.py). None where unknown."""
    model = model or {}
    if model.get("downsample") is not None:
        return int(model["downsample"])
    built = _built(model)
    declared = class_attribute(built, "latent_scale_factor") if built else None
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    weights = model.get("pretrained_model_name_or_path")
    if weights:
        config = Path(str(weights), "vae", "config.json")
        if config.is_file():
            return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)
        return 8
    if "cache_dir" in model and "." in str(model.get("_target_") or ""):  # a tiny pipeline (csd_exp/priors/tiny.py)
        channels = module_constant("csd_exp.priors.tiny", "TINY_BLOCK_OUT_CHANNELS")
        return 2 ** (len(channels) - 1) if channels else None
    return None


def conf_options(group: str) -> list[tuple[str, str]]:
    """(option, ``_target_``) of each option of conf/<group> that names one: its first ``_target_``, read as text
    (a task's node precedes the nodes it holds), without composing or importing anything."""
    import re

    found = module_file("csd_exp.conf")
    if found is None:
        return []
    options = []
    for path in sorted((found[0].parent / group).glob("*.yaml")):
        target = re.search(r"^\s*_target_:\s*([\w.]+)", path.read_text(errors="replace"), re.M)
        if target:
            options.append((path.stem, target.group(1)))
    return options


def model_options_for(task_target: str | None, families: tuple[str, ...]) -> list[str]:
    """The options of conf/model a task can run on, by name (``sd15, sd21, tiny_sd``), for a message: those
    building a class its constructor names as its ``prior`` (FateZero: ``StableDiffusionPrior``), else those of
    ``families``."""
    required = parameter_classes(task_target, "prior") if task_target else ()
    return [
        option
        for option, target in conf_options("model")
        if (any(is_a(target, cls) for cls in required) if required else prior_family({"_target_": target}) in families)
    ]
