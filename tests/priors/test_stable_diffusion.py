"""StableDiffusionPrior: 2-way guidance with a negative prompt, DDS source branch, chunking, errors."""

import pytest
import torch

from csd_exp.priors import StableDiffusionPrior, tiny_stable_diffusion_prior
from csd_exp.priors.tiny import LATENT_CHANNELS, tiny_components

from ._helpers import branch_rounding_tolerance, seeded_normal

T = 600


def unet_eps(prior, noisy, prompt):
    embeds = prior.prompt_embeddings(prompt).expand(noisy.shape[0], -1, -1)
    with torch.no_grad():
        return prior.unet(noisy.to(prior.dtype), T, encoder_hidden_states=embeds).sample.float()


def two_way_tolerance(negative, positive, omega):
    """float32 rounding of ε(∅) + ω (ε(y) − ε(∅)) on float64 branches batched differently (2 operations)."""
    return branch_rounding_tolerance((negative, positive), (1.0 - omega, omega), formula_operations=2)


# Batching tests run the networks in float64 (``sd_prior64``), so that they compare the prior's row
# bookkeeping and not the CPU's float32 summation order (which differs between AVX2 and AVX-512).
def test_two_way_guidance_with_negative_prompt_and_dds_source(sd_prior64):
    noisy, noisy_source = seeded_normal(3, 4, 8, 8, seed=0), seeded_normal(3, 4, 8, 8, seed=1)
    cond = sd_prior64.make_conditioning(
        "a watercolor of a fox",
        guidance_scale=5.0,
        image_guidance_scale=1.5,
        negative_prompt="blurry",
        source_prompt="a photo of a fox",
    )
    rows = sd_prior64.unet_rows_evaluated
    prediction = sd_prior64.predict_noise(noisy, T, cond, source_noisy_latents=noisy_source)
    assert sd_prior64.unet_rows_evaluated - rows == 4 * 3
    negative, positive = unet_eps(sd_prior64, noisy, "blurry"), unet_eps(sd_prior64, noisy, "a watercolor of a fox")
    torch.testing.assert_close(
        prediction.target,
        negative + 5.0 * (positive - negative),
        atol=two_way_tolerance(negative, positive, 5.0),
        rtol=0,
    )
    negative, positive = (
        unet_eps(sd_prior64, noisy_source, "blurry"),
        unet_eps(sd_prior64, noisy_source, "a photo of a fox"),
    )
    torch.testing.assert_close(
        prediction.source,
        negative + 5.0 * (positive - negative),
        atol=two_way_tolerance(negative, positive, 5.0),
        rtol=0,
    )


def test_source_prompt_equal_to_negative_needs_one_row(sd_prior64):
    noisy = seeded_normal(2, 4, 8, 8, seed=2)
    cond = sd_prior64.make_conditioning("a fox", guidance_scale=7.5, image_guidance_scale=1.5)
    rows = sd_prior64.unet_rows_evaluated
    prediction = sd_prior64.predict_noise(noisy, T, cond, source_noisy_latents=noisy)
    assert sd_prior64.unet_rows_evaluated - rows == 3 * 2
    expected = unet_eps(sd_prior64, noisy, "")
    torch.testing.assert_close(prediction.source, expected, atol=branch_rounding_tolerance([expected], [1.0]), rtol=0)


def test_chunked_equals_unchunked(sd_prior64, tiny_cache):
    chunked = tiny_stable_diffusion_prior(tiny_cache, max_rows_per_call=3, torch_dtype="float64")
    noisy = seeded_normal(4, 4, 8, 8, seed=3)
    cond = sd_prior64.make_conditioning("a fox", guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="ugly")
    whole = sd_prior64.predict_noise(noisy, T, cond).target
    negative, positive = unet_eps(sd_prior64, noisy, "ugly"), unet_eps(sd_prior64, noisy, "a fox")
    atol = branch_rounding_tolerance((negative, positive), (1.0 - cond.guidance_scale, cond.guidance_scale))
    torch.testing.assert_close(chunked.predict_noise(noisy, T, cond).target, whole, atol=atol, rtol=0)


def test_text_to_image_prior_rejects_image_conditions_and_ip2p_unets(sd_prior, tiny_cache):
    with pytest.raises(ValueError, match="no image_cond"):
        sd_prior.make_conditioning(
            "a fox", image_cond=torch.zeros(1, 4, 8, 8), guidance_scale=7.5, image_guidance_scale=1.5
        )
    with pytest.raises(ValueError, match="InstructPix2PixPrior"):
        StableDiffusionPrior(**tiny_components(tiny_cache / "tokenizer", in_channels=2 * LATENT_CHANNELS))


def test_unreachable_hub_id_names_the_offline_fix():
    with pytest.raises(OSError, match="huggingface-cli download csd-exp-tests/missing"):
        StableDiffusionPrior("csd-exp-tests/missing")


def test_v_prediction_unet_output_is_converted_to_eps(tiny_cache):
    from diffusers import DDIMScheduler

    parts = tiny_components(tiny_cache / "tokenizer", in_channels=LATENT_CHANNELS, seed=0)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    prior = StableDiffusionPrior(**parts, scheduler=scheduler, torch_dtype="float64")  # batching-proof, as above
    noisy = seeded_normal(2, 4, 8, 8, seed=4)
    cond = prior.make_conditioning("a fox", guidance_scale=7.5, image_guidance_scale=1.5)
    v_text, v_negative = unet_eps(prior, noisy, "a fox"), unet_eps(prior, noisy, "")
    alpha_bar = prior.alphas_cumprod[T]
    to_eps = lambda v: alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * noisy
    negative, positive = to_eps(v_negative), to_eps(v_text)
    expected = negative + 7.5 * (positive - negative)
    torch.testing.assert_close(
        prior.predict_noise(noisy, T, cond).target, expected, atol=two_way_tolerance(negative, positive, 7.5), rtol=0
    )
