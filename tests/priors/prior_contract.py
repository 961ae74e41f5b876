"""The contract every ScorePrior keeps (as diffusers' PipelineTesterMixin is for pipelines).

A test class for a prior subclasses :class:`PriorContract` and provides the ``prior`` fixture (and,
where batching tests need it, ``prior64``: the same weights in float64); every check below then runs on
that prior. A new prior gets the whole contract with one class of a few lines.
"""

from __future__ import annotations

import pytest
import torch

from csd_exp.priors import ModeOracle, ScorePrior

from ._helpers import FLOAT32_EPS, seeded_images, seeded_normal

PROMPT = "turn it into a pop-art painting"
T = 300


class PriorContract:
    """Checks of the ScorePrior protocol (csd_exp/priors/base.py); subclasses provide ``prior``."""

    image_size = 16
    #: ω_y, ω_s of the guided predictions (a run passes conf/config.yaml's; a prior's class may override)
    scales = dict(guidance_scale=7.5, image_guidance_scale=1.5)

    def _images(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        return seeded_images(n, size=self.image_size, seed=seed)

    def _condition(self, prior, images):
        return prior.encode_image_condition(images) if prior.supports_image_condition else None

    def test_is_a_score_prior_with_a_valid_schedule(self, prior):
        assert isinstance(prior, ScorePrior)
        alphas = prior.alphas_cumprod
        assert alphas.dtype == torch.float32 and alphas.shape == (prior.num_train_timesteps,)
        assert bool((alphas[1:] < alphas[:-1]).all()) and 0 < float(alphas[-1]) < float(alphas[0]) < 1
        assert prior.default_resize_policy in ("official", "short_side")

    def test_latent_space_shapes_and_dtypes(self, prior):
        images = self._images()
        latents = prior.encode(images)
        f = prior.latent_scale_factor
        assert latents.shape == (2, prior.latent_channels, self.image_size // f, self.image_size // f)
        assert latents.dtype == torch.float32 and not latents.requires_grad
        decoded = prior.decode(latents)
        assert decoded.shape == images.shape and decoded.dtype == torch.float32
        assert 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0

    def test_differentiable_encode_reaches_the_images(self, prior):
        images = self._images().requires_grad_(True)
        prior.encode(images, differentiable=True).square().sum().backward()
        assert images.grad is not None and float(images.grad.abs().sum()) > 0

    def test_add_noise_is_the_forward_process(self, prior):
        latents, noise = seeded_normal(2, 4, 8, 8, seed=1), seeded_normal(2, 4, 8, 8, seed=2)
        alpha_bar = float(prior.alphas_cumprod[T])
        expected = alpha_bar**0.5 * latents + (1 - alpha_bar) ** 0.5 * noise
        tolerance = 4 * FLOAT32_EPS * float(expected.abs().max())  # a few float32 roundings of O(|x|) terms
        torch.testing.assert_close(prior.add_noise(latents, noise, T), expected, atol=tolerance, rtol=0)
        with pytest.raises(ValueError, match="timestep"):
            prior.add_noise(latents, noise, prior.num_train_timesteps)

    def test_guided_noise_has_the_latents_shape_and_is_deterministic(self, prior):
        images = self._images()
        latents = prior.encode(images)
        noisy = prior.add_noise(latents, seeded_normal(*latents.shape, seed=3), T)
        cond = prior.make_conditioning(PROMPT, image_cond=self._condition(prior, images), **self.scales)
        first = prior.predict_noise(noisy, T, cond, source_noisy_latents=noisy)
        again = prior.predict_noise(noisy, T, cond, source_noisy_latents=noisy)
        for prediction in (first.target, first.source):
            assert prediction.shape == noisy.shape and prediction.dtype == torch.float32
            assert bool(torch.isfinite(prediction).all())
        assert torch.equal(first.target, again.target) and torch.equal(first.source, again.source)

    def test_rows_are_independent(self, prior64):
        """A particle's ε̂ does not depend on the other particles in the batch (the kernel alone couples
        them). In float64 batching changes a row by ~1e-15, so this compares bookkeeping on any CPU."""
        images = self._images(3)
        latents = prior64.encode(images)
        noisy = prior64.add_noise(latents, seeded_normal(*latents.shape, seed=4), T)
        cond_all = prior64.make_conditioning(PROMPT, image_cond=self._condition(prior64, images), **self.scales)
        cond_one = prior64.make_conditioning(PROMPT, image_cond=self._condition(prior64, images[1:2]), **self.scales)
        whole = prior64.predict_noise(noisy, T, cond_all).target
        alone = prior64.predict_noise(noisy[1:2], T, cond_one).target
        # Same formula on both sides: only each branch's cast to float32 may differ (one ulp), times the
        # guidance weights' total |1 - w_s| + |w_s - w_y| + |w_y| <= 1 + 2 w_y + 2 w_s.
        spread = 1 + 2 * abs(cond_all.guidance_scale) + 2 * abs(getattr(cond_all, "image_guidance_scale", 0.0))
        atol = FLOAT32_EPS * spread * float(whole.abs().max())
        torch.testing.assert_close(alone, whole[1:2], atol=atol, rtol=0)

    def test_bad_image_sizes_are_refused(self, prior):
        f = prior.latent_scale_factor
        if f > 1:
            with pytest.raises(ValueError):
                prior.validate_image_size(8 * f + 1, 8 * f)
        prior.validate_image_size(8 * f, 8 * f)

    def test_mode_oracle_when_the_prior_knows_its_modes(self, prior):
        if not isinstance(prior, ModeOracle):
            pytest.skip("this prior does not know the modes of its edits")
        images = self._images()
        names = prior.mode_names(PROMPT)
        responsibilities = prior.mode_responsibilities(prior.encode(images), self._condition(prior, images), PROMPT)
        assert responsibilities.shape == (2, len(names))
        torch.testing.assert_close(responsibilities.sum(dim=1), torch.ones(2))
