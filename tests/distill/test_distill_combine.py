"""Combiners: CSD reduces to SDS, matches Eq. 8 written out, is reproducible; the surrogate loss is exact."""

import pytest
import torch

from csd_exp.distill import (
    IdentityKernel,
    RBFKernel,
    TimestepSchedule,
    csd_gradient,
    draw_step_randomness,
    sds_gradient,
    surrogate_loss,
)

ALPHAS_CUMPROD_T = 0.6


def particles(count, seed=0, shape=(4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *shape, generator=generator), torch.randn(count, *shape, generator=generator)


def test_single_particle_csd_is_sds_exactly():
    residuals, noisy = particles(1)
    assert torch.equal(
        csd_gradient(residuals, noisy, "rbf", ALPHAS_CUMPROD_T), sds_gradient(residuals, ALPHAS_CUMPROD_T)
    )


@pytest.mark.parametrize("count", [1, 3, 16])
def test_identity_kernel_is_sds_for_any_count(count):
    residuals, noisy = particles(count, seed=count)
    sds = sds_gradient(residuals, ALPHAS_CUMPROD_T)
    assert torch.equal(csd_gradient(residuals, noisy, IdentityKernel(), ALPHAS_CUMPROD_T), sds)
    assert torch.equal(csd_gradient(residuals, noisy, "identity", ALPHAS_CUMPROD_T), sds)
    ablation = csd_gradient(residuals, noisy, IdentityKernel(normalize_by_count=True), ALPHAS_CUMPROD_T)
    torch.testing.assert_close(ablation, sds / count, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(sds, (1 - ALPHAS_CUMPROD_T) * residuals)


def test_csd_matches_eq8_written_out():
    residuals, noisy = particles(5, seed=1)
    noisy = noisy * 0.3  # particles close enough for the kernel to matter
    gradients, diagnostics = csd_gradient(
        residuals, noisy, RBFKernel(compute_dtype=torch.float64), ALPHAS_CUMPROD_T, return_diagnostics=True
    )
    flat_x, flat_delta = noisy.double().flatten(1), residuals.double().flatten(1)
    distances = torch.cdist(flat_x, flat_x) ** 2
    gamma = torch.log(torch.tensor(6.0, dtype=torch.float64)) / distances.flatten().sort().values[12]
    weights = torch.exp(-gamma * distances)
    expected = torch.zeros_like(flat_delta)
    for i in range(5):
        for j in range(5):
            expected[i] += weights[i, j] * flat_delta[j] - 2 * gamma * weights[i, j] * (flat_x[i] - flat_x[j])
    expected *= (1 - ALPHAS_CUMPROD_T) / 5
    assert gradients.dtype == torch.float64
    torch.testing.assert_close(gradients.flatten(1), expected, atol=1e-10, rtol=1e-10)
    others = weights.sum(1) - 1
    assert diagnostics["w_t"] == pytest.approx(1 - ALPHAS_CUMPROD_T)
    assert diagnostics["gamma"] == pytest.approx(gamma.item())
    assert diagnostics["kernel_offdiag_mean"] == pytest.approx(others.sum().item() / 20)
    assert diagnostics["kernel_self_weight_ratio"] == pytest.approx(others.mean().item())
    assert diagnostics["grad_norm"] == pytest.approx(expected.norm(dim=1).mean().item())
    assert diagnostics["residual_norm"] == pytest.approx(flat_delta.norm(dim=1).mean().item())
    assert 0 < diagnostics["repulsion_ratio"] < 1


def test_same_seed_gives_bit_identical_gradients():
    schedule = TimestepSchedule()
    alphas_cumprod = torch.linspace(0.9999, 0.005, 1000)
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def gradients(step):
        t, noise = draw_step_randomness(7, step, schedule, 6, latents.shape[1:])
        alpha_bar = alphas_cumprod[t]
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        return csd_gradient(torch.tanh(noisy) - noise, noisy, "rbf", alpha_bar)

    assert torch.equal(gradients(11), gradients(11))
    assert not torch.equal(gradients(11), gradients(12))


def test_surrogate_loss_gradient_is_the_combiner_output():
    residuals, noisy = particles(4, seed=5)
    gradients = csd_gradient(residuals, noisy, "rbf", ALPHAS_CUMPROD_T)
    theta = (noisy * 0.5 + 1.0).requires_grad_(True)
    latents = theta * 1.0  # a non-leaf, as when latents are crops of a canvas
    loss = surrogate_loss(latents, gradients)
    loss.backward()
    assert torch.equal(theta.grad, gradients)
    assert loss.item() == pytest.approx(0.5 * gradients.square().sum().item(), rel=1e-6)


def test_bad_inputs_name_argument_and_shape():
    residuals, noisy = particles(3)
    with pytest.raises(ValueError, match=r"residuals \(3, 4, 8, 8\) and noisy_latents \(3, 4, 8, 4\)"):
        csd_gradient(residuals, noisy[..., :4], "rbf", ALPHAS_CUMPROD_T)
    with pytest.raises(ValueError, match=r"residuals holds no particles.*\(0, 4, 8, 8\)"):
        csd_gradient(residuals[:0], noisy[:0], "rbf", ALPHAS_CUMPROD_T)
    broken = noisy.clone()
    broken[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"noisy_latents contains NaN or inf.*\(3, 4, 8, 8\)"):
        csd_gradient(residuals, broken, "rbf", ALPHAS_CUMPROD_T)
    with pytest.raises(ValueError, match=r"residuals contains NaN"):
        sds_gradient(broken * float("nan"), ALPHAS_CUMPROD_T)
    with pytest.raises(ValueError, match=r"alphas_cumprod_t must be a scalar.*\(2,\)"):
        csd_gradient(residuals, noisy, "rbf", torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"alphas_cumprod_t must lie in \[0, 1\]"):
        sds_gradient(residuals, 1.5)
    with pytest.raises(ValueError, match=r"latents \(3, 4, 8, 8\) and gradients \(2, 4, 8, 8\)"):
        surrogate_loss(noisy, residuals[:2])
