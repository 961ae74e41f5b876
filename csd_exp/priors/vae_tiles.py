"""Patch-wise VAE encode / decode for images larger than the VAE was trained on (``model.vae_tile_stride``).

What the official code does (github.com/subin-kim-cv/CSD, ``csdedit.py``, ``encode_latents_stride`` L232–261
and ``decode_latents_stride`` L263–292, switched on by ``--stride_vae``, README's high-resolution example):

* tiles are 64 × 64 latent px (512 × 512 image px: Stable Diffusion's training size), placed at
  ``0, s, 2s, …`` in latent px along each side, ``(side − 64) // s + 1`` of them, row-major (h outer, w
  inner), where ``s`` is ``--stride`` (the same option as the panorama's window stride, default 16);
* encoding runs the VAE on each 512-px crop and takes its posterior ``sample()``; decoding runs the VAE
  decoder (or the consistency decoder) on each 64-latent-px crop;
* overlapping tiles are blended by a plain average: every tile adds into a canvas and a count map, and the
  canvas is divided by the count (no feathering). Encode then scales by 0.18215; decode clamps
  ``x / 2 + 0.5`` to [0, 1] after the average.

Differences, both only where the official code leaves pixels uncovered (it sizes its images so that never
happens with the README's stride 16): a side shorter than the tile becomes one tile of that side (official:
no tile, zeros), and when ``(side − 64)`` is not a multiple of the stride one more tile is placed flush with
the far edge (official: the strip stays zero, i.e. grey after decoding). With a whole-image tile grid the
tile positions are exactly the official ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from torch import Tensor

#: tile side in latent px: the official 64 (512 image px for Stable Diffusion's 8x VAE)
TILE_LATENT = 64
#: ``model.vae_tile_stride`` (with ``| None``, the whole-image VAE): pydantic ``Field`` keywords, read by the
#: compose-time check from source and by ``@checked`` for Python callers
TileStride = Annotated[
    int,
    {
        "ge": 1,
        "le": TILE_LATENT,
        # plain concatenation (no f-string): the compose-time check reads this marker from source
        "description": "null (whole-image VAE) or an integer in [1, "
        + str(TILE_LATENT)
        + "] latent px (tiles are "
        + str(TILE_LATENT)
        + " latent px; a larger stride would leave gaps; the official code uses 16)",
    },
]


def tile_starts(side: int, stride: int, tile: int = TILE_LATENT) -> list[int]:
    """Start offsets (latent px) of the tiles along one side of ``side`` latent px; each tile is
    ``min(tile, side)`` long. The official grid ``0, s, …, (side − tile) // s · s``, plus a tile flush with
    the far edge where that grid stops short of it."""
    if side <= tile:
        return [0]
    starts = list(range(0, side - tile + 1, stride))
    if starts[-1] + tile < side:
        starts.append(side - tile)
    return starts


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, in_per_latent: int, out_per_latent: int, stride: int) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and average the outputs where they overlap.

    Tiles are laid out in latent px (:func:`tile_starts`); ``x`` has ``in_per_latent`` px per latent px (the
    VAE factor for images, 1 for latents) and ``fn``'s output ``out_per_latent``. The canvas is at least
    float32 whatever ``fn`` runs in (a float16 VAE's tiles are averaged in float32), and the in-place slice
    additions keep an autograd graph through ``fn`` (differentiable encoding)."""
    latent_h, latent_w = x.shape[-2] // in_per_latent, x.shape[-1] // in_per_latent
    tile_h, tile_w = min(TILE_LATENT, latent_h), min(TILE_LATENT, latent_w)
    value = count = None
    for h0 in tile_starts(latent_h, stride):
        for w0 in tile_starts(latent_w, stride):
            crop = x[
                ...,
                h0 * in_per_latent : (h0 + tile_h) * in_per_latent,
                w0 * in_per_latent : (w0 + tile_w) * in_per_latent,
            ]
            out = fn(crop)
            if value is None:
                shape = (*out.shape[:-2], latent_h * out_per_latent, latent_w * out_per_latent)
                dtype = torch.promote_types(out.dtype, torch.float32)
                value = torch.zeros(shape, device=out.device, dtype=dtype)
                count = torch.zeros(shape[-2:], device=out.device, dtype=dtype)
            rows = slice(h0 * out_per_latent, (h0 + tile_h) * out_per_latent)
            cols = slice(w0 * out_per_latent, (w0 + tile_w) * out_per_latent)
            value[..., rows, cols] += out
            count[rows, cols] += 1
    return value / count
