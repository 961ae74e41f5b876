"""The learning-rate schedule of the text-to-3D task: linear warm-up, then cosine decay (paper App. B.2).

The paper (Stable-DreamFusion with Adan): lr warmed up over 2,000 steps from 1e-9 to 2e-3, then cosine
decay to 1e-6 at step 10,000. Written as a factor on every parameter group's own peak learning rate
(the field's groups carry theirs, ``lr_density`` / ``lr_color``), with f(s) for step s:

    s < W:   f = f₀ + (1 − f₀) s / W
    s ≥ W:   f = f_end + (1 − f_end) · ½ (1 + cos(π min(s − W, S − W) / (S − W)))

W = ``warmup_steps``, S = ``total_steps``, f₀ = ``start_factor``, f_end = ``end_factor``; the paper's values are
f₀ = 1e-9 / 2e-3 = 5e-7 and f_end = 1e-6 / 2e-3 = 5e-4. Lightning steps it every optimiser step
(``interval: step``) and checkpoints it (a resumed run continues the curve).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, start_factor: float, end_factor: float
) -> float:
    """f(step) of the module docstring."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(step - warmup_steps, span) / span
    return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """lr_g(s) = peak_g · f(s), f the warm-up + cosine factor of the module docstring."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 2000,
        total_steps: int = 10000,
        start_factor: float = 5e-7,
        end_factor: float = 5e-4,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(
                f"lr_scheduler: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}"
            )
        for name, value in (("start_factor", start_factor), ("end_factor", end_factor)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"lr_scheduler.{name} must be in [0, 1], got {value}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.start_factor, self.end_factor)

    def get_lr(self) -> list[float]:
        scale = self.factor(max(self.last_epoch, 0))
        return [base * scale for base in self.base_lrs]
