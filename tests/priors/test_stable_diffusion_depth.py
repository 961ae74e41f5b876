"""The SD 2 depth-to-image prior: its depth map is diffusers' pipeline's, its UNet reads latent + depth, and the
wrong UNet or a missing depth map is refused."""

from __future__ import annotations

import pytest
import torch

from ._helpers import FLOAT32_EPS, seeded_images, seeded_normal


@pytest.fixture(scope="module")
def depth_prior(tiny_cache):
    from csd_exp.priors import tiny_stable_diffusion_depth_prior

    return tiny_stable_diffusion_depth_prior(tiny_cache)


def test_the_depth_map_is_the_pipelines(depth_prior, tiny_cache):
    """encode_image_condition = StableDiffusionDepth2ImgPipeline.prepare_depth_map on the same 8-bit images."""
    from diffusers import StableDiffusionDepth2ImgPipeline
    from PIL import Image

    from csd_exp.priors.stable_diffusion_depth import as_8bit_images

    folder = next(tiny_cache.glob("tiny_sd2_depth_seed0_v*"))
    pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(folder)
    images = seeded_images(2, size=16, seed=5)
    pil = [Image.fromarray(array) for array in as_8bit_images(images)]
    expected = pipe.prepare_depth_map(pil, None, 2, False, torch.float32, torch.device("cpu"))
    ours = depth_prior.encode_image_condition(images)
    assert ours.shape == (2, 1, 8, 8) and ours.dtype == torch.float32
    # Same estimator, same resize and scaling: only the order of float32 operations may differ (a few ulps of 1).
    torch.testing.assert_close(ours, expected, atol=8 * FLOAT32_EPS, rtol=0)
    assert float(ours.amin()) == -1.0 and float(ours.amax()) == 1.0
    assert float((ours[0] - ours[1]).abs().max()) > 0.1  # the two images have different depth maps


def test_the_unet_reads_the_latent_and_the_depth_map(depth_prior):
    """ε̂ = ε(n) + ω [ε(y) − ε(n)] with [x_t, d] as the UNet's input; another depth map changes ε̂."""
    images = seeded_images(2, size=16, seed=6)
    depth = depth_prior.encode_image_condition(images)
    latents = depth_prior.encode(images)
    noisy = depth_prior.add_noise(latents, seeded_normal(*latents.shape, seed=7), 500)
    cond = depth_prior.make_conditioning("a red car", image_cond=depth, guidance_scale=5.0, image_guidance_scale=1.5)
    guided = depth_prior.predict_noise(noisy, 500, cond).target

    unet, t = depth_prior.unet, torch.tensor(500)
    rows = torch.cat([noisy, depth], dim=1)
    text = unet(rows, t, encoder_hidden_states=depth_prior.prompt_embeddings("a red car").expand(2, -1, -1)).sample
    empty = unet(rows, t, encoder_hidden_states=depth_prior.prompt_embeddings("").expand(2, -1, -1)).sample
    expected = empty + 5.0 * (text - empty)
    torch.testing.assert_close(guided, expected, atol=64 * FLOAT32_EPS * float(expected.abs().max()), rtol=0)
    flipped = depth_prior.make_conditioning(
        "a red car", image_cond=-depth, guidance_scale=5.0, image_guidance_scale=1.5
    )
    assert float((depth_prior.predict_noise(noisy, 500, flipped).target - guided).abs().max()) > 1e-3


def test_a_missing_depth_map_or_a_text_to_image_unet_is_refused(depth_prior, sd_prior):
    from csd_exp.priors import StableDiffusionDepthPrior

    with pytest.raises(ValueError, match="conditioned on a depth map: pass image_cond"):
        depth_prior.make_conditioning("a red car", guidance_scale=7.5, image_guidance_scale=1.5)
    parts = dict(unet=sd_prior.unet, vae=sd_prior.vae, text_encoder=sd_prior.text_encoder, tokenizer=sd_prior.tokenizer)
    parts.update(depth_estimator=depth_prior.depth_estimator, feature_extractor=depth_prior.feature_extractor)
    with pytest.raises(ValueError, match="5 input channels .* this one has 4 .* model=sd15 / sd21 / tiny_sd"):
        StableDiffusionDepthPrior(**parts)


def test_an_unreachable_hub_id_names_the_local_folder_fix():
    from csd_exp.priors import StableDiffusionDepthPrior

    with pytest.raises(OSError, match="model.pretrained_model_name_or_path=/path/to/folder"):
        StableDiffusionDepthPrior("stabilityai/stable-diffusion-2-depth", local_files_only=True)
