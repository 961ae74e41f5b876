"""Find the runs' ``summary.json`` files and describe each run: status, task and method labels, flattened
config, seed, metrics and the output image to show.

Only the standard library: a report starts in well under a second, with no torch import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Output images, most telling first: the panorama, the video's frame grid, the 3D scene's turntable and
# training-view grids. Looked up in the folder holding summary.json, not in outputs.run_dir, since run
# folders get copied and moved.
IMAGE_NAMES = ("edited.png", "edited_grid.png", "turntable_grid.png", "renders_train_grid.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# Task prefixes of the bundled run names (``<task option>_<guidance option>``); a user's task is also
# recognised by its class name (see _task_prefixes), so the list need not name every task.
BASE_TASKS = ("panorama", "video", "scene3d")
# Top-level summary keys that are numbers and may be asked for like metrics.
SUMMARY_NUMBERS = ("wall_time_s", "steps")


class ReportError(Exception):
    """A problem with the command line's inputs; the message is shown as the one-line error."""


class _Missing:
    """A key that one run's config lacks (e.g. the kernel's settings in an SDS run)."""

    def __repr__(self) -> str:
        return "–"


MISSING = _Missing()


@dataclass
class Run:
    """One run folder: its summary and what the report derives from it."""

    folder: Path
    summary: dict[str, Any]
    status: str
    task: str | None
    method: str
    seed: int | None
    config: dict[str, Any]  # flattened: "guidance.guidance_scale" -> 7.5

    def metric(self, name: str) -> float | None:
        """A metric of ``summary["metrics"]`` or a top-level number (``wall_time_s``); None when absent."""
        metrics = self.summary.get("metrics") or {}
        value = metrics.get(name, self.summary.get(name) if name in SUMMARY_NUMBERS else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def image(self) -> Path | None:
        """The run's output image, or None when the folder has none (a failed run, a copied summary)."""
        for name in IMAGE_NAMES:
            if (self.folder / name).is_file():
                return self.folder / name
        # csd-exp-eval summaries name the scored file instead of holding an image.
        edited = (self.summary.get("inputs") or {}).get("edited")
        if isinstance(edited, str) and edited.lower().endswith(IMAGE_SUFFIXES) and Path(edited).is_file():
            return Path(edited)
        return None


def natural_key(text: str) -> list:
    """Sort ``10_run`` after ``2_run`` (sweep job numbers are not zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists and empty dicts stay whole values."""
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node} if prefix else {}


def canonical(value: Any) -> Any:
    """A hashable stand-in so that 3 and 3.0 (an override typed either way) count as one value."""
    if value is MISSING or value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value, sort_keys=True, default=str)


def _class_task_name(task_config: dict) -> str | None:
    """``csd_exp.tasks.PanoramaSamplingTask`` -> ``panorama``: the run-name prefix of a task's configs."""
    target = task_config.get("_target_")
    if not isinstance(target, str):
        return None
    name = target.rsplit(".", 1)[-1]
    for suffix in ("Task", "Sampling"):
        name = name.removesuffix(suffix)
    return name.lower() or None


def _task_prefixes(task_config: dict) -> list[str]:
    names = set(BASE_TASKS)
    if from_class := _class_task_name(task_config):
        names.add(from_class)
    return sorted(names, key=len, reverse=True)  # the longest match wins


def _method_from_config(config: dict) -> str | None:
    """A label when the config has no usable run_name. The guidance keys are read defensively because
    their names change (``guidance.method`` vs ``guidance.baseline`` plus the kernel)."""
    guidance = config.get("guidance") if isinstance(config.get("guidance"), dict) else {}
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    name = guidance.get("method") or guidance.get("baseline")
    if isinstance(name, str):
        kernel = guidance.get("kernel") if isinstance(guidance.get("kernel"), dict) else {}
        target = kernel.get("_target_")
        if "method" not in guidance and isinstance(target, str):
            return f"{name}+{target.rsplit('.', 1)[-1].removesuffix('Kernel').lower()}"
        return name
    if isinstance(task.get("method"), str):
        return f"sampling:{task['method']}"
    target = task.get("_target_")
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None


def run_labels(config: dict, folder: Path) -> tuple[str | None, str]:
    """(task, method): the config's ``method`` label (runs since it exists) with the task from ``run_name``;
    else ``run_name`` minus its task prefix, e.g. ``panorama_csd_edit`` -> (panorama, csd_edit)."""
    task_config = config.get("task") if isinstance(config.get("task"), dict) else {}
    run_name = config.get("run_name")
    method = config.get("method")
    if isinstance(method, str) and method and "${" not in method:
        if isinstance(run_name, str):
            for prefix in _task_prefixes(task_config):
                if run_name == prefix or run_name.startswith(prefix + "_"):
                    return prefix, method
        return _class_task_name(task_config), method
    if isinstance(run_name, str) and run_name and "${" not in run_name:
        for prefix in _task_prefixes(task_config):
            if run_name.startswith(prefix + "_"):
                return prefix, run_name[len(prefix) + 1 :]
            if run_name == prefix:
                return prefix, _method_from_config(config) or run_name
        task, _, method = run_name.partition("_")
        return (task, method) if method else (None, run_name)
    return _class_task_name(task_config), _method_from_config(config) or folder.name


def _summary_files(root: Path) -> list[Path]:
    if not root.exists():
        raise ReportError(f"no such file or folder: {root}")
    if root.is_file():
        return [root]
    return sorted(root.rglob("summary.json"), key=lambda path: natural_key(str(path)))


def load_runs(roots: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every run under ``roots`` (each a run folder, a sweep folder, or a summary.json file), in path order,
    plus the summary files that could not be read (path, reason). The same file given twice counts once."""
    runs: list[Run] = []
    unreadable: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in roots:
        for path in _summary_files(Path(root)):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                summary = json.loads(path.read_text())
                if not isinstance(summary, dict):
                    raise ValueError("not a JSON object")
            except (OSError, UnicodeDecodeError, ValueError) as error:
                unreadable.append((path, f"{type(error).__name__}: {error}"))
                continue
            runs.append(_describe(path, summary))
    if not runs and not unreadable:
        raise ReportError(f"no summary.json under {', '.join(map(str, roots))}")
    return runs, unreadable


def _describe(path: Path, summary: dict) -> Run:
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    # csd-exp-eval writes no status: a summary with metrics and no status is a finished evaluation.
    status = summary.get("status") or ("completed" if "metrics" in summary else "unknown")
    task, method = run_labels(config, path.parent)
    # Runs since summary.json records what ran: read it rather than recover it from names.
    if isinstance(summary.get("method"), str) and summary["method"]:
        method = summary["method"]
    if isinstance(summary.get("task"), str) and summary["task"]:
        task = summary["task"]
    seed = summary.get("seed", config.get("seed"))
    return Run(
        folder=path.parent,
        summary=summary,
        status=str(status),
        task=task,
        method=method,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        config=flatten(config),
    )
