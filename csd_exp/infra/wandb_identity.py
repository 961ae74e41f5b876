"""How a run is named and grouped in W&B, so the runs of one sweep can be compared side by side.

- ``group``: the sweep, ``<experiment or task>-<sweep folder name>`` (the folder name is the sweep's start
  time), for every job of a multirun; a single run has none. ``logger.wandb.group`` overrides it.
- ``name``: ``<method>·<swept key>=<value>·…·s<seed>``: the method label, the values this job takes of the
  keys the sweep varies (read from the sweep's own ``multirun.yaml``, which Hydra writes before the first
  job), and the seed, so two runs of a sweep never share a name. ``logger.wandb.name`` overrides it.
- ``job_type``: the task (``panorama``, ``video``, ...); ``tags``: task, method, the experiment if any, then
  the config's own ``tags`` list.

Outside a Hydra app (tests composing a config) there is no sweep: the name is ``<method>·s<seed>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SEPARATOR = "·"


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys the sweep in ``sweep_dir`` varies, in the order given on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return []
    overrides = OmegaConf.select(OmegaConf.load(record), "hydra.overrides.task", default=[]) or []
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.get_key_element() for override in parsed if override.is_sweep_override()]


def _short(key: str) -> str:
    return key.removeprefix("+").removeprefix("~").split(".")[-1]


def wandb_identity(method: str, seed: int, extra_tags: Iterable[str] = ()) -> dict[str, Any]:
    """``name``, ``group``, ``job_type`` and ``tags`` for this job's W&B run (see the module docstring);
    ``extra_tags`` (the config's top-level ``tags`` list) follow the computed ones."""
    hydra = _hydra_config()
    choices = dict(hydra.runtime.choices) if hydra is not None else {}
    task = choices.get("task") or "task"
    experiment = choices.get("experiment")
    parts = [method]
    group = None
    if hydra is not None and str(hydra.mode) == "RunMode.MULTIRUN":
        sweep_dir = Path(hydra.sweep.dir)
        group = f"{experiment or task}-{sweep_dir.name}"
        values = {}
        for override in hydra.overrides.task:
            key, _, value = str(override).partition("=")
            values[key] = value
        for key in swept_keys(sweep_dir):
            if key == "seed" or key not in values or values[key] == method:
                continue  # the seed ends every name; a swept method is the name's first part
            parts.append(f"{_short(key)}={values[key]}")
    parts.append(f"s{seed}")
    tags = [task, method] + ([experiment] if experiment else [])
    tags += [str(tag) for tag in extra_tags if str(tag) not in tags]
    return {"name": SEPARATOR.join(parts), "group": group, "job_type": task, "tags": tags}
