"""The diffusers priors' VAE options on the tiny pipeline: tiled encode / decode (``vae_tile_stride``, the
official ``--stride_vae``) and the consistency decoder (``decoder=consistency``, ``--consistency_decoder``).

The tiny VAE has 2 image px per latent px, so a 64-latent-px tile is 128 image px here (512 for SD's VAE).
"""

import pytest
import torch
from diffusers import ConsistencyDecoderVAE
from hydra.utils import instantiate
from omegaconf import OmegaConf

from csd_exp.priors import tiny_instruct_pix2pix_prior, tiny_stable_diffusion_prior
from csd_exp.priors.tiny import build_tiny_consistency_decoder
from csd_exp.priors.vae_tiles import TILE_LATENT, tile_starts

from ._helpers import FLOAT32_EPS, seeded_images, seeded_normal
from .test_configs import load


def smooth_images(n, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, height // 16, width // 16, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def tiled_prior(tiny_cache):
    return tiny_instruct_pix2pix_prior(tiny_cache, vae_tile_stride=32)


@pytest.fixture(scope="module")
def consistency_path(tmp_path_factory):
    return str(build_tiny_consistency_decoder(tmp_path_factory.mktemp("consistency") / "decoder"))


@pytest.fixture(scope="module")
def consistency_prior(tiny_cache, consistency_path):
    return tiny_instruct_pix2pix_prior(tiny_cache, decoder="consistency", decoder_path=consistency_path)


# -- tiles -----------------------------------------------------------------------------------------
def test_tile_grid_is_the_official_one_plus_a_flush_tile_where_it_stops_short():
    # Official csdedit.py L239–253: starts 0, s, …, ((side − 64) // s) · s.
    for side in (64, 80, 128, 240):
        assert tile_starts(side, 16) == [16 * i for i in range((side - TILE_LATENT) // 16 + 1)]
    assert tile_starts(128, 48) == [0, 48, 64]  # the official grid [0, 48] leaves 112..127 uncovered
    assert tile_starts(40, 16) == [0]  # a side shorter than a tile is one tile of that side


@pytest.mark.parametrize("size", [(16, 16), (128, 128)])
def test_an_image_within_one_tile_is_encoded_and_decoded_exactly_as_whole(ip2p_prior, tiled_prior, size):
    """One tile is the whole tensor: the VAE sees the same input, the canvas adds it to zeros and divides by
    a count of 1, both exact in float32, so any difference at all would be a bookkeeping bug."""
    images = smooth_images(2, *size, seed=1)
    latents = ip2p_prior.encode(images)
    assert torch.equal(tiled_prior.encode(images), latents)
    assert torch.equal(tiled_prior.encode_image_condition(images), ip2p_prior.encode_image_condition(images))
    sampled = tiled_prior.encode(images, torch.Generator().manual_seed(3))
    assert torch.equal(sampled, ip2p_prior.encode(images, torch.Generator().manual_seed(3)))
    assert torch.equal(tiled_prior.decode(latents), ip2p_prior.decode(latents))


def tile_average(fn, x, starts_h, starts_w, in_per_latent, out_per_latent):
    """Independent re-derivation: float64 mean of ``fn`` over the listed 64-latent-px tiles, tile by tile."""
    tile = TILE_LATENT
    outputs = []
    for h0 in starts_h:
        for w0 in starts_w:
            crop = x[
                ..., h0 * in_per_latent : (h0 + tile) * in_per_latent, w0 * in_per_latent : (w0 + tile) * in_per_latent
            ]
            outputs.append(((h0, w0), fn(crop).double()))
    height = x.shape[-2] // in_per_latent * out_per_latent
    width = x.shape[-1] // in_per_latent * out_per_latent
    value = torch.zeros(*outputs[0][1].shape[:-2], height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)
    for (h0, w0), out in outputs:
        rows = slice(h0 * out_per_latent, (h0 + tile) * out_per_latent)
        cols = slice(w0 * out_per_latent, (w0 + tile) * out_per_latent)
        value[..., rows, cols] += out
        count[rows, cols] += 1
    return value / count, outputs, count


def test_tiled_encode_and_decode_of_a_larger_image(ip2p_prior, tiled_prior):
    """128 x 256 px = 64 x 128 latent px, stride 32: tiles at w = 0, 32, 64 (official grid, one row).

    Asserted: (1) the shape; (2) the result equals an independent per-tile average (float64, from float32
    tiles: at most 2 overlapping tiles, so 2 float32 roundings); (3) closeness to the whole-image VAE: at
    every pixel the tiled result is at least as close as the mean of its covering tiles' own outputs
    (an average is a convex combination), and a relative L2 difference below 0.5 overall. Why not tighter:
    the VAE's GroupNorm statistics and mid-block self-attention see one tile instead of the whole image, so
    even a single tile differs from the whole image by tens of percent on random weights (here tiled vs
    whole: 0.14 relative for encode, 0.08 for decode; 0.3 on other images) and no blend of tiles can undo
    that; the official code's tiles have the same property.
    """
    vae, s, f = ip2p_prior.vae, ip2p_prior.vae_scaling_factor, ip2p_prior.latent_scale_factor
    images = smooth_images(1, 128, 256, seed=2)
    whole = ip2p_prior.encode(images)
    tiled = tiled_prior.encode(images)
    assert tiled.shape == whole.shape == (1, 4, 64, 128) and tiled.dtype == torch.float32

    with torch.no_grad():
        expected, tiles, count = tile_average(
            lambda crop: vae.encode(2 * crop - 1).latent_dist.mode() * s, images, [0], [0, 32, 64], f, 1
        )
    atol = 2 * FLOAT32_EPS * float(expected.abs().max())
    torch.testing.assert_close(tiled.double(), expected, atol=atol, rtol=0)

    def assert_close_to_whole(result, whole, tiles, count, per_latent):
        error = (result.double() - whole.double()).abs()
        bound = torch.zeros_like(error)
        for (h0, w0), out in tiles:
            rows = slice(h0 * per_latent, (h0 + TILE_LATENT) * per_latent)
            cols = slice(w0 * per_latent, (w0 + TILE_LATENT) * per_latent)
            bound[..., rows, cols] += (out - whole.double()[..., rows, cols]).abs()
        assert bool((error <= bound / count + 4 * FLOAT32_EPS * float(whole.abs().max())).all())
        assert float(error.norm() / whole.double().norm()) < 0.5

    assert_close_to_whole(tiled, whole, tiles, count, 1)

    decoded = tiled_prior.decode(whole)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    with torch.no_grad():
        expected, tiles, count = tile_average(lambda crop: vae.decode(crop / s).sample, whole, [0], [0, 32, 64], 1, f)
    expected = ((expected + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded.double(), expected, atol=4 * FLOAT32_EPS, rtol=0)
    whole_decoded = ip2p_prior.decode(whole)
    # Unclamped tiles in the bound: clamping to [0, 1] only moves a value towards whole_decoded ∈ [0, 1].
    tiles = [(start, (out + 1) / 2) for start, out in tiles]
    assert_close_to_whole(decoded, whole_decoded, tiles, count, f)


def test_tiled_samples_are_drawn_tile_by_tile_from_one_generator(ip2p_prior, tiny_cache):
    """As the official encode_latents_stride: each tile's posterior sample, row-major, then the average."""
    prior = tiny_instruct_pix2pix_prior(
        tiny_cache, vae_tile_stride=48, official_source_latents=True, official_condition_latents=True, condition_seed=5
    )
    images = smooth_images(1, 128, 256, seed=3)
    vae, s = ip2p_prior.vae, ip2p_prior.vae_scaling_factor
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected, _, _ = tile_average(
            lambda crop: vae.encode(2 * crop - 1).latent_dist.sample(generator=generator) * s,
            images,
            [0],
            [0, 48, 64],
            ip2p_prior.latent_scale_factor,
            1,
        )
    source = prior.encode(images)
    torch.testing.assert_close(source.double(), expected, atol=2 * FLOAT32_EPS * float(expected.abs().max()), rtol=0)
    assert torch.equal(prior.encode_image_condition(images), source)


def test_differentiable_tiled_encode_reaches_the_images(tiled_prior):
    images = smooth_images(1, 128, 160, seed=4).requires_grad_(True)
    tiled_prior.encode(images, differentiable=True).square().sum().backward()
    assert images.grad is not None and bool((images.grad.abs().sum(dim=(0, 1, 2)) > 0).all())


@pytest.mark.parametrize("stride", [0, -16, TILE_LATENT + 1, 16.0, True, "16"])
def test_bad_tile_strides_name_the_fix(tiny_cache, stride):
    with pytest.raises(ValueError, match=r"vae_tile_stride=.* is not allowed: expected null .* integer in \[1, 64\]"):
        tiny_instruct_pix2pix_prior(tiny_cache, vae_tile_stride=stride)


def test_stable_diffusion_prior_tiles_too(sd_prior, tiny_cache):
    tiled = tiny_stable_diffusion_prior(tiny_cache, vae_tile_stride=16)
    images = smooth_images(1, 128, 160, seed=5)
    assert tiled.encode(images).shape == sd_prior.encode(images).shape == (1, 4, 64, 80)
    assert not torch.equal(tiled.encode(images), sd_prior.encode(images))


# -- consistency decoder ---------------------------------------------------------------------------
def test_consistency_decoder_decodes_with_a_fixed_seed_and_leaves_encoding_to_the_vae(
    ip2p_prior, consistency_prior, consistency_path
):
    images = seeded_images(2, seed=6)
    assert torch.equal(consistency_prior.encode(images), ip2p_prior.encode(images))
    latents = ip2p_prior.encode(images)
    decoded = consistency_prior.decode(latents)
    reference = ConsistencyDecoderVAE.from_pretrained(consistency_path).eval()
    with torch.no_grad():
        # The official code feeds z / 0.18215 (csdedit.py L224–226); the decoder multiplies it back itself.
        raw = reference.decode(latents / ip2p_prior.vae_scaling_factor, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoded, ((raw.sample.float() + 1) / 2).clamp(0, 1))
    assert torch.equal(consistency_prior.decode(latents), decoded)  # a function of the latents
    other = consistency_prior.decode(latents, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, decoded)
    assert not torch.allclose(decoded, ip2p_prior.decode(latents), atol=1e-2)


def test_consistency_decoder_with_tiles(tiny_cache, consistency_path):
    prior = tiny_instruct_pix2pix_prior(
        tiny_cache, decoder="consistency", decoder_path=consistency_path, vae_tile_stride=32
    )
    decoded = prior.decode(seeded_normal(1, 4, 64, 96, seed=7) * 0.2)
    assert decoded.shape == (1, 3, 128, 192) and 0 <= float(decoded.min()) and float(decoded.max()) <= 1


def test_tiny_config_instantiates_with_the_new_keys(tiny_cache, consistency_path):
    config = load("tiny_ip2p", tiny_cache)
    config = OmegaConf.merge(
        config,
        {
            "decoder": "consistency",
            "decoder_path": consistency_path,
            "vae_tile_stride": 16,
            "official_source_latents": True,
            "official_condition_latents": True,
            "condition_seed": 3,
        },
    )
    prior = instantiate(config)
    assert prior.consistency_decoder is not None and prior.vae_tile_stride == 16
    images = seeded_images(1, seed=8)
    assert torch.equal(prior.encode(images), prior.encode_image_condition(images))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(decoder="consistency"), ValueError, r"model\.decoder=consistency needs model\.decoder_path"),
        (dict(decoder="gan"), ValueError, r"decoder='gan' is not allowed: input should be 'vae' or 'consistency'"),
        (dict(decoder_path="/some/folder"), ValueError, r"only read with model\.decoder=consistency"),
        (
            dict(decoder="consistency", decoder_path="csd-exp-tests/no-such-decoder"),
            OSError,
            r"offline.*model\.decoder_path=/path/to/folder",
        ),
    ],
)
def test_bad_decoder_options_name_the_fix(tiny_cache, monkeypatch, kwargs, error, match):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(error, match=match):
        tiny_instruct_pix2pix_prior(tiny_cache, **kwargs)


def test_consistency_decoder_for_another_vae_is_an_error(tiny_cache, tmp_path):
    mismatched = ConsistencyDecoderVAE(
        sample_size=32,
        encoder_block_out_channels=(32, 32, 64),  # 4x: the tiny VAE is 2x
        encoder_down_block_types=("DownEncoderBlock2D",) * 3,
        encoder_layers_per_block=1,
        decoder_block_out_channels=(32, 64),
        decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2,
        decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
        decoder_layers_per_block=1,
    )
    mismatched.save_pretrained(tmp_path / "decoder")
    with pytest.raises(ValueError, match="decodes 4-channel latents at 4x"):
        tiny_instruct_pix2pix_prior(tiny_cache, decoder="consistency", decoder_path=str(tmp_path / "decoder"))
