"""InstructPix2PixPrior's official reproduction switches and its negative / source prompts, on the tiny pipeline.

Official code (github.com/subin-kim-cv/CSD, csdedit.py): ``encode_latents`` (L214–220) draws one posterior
``sample() × 0.18215`` of the source; ``edit_video`` / ``edit_image`` use it as the source x̃, as θ₀
(``clone``) and as the image condition; ``_encode_prompt(…, negative_prompt=neg_prompt)`` gives the rows
[prompt, neg, neg] for target and source (L307–315, L561–569).
"""

import pytest
import torch

from csd_exp.priors import tiny_instruct_pix2pix_prior

from ._helpers import FLOAT32_EPS, branch_rounding_tolerance, ip2p_coefficients, seeded_images, seeded_normal
from .test_instruct_pix2pix import assert_equals_official, unet_eps

N = 3
T = 400
SEED = 11


@pytest.fixture(scope="module")
def official(tiny_cache):
    return tiny_instruct_pix2pix_prior(
        tiny_cache, official_source_latents=True, official_condition_latents=True, condition_seed=SEED
    )


def float64_posterior(prior64, images):
    """(mean, std) of the VAE posterior in float64, from its raw moments (independent of diffusers' sample())."""
    with torch.no_grad():
        moments = prior64.vae.encode(2.0 * images.double() - 1.0).latent_dist.parameters
    mean, logvar = moments.chunk(2, dim=1)
    return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))


def test_official_step0_latents_are_one_seeded_sample_equal_to_a_float64_rederivation(official, ip2p_prior64):
    images = seeded_images(N, seed=4)
    vae_calls = []
    handle = official.vae.encoder.register_forward_hook(lambda *args: vae_calls.append(1))
    try:  # what a task does at step 0 (DistillationTask.encode_sources; the official edit_video / edit_image)
        source = official.encode(images)
        target0 = source.clone()
        condition = official.encode_image_condition(images)
    finally:
        handle.remove()
    window_condition = official.condition_from_latents(source[..., 2:6, 2:6])  # the panorama's windows
    assert len(vae_calls) == 1  # encoded once, as the official code does

    # One draw for all uses, bit for bit.
    assert torch.equal(condition, source) and torch.equal(target0, source)
    assert torch.equal(window_condition, source[..., 2:6, 2:6])

    # float64: (μ + σ ε) s with ε the seeded standard normal draw a float32 VAE makes.
    scale = official.vae_scaling_factor
    eps = torch.randn(source.shape, generator=torch.Generator().manual_seed(SEED))
    mean64, std64 = float64_posterior(ip2p_prior64, images)
    expected = (mean64 + std64 * eps.double()) * scale
    # Tolerance: the float32 VAE's own rounding of μ and σ (measured against float64 on these images),
    # carried through μ + σ ε and × s, plus 3 float32 roundings of the result (add, multiply, scale).
    with torch.no_grad():
        dist32 = official.vae.encode(2.0 * images - 1.0).latent_dist
    mean32, std32 = dist32.mean.double(), dist32.std.double()
    atol = scale * (
        float((mean32 - mean64).abs().max()) + float((std32 - std64).abs().max()) * float(eps.abs().max())
    ) + 3 * FLOAT32_EPS * float(expected.abs().max())
    torch.testing.assert_close(source.double(), expected, atol=atol, rtol=0)
    # The check can tell the official sample from the project's default mode × s and from another draw.
    assert float((source.double() - mean64 * scale).abs().max()) > 100 * atol
    other = (mean64 + std64 * seeded_normal(*source.shape, seed=SEED + 1).double()) * scale
    assert float((source.double() - other).abs().max()) > 100 * atol


def test_flags_off_leave_encode_and_condition_bit_for_bit_unchanged(ip2p_prior):
    images = seeded_images(2, seed=4)
    with torch.no_grad():
        dist = ip2p_prior.vae.encode(2.0 * images - 1.0).latent_dist
    assert torch.equal(ip2p_prior.encode(images), (dist.mode() * ip2p_prior.vae_scaling_factor).float())
    assert torch.equal(ip2p_prior.encode_image_condition(images), dist.mode().float())


def test_condition_only_switch_keeps_its_previous_draw(tiny_cache):
    """official_condition_latents alone (official_panorama_readme): the condition is the same seeded sample
    as before the shared draw existed, and encode stays the mode."""
    images = seeded_images(2, seed=4)
    prior = tiny_instruct_pix2pix_prior(tiny_cache, official_condition_latents=True, condition_seed=SEED)
    with torch.no_grad():
        dist = prior.vae.encode(2.0 * images - 1.0).latent_dist
    previous = (dist.sample(generator=torch.Generator().manual_seed(SEED)) * prior.vae_scaling_factor).float()
    assert torch.equal(prior.encode_image_condition(images), previous)
    assert torch.equal(prior.encode(images), (dist.mode() * prior.vae_scaling_factor).float())


def test_official_draw_is_keyed_on_image_values_and_never_aliased(official):
    images = seeded_images(2, seed=5)
    first = official.encode(images)
    kept = first.clone()
    first.add_(1.0)  # a caller editing its latents in place must not edit the cached draw
    again = official.encode_image_condition(images.clone())
    assert torch.equal(again, kept)
    assert not torch.equal(official.encode(seeded_images(2, seed=6)), again)
    # An explicit generator is a different, caller-controlled draw, outside the cache.
    explicit = official.encode(images, torch.Generator().manual_seed(SEED + 1))
    assert not torch.equal(explicit, again)


