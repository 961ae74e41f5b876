"""What each run was computed on, and which of it differs between the methods of a report.

A run's *conditions* are read from ``summary.json``: the top-level ``model_family``, ``model_id`` and
``kernel``, and the ``conditions`` block the run writes (``input``, ``frames``, ``size_px`` [H, W],
``steps``, ``steps_meaning``, ``guidance_scale``, ``image_guidance_scale``, ``seed``,
``unet_passes_per_step``). A summary without them (older runs) gets them from its saved config instead,
marked ``derived``: the size is then the config's own key and unit (``task.frame_size=64``, latent pixels
for a latent prior), not pixels.

Between the methods of a report, three kinds of difference:

- what a method sets itself (task class, guidance, kernel, sampler): listed, never flagged;
- the model *family* (an instruction model for CSD-Edit, a text-to-image model for FateZero): expected;
- input, frame count, size in pixels, steps, scales, seeds, and the model within one family: a
  **confounder** when the methods did not all run on the same set of values (a key swept for every method
  alike, e.g. ``guidance.guidance_scale=3,7.5``, is not one: each value is its own comparison).

Only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Condition fields compared between methods, in the order the report shows them. None = not applicable
# to that run (a panorama has no frame count, FateZero no image guidance scale) and is never compared.
COMPARED = ("input", "frames", "size_px", "steps", "guidance_scale", "image_guidance_scale", "seed")
# The input of a run whose data.path is null: the task's bundled default.
DEFAULT_INPUT = "default (data.path=null)"
# Config keys that give a run's size when its summary has no size_px (the key is shown with the value).
SIZE_KEYS = (
    "task.frame_size",
    "task.image_size",
    "task.canvas_size",
    "data.short_side",
    "data.image_size",
    "data.size",
)


@dataclass
class Conditions:
    """One run's conditions (see the module docstring); ``derived``: read from the config, not the summary."""

    model_family: str | None = None
    model_id: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # COMPARED field -> value (None: not applicable)
    steps_meaning: str | None = None
    unet_passes_per_step: Any = None
    set_by_method: dict[str, str] = field(default_factory=dict)  # task class, guidance, kernel, sampler
    derived: bool = False

    def value(self, name: str) -> Any:
        return self.values.get(name)


