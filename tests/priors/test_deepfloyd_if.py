"""DeepFloyd IF stage I as a pixel-space prior (csd_exp/priors/deepfloyd_if.py) on the tiny pipeline built offline
(csd_exp/priors/tiny.py: T5 encoder, 3-in / 6-out UNet, IF's DDPM scheduler, a Unigram T5Tokenizer); the shared
prior contract runs in test_prior_contract.py."""

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from csd_exp.distill import FeatureRBFKernel, Guidance, Particles
from csd_exp.priors import DeepFloydIFPrior, ScorePrior, tiny_deepfloyd_if_prior
from csd_exp.priors.tiny import tiny_if_components
from csd_exp.schema.targets import check_target

from ._helpers import branch_rounding_tolerance, seeded_images, seeded_normal

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"
PROMPT = "a DSLR photo of a hamburger, front view"
T = 400


@pytest.fixture(scope="module")
def if_prior(tiny_cache):
    return tiny_deepfloyd_if_prior(tiny_cache)


@pytest.fixture(scope="module")
def if_prior64(tiny_cache):
    return tiny_deepfloyd_if_prior(tiny_cache, torch_dtype="float64")


def test_the_tiny_pipeline_loads_like_a_real_checkpoint(if_prior):
    from transformers import T5EncoderModel, T5Tokenizer

    assert isinstance(if_prior, ScorePrior) and isinstance(if_prior.tokenizer, T5Tokenizer)
    assert isinstance(if_prior.text_encoder, T5EncoderModel) and if_prior.unet.config.out_channels == 6
    assert (if_prior.latent_channels, if_prior.latent_scale_factor) == (3, 1)
    # IF's training schedule (cosine betas), not Stable Diffusion's
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    torch.testing.assert_close(if_prior.alphas_cumprod, expected, atol=0, rtol=0)


def test_encode_and_decode_are_the_pixel_range_map(if_prior):
    images = seeded_images(2, size=16, seed=1).requires_grad_(True)
    latents = if_prior.encode(images, differentiable=True)
    torch.testing.assert_close(latents, 2 * images - 1, atol=0, rtol=0)
    (gradient,) = torch.autograd.grad(latents.sum(), images)
    assert torch.equal(gradient, torch.full_like(images, 2.0))  # a loss on z reaches the renders
    assert not if_prior.encode(images).requires_grad
    torch.testing.assert_close(if_prior.decode(latents.detach()), images.detach(), atol=1e-7, rtol=0)
    assert float(if_prior.decode(torch.full((1, 3, 4, 4), 3.0)).max()) == 1.0


def test_guided_noise_is_the_first_three_unet_channels_with_two_way_guidance(if_prior64):
    """ε̂ = ε(n) + ω [ε(y) − ε(n)] with ε the UNet's first 3 output channels (the rest is IF's variance) and the T5
    states of the lower-cased prompt padded to 77 tokens with its attention mask, computed here by hand."""
    prior, omega = if_prior64, 20.0
    noisy = prior.add_noise(prior.encode(seeded_images(2, size=16, seed=2)), seeded_normal(2, 3, 16, 16, seed=3), T)
    prediction = prior.predict_noise(
        noisy, T, prior.make_conditioning(PROMPT, guidance_scale=omega, image_guidance_scale=1.5)
    ).target

    def states(text):
        tokens = prior.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert int(tokens.attention_mask.sum()) < 77  # padded: the mask matters
        return prior.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state

    with torch.no_grad():
        branches = []
        for text in (PROMPT.lower(), ""):
            hidden = states(text).expand(2, -1, -1)
            out = prior.unet(noisy.double(), torch.tensor(T), encoder_hidden_states=hidden).sample
            assert out.shape[1] == 6
            branches.append(out[:, :3].float())
    expected = branches[1] + omega * (branches[0] - branches[1])
    tolerance = branch_rounding_tolerance(branches, (omega, 1 - omega), formula_operations=3)
    torch.testing.assert_close(prediction, expected, atol=tolerance, rtol=0)
    assert torch.equal(prior.prompt_embeddings(" A dslr PHOTO "), prior.prompt_embeddings("a dslr photo"))


