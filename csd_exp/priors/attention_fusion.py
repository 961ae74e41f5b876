"""FateZero's attention fusion (Sec. 3.2, Eq. 4-6): the (source, target) prompt pair resolved to tokens, the
self-attention blending mask, and the hook that fuses the inversion's stored maps into the editing rows.
The formulas are in :mod:`csd_exp.priors.attention_control`'s docstring; the tokenizer only finds words.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.priors.attention_control import AttentionLayer, AttentionStore, level_of, level_shape

#: How the refine mapper aligns the padding after the prompts (:func:`refinement_mapping`).
REFINE_PADDINGS = ("released", "shifted")
#: FateZero's blend-mask layers (``spatial_blend.py`` 78): these slices of the stored cross-attention layers
#: of each place, in call order.
RELEASED_BLEND_SLICES = {"down": slice(2, 4), "up": slice(0, 3)}


# -------------------------------------------------------------------------------------- prompts
def prompt_words(prompt: str) -> list[str]:
    """The prompt's words as the word options compare them: split on spaces, lower case, outer punctuation off."""
    return [w.strip(string.punctuation).lower() for w in prompt.split() if w.strip(string.punctuation)]


def word_token_positions(tokenizer, prompt: str, words: Sequence[str], what: str) -> list[int]:
    """Token positions (BOS = 0) of every occurrence of each word of ``words`` in ``prompt``.

    A word that is not in the prompt is an error that lists the prompt's words (``what`` names the option).
    """
    spelled = prompt.split()
    positions: dict[str, list[int]] = {}
    cursor = 1  # after the start token
    for raw in spelled:
        count = len(tokenizer(raw, add_special_tokens=False).input_ids)
        key = raw.strip(string.punctuation).lower()
        positions.setdefault(key, []).extend(range(cursor, cursor + count))
        cursor += count
    limit = int(tokenizer.model_max_length) - 1
    found = []
    for word in words:
        key = str(word).strip(string.punctuation).lower()
        if key not in positions:
            raise ValueError(
                f"{what}: {word!r} is not a word of the prompt {prompt!r}; its words are: "
                f"{', '.join(prompt_words(prompt))}"
            )
        found.extend(p for p in positions[key] if p < limit)
    return sorted(set(found))


