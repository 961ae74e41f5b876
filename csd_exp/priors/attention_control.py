"""Attention control for zero-shot video editing on a text-to-image UNet: diffusers attention processors
(set with ``unet.set_attn_processor``, public API) that add cross-frame self-attention, record attention
maps and fuse them.

**Cross-frame (sparse-causal) self-attention** (Tune-A-Video / FateZero Sec. 3.3, Pix2Video Sec. 3.2). The
UNet sees the F frames of a clip as F rows of a batch (several groups of F rows under classifier-free
guidance). In the chosen layers, frame i's queries attend to the keys and values of other frames of its
group instead of its own:

    Attention(Q_i, K, V) = softmax(Q_i [K_{j₁(i)}, …, K_{j_m(i)}]ᵀ / √d) [V_{j₁(i)}, …, V_{j_m(i)}],

with j(i) from ``frames``: ``first`` (frame 0, Pix2Video's anchor), ``previous`` (max(i − 1, 0)), ``self``
(i), ``middle`` ((F − 1) // 2), ``last`` (F − 1). FateZero's spatio-temporal attention and Pix2Video's
feature injection both use [first, previous]. With one frame every choice is frame 0 itself, and attending
to copies of one's own keys is ordinary self-attention (each key's softmax weight is duplicated, the
normalisation divides it back out).

Layers are chosen by place (``down`` / ``mid`` / ``up`` blocks) and resolution **level**: level l holds
the UNet's activations at 1 / 2^l of the latent's side (SD 1.5 at 64² latents: level 0 = 64², 1 = 32², 2 =
16², 3 = the 8² mid block). FateZero's released configs put temporal attention on every block with at least
640 channels (``least_sc_channel: 640``), which on Stable Diffusion's (320, 640, 1280, 1280) channels is
level >= 1 (``temporal_min_channels`` selects by channels as the release does, on any UNet); Pix2Video
injects features in the decoder's self-attention (its ``COND_LAYER = 7``: the up-block layers).

**Attention store** (FateZero Sec. 3.2, its ``AttentionStore``). During DDIM inversion, the attention
probabilities of every layer at level >= 1 (FateZero: query length <= 32², i.e. one level below the
64² latent; full-resolution maps are never kept) are recorded per inversion step, cross-attention
(F, heads, Q, 77) and self-attention (F, heads, Q, K), on ``store_device`` (FateZero moves the 32² maps to
the CPU; here the whole store goes where the task says).

**Attention fusion** (:mod:`csd_exp.priors.attention_fusion`; FateZero Sec. 3.2, Eq. 4–6; its
``AttentionRefine`` / ``AttentionReplace`` / ``AttentionReweight`` and ``SpatialBlender``).
Editing step k (timestep τ_k) pairs with inversion step
N − 1 − k, whose source maps are c_src (cross) and s_src (self); only the target prompt's conditional rows
are changed:

* cross-attention, for k < ⌊cross_replace_steps · N⌋: c ← (A c_src[..., M] + (1 − A) c_tgt) · w, where M maps
  each target token to its source token and A is 1 for tokens the two prompts share and 0 for new ones
  (refinement), or M = identity, A = 1 (replacement, prompts with the same token count); w is the
  ``eq_params`` reweighting (1 except the listed target words);
* self-attention, for k < ⌊self_replace_steps · N⌋: s ← m ⊙ s_tgt + (1 − m) ⊙ s_src, with the blending mask
  m = [norm(maxpool₃ₓ₃(mean over heads and layers Σ_{w ∈ blend words} c_src[..., w])) > blend_th] from the
  source cross-attention of the lowest-resolution down / up layers (16² in SD 1.5), resized to the layer's
  resolution; without blend words m = 0 (the source's self-attention everywhere).

Pure torch; the tokenizer is only used to find word positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: The frames a frame's spatio-temporal self-attention may read (``task.temporal_attention_frames``).
TEMPORAL_ATTENTION_FRAMES = ("first", "previous", "self", "middle", "last")
#: The places of the UNet's blocks (``task.temporal_attention_blocks``).
UNET_PLACES = ("down", "mid", "up")


#: FateZero keeps maps of query length <= (latent side / 2)², i.e. every level from 1 down.
STORE_MIN_LEVEL = 1


# ------------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the UNet: its processor name, place (down / mid / up) and kind."""

    name: str
    place: str
    is_cross: bool
    #: the width of the layer's queries (the transformer block's channels; FateZero's ``least_sc_channel``
    #: compares this number)
    channels: int = 0
    #: the resolution level the layer runs at (its block's: down block i at level i, the mid block at the
    #: coarsest, up block j mirrors down block n − 1 − j); None where the UNet's layout does not say
    level: int | None = None


