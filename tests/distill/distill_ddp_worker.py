"""Worker of the 2-process gloo test: each rank holds a contiguous, uneven shard of the same particles."""

from __future__ import annotations

import torch
import torch.distributed as dist
from distill_fakes import FakePrior

from csd_exp.distill import Guidance, Particles, Shard, csd_gradient

SHARD_SIZES = (3, 2)  # uneven on purpose: the gather pads to the largest shard
ALPHAS_CUMPROD_T = 0.4
PROMPT, STEP, SEED = "make it red", 4, 11


def make_particles(count: int = sum(SHARD_SIZES), shape=(4, 8, 8)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: torch.randn(count, *shape, generator=generator) for name in ("residuals", "noisy", "source", "image_cond")
    }
    tensors["latents"] = tensors["source"] + 0.1 * tensors["noisy"]
    return tensors


def shard_bounds(rank: int, sizes=SHARD_SIZES) -> tuple[int, int]:
    offset = sum(sizes[:rank])
    return offset, offset + sizes[rank]


def distill_shard(particles: dict[str, torch.Tensor], start: int, stop: int, process_group=None) -> dict:
    """The combiner and a CSD-Edit guidance step on particles[start:stop] (all of them without a group)."""
    gradients, diagnostics = csd_gradient(
        particles["residuals"][start:stop],
        particles["noisy"][start:stop],
        "rbf",
        ALPHAS_CUMPROD_T,
        process_group=process_group,
        return_diagnostics=True,
    )
    latents = particles["latents"][start:stop].clone().requires_grad_(True)
    output = Guidance(
        "source_branch", "rbf", guidance_scale=1.5, image_guidance_scale=1.5
    )(  # CSD-Edit (Eq. 9)
        FakePrior(),
        Particles(
            latents, source_latents=particles["source"][start:stop], condition=particles["image_cond"][start:stop]
        ),
        prompt=PROMPT,
        step=STEP,
        seed=SEED,
        shard=Shard(offset=start, total=len(particles["latents"]), group=process_group),
    )
    output.loss.backward()
    return {
        "gradients": gradients,
        "diagnostics": diagnostics,
        "guidance_gradients": output.gradients,
        "latent_grad": latents.grad,
        "guidance_diagnostics": output.diagnostics,
    }


def worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        start, stop = shard_bounds(rank)
        result = distill_shard(make_particles(), start, stop, process_group=dist.group.WORLD)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer is still in a collective
    finally:
        dist.destroy_process_group()
