"""Frozen diffusion models as score priors for SDS / CSD / CSD-Edit (see ``base.ScorePrior``).

* :class:`InstructPix2PixPrior`: 3-way guidance, CSD-Edit in 5N UNet rows per step.
* :class:`StableDiffusionPrior`: text-to-image, 2-way guidance (SDS / CSD generation, DDS editing).
* :class:`StableDiffusionDepthPrior`: SD 2 depth-to-image (depth map as the image condition), Pix2Video's model.
* :class:`DeepFloydIFPrior`: DeepFloyd IF stage I, text-to-image in pixel space (64 px), 2-way guidance.
* :class:`ExactScorePrior`: closed-form ε̂ for Gaussian-mixture edits (the embedded default).
* :class:`ExactGenerationPrior`: closed-form ε̂ of text-to-3D views, a mixture over known reference objects.
* Tiny offline pipelines for tests and smoke runs (``tiny``).

diffusers / transformers are imported only when a diffusers-backed prior is built.
"""

from .base import Conditioning, ModeOracle, NoisePrediction, ScorePrior, scaled_linear_alphas_cumprod
from .deepfloyd_if import DeepFloydIFPrior
from .exact import ExactScorePrior
from .exact_generation import ExactGenerationPrior, ViewConditionedPrior
from .instruct_pix2pix import InstructPix2PixPrior
from .instructions import INSTRUCTIONS, InstructionFamily
from .stable_diffusion import StableDiffusionPrior
from .stable_diffusion_depth import StableDiffusionDepthPrior
from .tiny import (
    build_tiny_if,
    build_tiny_ip2p,
    build_tiny_sd,
    tiny_deepfloyd_if_prior,
    tiny_instruct_pix2pix_prior,
    tiny_stable_diffusion_prior,
    write_clip_tokenizer,
)
from .tiny_depth import build_tiny_sd2_depth, tiny_stable_diffusion_depth_prior

__all__ = [
    "Conditioning",
    "ModeOracle",
    "NoisePrediction",
    "ScorePrior",
    "scaled_linear_alphas_cumprod",
    "ExactScorePrior",
    "ExactGenerationPrior",
    "ViewConditionedPrior",
    "INSTRUCTIONS",
    "InstructionFamily",
    "InstructPix2PixPrior",
    "StableDiffusionPrior",
    "StableDiffusionDepthPrior",
    "DeepFloydIFPrior",
    "build_tiny_if",
    "tiny_deepfloyd_if_prior",
    "build_tiny_ip2p",
    "build_tiny_sd",
    "build_tiny_sd2_depth",
    "tiny_instruct_pix2pix_prior",
    "tiny_stable_diffusion_prior",
    "tiny_stable_diffusion_depth_prior",
    "write_clip_tokenizer",
]