def test_chunked_rows_equal_one_call(tiny_cache, if_prior64):
    chunked = tiny_deepfloyd_if_prior(tiny_cache, torch_dtype="float64", max_rows_per_call=3)
    noisy = seeded_normal(2, 3, 16, 16, seed=4)
    cond = if_prior64.make_conditioning(PROMPT, guidance_scale=7.5, image_guidance_scale=1.5, source_prompt="a photo")
    whole = if_prior64.predict_noise(noisy, T, cond, source_noisy_latents=noisy)
    parts = chunked.predict_noise(
        noisy,
        T,
        chunked.make_conditioning(PROMPT, guidance_scale=7.5, image_guidance_scale=1.5, source_prompt="a photo"),
        source_noisy_latents=noisy,
    )
    assert chunked.unet_calls == 3 and chunked.unet_rows_evaluated == 8  # 4 branches x 2 particles, 3 per call
    tolerance = branch_rounding_tolerance([whole.target, whole.source], (7.5, -6.5), formula_operations=3)
    torch.testing.assert_close(parts.target, whole.target, atol=tolerance, rtol=0)
    torch.testing.assert_close(parts.source, whole.source, atol=tolerance, rtol=0)


def test_a_stage_two_unet_and_image_conditions_are_refused(if_prior):
    from diffusers import UNet2DConditionModel

    parts = tiny_if_components()
    stage_two = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 6})
    with pytest.raises(ValueError, match="stage II"):
        DeepFloydIFPrior(unet=stage_two, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"])
    with pytest.raises(ValueError, match="no image_cond"):
        if_prior.make_conditioning(
            PROMPT, image_cond=torch.zeros(1, 3, 16, 16), guidance_scale=20.0, image_guidance_scale=1.5
        )


def test_two_csd_steps_on_renders_reach_the_parameters(if_prior):
    """Two CSD steps with the offline view kernel: the score term through encode, the repulsion through the renders."""
    theta = torch.zeros(3, 3, 16, 16).requires_grad_(True)
    base = seeded_images(3, size=16, seed=5)
    optimizer = torch.optim.SGD([theta], lr=1.0)
    guidance = Guidance(
        "random_noise", FeatureRBFKernel(image_size=None), guidance_scale=20.0, image_guidance_scale=1.5
    )
    for step in range(2):
        renders = (base + theta).clamp(0, 1)
        latents = if_prior.encode(renders, differentiable=True)
        out = guidance(if_prior, Particles(latents, kernel_inputs=renders), prompt=PROMPT, step=step, seed=0)
        optimizer.zero_grad()
        out.loss.backward()
        assert bool(torch.isfinite(theta.grad).all()) and float(theta.grad.abs().sum()) > 0
        assert float(out.image_gradients.abs().sum()) > 0
        optimizer.step()
    assert float(theta.detach().abs().sum()) > 0


def config(name, cache_dir="/unused"):
    root = OmegaConf.create(
        {"paths": {"cache_dir": str(cache_dir)}, "model": OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")}
    )
    return root.model


@pytest.mark.parametrize("name", ["deepfloyd_if", "tiny_if"])
def test_config_keys_are_constructor_arguments_and_pass_the_schema(name):
    node = config(name)
    parameters = set(__import__("inspect").signature(get_object(node._target_)).parameters)
    assert not set(node) - {"_target_"} - parameters
    check_target("model", OmegaConf.to_container(node, resolve=True))


def test_tiny_config_instantiates_offline_and_the_hub_id_names_the_fix(tiny_cache):
    assert isinstance(instantiate(config("tiny_if", tiny_cache)), DeepFloydIFPrior)
    with pytest.raises(InstantiationException, match=r"download it .* model\.pretrained_model_name_or_path"):
        instantiate(config("deepfloyd_if"))
