"""InstructPix2PixPrior on the tiny pipeline: guidance against explicit UNet calls, chunking, conventions."""

import pytest
import torch

from csd_exp.priors import InstructPix2PixPrior, tiny_instruct_pix2pix_prior
from csd_exp.priors.tiny import LATENT_CHANNELS, tiny_components

from ._helpers import branch_rounding_tolerance, ip2p_coefficients, seeded_images, seeded_normal

N = 3
T = 400


@pytest.fixture(scope="module")
def batch(ip2p_prior):
    images = seeded_images(N, seed=1)
    source_images = seeded_images(N, seed=2)
    latents = ip2p_prior.encode(images)
    image_cond = ip2p_prior.encode_image_condition(source_images)
    noise = seeded_normal(*latents.shape, seed=3)
    noisy = ip2p_prior.add_noise(latents, noise, T)
    noisy_source = ip2p_prior.add_noise(ip2p_prior.encode(source_images), noise, T)
    return dict(noisy=noisy, noisy_source=noisy_source, image_cond=image_cond)


def unet_eps(prior, noisy, image_cond, prompt):
    """One plain UNet call: ε(x_t; c, e(prompt)) for all rows."""
    embeds = prior.prompt_embeddings(prompt).expand(noisy.shape[0], -1, -1)
    sample = torch.cat([noisy, image_cond], dim=1).to(prior.dtype)
    with torch.no_grad():
        return prior.unet(sample, T, encoder_hidden_states=embeds).sample.float()


def official_3way(prior, noisy, image_cond, text_prompt, omega_y, omega_s):
    """The official per-branch computation: three separate UNet calls and diffusers' formula."""
    text = unet_eps(prior, noisy, image_cond, text_prompt)
    image = unet_eps(prior, noisy, image_cond, "")
    uncond = unet_eps(prior, noisy, torch.zeros_like(image_cond), "")
    return uncond + omega_y * (text - image) + omega_s * (image - uncond)


def unet_branches(prior, noisy, image_cond, text_prompt):
    """ε(x̃,y), ε(x̃,∅), ε(∅,∅) from three separate UNet calls."""
    return (
        unet_eps(prior, noisy, image_cond, text_prompt),
        unet_eps(prior, noisy, image_cond, ""),
        unet_eps(prior, noisy, torch.zeros_like(image_cond), ""),
    )


def assert_equals_official(actual, branches, omega_y, omega_s):
    """``actual`` equals the official formula on ``branches`` within float32 rounding of the guidance."""
    text, image, uncond = branches
    expected = uncond + omega_y * (text - image) + omega_s * (image - uncond)
    # The official formula and ours add the three branches in a different order: 4 float32 operations.
    atol = branch_rounding_tolerance(branches, ip2p_coefficients(omega_y, omega_s), formula_operations=4)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# Batching tests run the networks in float64 (``ip2p_prior64``): there, how rows are batched changes a
# UNet output by ~1e-15, so what they compare is the prior's row bookkeeping, on any CPU.
def test_batched_guidance_equals_three_separate_unet_calls(ip2p_prior64, batch):
    cond = ip2p_prior64.make_conditioning(
        "make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
    )
    prediction = ip2p_prior64.predict_noise(batch["noisy"], T, cond)
    assert prediction.source is None
    assert prediction.target.dtype == torch.float32 and prediction.target.shape == batch["noisy"].shape
    branches = unet_branches(ip2p_prior64, batch["noisy"], batch["image_cond"], "make it autumn")
    assert_equals_official(prediction.target, branches, 7.5, 1.5)
    assert prediction.target.abs().mean() > 0.1  # not trivially zero


def test_two_row_source_branch_equals_official_three_rows_with_empty_prompt(ip2p_prior64, batch):
    cond = ip2p_prior64.make_conditioning(
        "make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
    )
    prediction = ip2p_prior64.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    branches = unet_branches(ip2p_prior64, batch["noisy_source"], batch["image_cond"], "")
    assert_equals_official(prediction.source, branches, 7.5, 1.5)


def test_one_csd_edit_step_costs_five_rows_per_particle(ip2p_prior, batch):
    cond = ip2p_prior.make_conditioning(
        "make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
    )
    rows, calls = ip2p_prior.unet_rows_evaluated, ip2p_prior.unet_calls
    ip2p_prior.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    assert ip2p_prior.unet_rows_evaluated - rows == 5 * N
    assert ip2p_prior.unet_calls - calls == 1


def test_source_prompt_keeps_the_general_three_row_source_branch(ip2p_prior64, batch):
    cond = ip2p_prior64.make_conditioning(
        "make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5, source_prompt="a photo"
    )
    rows = ip2p_prior64.unet_rows_evaluated
    prediction = ip2p_prior64.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    assert ip2p_prior64.unet_rows_evaluated - rows == 6 * N
    branches = unet_branches(ip2p_prior64, batch["noisy_source"], batch["image_cond"], "a photo")
    assert_equals_official(prediction.source, branches, 7.5, 1.5)


