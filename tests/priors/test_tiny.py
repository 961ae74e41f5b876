"""Tiny pipelines: offline tokenizer, disk round trip through from_pretrained, determinism, cache folder."""

import torch

from csd_exp.priors import InstructPix2PixPrior, StableDiffusionPrior, tiny_instruct_pix2pix_prior
from csd_exp.priors.tiny import LATENT_CHANNELS, clip_tokenizer, tiny_components

from ._helpers import seeded_images, seeded_normal


def test_offline_clip_tokenizer_matches_open_clip_ids(tiny_cache):
    import open_clip.tokenizer

    tokenizer = clip_tokenizer(tiny_cache / "tokenizer")
    reference = open_clip.tokenizer.SimpleTokenizer()
    for text in ("a photo of a cat", "Turn it into a Van Gogh style painting!", "make it night, 2023"):
        ids = tokenizer(text).input_ids
        assert ids == [reference.sot_token_id] + reference.encode(text) + [reference.eot_token_id]
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408


def _prediction(prior, seed=0):
    images = seeded_images(2, seed=seed)
    image_cond = prior.encode_image_condition(images)
    latents = prior.encode(images)
    noisy = prior.add_noise(latents, seeded_normal(*latents.shape, seed=seed + 1), 300)
    cond = prior.make_conditioning("make it night", image_cond, guidance_scale=7.5, image_guidance_scale=1.5)
    return prior.predict_noise(noisy, 300, cond, source_noisy_latents=noisy)


def _assert_same_weights(module, reference):
    state, reference_state = module.state_dict(), reference.state_dict()
    assert state.keys() == reference_state.keys()
    for name, value in reference_state.items():
        torch.testing.assert_close(state[name], value, atol=0, rtol=0)


def test_ip2p_round_trips_through_disk_and_predicts_deterministically(ip2p_prior, tiny_cache):
    in_memory = InstructPix2PixPrior(
        **tiny_components(tiny_cache / "tokenizer", in_channels=2 * LATENT_CHANNELS, seed=0)
    )
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(ip2p_prior, name), getattr(in_memory, name))
    from_disk, reference = _prediction(ip2p_prior), _prediction(in_memory)
    # Same weights; loaded tensors sit at other memory alignments, so SIMD rounding may differ at ~1e-5.
    torch.testing.assert_close(from_disk.target, reference.target, atol=1e-4, rtol=0)
    torch.testing.assert_close(from_disk.source, reference.source, atol=1e-4, rtol=0)
    torch.testing.assert_close(_prediction(ip2p_prior).target, from_disk.target, atol=0, rtol=0)  # deterministic
    again = tiny_instruct_pix2pix_prior(tiny_cache)  # second load: the cached folder, same weights
    _assert_same_weights(again.unet, ip2p_prior.unet)
    torch.testing.assert_close(_prediction(again).target, from_disk.target, atol=1e-4, rtol=0)


def test_seeds_give_different_weights(tiny_cache):
    other = tiny_instruct_pix2pix_prior(tiny_cache, seed=1)
    reference = tiny_instruct_pix2pix_prior(tiny_cache, seed=0)
    assert not torch.equal(other.unet.conv_in.weight, reference.unet.conv_in.weight)
    assert len(list(tiny_cache.glob(".tiny_*"))) == 0  # no staging folders left behind


def test_sd_round_trips_through_disk(sd_prior, tiny_cache):
    in_memory = StableDiffusionPrior(**tiny_components(tiny_cache / "tokenizer", in_channels=LATENT_CHANNELS, seed=0))
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(sd_prior, name), getattr(in_memory, name))
    latents = seeded_normal(2, LATENT_CHANNELS, 8, 8, seed=3)
    cond = sd_prior.make_conditioning(
        "a photo of a cat", guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="blurry"
    )
    torch.testing.assert_close(
        sd_prior.predict_noise(latents, 500, cond).target,
        in_memory.predict_noise(latents, 500, cond).target,
        atol=1e-4,
        rtol=0,
    )


def test_prior_is_frozen_and_stays_in_eval_mode(ip2p_prior):
    ip2p_prior.train()
    assert not ip2p_prior.unet.training and not ip2p_prior.training
    assert not any(p.requires_grad for p in ip2p_prior.parameters())
    assert "alphas_cumprod" not in ip2p_prior.state_dict()
    torch.testing.assert_close(ip2p_prior.alphas_cumprod[[0, 999]], torch.tensor([0.99915, 0.0047]), atol=1e-4, rtol=0)
