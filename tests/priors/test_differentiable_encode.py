"""``encode(images, differentiable=True)`` keeps the autograd graph through the VAE (generation tasks: a loss on
the latents reaches the renders), on the whole image and on the tiled VAE path, checked against central finite
differences on the tiny VAE in float64.

For a scalar f(z) = Σ c ⊙ z + ½ Σ z² of z = encode(x), autograd's directional derivative ⟨∇_x f, v⟩ is compared
with one Richardson step over central differences, R(h) = (4 D(h/2) − D(h)) / 3, D(h) = (f(x + hv) − f(x − hv)) / 2h.

Tolerance, from the magnitudes of this computation only:

* rounding: ``encode`` returns float32 (the prior contract), so each f(x ± hv) carries the rounding of every
  latent, at most B = ½ eps32 Σ |c_i + z_i| |z_i|; R combines four values with weights whose absolute sum is
  (4·2/h + 2/(2h)) / 3 = 3/h, so its rounding error is at most 3B/h;
* truncation: after one Richardson step it is O(h⁴). It is a property of the seeded weights, not of the CPU;
  at h = 4e-3 it measures ≤ 2e-5 relative on these VAEs, and we allow ten times that.

A gradient that skipped the VAE (no graph), lost a tile, or double-counted an overlap misses by O(1).
"""

import pytest
import torch

from csd_exp.priors import tiny_stable_diffusion_prior

from ._helpers import FLOAT32_EPS

STEP = 4e-3
TRUNCATION = 2e-4  # relative allowance for the O(h⁴) remainder (ten times the measured 2e-5)


def smooth_images(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, height // 4, width // 4, generator=generator, dtype=torch.float64)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def tiled_prior64(tiny_cache):
    """The tiny float64 pipeline with the tiled VAE: 64-latent-px tiles (128 image px) at stride 32."""
    return tiny_stable_diffusion_prior(tiny_cache, torch_dtype="float64", vae_tile_stride=32)


def check_against_finite_differences(prior, images, seed, make_generator=None):
    generator = torch.Generator().manual_seed(seed)

    def encode(x, differentiable=False):
        return prior.encode(x, None if make_generator is None else make_generator(), differentiable=differentiable)

    latents = encode(images).double()
    weights = torch.randn(latents.shape, generator=generator, dtype=torch.float64)

    def scalar(z):
        z = z.double()
        return (weights * z).sum() + 0.5 * z.square().sum()

    leaf = images.clone().requires_grad_(True)
    with torch.no_grad():  # differentiable=True must build the graph even inside a no_grad caller
        encoded = encode(leaf, differentiable=True)
    assert encoded.requires_grad and encoded.dtype == torch.float32
    (gradient,) = torch.autograd.grad(scalar(encoded), leaf)
    rounding = 0.5 * FLOAT32_EPS * float(((weights + latents).abs() * latents.abs()).sum())
    for _ in range(2):
        direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)
        expected = float((gradient * direction).sum())

        def central(h, direction=direction):
            forward = float(scalar(encode(images + h * direction)))
            return (forward - float(scalar(encode(images - h * direction)))) / (2 * h)

        richardson = (4 * central(STEP / 2) - central(STEP)) / 3
        tolerance = 3 * rounding / STEP + TRUNCATION * abs(expected)
        assert abs(expected) > 10 * tolerance  # the check can fail: the derivative stands well above the noise
        assert abs(richardson - expected) <= tolerance, (richardson, expected, tolerance)


def test_whole_image_encode_gradient_matches_finite_differences(sd_prior64):
    check_against_finite_differences(sd_prior64, smooth_images(16, 16, seed=0), seed=1)


def test_sampled_encode_gradient_matches_finite_differences(sd_prior64):
    """The posterior sample mean + std · noise with the noise fixed by the generator: differentiable in both."""
    images = smooth_images(16, 16, seed=2)
    check_against_finite_differences(
        sd_prior64, images, seed=3, make_generator=lambda: torch.Generator().manual_seed(7)
    )


def test_tiled_encode_gradient_matches_finite_differences(tiled_prior64):
    """136 px wide = 68 latent px: two 64-latent-px tiles at 0 and 4 (flush with the edge), overlapping by 60."""
    check_against_finite_differences(tiled_prior64, smooth_images(16, 136, seed=4), seed=5)


def test_default_encode_builds_no_graph(sd_prior64):
    images = smooth_images(16, 16, seed=6).requires_grad_(True)
    assert not sd_prior64.encode(images).requires_grad


def test_official_source_encode_keeps_its_graph_under_no_grad(tiny_cache):
    """InstructPix2Pix's official seeded source latents: the same finite-difference check (the draw is re-seeded
    every call, so the sampled noise is fixed and the map is smooth)."""
    from csd_exp.priors import tiny_instruct_pix2pix_prior

    prior = tiny_instruct_pix2pix_prior(tiny_cache, torch_dtype="float64", official_source_latents=True)
    check_against_finite_differences(prior, smooth_images(16, 16, seed=8), seed=9)
