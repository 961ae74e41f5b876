"""A tiny random-weight Stable Diffusion 2 depth-to-image pipeline, built offline from constructor arguments (tests,
smoke runs; ``model=tiny_sd2_depth``), in the manner of :mod:`csd_exp.priors.tiny`: the tiny VAE, CLIP text encoder
and tokenizer of the other tiny pipelines, a 5-input-channel UNet with SD 2 depth's block layout and a tiny DPT
depth estimator. Weights are seeded; building never touches the global random state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.diffusers_common import DecoderName
    from csd_exp.priors.stable_diffusion_depth import StableDiffusionDepthPrior
    from csd_exp.priors.vae_tiles import TILE_LATENT
    from csd_exp.schema.fields import PositiveInt, Seed

from .tiny import LATENT_CHANNELS, TINY_HIDDEN_SIZE, _cached_build, _schedule_kwargs, tiny_components

#: The block layout of stabilityai/stable-diffusion-2-depth's UNet (unet/config.json): three cross-attention
#: down blocks and a plain one, the cross-attention mid block, a plain up block and three cross-attention ones,
#: two layers per block. The tiny depth UNet keeps it, so its self-attention layers come in the same call
#: order (6 down, 1 mid, 9 up) and Pix2Video's ``COND_LAYER = 7`` picks the same ones on both.
SD2_DEPTH_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    use_linear_projection=True,
)
TINY_DEPTH_BLOCK_OUT_CHANNELS = (16, 16, 32, 32)
TINY_DPT_SIZE = 32  # the tiny DPT's input side (the real one: 384)


def tiny_depth_estimator(seed: int = 0):
    """A seeded tiny ``DPTForDepthEstimation`` (ViT 32 wide, 4 layers, 8-px patches on 32-px inputs) and its
    ``DPTImageProcessor`` (resize to 32², mean / std 0.5 as the real one). Weights are drawn at std 0.1 and
    the head's last bias is 0.3, so the final ReLU passes almost every position and the depth maps vary
    (at transformers' default std 0.02 they are ~1e-9 and mostly zero)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=TINY_DPT_SIZE,
        patch_size=8,
        hidden_size=TINY_HIDDEN_SIZE,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        backbone_out_indices=(0, 1, 2, 3),
        neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=32,
        is_hybrid=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        estimator = DPTForDepthEstimation(config)
    with torch.no_grad():
        estimator.head.head[-2].bias.fill_(0.3)
    processor = DPTImageProcessor(
        do_resize=True,
        size={"height": TINY_DPT_SIZE, "width": TINY_DPT_SIZE},
        keep_aspect_ratio=False,
        ensure_multiple_of=1,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return estimator.eval(), processor


def build_tiny_sd2_depth(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionDepth2ImgPipeline`` in ``folder``: a 5-input-channel UNet with SD 2 depth's
    block layout (:data:`SD2_DEPTH_BLOCKS`, channels (16, 16, 32, 32)), the tiny VAE and text encoder, a tiny
    DPT depth estimator and Pix2Video's DDIM scheduler (scaled linear, set_alpha_to_one false, steps_offset 0)."""
    from diffusers import DDIMScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        parts = tiny_components(tokenizer_dir, in_channels=LATENT_CHANNELS, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        parts["unet"] = UNet2DConditionModel(
            sample_size=8,
            in_channels=LATENT_CHANNELS + 1,
            out_channels=LATENT_CHANNELS,
            block_out_channels=TINY_DEPTH_BLOCK_OUT_CHANNELS,
            norm_num_groups=8,
            cross_attention_dim=TINY_HIDDEN_SIZE,
            attention_head_dim=4,
            **SD2_DEPTH_BLOCKS,
        ).eval()
    depth_estimator, feature_extractor = tiny_depth_estimator(seed)
    scheduler = DDIMScheduler(**_schedule_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=0)
    pipe = StableDiffusionDepth2ImgPipeline(
        **parts, scheduler=scheduler, depth_estimator=depth_estimator, feature_extractor=feature_extractor
    )
    pipe.save_pretrained(folder)
    return folder


def tiny_stable_diffusion_depth_prior(
    cache_dir: str | os.PathLike,
    seed: Seed = 0,
    torch_dtype: TorchDtypeName | torch.dtype = "float32",
    max_rows_per_call: PositiveInt | None = None,
    vae_tile_stride: Annotated[int, Field(ge=1, le=TILE_LATENT)] | None = None,
    decoder: DecoderName = "vae",
    decoder_path: str | None = None,
) -> StableDiffusionDepthPrior:
    """A :class:`StableDiffusionDepthPrior` on the tiny depth pipeline in ``cache_dir`` (built there if absent),
    loaded through ``StableDiffusionDepth2ImgPipeline.from_pretrained`` like a real checkpoint."""
    from .stable_diffusion_depth import StableDiffusionDepthPrior

    folder = _cached_build(cache_dir, "tiny_sd2_depth", build_tiny_sd2_depth, seed)
    return StableDiffusionDepthPrior(
        str(folder),
        torch_dtype=torch_dtype,
        max_rows_per_call=max_rows_per_call,
        vae_tile_stride=vae_tile_stride,
        decoder=decoder,
        decoder_path=decoder_path,
    )