def _select(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _short(target: Any) -> str | None:
    return target.rsplit(".", 1)[-1] if isinstance(target, str) and target else None


def _plain(value: Any) -> Any:
    """A value the report can compare and print: unresolved interpolations count as unknown (None)."""
    if isinstance(value, str) and "${" in value:
        return None
    if isinstance(value, list):
        return tuple(_plain(item) for item in value)
    return value


def _set_by_method(summary: dict, config: dict) -> dict[str, str]:
    """The keys a method sets itself: task class, guidance (its class or baseline), kernel, sampler."""
    found: dict[str, str] = {}
    if task := _short(_select(config, "task._target_")):
        found["task class"] = task
    guidance = _select(config, "guidance")
    if isinstance(guidance, dict) and guidance:
        name = _short(guidance.get("_target_")) or ""
        baseline = guidance.get("baseline") if isinstance(guidance.get("baseline"), str) else ""
        found["guidance"] = f"{name} ({baseline})" if baseline and name else name or baseline
    kernel = summary.get("kernel") if isinstance(summary.get("kernel"), str) else None
    kernel = kernel or _short(_select(config, "kernel._target_"))
    if kernel:
        found["kernel"] = kernel
    sampler = _select(config, "task.method") or _short(_select(config, "task.scheduler._target_"))
    if isinstance(sampler, str) and "${" not in sampler:
        found["sampler"] = sampler
    return {key: value for key, value in found.items() if value}


def _derived_values(summary: dict, config: dict, seed: int | None) -> dict[str, Any]:
    """The COMPARED fields from a config (summaries written before ``conditions``)."""
    path = _plain(_select(config, "data.path"))
    size = next(
        (f"{key}={_select(config, key)}" for key in SIZE_KEYS if _plain(_select(config, key)) is not None), None
    )
    steps = _plain(_select(config, "trainer.max_steps"))
    scale = _plain(_select(config, "guidance.guidance_scale"))
    image_scale = _plain(_select(config, "guidance.image_guidance_scale"))
    if not isinstance(_select(config, "guidance._target_"), str):  # a sampling task holds its own scales
        scale = _plain(_select(config, "task.guidance_scale")) if scale is None else scale
        image_scale = _plain(_select(config, "task.image_guidance_scale")) if image_scale is None else image_scale
    return {
        # A task without a data node (text-to-3D) edits nothing: its prompt is its input.
        "input": path
        if path is not None
        else (DEFAULT_INPUT if isinstance(config.get("data"), dict) else _plain(config.get("prompt"))),
        "frames": _plain(_select(config, "data.max_frames")),
        "size_px": size,
        "steps": steps,
        "guidance_scale": scale,
        "image_guidance_scale": image_scale,
        "seed": seed,
    }


def derive_conditions(summary: dict, config: dict, seed: int | None) -> Conditions:
    """A run's conditions: the summary's fields first, its config for what they lack (then ``derived``)."""
    recorded = summary.get("conditions") if isinstance(summary.get("conditions"), dict) else None
    model_family = summary.get("model_family")
    model_id = summary.get("model_id")
    if not isinstance(model_id, str):
        model_id = _plain(_select(config, "model.pretrained_model_name_or_path"))
    if not isinstance(model_family, str):
        model_family = _short(_select(config, "model._target_"))
    if recorded is not None:
        values = {name: _plain(recorded.get(name)) for name in COMPARED}
        if values["seed"] is None:
            values["seed"] = seed
    else:
        values = _derived_values(summary, config, seed)
    return Conditions(
        model_family=model_family if isinstance(model_family, str) else None,
        model_id=model_id if isinstance(model_id, str) else None,
        values=values,
        steps_meaning=(recorded or {}).get("steps_meaning"),
        unet_passes_per_step=(recorded or {}).get("unet_passes_per_step"),
        set_by_method=_set_by_method(summary, config),
        derived=recorded is None,
    )


def show(value: Any) -> str:
    """A condition value as the report prints it: ``[512, 1024]`` as ``512x1024``."""
    if value is None:
        return "–"
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{value[0]:g}x{value[1]:g}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _key(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return show(value)


@dataclass
class Comparison:
    """The conditions of a report's methods side by side, and what differs between them."""

    methods: list[str]  # in report order
    per_method: dict[str, dict[str, list[Any]]]  # method -> field -> its distinct values, in run order
    models: dict[str, list[tuple[str | None, str | None]]]  # method -> distinct (family, id)
    set_by_method: dict[str, dict[str, list[str]]]  # method -> key -> distinct values
    confounders: dict[str, str] = field(default_factory=dict)  # field -> one line: who ran what
    expected: list[str] = field(default_factory=list)  # lines: differences that are the methods' own
    derived: list[str] = field(default_factory=list)  # methods whose conditions came from the config


def _distinct(values: list[Any]) -> list[Any]:
    seen: dict[Any, Any] = {}
    for value in values:
        seen.setdefault(_key(value), value)
    return list(seen.values())


def compare(methods: list[str], runs_of: dict[str, list[Any]]) -> Comparison:
    """``runs_of``: method -> its completed runs (objects with ``.conditions``). A field is a confounder when
    the methods that have it (not None) ran on different sets of values; the model when two methods of one
    family ran different models; a family difference is expected."""
    per_method: dict[str, dict[str, list[Any]]] = {}
    models: dict[str, list[tuple[str | None, str | None]]] = {}
    set_by: dict[str, dict[str, list[str]]] = {}
    derived = []
    for method in methods:
        conditions = [run.conditions for run in runs_of[method]]
        per_method[method] = {
            name: _distinct([c.value(name) for c in conditions if c.value(name) is not None]) for name in COMPARED
        }
        models[method] = list(dict.fromkeys((c.model_family, c.model_id) for c in conditions))
        keys = list(dict.fromkeys(key for c in conditions for key in c.set_by_method))
        set_by[method] = {
            key: _distinct([c.set_by_method[key] for c in conditions if key in c.set_by_method]) for key in keys
        }
        if any(c.derived for c in conditions):
            derived.append(method)
    comparison = Comparison(methods, per_method, models, set_by, derived=derived)
    if len(methods) < 2:
        return comparison
    for name in COMPARED:
        having = [m for m in methods if per_method[m][name]]
        if len({frozenset(map(_key, per_method[m][name])) for m in having}) > 1:
            comparison.confounders[name] = "; ".join(
                f"{m}: {', '.join(show(v) for v in sorted(per_method[m][name], key=_sort))}" for m in having
            )
    families: dict[str | None, dict[str, frozenset]] = {}
    for method in methods:
        for family in dict.fromkeys(family for family, _ in models[method]):
            ids = frozenset(model_id for fam, model_id in models[method] if fam == family)
            families.setdefault(family, {})[method] = ids
    for family, ids in families.items():
        if len(set(ids.values())) > 1:
            comparison.confounders["model"] = f"family {family}: " + "; ".join(
                f"{m}: {', '.join(sorted(map(str, i)))}" for m, i in ids.items()
            )
    if len(families) > 1:
        comparison.expected.append(
            "model family differs between methods (expected: each method brings the prior family it needs): "
            + "; ".join(f"{m}: {', '.join(str(f) for f, _ in models[m])}" for m in methods)
        )
    return comparison


def _sort(value: Any) -> tuple:
    return (
        (0, float(value), "")
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (1, 0.0, show(value))
    )