def attention_layers(unet) -> dict[str, AttentionLayer]:
    """Processor name -> :class:`AttentionLayer` for every attention module of a diffusers UNet, in the
    UNet's registration order (within each place, the order the layers are called in)."""
    layers = {}
    num_down = len(getattr(unet, "down_blocks", ()))
    num_up = len(getattr(unet, "up_blocks", ()))
    for name in unet.attn_processors:
        place = next((p for p in UNET_PLACES if name.startswith(f"{p}_block")), None)
        if place is None:
            raise ValueError(f"attention layer {name!r} is in no down / mid / up block of this UNet")
        module = unet.get_submodule(name.removesuffix(".processor"))
        channels = int(module.to_q.in_features) if hasattr(module, "to_q") else 0
        parts = name.split(".")
        level = None
        if place == "down" and parts[1].isdigit():
            level = int(parts[1])
        elif place == "up" and parts[1].isdigit():
            level = num_up - 1 - int(parts[1])
        elif place == "mid" and num_down:
            level = num_down - 1
        layers[name] = AttentionLayer(
            name=name, place=place, is_cross=".attn2." in name, channels=channels, level=level
        )
    return layers


def level_shape(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """(h, w) of the UNet's activations at ``level`` (each stride-2 convolution gives ceil(side / 2))."""
    h, w = latent_hw
    for _ in range(level):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def level_of(tokens: int, latent_hw: tuple[int, int]) -> int:
    """The resolution level whose activations have ``tokens`` positions."""
    for level in range(16):
        h, w = level_shape(latent_hw, level)
        if h * w == tokens:
            return level
        if h * w < tokens:
            break
    raise ValueError(f"{tokens} attention positions match no resolution of a {latent_hw[0]}x{latent_hw[1]} latent")


def temporal_frame_indices(num_frames: int, frames: Sequence[str]) -> Tensor:
    """(len(frames), F) long: row r gives, for every frame i, the frame whose keys it reads for ``frames[r]``."""
    unknown = [f for f in frames if f not in TEMPORAL_ATTENTION_FRAMES]
    if unknown or not frames:
        raise ValueError(
            f"temporal attention frames {list(frames)} are not allowed: expected a non-empty list of "
            f"{', '.join(TEMPORAL_ATTENTION_FRAMES)}"
        )
    i = torch.arange(num_frames)
    choices = {
        "first": torch.zeros_like(i),
        "previous": (i - 1).clamp(min=0),
        "self": i,
        "middle": torch.full_like(i, (num_frames - 1) // 2),
        "last": torch.full_like(i, num_frames - 1),
    }
    return torch.stack([choices[f] for f in frames])


def gather_frame_tokens(x: Tensor, indices: Tensor) -> Tensor:
    """Rows (G·F, T, C) in groups of F frames -> (G·F, m·T, C): each frame's tokens replaced by those of the
    m frames ``indices[:, i]`` of its own group, concatenated along the tokens."""
    m, num_frames = indices.shape
    groups = x.shape[0] // num_frames
    grouped = x.reshape(groups, num_frames, *x.shape[1:])
    picked = [grouped[:, indices[r].to(x.device)] for r in range(m)]
    return torch.cat(picked, dim=2).reshape(groups * num_frames, m * x.shape[1], x.shape[2])


# ------------------------------------------------------------------------------------- processors
class VideoAttention:
    """Installs :class:`VideoAttnProcessor` on every attention layer of ``unet`` and holds what they share.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        temporal_frames: whose keys / values frame i reads in the temporal layers (see the module docstring).
        temporal_places: which blocks (``down``, ``mid``, ``up``) get cross-frame self-attention.
        temporal_min_level: only layers at this resolution level or coarser (0 = all).
        temporal_min_channels: only layers whose queries have at least this many channels (FateZero's
            ``least_sc_channel``; None = no channel rule).
        clip_groupnorm: GroupNorm statistics over all F frames of a clip in every ResNet block (``norm1``,
            ``norm2``) and the UNet's output norm (``conv_norm_out``), as FateZero's pseudo-3D UNet
            computes them on (b, c, f, h, w) tensors; False: per frame (the 2-D UNet).
        explicit_max_queries: layers with at most this many queries compute attention as the explicit
            product, baddbmm(q, kᵀ, α = scale) → softmax → bmm (diffusers 0.11's ``CrossAttention`` and
            FateZero's controlled attention; every map a hook sees is computed so anyway); the others through
            ``scaled_dot_product_attention`` (a fused kernel: the same attention, other float rounding).
            0: only the hooked layers (our default).
        per_clip_time_embedding: the timestep MLP (``time_embedding``) and every ResNet block's timestep
            projection (``time_emb_proj``) evaluated once per clip and repeated over its F frames, as
            FateZero's pseudo-3D UNet does (one row per clip of its (b, c, f, h, w) input); False: once per
            row. The same values, other float rounding (a matrix product of 1 row vs F rows).

    Outside :meth:`clip` (no clip size known) every layer is plain attention and every norm per frame, so
    the prior keeps working for other callers. :meth:`remove` restores the processors, norms and
    projections found at construction.
    """

    def __init__(
        self,
        unet,
        *,
        temporal_frames: Sequence[str] = ("first", "previous"),
        temporal_places: Sequence[str] = UNET_PLACES,
        temporal_min_level: int = 0,
        temporal_min_channels: int | None = None,
        clip_groupnorm: bool = False,
        explicit_max_queries: int = 0,
        per_clip_time_embedding: bool = False,
    ):
        bad = [p for p in temporal_places if p not in UNET_PLACES]
        if bad:
            raise ValueError(f"temporal attention places {bad} are not allowed: expected {', '.join(UNET_PLACES)}")
        temporal_frame_indices(1, temporal_frames)  # validates the names
        self.unet = unet
        self.temporal_frames = tuple(temporal_frames)
        self.temporal_places = frozenset(temporal_places)
        self.temporal_min_level = int(temporal_min_level)
        self.temporal_min_channels = None if temporal_min_channels is None else int(temporal_min_channels)
        self.explicit_max_queries = int(explicit_max_queries)
        self.layers = attention_layers(unet)
        self.num_frames: int | None = None
        self.latent_hw: tuple[int, int] | None = None
        self.hook = None
        #: layer name -> resolution level, as seen in the last UNet call inside :meth:`clip`
        self.levels: dict[str, int] = {}
        self._indices: Tensor | None = None
        self._previous = dict(unet.attn_processors)
        unet.set_attn_processor({name: VideoAttnProcessor(self, layer) for name, layer in self.layers.items()})
        self.clip_norms = clip_group_norms(unet) if clip_groupnorm else []
        for norm in self.clip_norms:
            norm.forward = _clip_group_norm_forward(norm, self)
        self.time_projections = time_projections(unet) if per_clip_time_embedding else []
        for module in self.time_projections:
            module.forward = _per_clip_forward(module, self)

    def remove(self) -> None:
        self.unet.set_attn_processor(self._previous)
        for module in (*self.clip_norms, *self.time_projections):
            del module.forward  # the class's forward again
        self.clip_norms, self.time_projections = [], []

    @contextmanager
    def clip(self, num_frames: int, latent_hw: tuple[int, int], hook=None):
        """UNet calls inside see rows in groups of ``num_frames`` frames of ``latent_hw`` latents; ``hook``
        (an :class:`AttentionStore`, :class:`AttentionFusion` or None) sees and may change their maps."""
        self.num_frames, self.latent_hw, self.hook = int(num_frames), tuple(latent_hw), hook
        self._indices = temporal_frame_indices(self.num_frames, self.temporal_frames)
        try:
            yield self
        finally:
            self.num_frames, self.latent_hw, self.hook, self._indices = None, None, None, None

    def is_temporal(self, layer: AttentionLayer, level: int) -> bool:
        """Whether ``layer`` at ``level`` is one of the chosen cross-frame self-attention layers."""
        if layer.is_cross or layer.place not in self.temporal_places or level < self.temporal_min_level:
            return False
        return self.temporal_min_channels is None or layer.channels >= self.temporal_min_channels

    def temporal_layers(self) -> list[str]:
        """The self-attention layers that attended across frames in the last UNet call (logs and tests)."""
        return [name for name, level in self.levels.items() if self.is_temporal(self.layers[name], level)]


def clip_group_norms(unet) -> list[torch.nn.GroupNorm]:
    """The GroupNorms FateZero's pseudo-3D UNet applies to whole clips: ``norm1`` / ``norm2`` of every ResNet
    block and the output norm ``conv_norm_out`` (the transformers' own GroupNorm runs per frame there too)."""
    norms = []
    for module in unet.modules():
        for attr in ("norm1", "norm2"):
            norm = getattr(module, attr, None)
            if isinstance(norm, torch.nn.GroupNorm) and hasattr(module, "conv1"):  # a ResNet block
                norms.append(norm)
    if isinstance(getattr(unet, "conv_norm_out", None), torch.nn.GroupNorm):
        norms.append(unet.conv_norm_out)
    return norms


def clip_group_norm(x: Tensor, num_frames: int, norm: torch.nn.GroupNorm) -> Tensor:
    """GroupNorm of rows (G·F, C, H, W) with statistics over each group's F frames (as on (G, C, F, H, W))."""
    if x.shape[0] % num_frames:
        raise ValueError(f"{x.shape[0]} UNet rows are not groups of the clip's {num_frames} frames")
    groups = x.shape[0] // num_frames
    clip = x.reshape(groups, num_frames, *x.shape[1:]).transpose(1, 2)
    out = F.group_norm(clip, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out.transpose(1, 2).reshape(x.shape)


def time_projections(unet) -> list[torch.nn.Module]:
    """The modules FateZero's pseudo-3D UNet runs on one row per clip: the timestep MLP ``time_embedding`` and
    every ResNet block's ``time_emb_proj`` (their input is the same for all frames of a clip)."""
    modules = [unet.time_embedding] if isinstance(getattr(unet, "time_embedding", None), torch.nn.Module) else []
    for module in unet.modules():
        projection = getattr(module, "time_emb_proj", None)
        if isinstance(projection, torch.nn.Module) and hasattr(module, "conv1"):  # a ResNet block
            modules.append(projection)
    return modules


def _per_clip_forward(module: torch.nn.Module, control: VideoAttention):
    """``module``'s forward on the first row of each clip, repeated over the clip's frames, where the rows of
    every clip are equal (one timestep per UNet call); otherwise (or outside :meth:`VideoAttention.clip`)
    on every row."""
    forward_of_class = type(module).forward

    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        frames = control.num_frames
        if frames is not None and frames > 1 and x.shape[0] % frames == 0:
            firsts = x[::frames]
            if torch.equal(firsts.repeat_interleave(frames, 0), x):
                return forward_of_class(module, firsts, *args, **kwargs).repeat_interleave(frames, 0)
        return forward_of_class(module, x, *args, **kwargs)

    return forward


def _clip_group_norm_forward(norm: torch.nn.GroupNorm, control: VideoAttention):
    def forward(x: Tensor) -> Tensor:
        if control.num_frames is None:
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return clip_group_norm(x, control.num_frames, norm)

    return forward


class VideoAttnProcessor:
    """The attention of one layer, as diffusers' ``AttnProcessor`` computes it, plus cross-frame keys and
    the hook. Maps the hook does not want go through ``scaled_dot_product_attention`` (no (Q, K) matrix),
    except in layers of at most ``explicit_max_queries`` queries."""

    def __init__(self, control: VideoAttention, layer: AttentionLayer):
        self.control = control
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        control = self.control
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states
        if encoder_hidden_states is not None:
            context = (
                attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            )
        key, value = attn.to_k(context), attn.to_v(context)

        level = None
        if control.num_frames is not None:
            level = level_of(tokens, control.latent_hw)
            control.levels[self.layer.name] = level
            if control.is_temporal(self.layer, level):
                if attention_mask is not None:
                    raise ValueError("cross-frame self-attention does not take an attention mask")
                key = gather_frame_tokens(key, control._indices)
                value = gather_frame_tokens(value, control._indices)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)

        hook = control.hook
        hooked = hook is not None and level is not None and hook.wants(self.layer, level)
        if hooked or tokens <= control.explicit_max_queries:
            # the explicit product, as diffusers 0.11 / FateZero order it: baddbmm(q, kᵀ, α = scale), softmax, bmm
            q, k, v = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
            probs = attn.get_attention_scores(q, k, mask)  # (batch · heads, Q, K)
            if hooked:
                probs = probs.view(batch, attn.heads, *probs.shape[1:])
                probs = hook(self.layer, level, probs).to(v.dtype)
                probs = probs.reshape(batch * attn.heads, *probs.shape[2:])
            out = attn.batch_to_head_dim(torch.bmm(probs, v))
        else:
            head_dim = query.shape[-1] // attn.heads
            q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
            if mask is not None:
                mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# ------------------------------------------------------------------------------------------ store
class AttentionStore:
    """Records attention probabilities at level >= ``min_level`` during inversion (FateZero's store).

    ``maps[step][layer name]`` is (F, heads, Q, K) on ``device`` (None: where the UNet computes them). Set
    :attr:`step` and which kinds to keep (:attr:`keep_cross`, :attr:`keep_self`) before each UNet call; a
    step with neither records nothing. Rows are all recorded (inversion runs the source prompt's
    conditional rows only, one group of F frames).
    """

    def __init__(self, device: str | torch.device | None = None, min_level: int = STORE_MIN_LEVEL):
        self.device = None if device is None else torch.device(device)
        self.min_level = int(min_level)
        self.maps: dict[int, dict[str, Tensor]] = {}
        self.step = 0
        self.keep_cross = True
        self.keep_self = True

    def wants(self, layer: AttentionLayer, level: int) -> bool:
        return level >= self.min_level and (self.keep_cross if layer.is_cross else self.keep_self)

    def __call__(self, layer: AttentionLayer, level: int, probs: Tensor) -> Tensor:
        kept = probs.detach()
        self.maps.setdefault(self.step, {})[layer.name] = kept.to(self.device) if self.device is not None else kept
        return probs

    def step_bytes(self, step: int) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps.get(step, {}).values())

    @property
    def total_bytes(self) -> int:
        return sum(self.step_bytes(step) for step in self.maps)
