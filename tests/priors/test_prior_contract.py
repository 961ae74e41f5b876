"""Every prior of the project runs the shared contract (tests/priors/prior_contract.py)."""

import pytest

from csd_exp.priors import ExactScorePrior

from .prior_contract import PriorContract


class TestExactScorePrior(PriorContract):
    @pytest.fixture
    def prior(self):
        return ExactScorePrior()

    @pytest.fixture
    def prior64(self):
        return ExactScorePrior(torch_dtype="float64")


class TestInstructPix2PixPrior(PriorContract):
    @pytest.fixture
    def prior(self, ip2p_prior):
        return ip2p_prior

    @pytest.fixture
    def prior64(self, ip2p_prior64):
        return ip2p_prior64


class TestStableDiffusionPrior(PriorContract):
    @pytest.fixture
    def prior(self, sd_prior):
        return sd_prior

    @pytest.fixture
    def prior64(self, sd_prior64):
        return sd_prior64


class TestInstructPix2PixConsistencyDecoderTiledPrior(PriorContract):
    """The VAE options keep the contract (official_source_latents does not: its seeded draw is per batch,
    so a subset of the images draws other noise, as in the official code; test_official_mode covers it).
    At the contract's 16 px the tiled VAE is one tile; test_vae_options covers larger images."""

    @pytest.fixture(scope="class")
    def prior(self, tiny_cache, tmp_path_factory):
        from csd_exp.priors import tiny_instruct_pix2pix_prior
        from csd_exp.priors.tiny import build_tiny_consistency_decoder

        path = build_tiny_consistency_decoder(tmp_path_factory.mktemp("contract_consistency") / "decoder")
        return tiny_instruct_pix2pix_prior(
            tiny_cache, decoder="consistency", decoder_path=str(path), vae_tile_stride=16
        )

    @pytest.fixture
    def prior64(self, ip2p_prior64):  # the rows test never decodes: the plain float64 pipeline
        return ip2p_prior64


class TestDeepFloydIFPrior(PriorContract):
    """IF stage I on the tiny pipeline (T5 encoder, 3-in / 6-out UNet): pixel space, so latents are the images."""

    scales = dict(guidance_scale=20.0, image_guidance_scale=1.5)  # the paper's Table 3 ω for IF

    @pytest.fixture(scope="class")
    def prior(self, tiny_cache):
        from csd_exp.priors import tiny_deepfloyd_if_prior

        return tiny_deepfloyd_if_prior(tiny_cache)

    @pytest.fixture(scope="class")
    def prior64(self, tiny_cache):
        from csd_exp.priors import tiny_deepfloyd_if_prior

        return tiny_deepfloyd_if_prior(tiny_cache, torch_dtype="float64")


class TestStableDiffusionDepthPrior(PriorContract):
    """SD 2 depth-to-image on the tiny pipeline (5-channel UNet, tiny DPT): the image condition is the depth map."""

    @pytest.fixture(scope="class")
    def prior(self, tiny_cache):
        from csd_exp.priors import tiny_stable_diffusion_depth_prior

        return tiny_stable_diffusion_depth_prior(tiny_cache)

    @pytest.fixture(scope="class")
    def prior64(self, tiny_cache):
        from csd_exp.priors import tiny_stable_diffusion_depth_prior

        return tiny_stable_diffusion_depth_prior(tiny_cache, torch_dtype="float64")
