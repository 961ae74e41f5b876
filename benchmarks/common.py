"""Shared helpers for the benchmarks: a random-weight UNet of Stable Diffusion 1.5's real size, a timer.

Real-size figures here come from Stable Diffusion 1.5's UNet configuration with random weights, built
offline (no download). Speed does not depend on the weights' values, so step-time ratios measured with
it transfer to the real checkpoint.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)


def sd15_unet(in_channels: int = 4, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
              seed: int = 0):
    """A UNet2DConditionModel with SD 1.5's configuration (in_channels=8 is InstructPix2Pix's), random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, "in_channels": in_channels})
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
