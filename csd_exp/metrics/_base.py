"""The shared state layout of the metrics: a float64 sum of per-pair values and a pair count.

Both states are reduced with ``"sum"`` across processes, so ``compute`` is the exact mean over every
pair seen by every process, whatever the sharding (no mean-of-means).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class MeanOverPairs(Metric):
    """Mean of per-pair values: states ``value_sum`` (float64) and ``pair_count``, both summed across processes."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pair_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor) -> None:
        values = values.detach().to(self.value_sum.device, torch.float64)
        self.value_sum += values.sum()
        self.pair_count += values.numel()

    def compute(self) -> Tensor:
        """The mean over all pairs seen; NaN (not 0) when no pair was seen, e.g. one frame for a consistency metric."""
        if self.pair_count.item() == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.value_sum / self.pair_count
