"""The :class:`RadianceField` interface: what a 3D backend implements.

A *radiance field* is a ``torch.nn.Module`` holding the scene parameters θ of the 3D task. The task
renders particles with :meth:`RadianceField.render` and back-propagates image-space gradients into θ.

What a backend must implement (this is the whole contract the 3D task relies on):

1. Subclass :class:`RadianceField` (so it is an ``nn.Module``; its parameters live in
   ``state_dict``; it moves with ``.to(device)``).
2. ``render(cameras, *, background=None, generator=None) -> RenderOutput`` where

   * ``cameras`` is a :class:`~csd_exp.data.cameras.Cameras` batch of ``V`` views (OpenGL c2w,
     z-up world, pixel centres at +0.5; see :mod:`csd_exp.data.cameras`), on the field's device;
   * ``background`` is ``None`` (the field's own default), a float, a ``(3,)`` colour or a
     ``(V, 3, H, W)`` image, composited as ``rgb = rgb_fg + (1 - opacity) * background``;
   * ``generator`` is an optional ``torch.Generator`` for any stochastic choice (sample jitter);
     with ``generator=None`` the render must be deterministic;
   * the result holds ``rgb`` ``(V, 3, H, W)`` in ``[0, 1]``, ``depth`` ``(V, 1, H, W)`` z-depth of
     the expected ray termination (normalised by opacity; 0 where nothing is hit), and ``opacity``
     ``(V, 1, H, W)`` in ``[0, 1]``;
   * ``rgb`` and ``opacity`` are differentiable w.r.t. the field's parameters (``depth`` should be).
3. ``parameters_for_optimizer(lr_scale=1.0) -> list[dict]``: ``torch.optim`` parameter groups with a
   ``"name"`` and a ``"lr"`` each, covering every trainable parameter exactly once.
4. Optionally ``regularizer() -> Tensor`` (scalar, default 0) for smoothness priors such as TV.
5. The constructor takes ``aabb`` (the scene box, given by the task) and the backend's own settings.
   Construction must not require a GPU unless the backend is GPU-only, and then it must raise a clear
   ``RuntimeError`` naming the missing requirement.

A backend is chosen like everything else, by ``_target_``: ``task.field._target_: my_pkg.GsplatField``
(with ``_partial_: true``; the 3D task calls it with ``aabb``), so its module, and any CUDA-only import
in it, is imported only when a config names it. ``gsplat`` and ``nerfacc`` need CUDA; the CPU-capable
default is :class:`csd_exp.render.voxel.VoxelRadianceField`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csd_exp.data.cameras import Cameras

__all__ = ["RenderOutput", "RadianceField", "resolve_background"]


@dataclass
class RenderOutput:
    """Rendered views: ``rgb`` (V,3,H,W) in [0,1]; ``depth`` (V,1,H,W) z-depth; ``opacity`` (V,1,H,W)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor


def resolve_background(
    background: float | torch.Tensor | tuple | list | None,
    num_views: int,
    height: int,
    width: int,
    device: torch.device,
    default: float | tuple = 1.0,
) -> torch.Tensor:
    """Broadcast a background spec to ``(V, 3, H, W)`` (see :meth:`RadianceField.render`)."""
    if background is None:
        background = default
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    if bg.ndim == 1:
        if bg.numel() != 3:
            raise ValueError(f"background colour must have 3 values, got {bg.numel()}")
        bg = bg.view(1, 3, 1, 1)
    return bg.expand(num_views, 3, height, width)


class RadianceField(torch.nn.Module):
    """Interface of a differentiable 3D scene representation (see the module docstring)."""

    def render(
        self,
        cameras: Cameras,
        *,
        background: float | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        raise NotImplementedError

    def parameters_for_optimizer(self, lr_scale: float = 1.0) -> list[dict]:
        raise NotImplementedError

    def regularizer(self) -> torch.Tensor:
        """Scalar smoothness penalty; zero unless a backend defines one."""
        first = next(self.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else None)
