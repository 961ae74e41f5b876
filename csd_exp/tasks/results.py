"""What a finished run produced, and the final metrics of it in the key names ``summary.json`` documents.

A task returns one :class:`TaskResult` (:meth:`DistillationTask.final_result`); the base task turns it into
files (:meth:`~DistillationTask.write_outputs`, the task's own), media (:mod:`csd_exp.tasks.media`) and
metrics (:func:`final_metrics`), so no task mixes the three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TaskResult:
    """The outputs of a run, on the CPU, images in [0, 1].

    Attributes:
        edited: (F, 3, H, W) what the metrics score: the edited image, frames or rendered views.
        source: (F, 3, H, W) what it was edited from, or None for tasks that generate (then only the
            metrics that need no source are computed).
        sequence: the F images are frames or views in order (adds the consecutive-frame metrics).
        media: name -> (B, 3, H, W) images to send to the loggers that take media, at output size.
        windows: [(top, left, height, width)] in image pixels (adds ``consistency/seam_error``).
        motion: flow or flow callable for ``consistency/warp_error`` (see ``EditEvaluator.evaluate``).
        mode_responsibilities: (N, K) from a prior that knows its modes (adds the mode metrics).
        mode_names: the K modes' names, for ``consistency/mode_fraction/<name>``.
        metrics: the task's own final metrics (e.g. the 3D task's held-out PSNR), added as they are.
        ideal_edits: (K, N, 3, H, W) the exact prior's clean edit of every particle's source under every mode
            (adds ``fidelity/ideal_*``, ``csd_exp.metrics.ideal``; needs ``mode_responsibilities``).
        particles: (N, 3, H, W) the particles those edits belong to, if not ``edited`` (a panorama's windows).
    """

    edited: torch.Tensor
    source: torch.Tensor | None
    sequence: bool = False
    media: dict[str, torch.Tensor] = field(default_factory=dict)
    windows: Sequence[Sequence[int]] | None = None
    motion: Any = None
    mode_responsibilities: torch.Tensor | None = None
    mode_names: Sequence[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ideal_edits: torch.Tensor | None = None
    particles: torch.Tensor | None = None


def mode_fractions(responsibilities: torch.Tensor, mode_names: Sequence[str] | None) -> dict[str, float]:
    """Fraction of particles whose most responsible mode is each mode (exact prior only)."""
    choice = responsibilities.argmax(dim=1)
    names = list(mode_names) if mode_names else [str(k) for k in range(responsibilities.shape[1])]
    return {f"consistency/mode_fraction/{name}": float((choice == k).float().mean()) for k, name in enumerate(names)}


def final_metrics(evaluator: Any, result: TaskResult, *, source_text: str, target_text: str) -> dict[str, float]:
    """The task's own metrics, the evaluator's (None: none) and the exact prior's per-mode fractions."""
    metrics: dict[str, float] = dict(result.metrics)
    if evaluator is not None:
        metrics.update(
            evaluator.evaluate(
                result.source,
                result.edited,
                source_text=source_text,
                target_text=target_text,
                sequence=result.sequence,
                motion=result.motion,
                mode_responsibilities=result.mode_responsibilities,
                windows=result.windows,
            )
        )
    if result.mode_responsibilities is not None:
        metrics.update(mode_fractions(result.mode_responsibilities, result.mode_names))
        if result.ideal_edits is not None:
            from csd_exp.metrics.ideal import ideal_edit_metrics

            particles = result.edited if result.particles is None else result.particles
            metrics.update(ideal_edit_metrics(particles, result.ideal_edits, result.mode_responsibilities))
    return metrics
