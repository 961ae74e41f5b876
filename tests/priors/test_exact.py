"""ExactScorePrior: ε̂ against an independent float64 autograd score, sampling proportions, registry, oracle."""

import math

import pytest
import torch

from csd_exp.priors import INSTRUCTIONS, ExactScorePrior, InstructionFamily
from csd_exp.priors.instructions import darken_and_tint

from ._helpers import seeded_images, seeded_normal

POP_ART = "turn it into a pop-art painting"


def reference_eps(x_t, means, weights, std, alpha_bar):
    """ε̂ = −σ ∇ log p_t(x_t) for p_t = Σ_k π_k N(√ᾱ μ_k, (ᾱ s² + 1 − ᾱ) I), by float64 autograd."""
    x = x_t.double().clone().requires_grad_(True)
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    variance = alpha_bar * std**2 + sigma**2
    dims = x[0].numel()
    log_components = torch.stack(
        [
            math.log(w)
            - ((x - alpha * m.double()) ** 2).flatten(1).sum(1) / (2 * variance)
            - 0.5 * dims * math.log(2 * math.pi * variance)
            for w, m in zip(weights, means)
        ]
    )
    (score,) = torch.autograd.grad(torch.logsumexp(log_components, dim=0).sum(), x)
    return -sigma * score


def branch_references(prior, x_t, image_cond, prompt, t):
    alpha_bar = float(prior.alphas_cumprod[t])
    family = prior.instruction(prompt)
    weights = torch.tensor(family.weights or [1.0] * family.num_modes, dtype=torch.float64)
    weights = (weights / weights.sum()).tolist()
    text = reference_eps(x_t, family.mode_means(image_cond.double()), weights, prior.edit_std, alpha_bar)
    image = reference_eps(x_t, [image_cond], [1.0], prior.image_std, alpha_bar)
    uncond = reference_eps(x_t, [torch.full_like(x_t, prior.uncond_mean)], [1.0], prior.uncond_std, alpha_bar)
    return text, image, uncond


@pytest.mark.parametrize("t", [40, 400, 950])
# float64 still returns float32 (the contract), so its tolerance is float32 rounding
@pytest.mark.parametrize("dtype, tolerance", [("float32", 2e-4), ("float64", 1e-6)])
def test_guided_eps_equals_independent_float64_computation(t, dtype, tolerance):
    prior = ExactScorePrior(torch_dtype=dtype)
    image_cond = 0.8 * (2 * seeded_images(3, size=4, seed=0) - 1)
    family = prior.instruction(POP_ART)
    # targets near different modes and one between two modes, so responsibilities are not all one-hot
    clean = torch.stack(
        [
            family.edits[0](image_cond[:1])[0],
            family.edits[2](image_cond[1:2])[0],
            0.5 * (family.edits[1](image_cond[2:]) + family.edits[3](image_cond[2:]))[0],
        ]
    )
    noise, source_noise = seeded_normal(*clean.shape, seed=1), seeded_normal(*clean.shape, seed=2)
    x_t, source_t = prior.add_noise(clean, noise, t), prior.add_noise(image_cond, source_noise, t)
    cond = prior.make_conditioning(POP_ART, image_cond, guidance_scale=2.5, image_guidance_scale=1.7)
    prediction = prior.predict_noise(x_t, t, cond, source_noisy_latents=source_t)

    text, image, uncond = branch_references(prior, x_t, image_cond, POP_ART, t)
    expected_target = uncond + 1.7 * (image - uncond) + 2.5 * (text - image)
    _, source_image, source_uncond = branch_references(prior, source_t, image_cond, POP_ART, t)
    expected_source = source_uncond + 1.7 * (source_image - source_uncond)
    assert prediction.target.dtype == torch.float32
    scale = expected_target.abs().max().item()
    torch.testing.assert_close(prediction.target.double(), expected_target, atol=tolerance * scale, rtol=0)
    torch.testing.assert_close(prediction.source.double(), expected_source, atol=tolerance * scale, rtol=0)


def ancestral_sample(prior, cond, shape, num_steps, generator):
    """DDPM ancestral sampling on a strided schedule with the prior's guided ε̂ (ω_y = ω_s = 1: the target
    branch alone), x_s ~ q(x_s | x_t, x̂₀)."""
    timesteps = torch.linspace(prior.num_train_timesteps - 1, 0, num_steps).round().long().tolist()
    abar = prior.alphas_cumprod.double()
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    for t, s in zip(timesteps, timesteps[1:] + [None]):
        eps = prior.predict_noise(x.float(), t, cond).target.double()
        x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        if s is None:
            return x0
        step_alpha_sq = abar[t] / abar[s]
        beta = 1 - step_alpha_sq
        mean = (abar[s].sqrt() * beta * x0 + step_alpha_sq.sqrt() * (1 - abar[s]) * x) / (1 - abar[t])
        std = (beta * (1 - abar[s]) / (1 - abar[t])).sqrt()
        x = mean + std * torch.randn(shape, generator=generator, dtype=torch.float64)


