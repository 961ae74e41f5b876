"""Guidance on a duck-typed fake prior: the two axes (baseline, kernel), shared (t, ε), scaling, bad configs."""

import pytest
import torch
from distill_fakes import FakePrior

from csd_exp.distill import (
    Guidance,
    IdentityKernel,
    Particles,
    RBFKernel,
    Shard,
    TimestepSchedule,
    csd_gradient,
    draw_step_randomness,
)

SEED, STEP = 5, 9
SHAPE = (4, 4, 8, 8)
# The conf/guidance presets as (baseline, kernel), so each test reads as the method it checks.
PRESETS = {
    "sds": ("random_noise", IdentityKernel),
    "csd": ("random_noise", RBFKernel),
    "csd_edit": ("source_branch", RBFKernel),
    "csd_edit_no_svgd": ("source_branch", lambda: IdentityKernel(normalize_by_count=True)),
    "csd_edit_random_noise": ("random_noise", RBFKernel),
}


#: the scales of conf/config.yaml (the exact prior's), which a run always passes
SCALES = dict(guidance_scale=1.5, image_guidance_scale=1.5)


def preset(name, **kwargs):
    baseline, kernel = PRESETS[name]
    return Guidance(baseline, kernel(), **(SCALES | kwargs))


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
    guidance = preset(method, **{"guidance_scale": 7.5, **kwargs})  # the fake prior's expectations use 7.5
    out = guidance(
        prior,
        Particles(latents, source_latents=source, condition=image_cond),
        prompt="make it red",
        step=STEP,
        seed=SEED,
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
    prior, guidance = FakePrior(), preset("csd", guidance_scale=7.5)
    particles = Particles(latents, condition=image_cond, gradient_scale=scale)
    scaled = guidance(prior, particles, prompt="p", step=STEP, seed=SEED)
    torch.testing.assert_close(scaled.gradients, plain.gradients * scale)
    latents.grad = None
    scaled.loss.backward()
    assert torch.equal(latents.grad, scaled.gradients)


def test_sharded_noise_is_the_slice_of_the_full_stream():
    latents, source, image_cond = inputs()
    _, full = run("sds", latents, source, image_cond)
    prior = FakePrior()
    shard = preset("sds", guidance_scale=7.5)(
        prior,
        Particles(latents[1:3], condition=image_cond[1:3]),
        prompt="make it red",
        step=STEP,
        seed=SEED,
        shard=Shard(offset=1, total=4),
    )
    assert torch.equal(shard.gradients, full.gradients[1:3])


def test_the_kernel_alone_decides_the_coupling():
    """Same baseline, same stream: IdentityKernel() is SDS (Eq. 5), the 1/N identity the no-SVGD ablation, a name
    resolves to the same kernel object as the class."""
    latents, source, image_cond = inputs()
    _, sds = run("sds", latents, source, image_cond)
    prior = FakePrior()
    step = dict(prompt="make it red", step=STEP, seed=SEED)
    particles = Particles(latents, source_latents=source, condition=image_cond)
    by_name = Guidance("random_noise", "identity", guidance_scale=7.5, image_guidance_scale=1.5)(
        prior, particles, **step
    )
    assert torch.equal(by_name.gradients, sds.gradients)
    mean = Guidance(
        "random_noise", IdentityKernel(normalize_by_count=True), guidance_scale=7.5, image_guidance_scale=1.5
    )(prior, particles, **step)
    torch.testing.assert_close(mean.gradients, sds.gradients / SHAPE[0], rtol=1e-6, atol=0)
    _, csd = run("csd", latents, source, image_cond)
    assert not torch.allclose(csd.gradients, sds.gradients / SHAPE[0])  # RBF: the particles interact


def test_bad_configuration_and_calls():
    with pytest.raises(ValueError, match="baseline must be one of"):
        Guidance("vsd", "rbf", **SCALES)
    with pytest.raises(ValueError, match="unknown kernel"):
        Guidance("random_noise", "gaussian", **SCALES)
    for baseline, kernel in [("random_noise", IdentityKernel(normalize_by_count=True)), ("source_branch", RBFKernel())]:
        with pytest.raises(ValueError, match="official_scaling reproduces the official panorama path"):
            Guidance(baseline, kernel, official_scaling=True, **SCALES)
    with pytest.raises(ValueError, match="official_scaling"):
        Guidance(
            "source_branch", IdentityKernel(), official_scaling=True, **SCALES
        )  # SDS's normaliser 1, not the ablation's
    assert preset("csd_edit_no_svgd", official_scaling=True).official_scaling
    latents, source, image_cond = inputs()
    with pytest.raises(ValueError, match=r"needs source_latents.*\(4, 4, 8, 8\)"):
        preset("csd_edit")(FakePrior(), Particles(latents, condition=image_cond), prompt="p", step=0, seed=0)
    with pytest.raises(ValueError, match=r"source_latents must match"):
        preset("csd_edit")(
            FakePrior(),
            Particles(latents, source_latents=source[:2], condition=image_cond),
            prompt="p",
            step=0,
            seed=0,
        )
    with pytest.raises(ValueError, match=r"assumes 100 training timesteps.*\(1000,\)"):
        preset("csd", schedule=TimestepSchedule(num_train_timesteps=100))(
            FakePrior(), latents, prompt="p", step=0, seed=0
        )
    with pytest.raises(ValueError, match="do not fit"):
        preset("csd")(FakePrior(), latents, prompt="p", step=0, seed=0, shard=Shard(offset=2, total=5))


def test_negative_and_source_prompts_reach_the_prior():
    latents, source, image_cond = inputs()
    prior, _ = run("csd_edit", latents, source, image_cond, negative_prompt="blurry", source_prompt="a photo")
    cond = prior.calls[0]["cond"]
    assert cond.negative_prompt == "blurry" and cond.source_prompt == "a photo"
    prior, _ = run("csd_edit", latents, source, image_cond)
    assert prior.calls[0]["cond"].negative_prompt == "" and prior.calls[0]["cond"].source_prompt == ""


def test_a_source_prompt_without_a_source_branch_is_refused():
    with pytest.raises(ValueError, match="source_prompt conditions the source branch"):
        preset("csd", source_prompt="a photo")


def test_the_schedules_step_scale_multiplies_the_step_and_one_is_the_official_step_bit_for_bit():
    latents, source, image_cond = inputs()
    _, official = run("csd_edit", latents, source, image_cond)
    _, one = run("csd_edit", latents, source, image_cond, schedule=TimestepSchedule(step_scale=1.0))
    _, fast = run("csd_edit", latents, source, image_cond, schedule=TimestepSchedule(step_scale=2.0))
    assert torch.equal(one.gradients, official.gradients) and torch.equal(one.loss, official.loss)
    assert fast.t == official.t  # same t and ε: only the step changes
    assert torch.equal(fast.gradients, 2.0 * official.gradients)  # a power of two: exact in float
    latents.grad = None
    fast.loss.backward()
    assert torch.equal(latents.grad, fast.gradients)
    assert repr(TimestepSchedule()) == repr(TimestepSchedule(step_scale=1.0))
    for bad in (0.0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="step_scale"):
            TimestepSchedule(step_scale=bad)


def test_unet_rows_count_what_a_learned_prior_would_run():
    latents, source, image_cond = inputs()
    n = SHAPE[0]
    # InstructPix2Pix: 3 target rows per particle, CSD-Edit's source branch 2 more (benchmarks/bench_priors.py)
    assert run("csd_edit", latents, source, image_cond)[1].unet_rows == 5 * n
    assert run("csd", latents, source, image_cond)[1].unet_rows == 3 * n
    guidance = preset("sds", guidance_scale=7.5)
    assert guidance(FakePrior(), Particles(latents), prompt="p", step=STEP, seed=SEED).unet_rows == 2 * n
    assert guidance.unet_rows(n, image_conditioned=False, prompt=["a", "b"]) == 4 * n
    assert preset("csd_edit", source_prompt="a photo").unet_rows(n, image_conditioned=False) == 4 * n


def test_the_step_scale_starts_after_step_scale_from_of_the_horizon():
    latents, source, image_cond = inputs()
    particles = Particles(latents, source_latents=source, condition=image_cond)

    def step(schedule, at):
        guidance = preset("csd_edit", guidance_scale=7.5, schedule=schedule)
        return guidance(FakePrior(), particles, prompt="make it red", step=at, seed=SEED).gradients

    late = TimestepSchedule(step_scale=2.0, step_scale_from=0.5, max_steps=2 * STEP + 2)  # from step STEP + 1
    assert (late.step_factor(STEP), late.step_factor(STEP + 1)) == (1.0, 2.0)
    assert torch.equal(step(late, STEP), step(TimestepSchedule(), STEP))  # before: the official step
    assert torch.equal(step(late, STEP + 1), 2.0 * step(TimestepSchedule(), STEP + 1))
    with pytest.raises(ValueError, match="needs a horizon"):
        TimestepSchedule(step_scale=2.0, step_scale_from=0.5).step_factor(0)
    assert TimestepSchedule(step_scale=1.0, step_scale_from=0.5).step_factor(0) == 1.0  # no horizon needed
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="step_scale_from"):
            TimestepSchedule(step_scale_from=bad)
