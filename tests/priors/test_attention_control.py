"""Attention processors for the video baselines (csd_exp/priors/attention_control.py): cross-frame
attention, the attention store and FateZero's fusion, on tiny random UNets in float64 (batched and unbatched
rows then agree to ~1e-15 on any CPU, so 1e-10 separates bookkeeping errors from rounding)."""

from __future__ import annotations

import pytest
import torch

from csd_exp.priors.attention_control import (
    AttentionLayer,
    AttentionStore,
    VideoAttention,
    gather_frame_tokens,
    temporal_frame_indices,
)
from csd_exp.priors.attention_fusion import (
    AttentionFusion,
    FusionSettings,
    blend_mask,
    fusion_settings,
    refinement_mapping,
)

PROMPT = "a photo of a city"


def _embeds(prior, prompts, frames):
    return torch.cat([prior.prompt_embeddings(p).expand(frames, -1, -1) for p in prompts])


def _latents(frames, seed=0, side=8):
    return torch.randn(frames, 4, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _two_level_unet():
    """Cross-attention at both levels (the tiny pipeline's UNet has it at level 1 only)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        )
    return unet.double().eval()


def test_temporal_frame_choices_and_gathering():
    assert temporal_frame_indices(4, ["first", "previous"]).tolist() == [[0, 0, 0, 0], [0, 0, 1, 2]]
    assert temporal_frame_indices(4, ["middle", "last", "self"]).tolist() == [[1, 1, 1, 1], [3, 3, 3, 3], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="first, previous, self, middle, last"):
        temporal_frame_indices(4, ["next"])
    tokens = torch.arange(2 * 3).double().reshape(6, 1, 1)  # 2 groups of 3 frames, one token each
    gathered = gather_frame_tokens(tokens, temporal_frame_indices(3, ["first", "previous"]))
    assert gathered.squeeze(-1).tolist() == [[0, 0], [0, 0], [0, 1], [3, 3], [3, 3], [3, 4]]


def test_the_store_records_fatezeros_resolutions_with_the_expected_shapes():
    """Level 0 (the full latent resolution) is never stored; every layer at level >= 1 is, cross maps as
    (F, heads, Q, 77) and sparse-causal self maps as (F, heads, Q, 2Q); the temporal layers are those asked."""
    unet = _two_level_unet()
    control = VideoAttention(unet, temporal_frames=["first", "previous"], temporal_min_level=1)
    frames, store = 3, AttentionStore(device="cpu")
    with torch.no_grad(), control.clip(frames, (8, 8), store):
        unet(_latents(frames), 500, encoder_hidden_states=torch.randn(frames, 77, 32, dtype=torch.float64))
    level1 = {name for name in control.layers if not name.startswith(("down_blocks.0.", "up_blocks.1."))}
    assert set(store.maps[0]) == level1 and len(level1) == 8  # down 1, mid 1, up 2 attentions x (attn1, attn2)
    for name, maps in store.maps[0].items():
        heads = unet.get_submodule(name.removesuffix(".processor")).heads
        keys = 77 if control.layers[name].is_cross else 2 * 16
        assert maps.shape == (frames, heads, 16, keys) and maps.device.type == "cpu", name
        assert torch.allclose(maps.sum(-1), torch.ones((), dtype=maps.dtype))  # probabilities
    assert set(control.temporal_layers()) == {n for n in level1 if n.endswith("attn1.processor")}
    store.step, store.keep_self = 1, False
    with torch.no_grad(), control.clip(frames, (8, 8), store):
        unet(_latents(frames), 500, encoder_hidden_states=torch.randn(frames, 77, 32, dtype=torch.float64))
    assert {control.layers[n].is_cross for n in store.maps[1]} == {True}
    control.remove()
    assert not any(type(p).__name__ == "VideoAttnProcessor" for p in unet.attn_processors.values())


@pytest.mark.parametrize("frames_choice", [["first", "previous"], ["middle"], ["self", "last"]])
def test_one_frame_of_sparse_causal_attention_is_ordinary_self_attention(sd_prior64, frames_choice):
    prior = sd_prior64
    x, embeds = _latents(1), _embeds(prior, [PROMPT], 1)
    plain = prior.unet_rows(x, 500, embeds)
    control = VideoAttention(prior.unet, temporal_frames=frames_choice)
    try:
        with control.clip(1, (8, 8)):
            fused_kernel = prior.unet_rows(x, 500, embeds)  # scaled_dot_product_attention path
        with control.clip(1, (8, 8), AttentionStore()):
            explicit = prior.unet_rows(x, 500, embeds)  # explicit probabilities (what the store sees)
    finally:
        control.remove()
    assert control.temporal_layers()  # the temporal layers did run
    assert (fused_kernel - plain).abs().max() < 1e-10 and (explicit - plain).abs().max() < 1e-10
    assert torch.equal(prior.unet_rows(x, 500, embeds), plain)  # processors restored


def test_a_frame_reads_only_the_anchor_and_the_previous_frame(sd_prior64):
    prior = sd_prior64
    x = _latents(3, seed=1)
    control = VideoAttention(prior.unet, temporal_frames=["first", "previous"])
    try:
        with control.clip(3, (8, 8)):
            clip = prior.unet_rows(x, 500, _embeds(prior, [PROMPT], 3))
        with control.clip(2, (8, 8)):
            first_two = prior.unet_rows(x[:2], 500, _embeds(prior, [PROMPT], 2))
    finally:
        control.remove()
    independent = prior.unet_rows(x, 500, _embeds(prior, [PROMPT], 3))
    assert (clip[:2] - first_two).abs().max() < 1e-10  # causal: frames 0 and 1 ignore frame 2
    assert (clip[0] - independent[0]).abs().max() < 1e-10  # frame 0 reads itself only
    assert (clip[2] - independent[2]).abs().max() > 1e-4  # frame 2 reads frames 0 and 1


def _fused_call(prior, source_prompt, target_prompt, **options):
    """Store the source's maps for 2 frames, then run [uncond, target] rows with fusion at the same latents and
    timestep; returns (source eps, fused [uncond, target] eps, unfused [uncond, target] eps)."""
    x, frames, t = _latents(2, seed=3), 2, 500
    control = VideoAttention(prior.unet, temporal_frames=["first", "previous"], temporal_min_level=1)
    store = AttentionStore()
    settings = fusion_settings(prior.tokenizer, source_prompt, target_prompt, num_steps=1, **options)
    fusion = AttentionFusion(store, settings, control.layers)
    fusion.latent_hw = (8, 8)
    rows = _embeds(prior, ["", target_prompt], frames)
    try:
        with control.clip(frames, (8, 8), store):
            source = prior.unet_rows(x, t, _embeds(prior, [source_prompt], frames))
        with control.clip(frames, (8, 8), fusion):
            fused = prior.unet_rows(torch.cat([x, x]), t, rows)
        with control.clip(frames, (8, 8)):
            plain = prior.unet_rows(torch.cat([x, x]), t, rows)
    finally:
        control.remove()
    return source, fused, plain


@pytest.mark.parametrize(
    "options",
    [
        dict(cross_replace_steps=1.0, self_replace_steps=1.0),
        dict(cross_replace_steps=1.0, self_replace_steps=1.0, blend_words=["city"], blend_th=0.3),
        dict(cross_replace_steps=1.0, self_replace_steps=1.0, replace=True),
    ],
)
def test_identical_source_and_target_prompts_make_fusion_change_nothing(sd_prior64, options):
    source, fused, plain = _fused_call(sd_prior64, PROMPT, PROMPT, **options)
    assert (fused[2:] - source).abs().max() < 1e-10  # the target rows: the source's own output
    assert (fused[2:] - plain[2:]).abs().max() < 1e-10
    assert (fused[:2] - plain[:2]).abs().max() < 1e-10  # the unconditional rows are never fused


def test_a_different_target_prompt_is_fused_and_zero_replace_steps_fuse_nothing(sd_prior64):
    target = "a watercolor photo of a city"
    _, fused, plain = _fused_call(sd_prior64, PROMPT, target, cross_replace_steps=1.0, self_replace_steps=1.0)
    assert (fused[:2] - plain[:2]).abs().max() < 1e-10
    assert (fused[2:] - plain[2:]).abs().max() > 1e-4  # the target rows took the source's maps
    _, none_replaced, plain_again = _fused_call(
        sd_prior64, PROMPT, target, cross_replace_steps=0.0, self_replace_steps=0.0
    )
    assert (none_replaced - plain_again).abs().max() < 1e-10  # 0 replace steps: no fusion at all


def test_fusion_formulas_on_known_maps():
    """Cross: (A c_src[..., M] + (1 - A) c_tgt) * w; self: m s_tgt + (1 - m) s_src; only the last F rows."""
    g = torch.Generator().manual_seed(4)
    cross_src, cross_rows = torch.rand(2, 1, 4, 77, generator=g), torch.rand(4, 1, 4, 77, generator=g)
    self_src, self_rows = torch.rand(2, 1, 4, 8, generator=g), torch.rand(4, 1, 4, 8, generator=g)
    cross = AttentionLayer("up_blocks.0.a.attn2.processor", "up", True)
    selfl = AttentionLayer("up_blocks.0.a.attn1.processor", "up", False)
    store = AttentionStore()
    store.maps[0] = {cross.name: cross_src, selfl.name: self_src}
    mapper, alphas = torch.arange(77).roll(1), (torch.arange(77) % 2).double()
    weights = torch.ones(77).index_fill(0, torch.tensor([3]), 5.0)
    settings = FusionSettings(
        num_steps=1, cross_replace_steps=1.0, self_replace_steps=1.0, mapper=mapper, alphas=alphas, equalizer=weights
    )
    fusion = AttentionFusion(store, settings, {cross.name: cross, selfl.name: selfl})
    out = fusion(cross, 1, cross_rows)
    a = alphas.float()
    expected = (cross_src[..., mapper] * a + cross_rows[2:] * (1 - a)) * weights.float()
    assert torch.equal(out[:2], cross_rows[:2]) and torch.allclose(out[2:], expected)
    assert torch.equal(fusion(selfl, 1, self_rows)[2:], self_src)  # no blend words: the source everywhere
    assert fusion.wants(cross, 1) and not fusion.wants(AttentionLayer("other", "up", True), 1)


def test_refinement_maps_shared_tokens_and_marks_new_words(sd_prior64):
    tokenizer = sd_prior64.tokenizer
    source = tokenizer(PROMPT).input_ids
    target = tokenizer("a watercolor photo of a city").input_ids
    mapper, alphas = refinement_mapping(source, target, 77)
    new = len(target) - len(source)  # the tokens of "watercolor"
    assert mapper[:2].tolist() == [0, 1] and alphas[2 : 2 + new].tolist() == [0.0] * new
    assert mapper[2 + new : len(target)].tolist() == list(range(2, len(source)))  # photo of a city <eos>
    assert alphas[len(target) :].eq(1).all() and mapper[len(target)] == len(source)  # padding onto padding


def test_word_options_name_the_prompts_words_when_a_word_is_missing(sd_prior64):
    tokenizer = sd_prior64.tokenizer
    with pytest.raises(ValueError, match=r"task.blend_words: 'dog' .* its words are: a, photo, of, a, city"):
        fusion_settings(tokenizer, PROMPT, PROMPT, num_steps=10, blend_words=["dog"])
    with pytest.raises(ValueError, match=r"task.eq_params.words: 'ink' .* its words are: a, watercolor"):
        fusion_settings(
            tokenizer, PROMPT, "a watercolor photo", num_steps=10, eq_params={"words": ["ink"], "values": [2]}
        )
    with pytest.raises(ValueError, match="equal token"):
        fusion_settings(tokenizer, PROMPT, "a watercolor photo of a city", num_steps=10, replace=True)
    settings = fusion_settings(
        tokenizer, PROMPT, "a Watercolor photo", num_steps=10, eq_params={"words": ["watercolor"], "values": [10]}
    )
    assert settings.equalizer[2:3].tolist() == [10.0] and settings.equalizer.sum() == 76 + 10
    assert (settings.cross_steps, settings.self_steps) == (8, 9)  # FateZero's int(0.8 N), int(0.9 N)


def test_the_blending_mask_follows_the_blend_words_cross_attention():
    maps = torch.zeros(2, 4, 16, 77)  # 2 frames, 4 heads, 4x4 positions at level 1 of an 8x8 latent
    maps[0, :, 0, 5] = 1.0  # frame 0: the word (token 5) sits at the top-left corner
    maps[1, :, 15, 5] = 1.0  # frame 1: bottom-right
    layers = {"up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": AttentionLayer("x", "up", True)}
    mask = blend_mask({next(iter(layers)): maps}, layers, [5], (8, 8), level=0, threshold=0.3)
    assert mask.shape == (2, 1, 64, 1)
    grid = mask.reshape(2, 8, 8)
    assert grid[0, :4, :4].all() and not grid[0, 4:, :].any()  # 3x3 max-pool around (0, 0), upsampled 2x
    assert grid[1, 4:, 4:].all() and not grid[1, :4, :].any()
