"""Photometric fitting of a :class:`~csd_exp.render.base.RadianceField` to posed images.

This is the "pretrain the NeRF on the original views" stage of Instruct-NeRF2NeRF (and the
fine-tuning loop on edited views, called repeatedly). It works with any :class:`RadianceField` backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from csd_exp.data.cameras import Cameras
from csd_exp.render.base import RadianceField

__all__ = ["psnr", "fit_field", "evaluate_psnr"]


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (mean squared error over everything)."""
    mse = torch.mean((prediction.detach().float() - target.detach().float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


@torch.no_grad()
def evaluate_psnr(
    field: RadianceField, images: torch.Tensor, cameras: Cameras, *, background=None, batch_views: int = 8
) -> float:
    """PSNR of deterministic renders of ``cameras`` against ``images`` ``(V, 3, H, W)``."""
    renders = [
        field.render(cameras[list(range(s, min(s + batch_views, len(cameras))))], background=background).rgb
        for s in range(0, len(cameras), batch_views)
    ]
    return psnr(torch.cat(renders), images.to(renders[0].device))


def fit_field(
    field: RadianceField,
    images: torch.Tensor,
    cameras: Cameras,
    *,
    steps: int = 300,
    views_per_step: int = 8,
    lr_scale: float = 1.0,
    background=None,
    generator: torch.Generator | None = None,
    jitter: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Adam on the mean squared error of random view batches (plus ``field.regularizer()``).

    Each step draws ``views_per_step`` distinct views with ``generator`` (a fresh
    ``torch.Generator(0)`` if ``None``, so runs repeat exactly) and, if ``jitter``, jitters ray
    samples with the same generator. Pass ``optimizer`` to continue a previous optimisation.
    Returns the per-step photometric losses.
    """
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images for {len(cameras)} cameras")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    optimizer = optimizer or torch.optim.Adam(field.parameters_for_optimizer(lr_scale), betas=(0.9, 0.99))
    device = next(field.parameters()).device
    images = images.to(device)
    losses = []
    for step in range(steps):
        idx = torch.randperm(len(cameras), generator=generator)[: min(views_per_step, len(cameras))].tolist()
        out = field.render(cameras[idx], background=background, generator=generator if jitter else None)
        loss = torch.mean((out.rgb - images[idx]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        (loss + field.regularizer()).backward()
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    return losses
