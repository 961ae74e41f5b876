"""StableDiffusionPrior: 2-way guidance with a negative prompt, DDS source branch, chunking, errors."""

import pytest
import torch

from csd_exp.priors import StableDiffusionPrior, tiny_stable_diffusion_prior
from csd_exp.priors.tiny import LATENT_CHANNELS, tiny_components

from ._helpers import seeded_normal

T = 600


def unet_eps(prior, noisy, prompt):
    embeds = prior.prompt_embeddings(prompt).expand(noisy.shape[0], -1, -1)
    with torch.no_grad():
        return prior.unet(noisy, T, encoder_hidden_states=embeds).sample.float()


def test_two_way_guidance_with_negative_prompt_and_dds_source(sd_prior):
    noisy, noisy_source = seeded_normal(3, 4, 8, 8, seed=0), seeded_normal(3, 4, 8, 8, seed=1)
    cond = sd_prior.make_conditioning("a watercolor of a fox", guidance_scale=5.0, negative_prompt="blurry",
                                      source_prompt="a photo of a fox")
    rows = sd_prior.unet_rows_evaluated
    prediction = sd_prior.predict_noise(noisy, T, cond, source_noisy_latents=noisy_source)
    assert sd_prior.unet_rows_evaluated - rows == 4 * 3
    negative = unet_eps(sd_prior, noisy, "blurry")
    expected = negative + 5.0 * (unet_eps(sd_prior, noisy, "a watercolor of a fox") - negative)
    torch.testing.assert_close(prediction.target, expected, atol=1e-5, rtol=1e-5)
    negative_source = unet_eps(sd_prior, noisy_source, "blurry")
    expected_source = negative_source + 5.0 * (unet_eps(sd_prior, noisy_source, "a photo of a fox") - negative_source)
    torch.testing.assert_close(prediction.source, expected_source, atol=1e-5, rtol=1e-5)


def test_source_prompt_equal_to_negative_needs_one_row(sd_prior):
    noisy = seeded_normal(2, 4, 8, 8, seed=2)
    cond = sd_prior.make_conditioning("a fox")
    rows = sd_prior.unet_rows_evaluated
    prediction = sd_prior.predict_noise(noisy, T, cond, source_noisy_latents=noisy)
    assert sd_prior.unet_rows_evaluated - rows == 3 * 2
    torch.testing.assert_close(prediction.source, unet_eps(sd_prior, noisy, ""), atol=1e-5, rtol=1e-5)


def test_chunked_equals_unchunked(sd_prior, tiny_cache):
    chunked = tiny_stable_diffusion_prior(tiny_cache, max_rows_per_call=3)
    noisy = seeded_normal(4, 4, 8, 8, seed=3)
    cond = sd_prior.make_conditioning("a fox", negative_prompt="ugly")
    whole = sd_prior.predict_noise(noisy, T, cond).target
    torch.testing.assert_close(chunked.predict_noise(noisy, T, cond).target, whole, atol=1e-5, rtol=0)


def test_text_to_image_prior_rejects_image_conditions_and_ip2p_unets(sd_prior, tiny_cache):
    with pytest.raises(ValueError, match="no image_cond"):
        sd_prior.make_conditioning("a fox", image_cond=torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="InstructPix2PixPrior"):
        StableDiffusionPrior(**tiny_components(tiny_cache / "tokenizer", in_channels=2 * LATENT_CHANNELS))


def test_unreachable_hub_id_names_the_offline_fix():
    with pytest.raises(OSError, match="huggingface-cli download csd-exp-tests/missing"):
        StableDiffusionPrior("csd-exp-tests/missing")


def test_v_prediction_unet_output_is_converted_to_eps(tiny_cache):
    from diffusers import DDIMScheduler

    parts = tiny_components(tiny_cache / "tokenizer", in_channels=LATENT_CHANNELS, seed=0)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    prior = StableDiffusionPrior(**parts, scheduler=scheduler)
    noisy = seeded_normal(2, 4, 8, 8, seed=4)
    cond = prior.make_conditioning("a fox")
    v_text, v_negative = unet_eps(prior, noisy, "a fox"), unet_eps(prior, noisy, "")
    alpha_bar = prior.alphas_cumprod[T]
    to_eps = lambda v: alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * noisy  # noqa: E731
    expected = to_eps(v_negative) + 7.5 * (to_eps(v_text) - to_eps(v_negative))
    torch.testing.assert_close(prior.predict_noise(noisy, T, cond).target, expected, atol=1e-5, rtol=1e-5)
