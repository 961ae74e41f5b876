"""Find the runs' ``summary.json`` files and describe each run: status, task and method labels, model,
conditions (csd_exp/report/conditions.py), flattened config, seed, metrics and the output image to show.

The task and method are what the run recorded (``summary.json``'s top-level ``task`` and ``method``, else the
saved config's ``method`` label and Hydra's ``task`` choice in ``.hydra/hydra.yaml``); never recovered from
run, folder or class names. A run that records neither is ``unknown``.

Only the standard library: a report starts in well under a second, with no torch import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csd_exp.report.conditions import Conditions, derive_conditions

# Output images, most telling first: the panorama, the video's frame grid, the 3D scene's turntable and
# training-view grids. Looked up in the folder holding summary.json, not in outputs.run_dir, since run
# folders get copied and moved.
IMAGE_NAMES = ("edited.png", "edited_grid.png", "turntable_grid.png", "renders_train_grid.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# What a summary that records neither (a csd-exp-eval score, a summary older than the fields) is labelled:
# never guessed from folder, run or class names.
UNKNOWN = "unknown"
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
    conditions: Conditions = field(default_factory=lambda: Conditions())
    labelled: bool = True  # False: neither summary nor config named the method ("unknown")

    def metric(self, name: str) -> float | None:
        """A metric of ``summary["metrics"]`` or a top-level number (``wall_time_s``); None when absent."""
        metrics = self.summary.get("metrics") or {}
        value = metrics.get(name, self.summary.get(name) if name in SUMMARY_NUMBERS else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    @property
    def release_deviations(self) -> list[str]:
        """How the run departs from its baseline's released code (summary.json ``release_deviations``; W&B tag
        ``non-released``); empty for a run as released, or one that records none (a distillation method)."""
        found = self.summary.get("release_deviations")
        return [str(item) for item in found] if isinstance(found, list) else []

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


def _saved_yaml(path: Path) -> dict:
    """A YAML file Hydra saved beside the run (``.hydra/config.yaml``), as plain data; {} when absent or
    unreadable (OmegaConf is imported only then: summaries that carry everything need no YAML parser)."""
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a damaged file is as good as none: the summary alone is reported
        return {}
    return data if isinstance(data, dict) else {}


def _label(value: Any) -> str | None:
    return value if isinstance(value, str) and value and "${" not in value else None


def recorded_labels(summary: dict, config: dict, folder: Path) -> tuple[str | None, str | None]:
    """(task, method) as the run recorded them: summary.json's top-level fields, else the saved config's
    ``method`` label and Hydra's ``task`` choice (``.hydra/hydra.yaml``); None where none is recorded."""
    task, method = _label(summary.get("task")), _label(summary.get("method"))
    if method is None:
        method = _label(config.get("method"))
    if task is None and (folder / ".hydra" / "hydra.yaml").is_file():
        choices = ((_saved_yaml(folder / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime") or {}).get(
            "choices"
        )
        task = _label((choices or {}).get("task"))
    return task, method


def _describe(path: Path, summary: dict) -> Run:
    config = summary.get("config") if isinstance(summary.get("config"), dict) else None
    if config is None:  # older or hand-made summaries: the config Hydra saved beside the run
        config = _saved_yaml(path.parent / ".hydra" / "config.yaml")
    # csd-exp-eval writes no status: a summary with metrics and no status is a finished evaluation.
    status = summary.get("status") or ("completed" if "metrics" in summary else "unknown")
    task, method = recorded_labels(summary, config, path.parent)
    seed = summary.get("seed", config.get("seed"))
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return Run(
        folder=path.parent,
        summary=summary,
        status=str(status),
        task=task,
        method=method or UNKNOWN,
        seed=seed,
        config=flatten(config),
        conditions=derive_conditions(summary, config, seed),
        labelled=method is not None,
    )
