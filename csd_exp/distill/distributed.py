"""Gathering particles sharded over ranks, so the kernel of Eq. 8 / 9 sees all of them.

The kernel couples every pair of particles, so with particles split over ranks each rank needs every rank's
noisy latents and residuals (N × D each: small next to the UNet work that produced them). Ranks may hold
different numbers of particles: the counts are gathered first and each tensor is padded to the largest count
for ``all_gather``, then trimmed. Particles are ordered by rank, which matches the contiguous shards
[offset, offset + n) of :func:`csd_exp.distill.draw_step_randomness`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def gather_counts(local_count: int, device: torch.device, process_group) -> list[int]:
    """The number of particles on every rank of ``process_group``, in rank order."""
    world_size = dist.get_world_size(process_group)
    local = torch.tensor([local_count], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(local) for _ in range(world_size)]
    dist.all_gather(counts, local, group=process_group)
    return [int(count.item()) for count in counts]


def gather_particles(tensors: list[Tensor], process_group) -> tuple[list[Tensor], int]:
    """All-gather each (n_local, ...) tensor along dim 0; return the gathered tensors and this rank's offset.

    Every tensor must have the same ``n_local`` on a rank; trailing shapes and dtypes must agree over ranks.
    """
    local_count = tensors[0].shape[0]
    counts = gather_counts(local_count, tensors[0].device, process_group)
    rank = dist.get_rank(process_group)
    offset = sum(counts[:rank])
    largest = max(counts)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[:local_count] = tensor
        pieces = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(pieces, padded.contiguous(), group=process_group)
        gathered.append(torch.cat([piece[:count] for piece, count in zip(pieces, counts)], dim=0))
    return gathered, offset
