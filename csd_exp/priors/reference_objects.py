r"""The reference objects of the exact generation prior: analytic 3D objects rendered from any camera.

:class:`~csd_exp.priors.exact_generation.ExactGenerationPrior` models, for every camera c, the image
distribution p(x | c, y) = Σ_k π_k N(R_k(c), s² I): a mixture over the K reference objects of the prompt
y, each rendered from c. This module holds those objects and the prompt registry.

Objects are ray-traced in closed form (a sphere, an axis-aligned box), so a reference render costs a few
element-wise ops per ray and is exact up to the anti-aliasing. Colours are Lambertian albedo times a
shade from one fixed world light, 0.55 + 0.45 max(0, n·l), so the appearance of a surface point does
not depend on the viewer: the voxel field (view-independent colour) can represent every reference
exactly. The background is white, as the task's default field background.

Cameras are duck-typed (``c2w`` (V, 4, 4), ``fx, fy, cx, cy`` (V,), ``width``, ``height``), i.e.
:class:`csd_exp.data.cameras.Cameras`, whose conventions :func:`camera_rays` follows (OpenGL
camera-to-world, z up, pixel centres at +0.5, directions with unit component along the viewing axis).
``priors`` must not import ``data`` (the package layering, tests/test_import_graph.py), so the ten lines of
ray generation are written here again; a test checks them against :func:`csd_exp.data.cameras.generate_rays`.

Registry (prompts are matched after lower-casing, punctuation to spaces, and dropping a trailing
DreamFusion view suffix such as ", front view"):

=====================  ==========================================================  ======================
prompt                 references (K)                                              what differs
=====================  ==========================================================  ======================
``a painted ball``     a ball of radius 0.6 with white latitude stripes, painted   colour (K = 3), with a
                       ``red`` / ``green`` / ``blue``, each colour preferred from  view bias
                       its own side (azimuth 0 / 120 / 240)
``a block or a ball``  an orange ``cube`` (side 1.0) or an orange ``ball``         geometry (K = 2)
                       (radius 0.62, about the cube's volume)
=====================  ==========================================================  ======================

The painted ball carries the Janus mechanism itself: its mixture weights depend on the camera
(:meth:`ReferenceSet.view_log_weights`, strength ``view_bias``): seen from azimuth 0 the prior prefers the
red ball, from 120° the green one, from 240° the blue one, as a text-to-image prior prefers the object's
front in every view. No 3D object satisfies every view's preference, so the views pull towards different
references while the shared field pulls them together.

A field whose views split between references (a red front and a blue back; a cube seen from one side and
a ball from the other) is the exact analogue of DreamFusion's Janus failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: DreamFusion's view-dependent prompt suffixes, which the registry ignores (the camera already says the view).
VIEW_SUFFIX = re.compile(r"\s*,?\s*(front|side|back|overhead|bottom)\s+view\s*$")
_LIGHT = (0.4, -0.3, 0.85)
BACKGROUND = 1.0


def camera_rays(cameras) -> tuple[Tensor, Tensor]:
    """(origins, directions), each (V, H, W, 3), of every pixel centre: the conventions of
    :func:`csd_exp.data.cameras.generate_rays` (see the module docstring for why it is repeated)."""
    c2w = torch.as_tensor(cameras.c2w, dtype=torch.float32)
    device = c2w.device
    height, width = int(cameras.height), int(cameras.width)
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    fx, fy, cx, cy = (
        torch.as_tensor(getattr(cameras, k), device=device).view(-1, 1, 1) for k in ("fx", "fy", "cx", "cy")
    )
    x = (u[None] - cx) / fx
    y = -(v[None] - cy) / fy
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    directions = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], d_cam)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins.contiguous(), directions.contiguous()


def _shade(albedo: Tensor, normals: Tensor, hit: Tensor) -> Tensor:
    light = torch.tensor(_LIGHT, device=normals.device)
    light = light / light.norm()
    shade = 0.55 + 0.45 * (normals @ light).clamp_min(0.0)
    return torch.where(hit[:, None], albedo * shade[:, None], torch.full_like(albedo, BACKGROUND))


@dataclass(frozen=True)
class StripedBall:
    """A ball at the origin with ``stripes`` white latitude bands on a ``color`` base."""

    color: tuple[float, float, float]
    radius: float = 0.6
    stripes: int = 3

    def trace(self, origins: Tensor, directions: Tensor) -> Tensor:
        """(N, 3) colours of (N, 3) rays."""
        a = (directions * directions).sum(-1)
        b = 2.0 * (origins * directions).sum(-1)
        c = (origins * origins).sum(-1) - self.radius**2
        disc = b * b - 4.0 * a * c
        t = (-b - disc.clamp_min(0.0).sqrt()) / (2.0 * a)
        hit = (disc > 0) & (t > 1e-4)
        normals = (origins + t[:, None] * directions) / self.radius
        latitude = torch.asin(normals[:, 2].clamp(-1.0, 1.0))  # -pi/2 .. pi/2
        band = torch.sin(latitude * 2.0 * self.stripes) > 0.6
        base = torch.tensor(self.color, device=origins.device).expand_as(origins)
        albedo = torch.where(band[:, None], torch.ones_like(base), base)
        return _shade(albedo, normals, hit)


@dataclass(frozen=True)
class Cube:
    """An axis-aligned cube of side ``side`` centred at the origin, one ``color``."""

    color: tuple[float, float, float]
    side: float = 1.0

    def trace(self, origins: Tensor, directions: Tensor) -> Tensor:
        half = self.side / 2.0
        safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
        t0, t1 = (-half - origins) / safe, (half - origins) / safe
        t_near, axis = torch.minimum(t0, t1).max(dim=-1)
        t_far = torch.maximum(t0, t1).min(dim=-1).values
        hit = (t_near < t_far) & (t_near > 1e-4)
        normals = torch.zeros_like(origins)
        rows = torch.arange(origins.shape[0], device=origins.device)
        normals[rows, axis] = -torch.sign(safe[rows, axis])
        albedo = torch.tensor(self.color, device=origins.device).expand_as(origins)
        return _shade(albedo, normals, hit)


@dataclass(frozen=True)
class ReferenceSet:
    """The K reference objects of one prompt, with mixture weights π (None: uniform) and optionally the azimuth
    (degrees) from which each is preferred (``facing``: the view bias, see :meth:`view_log_weights`)."""

    prompt: str
    names: tuple[str, ...]
    objects: tuple[Callable, ...]
    weights: tuple[float, ...] | None = None
    facing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.objects) or not self.objects:
            raise ValueError(f"{self.prompt!r}: need one name per reference object")
        if self.weights is not None and (len(self.weights) != len(self.objects) or min(self.weights) <= 0):
            raise ValueError(f"{self.prompt!r}: need one positive weight per reference object")
        if self.facing is not None and len(self.facing) != len(self.objects):
            raise ValueError(f"{self.prompt!r}: need one facing azimuth per reference object")

    @property
    def num_references(self) -> int:
        return len(self.objects)

    def log_weights(self, dtype=torch.float64, device=None) -> Tensor:
        weights = torch.tensor(self.weights or [1.0] * self.num_references, dtype=dtype, device=device)
        return torch.log(weights / weights.sum())

    def view_log_weights(self, cameras, view_bias: float, dtype=torch.float64) -> Tensor:
        """(V, K) log π_k(c) ∝ log π_k + β cos φ_k(c), normalised over k: φ_k(c) is the horizontal angle between
        reference k's ``facing`` azimuth and camera c's azimuth, β = ``view_bias``. β > 0 makes each view prefer
        a different reference (the pressure behind DreamFusion's Janus faces); sets without ``facing`` (and
        β = 0) have camera-independent weights."""
        centres = torch.as_tensor(cameras.c2w, dtype=dtype)[:, :3, 3]
        base = self.log_weights(dtype, centres.device).expand(centres.shape[0], -1)
        if self.facing is None or view_bias == 0.0:
            return base
        camera_azimuth = torch.atan2(centres[:, 1], centres[:, 0])
        facing = torch.deg2rad(torch.tensor(self.facing, dtype=dtype, device=centres.device))
        logits = base + view_bias * torch.cos(camera_azimuth[:, None] - facing[None])
        return torch.log_softmax(logits, dim=1)

    @torch.no_grad()
    def render(self, cameras, supersample: int = 2) -> Tensor:
        """(V, K, 3, H, W) renders in [0, 1] of every reference from every camera, each pixel the mean of
        ``supersample``² sub-pixel rays (anti-aliasing)."""
        s = int(supersample)
        fine = _Supersampled(cameras, s)
        origins, directions = camera_rays(fine)
        views, height, width = origins.shape[0], int(cameras.height), int(cameras.width)
        renders = []
        for obj in self.objects:
            colour = obj.trace(origins.reshape(-1, 3), directions.reshape(-1, 3))
            image = colour.reshape(views, height * s, width * s, 3).permute(0, 3, 1, 2)
            renders.append(F.avg_pool2d(image, s) if s > 1 else image)
        return torch.stack(renders, dim=1).clamp(0.0, 1.0).contiguous()


class _Supersampled:
    """The cameras at ``s`` times the resolution (same image corners)."""

    def __init__(self, cameras, s: int) -> None:
        self.c2w = torch.as_tensor(cameras.c2w, dtype=torch.float32)
        device = self.c2w.device
        self.fx, self.fy, self.cx, self.cy = (
            torch.as_tensor(getattr(cameras, k), device=device) * s for k in ("fx", "fy", "cx", "cy")
        )
        self.width, self.height = int(cameras.width) * s, int(cameras.height) * s


def normalize_prompt(text: str) -> str:
    """Lower case, the DreamFusion view suffix dropped, punctuation to spaces, single spaces."""
    text = VIEW_SUFFIX.sub("", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


_ORANGE = (0.95, 0.55, 0.15)
REFERENCE_SETS: dict[str, ReferenceSet] = {
    s.prompt: s
    for s in (
        ReferenceSet(
            "a painted ball",
            ("red", "green", "blue"),
            (StripedBall((0.85, 0.15, 0.15)), StripedBall((0.15, 0.7, 0.2)), StripedBall((0.15, 0.3, 0.9))),
            facing=(0.0, 120.0, 240.0),
        ),
        ReferenceSet(
            "a block or a ball",
            ("cube", "ball"),
            (Cube(_ORANGE, side=1.0), StripedBall(_ORANGE, radius=0.62, stripes=0)),
        ),
    )
}


def find_reference_set(prompt: str, registry: dict[str, ReferenceSet] | None = None) -> ReferenceSet:
    """The reference set of ``prompt`` (view suffix ignored); an unknown prompt is a ``ValueError`` listing them."""
    registry = REFERENCE_SETS if registry is None else registry
    key = normalize_prompt(prompt)
    for reference_set in registry.values():
        if key == normalize_prompt(reference_set.prompt):
            return reference_set
    known = "; ".join(f"{s.prompt!r} (K={s.num_references}: {', '.join(s.names)})" for s in registry.values())
    raise ValueError(f"the exact generation prior does not know the prompt {prompt!r}; it knows: {known}")
