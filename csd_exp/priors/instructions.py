"""Instructions the exact-score prior understands: each maps a source image to K edited versions of it.

An :class:`InstructionFamily` is a named, *multimodal* edit: K mode names and K edit functions E_k acting
on latents z = 2x − 1 (RGB, channel dimension 1). Every edit here is a per-pixel affine colour map
x ↦ M x + b (written in image space, applied in latent space as z ↦ M z + (M·1 + 2b − 1)), so it commutes
with the exact prior's average-pool downsampling: E_k(pool(z)) = pool(E_k(z)).

Two kinds, both offered on purpose (see shared/reference/exact-prior-findings.md):

* ``"content"``: the difference between two modes, E_k(x̃) − E_j(x̃), depends on the image content (hue
  rotations, palette matrices). Different windows / frames push particles apart in different directions.
* ``"shared"``: E_k(x̃) − E_j(x̃) is the same for every image (a common darkening plus a tint offset); the
  noise alone decides which mode a particle settles on, and coupling the particles helps the most.

Registry (``INSTRUCTIONS``; matched case-insensitively after turning punctuation into spaces):

===============================  ==  =========  =============================================
name                             K   kind       modes
===============================  ==  =========  =============================================
turn it into a pop-art painting  4   content    hue rotations by 72°, 144°, 216°, 288° (+30 % chroma)
turn it into autumn              3   content    amber, crimson, golden palettes (channel mixing)
make it night                    3   shared     darken to 35 % + midnight-blue / teal / violet tint
make it vintage                  2   content    sepia matrix, faded cyanotype
make it sunset                   2   shared     darken to 80 % + orange / pink glow
===============================  ==  =========  =============================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AffineColourEdit:
    """x ↦ M x + b per pixel in image space ([0, 1] RGB), applied to latents z = 2x − 1."""

    matrix: tuple[tuple[float, float, float], ...]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __call__(self, latents: Tensor) -> Tensor:
        if latents.shape[1] != 3:
            raise ValueError(f"colour edits need 3 (RGB) latent channels; got {latents.shape[1]}")
        m = torch.tensor(self.matrix, dtype=latents.dtype, device=latents.device)
        b = torch.tensor(self.offset, dtype=latents.dtype, device=latents.device)
        latent_offset = m.sum(dim=1) + 2.0 * b - 1.0  # M·1 + 2b − 1
        return torch.einsum("ij,nj...->ni...", m, latents) + latent_offset.view(1, 3, *([1] * (latents.ndim - 2)))


@dataclass(frozen=True)
class InstructionFamily:
    """A multimodal edit: p(z₀ | x̃, y) = Σ_k π_k N(E_k(x̃), s² I)."""

    name: str
    mode_names: tuple[str, ...]
    edits: tuple[Callable[[Tensor], Tensor], ...]
    kind: str  # "content" or "shared" (see the module docstring)
    description: str = ""
    aliases: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None  # mixture weights π_k (None: uniform)

    def __post_init__(self) -> None:
        if len(self.mode_names) != len(self.edits) or not self.edits:
            raise ValueError(f"{self.name!r}: need one edit per mode name")
        if self.kind not in ("content", "shared"):
            raise ValueError(f"{self.name!r}: kind must be 'content' or 'shared'; got {self.kind!r}")
        if self.weights is not None and (len(self.weights) != len(self.edits) or min(self.weights) <= 0):
            raise ValueError(f"{self.name!r}: need one positive weight per mode")

    @property
    def num_modes(self) -> int:
        return len(self.edits)

    def log_weights(self, dtype=torch.float64, device=None) -> Tensor:
        weights = torch.tensor(self.weights or [1.0] * self.num_modes, dtype=dtype, device=device)
        return torch.log(weights / weights.sum())

    def mode_means(self, image_cond: Tensor) -> Tensor:
        """(K, N, C, h, w): the K edited versions E_k(x̃) of every particle's source latents."""
        return torch.stack([edit(image_cond) for edit in self.edits])


