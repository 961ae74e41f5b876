"""The :class:`RadianceField` interface and the backend registry.

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
5. Register it: ``@register_field("mybackend")`` on the class, or, to keep CUDA-only imports out of
   ``import csd_exp``, ``register_field_path("gsplat", "my_pkg.gsplat_field:GsplatField")`` which
   imports the module only when :func:`build_field` is called with that name. Construction must not
   require a GPU unless the backend is GPU-only, and then it must raise a clear ``RuntimeError``
   naming the missing requirement.

``gsplat`` and ``nerfacc`` need CUDA; the CPU-capable default is
:class:`csd_exp.render.voxel.VoxelRadianceField` (registered as ``"voxel"``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from csd_exp.data.cameras import Cameras

__all__ = [
    "RenderOutput",
    "RadianceField",
    "register_field",
    "register_field_path",
    "build_field",
    "available_fields",
    "resolve_background",
]


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


_REGISTRY: dict[str, Callable[..., RadianceField] | str] = {}


def register_field(name: str) -> Callable[[type], type]:
    """Class decorator registering a :class:`RadianceField` under ``name``."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, RadianceField)):
            raise TypeError(f"{cls!r} is not a RadianceField subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a radiance field named {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def register_field_path(name: str, target: str) -> None:
    """Register ``"package.module:ClassName"`` under ``name``; imported lazily by :func:`build_field`."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:ClassName', got {target!r}")
    if name in _REGISTRY and _REGISTRY[name] != target:
        raise ValueError(f"a radiance field named {name!r} is already registered")
    _REGISTRY[name] = target


def available_fields() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def build_field(name: str, **kwargs) -> RadianceField:
    """Instantiate the backend registered as ``name`` with ``kwargs``."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown radiance field {name!r}; available: {sorted(_REGISTRY)}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module_name, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(entry, type) and issubclass(entry, RadianceField)):
            raise TypeError(f"{name!r} -> {_REGISTRY[name]} is not a RadianceField subclass")
        _REGISTRY[name] = entry
    return entry(**kwargs)


def _ensure_builtin() -> None:
    # Importing the module runs its @register_field decorator.
    importlib.import_module("csd_exp.render.voxel")
