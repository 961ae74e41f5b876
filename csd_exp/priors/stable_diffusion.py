"""Stable Diffusion (text-to-image) as a score prior: 2-way classifier-free guidance.

With e(y) the prompt's and e(n) the negative prompt's text embeddings (n = "" by default),

    ε^{ω}(x_t; y) = ε(x_t; n) + ω [ε(x_t; y) − ε(x_t; n)]          (CSD paper Eq. 2, ω = guidance_scale)

is the target of SDS / CSD generation (2N UNet rows for N particles). For DDS-style editing the source
branch is the same formula at the noisy source with the source prompt, ε^{ω}(x̃_t; y_src) (2N more rows);
when the source prompt equals the negative prompt it reduces to the single row ε(x̃_t; n) (N more rows).
All rows go through the UNet as one batch or in chunks of ``max_rows_per_call``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from csd_exp.arguments import checked

from .base import Conditioning, NoisePrediction
from .diffusers_common import DiffusersPrior

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.diffusers_common import DecoderName
    from csd_exp.priors.vae_tiles import TileStride
    from csd_exp.schema.fields import PositiveInt

SD_PIPELINE = "StableDiffusionPipeline"


class StableDiffusionPrior(DiffusersPrior):
    """Stable Diffusion 1.x / 2.x text-to-image for SDS, CSD generation and DDS-style editing.

    Args:
        pretrained_model_name_or_path: hub id or local folder of a Stable Diffusion pipeline; or ``None`` and
            the components ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` (``scheduler`` optional).
        torch_dtype: the dtype the networks run in.
        max_rows_per_call: at most this many UNet rows per call (``None``: one call).
        local_files_only: forwarded to ``from_pretrained`` when not ``None``.
        vae_tile_stride, decoder, decoder_path: see :class:`DiffusersPrior` (tiled VAE, consistency decoder).
    """

    name = "stable_diffusion"
    pipeline_class_name = SD_PIPELINE
    supports_image_condition = False

    @checked
    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        *,
        torch_dtype: TorchDtypeName | torch.dtype = "float32",
        max_rows_per_call: PositiveInt | None = None,
        local_files_only: bool | None = None,
        vae_tile_stride: TileStride | None = None,
        decoder: DecoderName = "vae",
        decoder_path: str | None = None,
        unet=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        scheduler=None,
    ) -> None:
        super().__init__(
            pretrained_model_name_or_path,
            torch_dtype=torch_dtype,
            max_rows_per_call=max_rows_per_call,
            local_files_only=local_files_only,
            vae_tile_stride=vae_tile_stride,
            decoder=decoder,
            decoder_path=decoder_path,
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        if int(self.unet.config.in_channels) != self.latent_channels:
            raise ValueError(
                f"StableDiffusionPrior needs a text-to-image UNet with {self.latent_channels} input "
                f"channels; this one has {self.unet.config.in_channels} (an InstructPix2Pix UNet "
                "belongs in InstructPix2PixPrior)"
            )

    def encode_image_condition(self, images: Tensor) -> Tensor:
        raise ValueError("StableDiffusionPrior takes no image condition (use InstructPix2PixPrior for CSD-Edit)")

    def make_conditioning(
        self,
        prompt: str,
        image_cond: Tensor | None = None,
        *,
        guidance_scale: float,
        image_guidance_scale: float,
        negative_prompt: str = "",
        source_prompt: str = "",
    ) -> Conditioning:
        if image_cond is not None:
            raise ValueError(
                "StableDiffusionPrior takes no image_cond (text-to-image); CSD-Edit needs "
                "InstructPix2PixPrior or ExactScorePrior"
            )
        for text in {prompt, negative_prompt, source_prompt}:
            self.prompt_embeddings(text)
        return super().make_conditioning(
            prompt,
            None,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            negative_prompt=negative_prompt,
            source_prompt=source_prompt,
        )

    @staticmethod
    def guide(eps_text: Tensor, eps_negative: Tensor, guidance_scale: float) -> Tensor:
        """ε(n) + ω [ε(y) − ε(n)]."""
        return eps_negative + guidance_scale * (eps_text - eps_negative)

    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """Guided ε̂ for N noisy targets and, if given, N noisy sources (:func:`text_guided_noise`)."""
        return text_guided_noise(self, noisy_latents, t, cond, source_noisy_latents)


def text_guided_noise(
    prior, noisy_latents: Tensor, t: int, cond: Conditioning, source_noisy_latents: Tensor | None = None
) -> NoisePrediction:
    """2-way guided ε̂ of a text-to-image prior (Stable Diffusion, DeepFloyd IF) for N noisy targets (2N rows)
    and, if given, N noisy sources (2N rows, or N when the source prompt is the negative prompt), in one call
    of ``prior.unet_rows``. Row layout: [x_t|y, x_t|n, (x̃_t|y_src, x̃_t|n | x̃_t|n)]."""
    t = prior._check_timestep(t)
    n = noisy_latents.shape[0]
    x_t = noisy_latents.to(device=prior.device, dtype=prior.dtype)
    samples, prompts = [x_t, x_t], [cond.prompt, cond.negative_prompt]
    source_has_text_row = cond.source_prompt != cond.negative_prompt
    if source_noisy_latents is not None:
        if source_noisy_latents.shape != noisy_latents.shape:
            raise ValueError(
                "source_noisy_latents must have the shape of noisy_latents; got "
                f"{tuple(source_noisy_latents.shape)} vs {tuple(noisy_latents.shape)}"
            )
        src_t = source_noisy_latents.to(device=prior.device, dtype=prior.dtype)
        if source_has_text_row:
            samples += [src_t]
            prompts += [cond.source_prompt]
        samples += [src_t]
        prompts += [cond.negative_prompt]
    eps = prior.unet_rows(torch.cat(samples), t, prior._prompt_rows(prompts, [n] * len(prompts)))
    eps = eps.to(noisy_latents.device).chunk(len(prompts))
    guide = StableDiffusionPrior.guide
    target = guide(eps[0], eps[1], cond.guidance_scale)
    source = None
    if source_noisy_latents is not None:
        source = guide(eps[2], eps[3], cond.guidance_scale) if source_has_text_row else eps[2]
    return NoisePrediction(target=target, source=source)
