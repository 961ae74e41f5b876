"""conf/model/*.yaml: constructor arguments only, the tiny and exact ones instantiate offline."""

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from csd_exp.priors import ExactScorePrior, InstructPix2PixPrior, ScorePrior, StableDiffusionPrior

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"
EXPECTED = {"ip2p", "sd15", "sd21", "exact", "tiny_ip2p", "tiny_sd"}


def load(name, cache_dir="/unused"):
    root = OmegaConf.create(
        {"paths": {"cache_dir": str(cache_dir)}, "model": OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")}
    )
    return root.model


def constructor_parameters(target):
    parameters = set(inspect.signature(target).parameters)
    if target.__name__.startswith("tiny_"):  # tiny builders forward **prior_kwargs to the prior
        prior_class = InstructPix2PixPrior if "pix2pix" in target.__name__ else StableDiffusionPrior
        parameters |= set(inspect.signature(prior_class).parameters)
    return parameters


def test_every_model_config_exists():
    assert {p.stem for p in MODEL_CONFIGS.glob("*.yaml")} >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_keys_are_constructor_arguments(name):
    config = load(name)
    target = get_object(config._target_)
    unknown = set(config) - {"_target_"} - constructor_parameters(target)
    assert not unknown, f"{name}.yaml has keys the constructor does not take: {unknown}"
    if "pretrained_model_name_or_path" in config or name in ("ip2p", "sd15", "sd21"):
        assert config.pretrained_model_name_or_path


def test_exact_and_tiny_configs_instantiate_offline(tiny_cache):
    exact = instantiate(load("exact"))
    assert isinstance(exact, ExactScorePrior)
    tiny = instantiate(load("tiny_ip2p", tiny_cache))
    assert isinstance(tiny, InstructPix2PixPrior) and isinstance(tiny, ScorePrior)
    cond = tiny.make_conditioning(
        "make it night", torch.zeros(1, 4, 4, 4), guidance_scale=7.5, image_guidance_scale=1.5
    )
    assert tiny.predict_noise(torch.zeros(1, 4, 4, 4), 10, cond).target.shape == (1, 4, 4, 4)
    assert isinstance(instantiate(load("tiny_sd", tiny_cache)), StableDiffusionPrior)


def test_unknown_config_key_is_an_error(tiny_cache):
    config = load("exact")
    config.not_a_parameter = 1
    with pytest.raises(InstantiationException, match="not_a_parameter"):
        instantiate(config)
    tiny = load("tiny_ip2p", tiny_cache)
    tiny.guidance_scale = 7.5
    with pytest.raises(InstantiationException, match="guidance_scale"):
        instantiate(tiny)
