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


def refinement_mapping(source_ids: Sequence[int], target_ids: Sequence[int], length: int) -> tuple[Tensor, Tensor]:
    """(M, A): for each of the ``length`` target token positions, the source position whose cross-attention
    map it takes (M) and whether it has one (A = 1 for tokens shared by the prompts, aligned in order;
    0 for new words). Positions after the prompts (end and padding tokens) map onto each other in order."""
    mapper = torch.arange(length)
    alphas = torch.zeros(length)
    matcher = difflib.SequenceMatcher(a=list(source_ids), b=list(target_ids), autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            mapper[block.b + offset] = block.a + offset
            alphas[block.b + offset] = 1.0
    tail_source, tail_target = len(source_ids), len(target_ids)
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

    @property
    def cross_steps(self) -> int:
        return int(self.num_steps * self.cross_replace_steps)

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
        mapper, alphas = refinement_mapping(source_ids, target_ids, length)
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
    )


def blend_mask(
    store_maps: dict[str, Tensor],
    layers: dict[str, AttentionLayer],
    positions: Sequence[int],
    latent_hw: tuple[int, int],
    level: int,
    threshold: float,
) -> Tensor:
    """(F, 1, Q, 1) self-attention blending mask at ``level`` from the source cross-attention of the
    lowest-resolution down / up layers (FateZero's ``SpatialBlender`` with ``prompt_choose='source'``)."""
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
    words = F.max_pool2d(words, 3, stride=1, padding=1)
    words = F.interpolate(words, size=level_shape(latent_hw, level))
    words = words / words.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(words.dtype).tiny)
    return (words > threshold).float().flatten(2)[..., None]  # (F, 1, Q, 1)


class AttentionFusion:
    """FateZero's attention fusion for one editing run (see the module docstring).

    The UNet rows are groups of F frames, the target prompt's conditional rows last; set :attr:`edit_step`
    before each call. Source maps come from ``store`` at inversion step N − 1 − edit_step.
    """

    def __init__(self, store: AttentionStore, settings: FusionSettings, layers: dict[str, AttentionLayer]):
        self.store, self.settings, self.layers = store, settings, layers
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
            )
        return self._masks[key]