def test_chunked_equals_unchunked(ip2p_prior64, batch, tiny_cache):
    chunked = tiny_instruct_pix2pix_prior(tiny_cache, max_rows_per_call=4, torch_dtype="float64")
    cond = ip2p_prior64.make_conditioning(
        "make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
    )
    whole = ip2p_prior64.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    calls = chunked.unet_calls
    parts = chunked.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    assert chunked.unet_calls - calls == -(-5 * N // 4)
    # Same formula on both sides: only the branches' float32 casts can differ (one ulp each).
    target_branches = unet_branches(ip2p_prior64, batch["noisy"], batch["image_cond"], "make it autumn")
    atol = branch_rounding_tolerance(target_branches, ip2p_coefficients(7.5, 1.5))
    torch.testing.assert_close(parts.target, whole.target, atol=atol, rtol=0)
    source_branches = unet_branches(ip2p_prior64, batch["noisy_source"], batch["image_cond"], "")
    atol = branch_rounding_tolerance(source_branches[1:], (1.5, 1.0 - 1.5))
    torch.testing.assert_close(parts.source, whole.source, atol=atol, rtol=0)


def test_text_embeddings_are_cached_per_prompt(ip2p_prior, batch):
    calls = []
    handle = ip2p_prior.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        cond = ip2p_prior.make_conditioning(
            "a prompt seen for the first time", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
        )
        ip2p_prior.predict_noise(batch["noisy"], T, cond)
        ip2p_prior.predict_noise(batch["noisy"], T, cond)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_condition_latents_follow_ip2p_by_default_and_official_code_on_switch(ip2p_prior, tiny_cache):
    images = seeded_images(2, seed=4)
    pixels = 2.0 * images - 1.0
    with torch.no_grad():
        dist = ip2p_prior.vae.encode(pixels).latent_dist
    torch.testing.assert_close(ip2p_prior.encode_image_condition(images), dist.mode())
    scale = ip2p_prior.vae.config.scaling_factor
    torch.testing.assert_close(ip2p_prior.encode(images), dist.mode() * scale)
    torch.testing.assert_close(ip2p_prior.condition_from_latents(ip2p_prior.encode(images)), dist.mode())

    official = tiny_instruct_pix2pix_prior(tiny_cache, official_condition_latents=True)
    sampled = official.encode_image_condition(images, generator=torch.Generator().manual_seed(7))
    expected = dist.sample(generator=torch.Generator().manual_seed(7)) * scale
    torch.testing.assert_close(sampled, expected)
    assert not torch.allclose(sampled, dist.mode() * scale)
    torch.testing.assert_close(official.encode_image_condition(images), official.encode_image_condition(images))


def test_latent_scale_comes_from_the_vae_config(tiny_cache):
    parts = tiny_components(tiny_cache / "tokenizer", in_channels=2 * LATENT_CHANNELS, seed=0)
    parts["vae"].register_to_config(scaling_factor=0.5)
    prior = InstructPix2PixPrior(**parts)
    images = seeded_images(1, seed=5)
    with torch.no_grad():
        mode = prior.vae.encode(2 * images - 1).latent_dist.mode()
    torch.testing.assert_close(prior.encode(images), 0.5 * mode)
    decoded = prior.decode(prior.encode(images))
    with torch.no_grad():
        expected = ((prior.vae.decode(mode).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded, expected)


def test_unet_without_eight_input_channels_is_an_error(tiny_cache):
    parts = tiny_components(tiny_cache / "tokenizer", in_channels=LATENT_CHANNELS, seed=0)
    with pytest.raises(ValueError, match="8 input channels"):
        InstructPix2PixPrior(**parts)


def test_image_size_the_vae_cannot_take_is_an_error(ip2p_prior):
    with pytest.raises(ValueError, match="multiples of 2"):
        ip2p_prior.encode(torch.rand(1, 3, 15, 16))
    ip2p_prior.validate_image_size(16, 16)


def test_unreachable_hub_id_names_the_offline_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline.*pretrained_model_name_or_path=/path/to/folder"):
        InstructPix2PixPrior("csd-exp-tests/no-such-model")


def test_missing_image_condition_is_an_error(ip2p_prior, batch):
    cond = ip2p_prior.make_conditioning("make it autumn", guidance_scale=7.5, image_guidance_scale=1.5)
    with pytest.raises(ValueError, match="image_cond"):
        ip2p_prior.predict_noise(batch["noisy"], T, cond)


def test_low_precision_prior_takes_float32_inputs_and_returns_float32(tiny_cache, ip2p_prior, batch):
    half = tiny_instruct_pix2pix_prior(tiny_cache, torch_dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16
    cond = half.make_conditioning("make it autumn", batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5)
    prediction = half.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    reference = ip2p_prior.predict_noise(batch["noisy"], T, cond, source_noisy_latents=batch["noisy_source"])
    assert prediction.target.dtype == torch.float32 and prediction.source.dtype == torch.float32
    # bfloat16 keeps ~3 digits and ω_y = 7.5 amplifies the text-minus-image difference: compare directions
    cosine = torch.nn.functional.cosine_similarity(prediction.target.flatten(), reference.target.flatten(), dim=0)
    assert cosine > 0.98
