"""Which config keys a sweep varied, and the rows of the report: one per (task, method, swept values).

A row never mixes runs whose swept values differ, so its mean ± std is over seeds only.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csd_exp.report.runs import MISSING, ReportError, Run, canonical, natural_key

# Keys that differ between runs without changing what was computed: output folders, names, loggers,
# callbacks, the device a run used, resume bookkeeping. A key under one of these prefixes is never swept.
# ``paper``: the paper table an experiment is (read by csd-exp-paper and the notes), never a run setting.
BOOKKEEPING_PREFIXES = ("paths", "hydra", "logger", "callbacks", "run_name", "ckpt_path", "resume", "paper")
BOOKKEEPING_KEYS = frozenset(
    {
        "trainer.default_root_dir",
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        "trainer.enable_progress_bar",
        "metrics.device",
        "metrics.clip.device",
        "metrics.sync_across_processes",  # in the summaries of runs made before it was deleted
        "metrics.clip.cache_dir",
        "metrics.clip.allow_download",
        "metrics.clip.batch_size",
    }
)
TARGET = "._target_"
# How many co-varying keys a note names before it says "and N more".
NOTE_KEYS = 12


def _is_bookkeeping(key: str, runs: list[Run]) -> bool:
    if key.split(".")[-1] == "seed" or key in BOOKKEEPING_KEYS:
        return True
    if any(key == prefix or key.startswith(prefix + ".") for prefix in BOOKKEEPING_PREFIXES):
        return True
    # Any other value naming the run's own folder (a user's callback or logger elsewhere in the tree).
    for run in runs:
        value = run.config.get(key)
        outputs = run.summary.get("outputs") if isinstance(run.summary.get("outputs"), dict) else {}
        own = (str(run.folder), run.config.get("paths.output_dir"), outputs.get("run_dir"))
        if isinstance(value, str) and any(isinstance(folder, str) and folder and folder in value for folder in own):
            return True
    return False


def display_key(key: str) -> str:
    """``kernel._target_`` is shown as ``kernel`` (its value as the class name)."""
    return key.removesuffix(TARGET)


def display_value(key: str, value: Any) -> str:
    if value is MISSING:
        return "–"
    if key.endswith(TARGET) and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@dataclass
class Columns:
    """The swept keys (full dotted names, in column order) and the keys left out of the columns."""

    keys: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # full key -> column header
    with_method: list[str] = field(default_factory=list)  # differ only between methods (tasks)
    together: dict[str, list[str]] = field(default_factory=dict)  # column key -> keys varying in lockstep


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells the columns apart: ``guidance_scale``, not the full path."""
    parts = {key: display_key(key).split(".") for key in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {key: ".".join(parts[key][-depth[key] :]) for key in keys}
        clashes = [key for key in keys if list(names.values()).count(names[key]) > 1 and depth[key] < len(parts[key])]
        if not clashes:
            return names
        for key in clashes:
            depth[key] += 1


def _determined(keys: list[tuple], values: list) -> bool:
    """Whether ``values`` is a function of ``keys`` (equal keys never carry different values)."""
    seen: dict[tuple, object] = {}
    return all(seen.setdefault(key, value) == value for key, value in zip(keys, values))


def swept_columns(runs: list[Run]) -> Columns:
    """The keys whose values differ between the completed runs ``runs``, minus seeds and bookkeeping.

    A key that is constant within every (task, method) group (the SDS run's missing kernel) is explained by
    the method column, and a key whose value follows from the method and the columns already kept
    (``guidance.kernel.*``, interpolated from ``kernel.*``; a sampling baseline's ``task.guidance_scale``,
    which CSD-Edit runs lack) would repeat them; both go to notes, not columns. Rows are the same either
    way, since such keys cannot split a row.
    """
    columns = Columns()
    if len(runs) < 2:
        return columns
    groups: dict[tuple, list[int]] = {}
    for index, run in enumerate(runs):
        groups.setdefault((run.task, run.method), []).append(index)
    group_of = [(run.task, run.method) for run in runs]
    every_key = {key for run in runs for key in run.config}
    # Shallow keys first, and a class (_target_) before its settings, so the most telling key of each
    # lockstep set becomes the column.
    ordered = sorted(every_key, key=lambda key: (key.count("."), not key.endswith(TARGET), key))
    kept_values: list[list] = []
    for key in ordered:
        values = [canonical(run.config.get(key, MISSING)) for run in runs]
        if len(set(values)) < 2 or _is_bookkeeping(key, runs):
            continue
        if all(len({values[i] for i in members}) == 1 for members in groups.values()):
            columns.with_method.append(key)
            continue
        if kept_values and _determined(
            [(group_of[i], *(kept[i] for kept in kept_values)) for i in range(len(runs))], values
        ):
            partner = next(
                (
                    column
                    for column, kept in zip(columns.keys, kept_values)
                    if _determined([(group_of[i], kept[i]) for i in range(len(runs))], values)
                ),
                columns.keys[-1],
            )
            columns.together[partner].append(key)
            continue
        columns.keys.append(key)
        columns.together[key] = []
        kept_values.append(values)
    columns.names = _short_names(columns.keys)
    return columns


def key_note(keys: list[str]) -> str:
    shown = sorted({display_key(key) for key in keys})
    extra = f" and {len(shown) - NOTE_KEYS} more" if len(shown) > NOTE_KEYS else ""
    return ", ".join(shown[:NOTE_KEYS]) + extra


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std (n - 1); None below two values
    count: int  # finite values that went into the mean


def stat(values: list[float | None]) -> Stat:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None, len(finite))


