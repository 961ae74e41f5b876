"""Several prompts in one guidance step (region editing, App. B.1): Δ_i = Σ_k w_ik Δ_ik, the rest unchanged."""

import pytest
import torch
from distill_fakes import FakePrior

from csd_exp.distill import Guidance, IdentityKernel, Particles, RBFKernel, Shard
from csd_exp.priors import ExactScorePrior

SEED, STEP = 3, 11
POP_ART, NIGHT = "turn it into a pop-art painting", "make it night"


def particles(n=4, size=8):
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    latents = (source + 0.05 * torch.randn(n, 3, size, size, generator=generator)).requires_grad_(True)
    return latents, source


def step(guidance, prior, latents, source, prompt, weights=None, **kwargs):
    particles = Particles(latents, source_latents=source, condition=source, prompt_weights=weights)
    return guidance(prior, particles, prompt=prompt, step=STEP, seed=SEED, **kwargs)


def csd_edit():
    return Guidance("source_branch", RBFKernel(), guidance_scale=1.5, image_guidance_scale=1.5)


def test_one_prompt_as_a_list_or_with_unit_weights_is_the_single_prompt_path_bit_for_bit():
    latents, source = particles()
    prior = ExactScorePrior()
    alone = step(csd_edit(), prior, latents, source, POP_ART)
    for prompt, weights in (([POP_ART], None), ([POP_ART], torch.ones(4, 1))):
        out = step(csd_edit(), prior, latents, source, prompt, weights)
        assert torch.equal(out.gradients, alone.gradients) and out.t == alone.t
        assert out.diagnostics == alone.diagnostics


@pytest.mark.parametrize("column", [0, 1])
def test_weights_all_on_one_of_two_prompts_equal_that_prompt_alone(column):
    latents, source = particles()
    prior = ExactScorePrior()
    weights = torch.zeros(4, 2)
    weights[:, column] = 1.0
    mixed = step(csd_edit(), prior, latents, source, [POP_ART, NIGHT], weights)
    alone = step(csd_edit(), prior, latents, source, [POP_ART, NIGHT][column])
    assert torch.equal(mixed.gradients, alone.gradients) and mixed.diagnostics == alone.diagnostics


def test_a_mixture_keeps_t_eps_and_the_kernel_so_it_mixes_the_single_prompt_gradients():
    # With the same weights for every particle and sum 1, (w/N)(K Σ_k w_k Δ_k + R) = Σ_k w_k (w/N)(K Δ_k + R).
    latents, source = particles()
    prior = ExactScorePrior()
    weights = torch.tensor([[0.3, 0.7]]).expand(4, 2)
    mixed = step(csd_edit(), prior, latents, source, [POP_ART, NIGHT], weights)
    first, second = (step(csd_edit(), prior, latents, source, p) for p in (POP_ART, NIGHT))
    assert mixed.t == first.t == second.t
    assert mixed.diagnostics["gamma"] == first.diagnostics["gamma"]  # the bandwidth sees the same x_t
    torch.testing.assert_close(mixed.gradients, 0.3 * first.gradients + 0.7 * second.gradients, rtol=1e-5, atol=1e-6)


def test_per_particle_weights_mix_each_particles_residual():
    latents, source = particles()
    prior = ExactScorePrior()
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.0, 1.0]])
    sds = lambda: Guidance("source_branch", IdentityKernel(), guidance_scale=1.5, image_guidance_scale=1.5)
    mixed = step(sds(), prior, latents, source, [POP_ART, NIGHT], weights)
    first, second = (step(sds(), prior, latents, source, p) for p in (POP_ART, NIGHT))
    expected = weights[:, :1, None, None] * first.gradients + weights[:, 1:, None, None] * second.gradients
    torch.testing.assert_close(mixed.gradients, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(mixed.gradients[0], first.gradients[0])  # its one prompt's call ran on every particle


def test_one_call_per_prompt_the_most_used_on_every_particle_with_the_source_rows():
    latents, source = particles()
    prior = FakePrior()
    weights = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    step(csd_edit(), prior, latents, source, ["a", "b"], weights)
    first, second = prior.calls
    assert first["cond"].prompt == "a" and first["noisy"].shape[0] == 4 and first["source_noisy"] is not None
    assert second["cond"].prompt == "b" and second["source_noisy"] is None
    torch.testing.assert_close(second["noisy"], first["noisy"][[0, 2]])  # only the particles that weight "b"
    assert torch.equal(second["cond"].image_cond, source[[0, 2]])


def test_a_shard_mixes_its_own_rows_like_the_whole_step():
    latents, source = particles()
    prior = ExactScorePrior()
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.0, 1.0]])
    sds = Guidance("source_branch", IdentityKernel(), guidance_scale=1.5, image_guidance_scale=1.5)
    whole = step(sds, prior, latents, source, [POP_ART, NIGHT], weights)
    shard = sds(
        prior,
        Particles(latents[2:], source_latents=source[2:], condition=source[2:], prompt_weights=weights[2:]),
        prompt=[POP_ART, NIGHT],
        step=STEP,
        seed=SEED,
        shard=Shard(offset=2, total=4),
    )
    torch.testing.assert_close(shard.gradients, whole.gradients[2:], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "prompt, weights, needle",
    [
        (["a", "b"], None, r"prompt_weights of shape \(4, 2\)"),
        (["a", "b"], torch.ones(4, 3), r"shape \(4, 2\)"),
        (["a", "b"], torch.full((4, 2), float("nan")), "finite"),
        (["a", "b"], torch.zeros(4, 2), "all zero"),
        ([], None, "non-empty"),
    ],
)
def test_bad_prompt_weights_are_refused(prompt, weights, needle):
    latents, source = particles()
    with pytest.raises(ValueError, match=needle):
        step(csd_edit(), FakePrior(), latents, source, prompt, weights)


def test_an_unknown_prompt_is_the_priors_own_error():
    latents, source = particles()
    weights = torch.tensor([[0.5, 0.5]]).expand(4, 2)
    with pytest.raises(ValueError, match="does not know the instruction 'make it purple'"):
        step(csd_edit(), ExactScorePrior(), latents, source, [POP_ART, "make it purple"], weights)