def test_differentiable_official_encode_is_the_same_draw_with_a_graph(official):
    images = seeded_images(2, seed=7)
    plain = official.encode(images)
    pixels = images.clone().requires_grad_(True)
    latents = official.encode(pixels, differentiable=True)
    torch.testing.assert_close(latents.detach(), plain, atol=0, rtol=0)
    latents.square().sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(official_source_latents="yes"), "official_source_latents='yes' is not allowed: .*valid boolean"),
        (dict(condition_seed=-1), "condition_seed=-1 is not allowed: .*greater than or equal to 0"),
    ],
)
def test_bad_official_switch_values_are_errors(kwargs, match):
    """Refused by the constructor's annotations when the config is checked, before the pipeline loads (the
    constructor no longer repeats the check: issue 21)."""
    from csd_exp.schema import check_target

    with pytest.raises(ValueError, match=match):
        check_target("model", {"_target_": "csd_exp.priors.tiny_instruct_pix2pix_prior", "cache_dir": "x", **kwargs})


# -- negative / source prompts (DDS-style editing with IP2P) ---------------------------------------
@pytest.fixture(scope="module")
def noisy_batch(ip2p_prior64):
    images, source_images = seeded_images(N, seed=1), seeded_images(N, seed=2)
    latents = ip2p_prior64.encode(images)
    noise = seeded_normal(*latents.shape, seed=3)
    return dict(
        noisy=ip2p_prior64.add_noise(latents, noise, T),
        noisy_source=ip2p_prior64.add_noise(ip2p_prior64.encode(source_images), noise, T),
        image_cond=ip2p_prior64.encode_image_condition(source_images),
    )


def three_branches(prior, noisy, image_cond, text_prompt, negative_prompt):
    """ε(x̃, y), ε(x̃, n), ε(0, n): diffusers' [prompt, neg, neg] rows, from three plain UNet calls."""
    return (
        unet_eps(prior, noisy, image_cond, text_prompt),
        unet_eps(prior, noisy, image_cond, negative_prompt),
        unet_eps(prior, noisy, torch.zeros_like(image_cond), negative_prompt),
    )


def test_empty_negative_prompt_is_the_default_and_a_nonempty_one_changes_the_prediction(ip2p_prior, noisy_batch):
    default = ip2p_prior.make_conditioning(
        "make it autumn", noisy_batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5
    )
    empty = ip2p_prior.make_conditioning(
        "make it autumn", noisy_batch["image_cond"], guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt=""
    )
    negative = ip2p_prior.make_conditioning(
        "make it autumn",
        noisy_batch["image_cond"],
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        negative_prompt="blurry",
    )
    args = (noisy_batch["noisy"], T)
    kwargs = dict(source_noisy_latents=noisy_batch["noisy_source"])
    base = ip2p_prior.predict_noise(*args, default, **kwargs)
    same = ip2p_prior.predict_noise(*args, empty, **kwargs)
    changed = ip2p_prior.predict_noise(*args, negative, **kwargs)
    assert torch.equal(same.target, base.target) and torch.equal(same.source, base.source)
    # The tiny text encoder is random: "blurry" moves the rows it conditions by O(1), far above rounding.
    for new, old in ((changed.target, base.target), (changed.source, base.source)):
        assert float((new - old).abs().max()) > 1e-3 * float(old.abs().max())


def test_negative_prompt_conditions_the_image_and_unconditional_rows_of_target_and_source(ip2p_prior64, noisy_batch):
    image_cond = noisy_batch["image_cond"]
    cond = ip2p_prior64.make_conditioning(
        "make it autumn", image_cond, guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="blurry"
    )
    prediction = ip2p_prior64.predict_noise(
        noisy_batch["noisy"], T, cond, source_noisy_latents=noisy_batch["noisy_source"]
    )
    target = three_branches(ip2p_prior64, noisy_batch["noisy"], image_cond, "make it autumn", "blurry")
    assert_equals_official(prediction.target, target, 7.5, 1.5)
    # Source prompt '' differs from the negative prompt: the official 3-row source branch [src, neg, neg].
    source = three_branches(ip2p_prior64, noisy_batch["noisy_source"], image_cond, "", "blurry")
    assert_equals_official(prediction.source, source, 7.5, 1.5)


def test_source_prompt_equal_to_the_negative_prompt_takes_the_two_row_source_branch(ip2p_prior64, noisy_batch):
    image_cond = noisy_batch["image_cond"]
    cond = ip2p_prior64.make_conditioning(
        "make it autumn",
        image_cond,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        negative_prompt="blurry",
        source_prompt="blurry",
    )
    rows = ip2p_prior64.unet_rows_evaluated
    prediction = ip2p_prior64.predict_noise(
        noisy_batch["noisy"], T, cond, source_noisy_latents=noisy_batch["noisy_source"]
    )
    assert ip2p_prior64.unet_rows_evaluated - rows == 5 * N
    # Official 3 rows [blurry, blurry, blurry]: its text row equals its image row, so ω_y drops out.
    branches = three_branches(ip2p_prior64, noisy_batch["noisy_source"], image_cond, "blurry", "blurry")
    atol = branch_rounding_tolerance(branches, ip2p_coefficients(7.5, 1.5), formula_operations=4)
    expected = branches[2] + 1.5 * (branches[1] - branches[2])
    torch.testing.assert_close(prediction.source, expected, atol=atol, rtol=0)
