"""``summary.json``: the one file every run leaves in its folder, whatever happened (see csd_exp/run.py).

Imports nothing heavy, so a run refused at config time still leaves one.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = (
    "csd-exp",
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "diffusers",
    "transformers",
    "open-clip-torch",
    "torchmetrics",
    "wandb",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def group_choices() -> dict[str, str]:
    """The config group options of this job (task, model, experiment, ...); {} outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def run_identity(cfg: Any) -> dict[str, str | None]:
    """What ran, at the top of ``summary.json``: ``task`` (the task option), ``method`` (the run's label),
    ``model`` (the model option) and ``model_id`` (the weights' hub id or folder, else the option), so a report
    reads them instead of recovering them from folder or class names (for a method that takes another prior
    family than ``model``'s, the ``priors.<family>`` option). ``model_family`` (the prior's ``name``), ``kernel``
    and ``conditions`` are added once the prior is built (``csd_exp.run.run_record``)."""
    from omegaconf import OmegaConf

    from csd_exp.methods import prior_source

    choices = group_choices()  # {} without a Hydra context (a config composed by hand): options unknown
    method = OmegaConf.select(cfg, "method", default=None)
    setting = prior_source(cfg)  # model, or priors.<family> for a method of another prior family
    option = choices.get("model" if setting == "model" else f"model@{setting}")
    model_id = OmegaConf.select(cfg, "model.pretrained_model_name_or_path", default=None) or option
    return {
        "task": choices.get("task"),
        "method": None if method is None else str(method),
        "model": option,
        "model_id": None if model_id is None else str(model_id),
    }


#: The W&B tag of a run made with a baseline's non-released behaviour (``release_deviations`` not empty).
NON_RELEASED_TAG = "non-released"


def release_deviations(task: Any) -> list[str]:
    """``task.release_deviations()`` as a list of strings (``summary.json``'s ``release_deviations``): how the
    run departs from the released code of the baseline it runs; [] for a task without the method."""
    method = getattr(task, "release_deviations", None)
    return [str(note) for note in method()] if callable(method) else []


def _non_finite_reason(name: str, value: float) -> str:
    text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == math.inf and name.rsplit("/", 1)[-1].endswith("psnr"):
        return f"{text}: identical images (zero error)"
    return text


def json_safe(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``summary`` that is valid JSON: every NaN or infinite float (JSON has none; Python's
    ``json`` would write ``NaN`` / ``Infinity``) becomes null, and ``"non_finite"`` says what each was,
    e.g. ``{"fidelity/psnr": "inf: identical images (zero error)"}``. Metrics are named as in
    ``"metrics"``, other values by their dotted path (``config.trainer.gradient_clip_val``)."""
    reasons: dict[str, str] = dict(summary.get("non_finite") or {})

    def clean(value: Any, name: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            reasons[name] = _non_finite_reason(name, value)
            return None
        if isinstance(value, Mapping):
            return {key: clean(item, f"{name}.{key}" if name else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{name}.{index}") for index, item in enumerate(value)]
        return value

    safe = {}
    for key, value in summary.items():
        if key == "metrics" and isinstance(value, Mapping):  # metric names as summary.json lists them
            safe[key] = {name: clean(item, str(name)) for name, item in value.items()}
        elif key != "non_finite":
            safe[key] = clean(value, str(key))
    if reasons:
        safe["non_finite"] = reasons
    return safe


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` as JSON atomically: a reader never sees half a file, a failed write leaves none.
    Non-finite numbers are written as null with a reason (:func:`json_safe`)."""
    from csd_exp.infra.run_folder import write_json_atomically

    write_json_atomically(Path(path), json_safe(summary))


def write_failed_summary(cfg: Any, error: str) -> Path | None:
    """``summary.json`` of a run refused before it started (bad config value); None if it has no folder."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        folder = Path(cfg.paths.output_dir)
    except OmegaConfBaseException:  # a config too broken to name its folder: the message alone says it
        return None
    config = OmegaConf.to_container(cfg, resolve=False)
    try:
        identity = run_identity(cfg)
    except OmegaConfBaseException:  # e.g. a method label that does not resolve: the error says why
        identity = {}
    summary = {
        "status": "failed",
        "error": error,
        **identity,
        "metrics": {},
        "seed": cfg.get("seed"),
        "steps": 0,
        "versions": package_versions(),
        "config": config,
    }
    write_summary(folder / "summary.json", summary)
    return folder / "summary.json"