def normalize_instruction(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: "Turn it into a Pop-Art painting!" -> "turn it into
    a pop art painting"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def find_instruction(prompt: str, registry: Mapping[str, InstructionFamily]) -> InstructionFamily:
    """The family whose name or alias matches ``prompt``; an unknown prompt is a ``ValueError`` listing them."""
    key = normalize_instruction(prompt)
    for family in registry.values():
        if key in {normalize_instruction(n) for n in (family.name, *family.aliases)}:
            return family
    known = "; ".join(f"{f.name!r} (K={f.num_modes}, {f.kind})" for f in registry.values())
    raise ValueError(f"the exact-score prior does not know the instruction {prompt!r}; it knows: {known}")


# -- the edits -----------------------------------------------------------------------------------------
def hue_rotation(degrees: float, chroma_gain: float = 1.0) -> AffineColourEdit:
    """Rotate colours about the grey axis (1,1,1)/√3 by ``degrees`` and scale chroma by ``chroma_gain``
    (Rodrigues' rotation in RGB about grey 0.5, so it is affine in image space and linear in latents)."""
    angle = math.radians(degrees)
    cos, sin, third = math.cos(angle), math.sin(angle), 1.0 / 3.0
    # Rodrigues: R = cos I + sin [u]_x + (1 − cos) u uᵀ with u = (1,1,1)/√3, [u]_x = S/√3 below.
    cross = ((0.0, -1.0, 1.0), (1.0, 0.0, -1.0), (-1.0, 1.0, 0.0))
    rotation = [
        [cos * (i == j) + sin * math.sqrt(third) * cross[i][j] + (1.0 - cos) * third for j in range(3)]
        for i in range(3)
    ]
    # Chroma gain g: M = P + g (R − P) with P = u uᵀ (every entry 1/3), the projection onto grey.
    matrix = [[third + chroma_gain * (rotation[i][j] - third) for j in range(3)] for i in range(3)]
    offset = [0.5 * (1.0 - sum(row)) for row in matrix]  # keep grey 0.5 fixed
    return AffineColourEdit(tuple(tuple(row) for row in matrix), tuple(offset))


def darken_and_tint(keep: float, tint: Sequence[float]) -> AffineColourEdit:
    """x ↦ keep · x + tint: every mode shares the darkening; modes differ by a constant tint."""
    return AffineColourEdit(((keep, 0.0, 0.0), (0.0, keep, 0.0), (0.0, 0.0, keep)), tuple(tint))


POP_ART_HUES = (72.0, 144.0, 216.0, 288.0)
POP_ART_CHROMA_GAIN = 1.3
AUTUMN_PALETTES = {
    "amber": ((0.8, 0.6, 0.0), (0.3, 0.5, 0.0), (0.0, 0.1, 0.5)),
    "crimson": ((0.7, 0.7, 0.0), (0.1, 0.3, 0.0), (0.1, 0.1, 0.5)),
    "golden": ((0.6, 0.6, 0.0), (0.4, 0.6, 0.0), (0.0, 0.0, 0.4)),
}
NIGHT_KEEP = 0.35
NIGHT_TINTS = {"midnight_blue": (0.02, 0.06, 0.22), "teal": (0.0, 0.15, 0.15), "violet": (0.12, 0.03, 0.2)}
SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))
CYANOTYPE = ((0.15, 0.3, 0.05), (0.2, 0.45, 0.1), (0.25, 0.5, 0.15))
CYANOTYPE_OFFSET = (0.05, 0.15, 0.3)
SUNSET_KEEP = 0.8
SUNSET_TINTS = {"orange_glow": (0.18, 0.08, 0.0), "pink_glow": (0.16, 0.02, 0.1)}


def _registry(*families: InstructionFamily) -> dict[str, InstructionFamily]:
    return {family.name: family for family in families}


INSTRUCTIONS: dict[str, InstructionFamily] = _registry(
    InstructionFamily(
        name="turn it into a pop-art painting",
        mode_names=tuple(f"hue_{int(h)}" for h in POP_ART_HUES),
        edits=tuple(hue_rotation(h, POP_ART_CHROMA_GAIN) for h in POP_ART_HUES),
        kind="content",
        description="Warhol-style: the same picture in one of 4 rotated colour schemes",
        aliases=("turn into andy warhol style painting", "make it pop art", "turn it into pop art"),
    ),
    InstructionFamily(
        name="turn it into autumn",
        mode_names=tuple(AUTUMN_PALETTES),
        edits=tuple(AffineColourEdit(m) for m in AUTUMN_PALETTES.values()),
        kind="content",
        description="greens become amber, crimson or golden foliage (channel-mixing palettes)",
        aliases=("make it autumn", "turn it into fall"),
    ),
    InstructionFamily(
        name="make it night",
        mode_names=tuple(NIGHT_TINTS),
        edits=tuple(darken_and_tint(NIGHT_KEEP, tint) for tint in NIGHT_TINTS.values()),
        kind="shared",
        description="darken to 35 % and tint: midnight blue, teal or violet",
        aliases=("make it nighttime", "turn it into night"),
    ),
    InstructionFamily(
        name="make it vintage",
        mode_names=("sepia", "cyanotype"),
        edits=(AffineColourEdit(SEPIA), AffineColourEdit(CYANOTYPE, CYANOTYPE_OFFSET)),
        kind="content",
        description="an old photograph: sepia print or faded cyanotype",
        aliases=("make it look vintage", "make it an old photo"),
    ),
    InstructionFamily(
        name="make it sunset",
        mode_names=tuple(SUNSET_TINTS),
        edits=tuple(darken_and_tint(SUNSET_KEEP, tint) for tint in SUNSET_TINTS.values()),
        kind="shared",
        description="darken to 80 % with an orange or a pink evening glow",
        aliases=("turn it into sunset", "make it golden hour"),
    ),
)