def refinement_mapping(
    source_ids: Sequence[int], target_ids: Sequence[int], length: int, padding: str = "shifted"
) -> tuple[Tensor, Tensor]:
    """(M, A): for each of the ``length`` target token positions, the source position whose cross-attention
    map it takes (M) and whether it has one (A = 1 for tokens shared by the prompts, aligned in order;
    0 for new words). Positions after the target's tokens (padding) take ``padding``'s source position:
    ``shifted``: the source's padding in order (target len_t + k -> source len_s + k, clamped at the end);
    ``released``: the same position (target p -> source p, FateZero's ``seq_aligner.get_mapper``)."""
    if padding not in REFINE_PADDINGS:
        raise ValueError(f"refine padding {padding!r} is not one of {', '.join(REFINE_PADDINGS)}")
    mapper = torch.arange(length)
    alphas = torch.zeros(length)
    matcher = difflib.SequenceMatcher(a=list(source_ids), b=list(target_ids), autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            mapper[block.b + offset] = block.a + offset
            alphas[block.b + offset] = 1.0
    tail_source, tail_target = len(source_ids), len(target_ids)
    if padding == "released":
        tail_source = tail_target
    for offset in range(length - tail_target):
        mapper[tail_target + offset] = min(tail_source + offset, length - 1)
        alphas[tail_target + offset] = 1.0
    return mapper, alphas


# ----------------------------------------------------------------------------------------- fusion
@dataclass
class FusionSettings:
    """FateZero's editing knobs, resolved to tokens and step counts (see the module docstring)."""

    num_steps: int
    cross_replace_steps: float = 0.8
    self_replace_steps: float = 0.9
    mapper: Tensor | None = None  # (77,) target token -> source token
    alphas: Tensor | None = None  # (77,) 1 = shared token
    equalizer: Tensor | None = None  # (77,) eq_params weights on the target tokens
    blend_positions: Sequence[int] | None = None  # source tokens of the blend words
    blend_th: float = 0.3
    #: the cross-replaced steps are int(c · (N + 1)) (FateZero's ``get_time_words_attention_alpha``, a table
    #: of N + 1 rows) instead of int(c · N)
    cross_count_of_n_plus_1: bool = False

    @property
    def cross_steps(self) -> int:
        rows = self.num_steps + 1 if self.cross_count_of_n_plus_1 else self.num_steps
        return int(rows * self.cross_replace_steps)

    @property
    def self_steps(self) -> int:
        return int(self.num_steps * self.self_replace_steps)

    def store_needs(self, edit_step: int) -> tuple[bool, bool]:
        """(cross, self): which source maps editing step ``edit_step`` reads."""
        self_fused = edit_step < self.self_steps
        cross = edit_step < self.cross_steps or (self_fused and bool(self.blend_positions))
        return cross, self_fused


def fusion_settings(
    tokenizer,
    source_prompt: str,
    target_prompt: str,
    *,
    num_steps: int,
    cross_replace_steps: float = 0.8,
    self_replace_steps: float = 0.9,
    replace: bool = False,
    blend_words: Sequence[str] | None = None,
    blend_th: float = 0.3,
    eq_params: dict | None = None,
    refine_padding: str = "shifted",
    cross_count_of_n_plus_1: bool = False,
) -> FusionSettings:
    """Token mapping, reweighting and blend-word positions of a (source, target) prompt pair."""
    length = int(tokenizer.model_max_length)
    source_ids = tokenizer(source_prompt, truncation=True, max_length=length).input_ids
    target_ids = tokenizer(target_prompt, truncation=True, max_length=length).input_ids
    if replace:
        if len(source_ids) != len(target_ids):
            raise ValueError(
                f"task.is_replace_controller=true swaps words token for token and needs prompts of equal token "
                f"length (source {len(source_ids)}, target {len(target_ids)}); use false (refinement)"
            )
        mapper, alphas = torch.arange(length), torch.ones(length)
    else:
        mapper, alphas = refinement_mapping(source_ids, target_ids, length, refine_padding)
    equalizer = None
    if eq_params:
        words, values = list(eq_params.get("words") or []), list(eq_params.get("values") or [])
        if len(words) != len(values) or set(eq_params) - {"words", "values"}:
            raise ValueError(
                f"task.eq_params needs 'words' and 'values' lists of the same length; got {dict(eq_params)}"
            )
        equalizer = torch.ones(length)
        for word, value in zip(words, values):
            equalizer[word_token_positions(tokenizer, target_prompt, [word], "task.eq_params.words")] = float(value)
    positions = None
    if blend_words:
        positions = word_token_positions(tokenizer, source_prompt, list(blend_words), "task.blend_words")
    return FusionSettings(
        num_steps=int(num_steps),
        cross_replace_steps=float(cross_replace_steps),
        self_replace_steps=float(self_replace_steps),
        mapper=mapper,
        alphas=alphas,
        equalizer=equalizer,
        blend_positions=positions,
        blend_th=float(blend_th),
        cross_count_of_n_plus_1=bool(cross_count_of_n_plus_1),
    )


def released_blend_layers(layers: dict[str, AttentionLayer], store_min_level: int) -> list[str]:
    """FateZero's blend-mask layers on any UNet: of the cross-attention layers whose maps are stored (level >=
    ``store_min_level``), in call order, the down layers [2:4] and the up layers [:3] (shorter on a UNet
    with fewer). A UNet where these select nothing is refused, naming the stored cross-attention layers."""
    stored = [
        layer
        for layer in layers.values()
        if layer.is_cross and layer.level is not None and layer.level >= store_min_level
    ]
    chosen = []
    for place, part in RELEASED_BLEND_SLICES.items():
        chosen += [layer.name for layer in stored if layer.place == place][part]
    if not chosen:
        cross = [layer for layer in layers.values() if layer.is_cross]
        found = ", ".join(f"{layer.name.removesuffix('.processor')} (level {layer.level})" for layer in cross)
        raise ValueError(
            "task.blend_layers=released (FateZero's down_cross[2:4] + up_cross[:3] of the stored cross-attention "
            f"layers, level >= {store_min_level} here) selects no layer of this UNet; its cross-attention layers "
            f"are: {found or 'none'}. Use task.blend_layers=coarsest, a smaller task.frame_size, or "
            "task.blend_words=null"
        )
    return chosen


def blend_mask(
    store_maps: dict[str, Tensor],
    layers: dict[str, AttentionLayer],
    positions: Sequence[int],
    latent_hw: tuple[int, int],
    level: int,
    threshold: float,
    blend_layers: Sequence[str] | None = None,
) -> Tensor:
    """(F, 1, Q, 1) self-attention blending mask at ``level`` from the source cross-attention of the
    lowest-resolution down / up layers (FateZero's ``SpatialBlender`` with ``prompt_choose='source'``), or of
    ``blend_layers`` as FateZero takes them: their heads pooled into one mean (maps of several resolutions,
    where FateZero's ``torch.cat`` would fail, are first repeated up to the finest by nearest resizing)."""
    if blend_layers is not None:
        missing = [n for n in blend_layers if n not in store_maps]
        if missing:
            raise ValueError(f"the attention store holds no source cross-attention of the blend layers {missing}")
        index = torch.as_tensor(list(positions), dtype=torch.long)
        shapes = {n: level_shape(latent_hw, level_of(store_maps[n].shape[2], latent_hw)) for n in blend_layers}
        finest = max(shapes.values(), key=lambda hw: hw[0] * hw[1])
        per_head = []
        for n in blend_layers:
            m = store_maps[n]
            words = m[..., index.to(m.device)].sum(-1).float()  # (F, heads, Q)
            words = words.reshape(*words.shape[:2], *shapes[n])
            per_head.append(F.interpolate(words, size=finest) if shapes[n] != finest else words)
        words = torch.cat(per_head, dim=1).mean(1, keepdim=True)  # (F, 1, h, w)
        return _threshold_mask(words, latent_hw, level, threshold)
    cross = {n: m for n, m in store_maps.items() if layers[n].is_cross and layers[n].place != "mid"}
    if not cross:
        raise ValueError("the attention store holds no source cross-attention to make the blending mask from")
    levels = {n: level_of(m.shape[2], latent_hw) for n, m in cross.items()}
    coarsest = max(levels.values())
    h0, w0 = level_shape(latent_hw, coarsest)
    index = torch.as_tensor(list(positions), dtype=torch.long)
    maps = [
        m[..., index.to(m.device)].sum(-1).float().mean(1).reshape(m.shape[0], h0, w0)
        for n, m in cross.items()
        if levels[n] == coarsest
    ]
    words = torch.stack(maps).mean(0)[:, None]  # (F, 1, h, w)
    return _threshold_mask(words, latent_hw, level, threshold)


def _threshold_mask(words: Tensor, latent_hw: tuple[int, int], level: int, threshold: float) -> Tensor:
    """3x3 max-pool, nearest resize to ``level``, ÷ per-frame max, > threshold: (F, 1, Q, 1)."""
    words = F.max_pool2d(words, 3, stride=1, padding=1)
    words = F.interpolate(words, size=level_shape(latent_hw, level))
    words = words / words.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(words.dtype).tiny)
    return (words > threshold).float().flatten(2)[..., None]  # (F, 1, Q, 1)