def test_ancestral_sampling_lands_in_the_modes_in_the_right_proportions():
    weights = (0.5, 0.3, 0.2)
    family = InstructionFamily(
        name="three tints",
        mode_names=("red", "green", "blue"),
        kind="shared",
        weights=weights,
        edits=tuple(darken_and_tint(0.6, tint) for tint in ((0.3, 0, 0), (0, 0.3, 0), (0, 0, 0.3))),
    )
    prior = ExactScorePrior(instructions={family.name: family})
    n = 600
    image_cond = (2 * seeded_images(1, size=4, seed=3) - 1).expand(n, -1, -1, -1)
    cond = prior.make_conditioning("Three tints!", image_cond, guidance_scale=1.0, image_guidance_scale=1.0)
    samples = ancestral_sample(prior, cond, image_cond.shape, 50, torch.Generator().manual_seed(0))
    responsibilities = prior.mode_responsibilities(samples.float(), image_cond, "three tints")
    assert responsibilities.shape == (n, 3)
    assert (responsibilities.max(dim=1).values > 0.99).float().mean() > 0.98  # every sample sits in a mode
    proportions = torch.bincount(responsibilities.argmax(dim=1), minlength=3).float() / n
    torch.testing.assert_close(proportions, torch.tensor(weights), atol=0.06, rtol=0)  # 3 sigma at n = 600
    spread = (samples.float() - family.mode_means(image_cond)[responsibilities.argmax(1), torch.arange(n)]).std()
    # the denoised end point E[z0 | x_0] has spread s²/√(s² + σ_0²) ≈ 0.86 s; coarse steps shrink it a bit more
    assert 0.4 * prior.edit_std < spread.item() < prior.edit_std


def test_mode_responsibilities_pick_the_edit_a_particle_carries():
    prior = ExactScorePrior()
    image_cond = 2 * seeded_images(4, size=8, seed=4) - 1
    means = prior.mode_means(image_cond, POP_ART)  # (K, N, C, h, w)
    chosen = torch.tensor([2, 0, 3, 1])
    latents = means[chosen, torch.arange(4)] + 0.05 * seeded_normal(4, 3, 8, 8, seed=5)
    responsibilities = prior.mode_responsibilities(latents, image_cond, POP_ART)
    assert torch.equal(responsibilities.argmax(dim=1), chosen)
    torch.testing.assert_close(responsibilities.sum(dim=1), torch.ones(4))
    assert prior.mode_names(POP_ART) == ["hue_72", "hue_144", "hue_216", "hue_288"]


def test_registry_matching_and_unknown_instruction_lists_the_known_ones():
    prior = ExactScorePrior()
    assert prior.instruction("  Make it NIGHT!! ").name == "make it night"
    assert prior.instruction("Turn into Andy Warhol style painting").name == POP_ART
    with pytest.raises(ValueError) as error:
        prior.make_conditioning(
            "make it a cubist painting", torch.zeros(1, 3, 4, 4), guidance_scale=7.5, image_guidance_scale=1.5
        )
    for name in INSTRUCTIONS:
        assert repr(name) in str(error.value)
    with pytest.raises(ValueError, match="make it night"):
        prior.validate_prompt("make it a cubist painting")
    prior.validate_prompt("Make it night.")


@pytest.mark.parametrize("name", list(INSTRUCTIONS))
def test_instruction_kinds_are_what_they_claim(name):
    """'shared': E_k(a) − E_j(a) is the same for every image; 'content': it depends on the image."""
    family = INSTRUCTIONS[name]
    a, b = (2 * seeded_images(1, size=8, seed=s) - 1 for s in (6, 7))
    diff_a, diff_b = family.edits[0](a) - family.edits[1](a), family.edits[0](b) - family.edits[1](b)
    assert torch.allclose(diff_a, diff_b, atol=1e-6) == (family.kind == "shared")
    means = family.mode_means(a)  # modes are far apart next to s
    distances = torch.cdist(means.flatten(1), means.flatten(1))
    off_diagonal = distances[~torch.eye(family.num_modes, dtype=torch.bool)]
    assert off_diagonal.min() > 10 * ExactScorePrior().edit_std * math.sqrt(2)


def test_downsampled_latents_encode_by_average_pooling_and_decode_by_nearest_upsampling():
    prior = ExactScorePrior(downsample=2)
    images = seeded_images(2, size=8, seed=8)
    latents = prior.encode(images)
    assert latents.shape == (2, 3, 4, 4) and prior.latent_scale_factor == 2
    torch.testing.assert_close(latents, torch.nn.functional.avg_pool2d(2 * images - 1, 2))
    blocky = prior.decode(latents)
    torch.testing.assert_close(prior.encode(blocky), latents)  # nearest blocks pool back exactly
    torch.testing.assert_close(blocky[..., ::2, ::2], blocky[..., 1::2, 1::2])
    with pytest.raises(ValueError, match="multiples of 2"):
        prior.encode(torch.rand(1, 3, 7, 8))


def test_bad_conditioning_is_an_error():
    prior = ExactScorePrior()
    image_cond = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="negative prompt"):
        prior.make_conditioning(
            POP_ART, image_cond, guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="blurry"
        )
    with pytest.raises(ValueError, match="image_cond"):
        prior.make_conditioning(POP_ART, guidance_scale=7.5, image_guidance_scale=1.5)
    cond = prior.make_conditioning(POP_ART, image_cond, guidance_scale=7.5, image_guidance_scale=1.5)
    with pytest.raises(ValueError, match="latent shape"):
        prior.predict_noise(torch.zeros(2, 3, 8, 8), 10, cond)
    with pytest.raises(ValueError, match="timestep"):
        prior.predict_noise(torch.zeros(2, 3, 4, 4), 1000, cond)
