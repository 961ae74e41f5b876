"""The order of float operations of FateZero's released stack (diffusers 0.11.1, transformers 4.25.1) where the
libraries we run compute the same values another way: the attention of the VAE's mid block and of the CLIP
text encoder. Installed for the span of a ``with`` block and removed after, so a prior shared with other
code keeps its own arithmetic.

* **VAE attention** (diffusers 0.11's ``AttentionBlock``): scores = baddbmm(q, kᵀ, α = scale), softmax, bmm;
  diffusers 0.42 runs ``scaled_dot_product_attention`` there. Its ``AttnProcessor`` keeps the explicit order.
* **CLIP text attention** (transformers 4.25's ``CLIPAttention``): q scaled *before* the product,
  bmm(q · scale, kᵀ) + the causal mask (``finfo.min`` above the diagonal), softmax, bmm; transformers 5 scales
  after the product (eager) or calls ``scaled_dot_product_attention`` (sdpa).

Same attention in exact arithmetic; float32 rounding differs by ~1e-7 relative, which DDIM inversion of a
random tiny UNet amplifies to whole 8-bit levels in the final frames (docs/baselines.md, FateZero).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


def released_clip_attention(module: torch.nn.Module, hidden_states: Tensor) -> Tensor:
    """A CLIP text encoder's causal self-attention in transformers 4.25's order of operations."""
    batch, tokens, _ = hidden_states.shape
    heads, head_dim = module.num_heads, module.head_dim

    def split(x: Tensor) -> Tensor:  # (B, T, H·d) -> (B·H, T, d)
        return x.view(batch, tokens, heads, head_dim).transpose(1, 2).contiguous().view(batch * heads, tokens, head_dim)

    query = split(module.q_proj(hidden_states) * module.scale)
    key, value = split(module.k_proj(hidden_states)), split(module.v_proj(hidden_states))
    weights = torch.bmm(query, key.transpose(1, 2))
    causal = torch.full((tokens, tokens), torch.finfo(weights.dtype).min, dtype=weights.dtype, device=weights.device)
    weights = (weights.view(batch, heads, tokens, tokens) + causal.triu_(1)).view(batch * heads, tokens, tokens)
    out = torch.bmm(weights.softmax(dim=-1), value)
    out = out.view(batch, heads, tokens, head_dim).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return module.out_proj(out)


def _clip_attention_modules(text_encoder) -> list[torch.nn.Module]:
    return [m for m in text_encoder.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj"))]


@contextmanager
def released_text_attention(text_encoder):
    """Inside: every attention layer of a CLIP text encoder computes as transformers 4.25 did (causal, no
    padding mask: Stable Diffusion's encoders; one that takes a padding mask is left as it is)."""
    if getattr(text_encoder.config, "use_attention_mask", False):
        yield text_encoder
        return
    modules = _clip_attention_modules(text_encoder)
    for module in modules:

        def forward(hidden_states, attention_mask=None, *args, _module=module, **kwargs):
            return released_clip_attention(_module, hidden_states), None

        module.forward = forward
    try:
        yield text_encoder
    finally:
        for module in modules:
            del module.forward


@contextmanager
def released_vae_attention(vae):
    """Inside: the VAE's attention layers use diffusers' ``AttnProcessor`` (baddbmm, softmax, bmm: the order
    of diffusers 0.11's ``AttentionBlock``); the processors found are restored after."""
    from diffusers.models.attention_processor import AttnProcessor

    processors = getattr(vae, "attn_processors", None)
    if not processors:
        yield vae
        return
    previous = dict(processors)
    vae.set_attn_processor(AttnProcessor())
    try:
        yield vae
    finally:
        vae.set_attn_processor(previous)
