"""Final metrics of a task run, in the stable key names that ``summary.json`` documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def mode_fractions(responsibilities: torch.Tensor, mode_names: Sequence[str] | None) -> dict[str, float]:
    """Fraction of particles whose most responsible mode is each mode (exact prior only)."""
    choice = responsibilities.argmax(dim=1)
    names = list(mode_names) if mode_names else [str(k) for k in range(responsibilities.shape[1])]
    return {f"consistency/mode_fraction/{name}": float((choice == k).float().mean()) for k, name in enumerate(names)}


def final_edit_metrics(
    evaluator: Any,
    source: torch.Tensor,
    edited: torch.Tensor,
    *,
    source_text: str,
    target_text: str,
    sequence: bool,
    windows=None,
    motion=None,
    mode_responsibilities: torch.Tensor | None = None,
    mode_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Run the configured evaluator and add the exact prior's per-mode fractions."""
    metrics: dict[str, float] = {}
    if evaluator is not None:
        metrics.update(
            evaluator.evaluate(
                source,
                edited,
                source_text=source_text,
                target_text=target_text,
                sequence=sequence,
                motion=motion,
                mode_responsibilities=mode_responsibilities,
                windows=windows,
            )
        )
    if mode_responsibilities is not None:
        metrics.update(mode_fractions(mode_responsibilities, mode_names))
    return metrics