@dataclass
class Row:
    task: str | None
    method: str
    values: dict[str, Any]  # column key -> raw config value (MISSING when the runs lack it)
    runs: list[Run]

    def stat(self, metric: str) -> Stat:
        return stat([run.metric(metric) for run in self.runs])

    def label(self, columns: Columns, with_task: bool) -> str:
        parts = [f"{self.task}/{self.method}" if with_task and self.task else self.method]
        parts += [f"{columns.names[key]}={display_value(key, self.values[key])}" for key in columns.keys]
        return ", ".join(parts)


def _sort_value(value: Any) -> tuple:
    if value is MISSING:
        return (3, [])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, [float(value)])
    return (1, natural_key(str(value)))


def build_rows(runs: list[Run], columns: Columns) -> list[Row]:
    """Completed runs grouped by (task, method, swept values); methods in the order their first run comes
    (the sweep's job order), swept values ascending, each row's runs by seed."""
    first_seen: dict[tuple, int] = {}
    rows: dict[tuple, Row] = {}
    for run in runs:
        label = (run.task, run.method)
        first_seen.setdefault(label, len(first_seen))
        values = {key: run.config.get(key, MISSING) for key in columns.keys}
        group = (label, tuple(canonical(value) for value in values.values()))
        rows.setdefault(group, Row(run.task, run.method, values, [])).runs.append(run)
    ordered = sorted(
        rows.values(),
        key=lambda row: (first_seen[(row.task, row.method)], [_sort_value(row.values[key]) for key in columns.keys]),
    )
    for row in ordered:
        row.runs.sort(key=lambda run: (run.seed is None, run.seed or 0, natural_key(str(run.folder))))
    return ordered


def load_paper(path: Path) -> dict[str, dict[str, float]]:
    """``method -> metric -> number`` from a YAML or JSON file (YAML is read with OmegaConf, a dependency
    already, rather than adding PyYAML)."""
    if not path.is_file():
        raise ReportError(f"--paper-column: no such file: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # any parse error of the user's file becomes the one-line message
        raise ReportError(f"--paper-column: cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise ReportError(f"--paper-column: {path} must map method -> metric -> number")
    paper: dict[str, dict[str, float]] = {}
    for method, metrics in data.items():
        if not isinstance(metrics, dict):
            raise ReportError(f"--paper-column: {path}: {method} must map metric -> number")
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportError(f"--paper-column: {path}: {method} / {metric} is {value!r}, not a number")
            paper.setdefault(str(method), {})[str(metric)] = float(value)
    return paper
