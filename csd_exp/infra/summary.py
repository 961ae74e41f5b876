"""``summary.json``: the one file every run leaves in its folder, whatever happened (see csd_exp/run.py).

Imports nothing heavy, so a run refused at config time still leaves one.
"""

from __future__ import annotations

import platform
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


def run_identity(cfg: Any) -> dict[str, str | None]:
    """What ran, at the top of ``summary.json``: ``task`` (the task option), ``method`` (the run's label),
    ``model`` (the model option) and ``model_id`` (the weights' hub id or folder, else the option), so a report
    reads them instead of recovering them from folder or class names. ``model_family`` (the prior's ``name``)
    is added once the prior is built (``csd_exp.run``)."""
    from omegaconf import OmegaConf

    choices: dict = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # no Hydra context (a config composed by hand): the options are unknown
        pass
    method = OmegaConf.select(cfg, "method", default=None)
    model_id = OmegaConf.select(cfg, "model.pretrained_model_name_or_path", default=None) or choices.get("model")
    return {
        "task": choices.get("task"),
        "method": None if method is None else str(method),
        "model": choices.get("model"),
        "model_id": None if model_id is None else str(model_id),
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` as JSON atomically: a reader never sees half a file, a failed write leaves none."""
    from csd_exp.infra.run_folder import write_json_atomically

    write_json_atomically(Path(path), summary)


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