class AttentionFusion:
    """FateZero's attention fusion for one editing run (see the module docstring).

    The UNet rows are groups of F frames, the target prompt's conditional rows last; set :attr:`edit_step`
    before each call. Source maps come from ``store`` at inversion step N − 1 − edit_step.
    """

    def __init__(
        self,
        store: AttentionStore,
        settings: FusionSettings,
        layers: dict[str, AttentionLayer],
        blend_layers: Sequence[str] | None = None,
    ):
        self.store, self.settings, self.layers = store, settings, layers
        self.blend_layers = None if blend_layers is None else list(blend_layers)
        self.edit_step = 0
        self.latent_hw: tuple[int, int] | None = None
        self._masks: dict[tuple[int, int], Tensor] = {}

    def source_maps(self) -> dict[str, Tensor]:
        return self.store.maps.get(self.settings.num_steps - 1 - self.edit_step, {})

    def wants(self, layer: AttentionLayer, level: int) -> bool:
        steps = self.settings.cross_steps if layer.is_cross else self.settings.self_steps
        return self.edit_step < steps and layer.name in self.source_maps()

    def __call__(self, layer: AttentionLayer, level: int, probs: Tensor) -> Tensor:
        source = self.source_maps()[layer.name].to(device=probs.device, dtype=probs.dtype)
        frames = source.shape[0]
        target = probs[-frames:]
        s = self.settings
        if layer.is_cross:
            mapped = source[..., s.mapper.to(probs.device)]
            alphas = s.alphas.to(probs)
            fused = mapped * alphas + target * (1 - alphas)
            if s.equalizer is not None:
                fused = fused * s.equalizer.to(probs)
        elif s.blend_positions:
            mask = self._mask(level).to(probs)
            fused = mask * target + (1 - mask) * source
        else:
            fused = source
        out = probs.clone()
        out[-frames:] = fused
        return out

    def _mask(self, level: int) -> Tensor:
        key = (self.edit_step, level)
        if key not in self._masks:
            self._masks = {k: v for k, v in self._masks.items() if k[0] == self.edit_step}
            self._masks[key] = blend_mask(
                self.source_maps(),
                self.layers,
                self.settings.blend_positions,
                self.latent_hw,
                level,
                self.settings.blend_th,
                self.blend_layers,
            )
        return self._masks[key]
