"""Guidance methods on a duck-typed fake prior: residuals, shared (t, ε), scaling, ablations, bad configs."""

import pytest
import torch
from distill_fakes import FakePrior

from csd_exp.distill import Guidance, IdentityKernel, RBFKernel, TimestepSchedule, csd_gradient, draw_step_randomness

SEED, STEP = 5, 9
SHAPE = (4, 4, 8, 8)


def inputs():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(*SHAPE, generator=generator)
    latents = (source + 0.1 * torch.randn(*SHAPE, generator=generator)).requires_grad_(True)
    return latents, source, 0.5 * torch.randn(*SHAPE, generator=generator)


def expected_randomness(latents, prior, schedule=None):
    t, noise = draw_step_randomness(SEED, STEP, schedule or TimestepSchedule(), SHAPE[0], SHAPE[1:])
    return t, noise, prior.add_noise(latents.detach(), noise, t), prior.alphas_cumprod[t]


def run(method, latents, source, image_cond, **kwargs):
    prior = FakePrior()
    guidance = Guidance(method, **{"guidance_scale": 7.5, **kwargs})  # the fake prior's expectations use 7.5
    out = guidance(
        prior, latents, prompt="make it red", image_cond=image_cond, source_latents=source, step=STEP, seed=SEED
    )
    return prior, out


def test_sds_is_weighted_noise_residual_and_loss_is_exact():
    latents, source, image_cond = inputs()
    prior, out = run("sds", latents, source, image_cond)
    t, noise, noisy, alpha_bar = expected_randomness(latents, prior)
    target = torch.tanh(noisy) * 0.75 + 0.1 * image_cond
    assert out.t == t and prior.calls[0]["source_noisy"] is None
    torch.testing.assert_close(out.gradients, (1 - alpha_bar) * (target - noise))
    out.loss.backward()
    assert torch.equal(latents.grad, out.gradients)
    assert set(out.diagnostics) >= {
        "t",
        "w_t",
        "grad_norm",
        "gamma",
        "kernel_offdiag_mean",
        "kernel_self_weight_ratio",
        "repulsion_ratio",
        "residual_norm",
    }


def test_csd_edit_noises_source_with_same_t_and_eps():
    latents, source, image_cond = inputs()
    prior, out = run("csd_edit", latents, source, image_cond, guidance_scale=3.0, image_guidance_scale=2.0)
    t, noise, noisy, alpha_bar = expected_randomness(latents, prior)
    call = prior.calls[0]
    assert call["t"] == t and call["cond"].guidance_scale == 3.0 and call["cond"].image_guidance_scale == 2.0
    torch.testing.assert_close(call["source_noisy"], prior.add_noise(source, noise, t))
    residuals = (torch.tanh(noisy) * 0.3 + 0.1 * image_cond) - torch.tanh(call["source_noisy"]) * 0.2
    torch.testing.assert_close(out.gradients, csd_gradient(residuals, noisy, RBFKernel(), alpha_bar))


def test_ablations_share_the_random_stream_and_step_normalisation():
    latents, source, image_cond = inputs()
    _, full = run("csd_edit", latents, source, image_cond)
    prior, no_svgd = run("csd_edit_no_svgd", latents, source, image_cond)
    _, official = run("csd_edit_no_svgd", latents, source, image_cond, official_scaling=True)
    t, noise, noisy, alpha_bar = expected_randomness(latents, prior)
    residuals = (torch.tanh(noisy) * 0.75 + 0.1 * image_cond) - torch.tanh(prior.add_noise(source, noise, t)) * 0.15
    assert full.t == no_svgd.t == official.t == t
    torch.testing.assert_close(no_svgd.gradients, (1 - alpha_bar) / SHAPE[0] * residuals)
    torch.testing.assert_close(official.gradients, residuals)  # the official panorama path: no w(t), no 1/N
    prior, random_noise = run("csd_edit_random_noise", latents, source, image_cond)
    assert prior.calls[0]["source_noisy"] is None
    _, csd = run("csd", latents, source, image_cond)
    assert torch.equal(random_noise.gradients, csd.gradients)


def test_grad_clip_gradient_scale_and_reproducibility():
    latents, source, image_cond = inputs()
    _, plain = run("csd", latents, source, image_cond)
    _, again = run("csd", latents, source, image_cond)
    assert torch.equal(plain.gradients, again.gradients)
    clip = 0.5 * plain.gradients.abs().max().item()
    _, clipped = run("csd", latents, source, image_cond, grad_clip=clip)
    torch.testing.assert_close(clipped.gradients, plain.gradients.clamp(-clip, clip))
    scale = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    prior, guidance = FakePrior(), Guidance("csd", guidance_scale=7.5)
    scaled = guidance(prior, latents, prompt="p", image_cond=image_cond, step=STEP, seed=SEED, gradient_scale=scale)
    torch.testing.assert_close(scaled.gradients, plain.gradients * scale)
    latents.grad = None
    scaled.loss.backward()
    assert torch.equal(latents.grad, scaled.gradients)


def test_sharded_noise_is_the_slice_of_the_full_stream():
    latents, source, image_cond = inputs()
    _, full = run("sds", latents, source, image_cond)
    prior = FakePrior()
    shard = Guidance("sds", guidance_scale=7.5)(
        prior,
        latents[1:3],
        prompt="make it red",
        image_cond=image_cond[1:3],
        step=STEP,
        seed=SEED,
        particle_offset=1,
        num_particles_total=4,
    )
    assert torch.equal(shard.gradients, full.gradients[1:3])


def test_bad_configuration_and_calls():
    with pytest.raises(ValueError, match="method must be one of"):
        Guidance("vsd")
    with pytest.raises(ValueError, match="fixes its kernel"):
        Guidance("sds", kernel="rbf")
    with pytest.raises(ValueError, match="official_scaling only changes"):
        Guidance("csd", official_scaling=True)
    assert isinstance(Guidance("csd_edit_no_svgd").kernel, IdentityKernel)
    latents, source, image_cond = inputs()
    with pytest.raises(ValueError, match=r"needs source_latents.*\(4, 4, 8, 8\)"):
        Guidance("csd_edit")(FakePrior(), latents, prompt="p", image_cond=image_cond, step=0, seed=0)
    with pytest.raises(ValueError, match=r"source_latents must match"):
        Guidance("csd_edit")(
            FakePrior(), latents, prompt="p", image_cond=image_cond, source_latents=source[:2], step=0, seed=0
        )
    with pytest.raises(ValueError, match=r"assumes 100 training timesteps.*\(1000,\)"):
        Guidance("csd", schedule=TimestepSchedule(num_train_timesteps=100))(
            FakePrior(), latents, prompt="p", step=0, seed=0
        )
    with pytest.raises(ValueError, match="do not fit"):
        Guidance("csd")(FakePrior(), latents, prompt="p", step=0, seed=0, particle_offset=2, num_particles_total=5)
