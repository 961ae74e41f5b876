"""How a run is named and grouped in W&B, so the runs of one sweep can be compared side by side.

- ``group``: the sweep, ``<experiment or task>-<sweep folder name>`` (the folder name is the sweep's start
  time), the same for every job of a multirun whatever it sweeps: a swept experiment (or task) names the
  group by all its values, ``<a>+<b>-<folder>``; a single run has none. ``logger.wandb.group`` overrides it.
- ``name``: ``<method>·<swept key>=<value>·…·s<seed>``: the method label, the values this job takes of the
  keys the sweep varies (read from the sweep's own ``multirun.yaml``, which Hydra writes before the first
  job, and from the sweeper's ``params``, e.g. ``hparams_search=...``), and the seed, so two runs of a sweep
  never share a name; a search sweeper's (Optuna's) trials add their job number, ``#<n>``, as a search may
  draw the same values twice. ``logger.wandb.name`` overrides it.
- ``job_type``: the task (``panorama``, ``video``, ...); ``tags``: task, method, the experiment if any, then
  the config's own ``tags`` list.

Outside a Hydra app (tests composing a config) there is no sweep: the name is ``<method>·s<seed>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SEPARATOR = "·"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
#: Grid sweepers (every job a distinct combination of values): Hydra's and csd-exp's resumable one.
GRID_SWEEPERS = (BASIC_SWEEPER, "hydra_plugins.csd_exp_launcher.GridSweeper")


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _sweep_overrides(sweep_dir: Path) -> list:
    """The sweep's command-line overrides (parsed), from the ``multirun.yaml`` Hydra writes before the first job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return []
    overrides = OmegaConf.select(OmegaConf.load(record), "hydra.overrides.task", default=[]) or []
    return OverridesParser.create().parse_overrides(list(overrides))


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys the sweep in ``sweep_dir`` varies, in the order given on the command line."""
    return [override.get_key_element() for override in _sweep_overrides(sweep_dir) if override.is_sweep_override()]


#: Longest group prefix kept from the swept values (W&B limits a group name to 128 characters).
MAX_PREFIX = 96


def group_prefix(sweep_dir: Path, experiment: str | None, task: str) -> str:
    """What the sweep's group is named after: the experiment, else the task, as the sweep gives it, so every
    job gets the same one; a swept experiment (or task) gives all its values joined by ``+``."""
    from hydra.errors import HydraException

    for override in _sweep_overrides(sweep_dir):
        if override.get_key_element() in ("experiment", "task") and override.is_sweep_override():
            try:
                values = [str(value) for value in override.sweep_string_iterator()]
            except HydraException:  # glob(...) needs Hydra's config loader: the group keeps the pattern
                values = [override.input_line.partition("=")[2]]
            return "+".join(values)[:MAX_PREFIX]
    return experiment or task


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
        group = f"{group_prefix(sweep_dir, experiment, task)}-{sweep_dir.name}"
        values = {}
        for override in hydra.overrides.task:
            key, _, value = str(override).partition("=")
            values[key] = value
        keys = swept_keys(sweep_dir)
        keys += [str(key) for key in (hydra.sweeper.get("params") or {}) if str(key) not in keys]
        for key in keys:
            if key == "seed" or key not in values or values[key] == method:
                continue  # the seed ends every name; a swept method is the name's first part
            parts.append(f"{_short(key)}={values[key]}")
        if str(hydra.sweeper.get("_target_", BASIC_SWEEPER)) not in GRID_SWEEPERS:
            parts.append(f"#{hydra.job.num}")  # a search may draw the same values twice: the trial's number
    parts.append(f"s{seed}")
    tags = [task, method] + ([experiment] if experiment else [])
    tags += [str(tag) for tag in extra_tags if str(tag) not in tags]
    return {"name": SEPARATOR.join(parts), "group": group, "job_type": task, "tags": tags}
