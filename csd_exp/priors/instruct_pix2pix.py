"""InstructPix2Pix as a score prior: 3-way classifier-free guidance for CSD-Edit.

The UNet sees 8 channels: the 4 noisy latents and the 4 image-conditioning latents c. With the text
embedding e(y) of the instruction and e(∅) of the negative (by default empty) prompt, diffusers' branch
order is

    rows    [ (x_t, c=x̃, e(y)),  (x_t, c=x̃, e(∅)),  (x_t, c=0, e(∅)) ]  ->  ε(x̃, y), ε(x̃, ∅), ε(∅, ∅)

and the guided estimate (CSD paper Eq. 3) is

    ε^{ω_s, ω_y}(x_t; x̃, y) = ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)] + ω_y [ε(x̃,y) − ε(x̃,∅)].

CSD-Edit (Eq. 9) subtracts the baseline ε^{ω_s}(x̃_t; x̃) = ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)] at the noisy source
x̃_t. The official code computes it with the 3-row formula and an empty source prompt, whose text row then
equals its image row so the ω_y term vanishes; we evaluate only the two rows that matter. One CSD-Edit step
over N particles is therefore **5N UNet rows** (3N target + 2N source), not the official 6N, sent as one
batch or in chunks of ``max_rows_per_call`` rows. A source prompt different from the negative prompt keeps
the general 3-row source branch (DDS-style editing with IP2P).

Conditioning latents. InstructPix2Pix (and diffusers, Instruct-NeRF2NeRF, threestudio) conditions on the
**unscaled posterior mode** of the VAE, ``mode(VAE(2x̃ − 1))``. The official CSD code conditions on a
**sample times the scaling factor** (about 5.5× smaller), which weakens the image condition;
``official_condition_latents=True`` reproduces that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Conditioning, NoisePrediction, expand_image_condition, instruct_pix2pix_guidance
from .diffusers_common import DiffusersPrior

IP2P_PIPELINE = "StableDiffusionInstructPix2PixPipeline"


class InstructPix2PixPrior(DiffusersPrior):
    """InstructPix2Pix (``StableDiffusionInstructPix2PixPipeline`` weights) for CSD-Edit.

    Args:
        pretrained_model_name_or_path: hub id or local folder of an InstructPix2Pix pipeline; or leave it
            ``None`` and pass the components ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` (and optionally
            ``scheduler``, whose config gives the training schedule; default: Stable Diffusion's).
        torch_dtype: the dtype the networks run in (``float32``, ``float16``, ``bfloat16``).
        max_rows_per_call: at most this many UNet rows per call (``None``: one call for the whole step).
        official_condition_latents: condition on ``sample × scaling_factor`` as the official CSD code does,
            instead of InstructPix2Pix's unscaled ``mode()``.
        condition_seed: seed of the generator used for sampled conditioning latents when none is passed.
        local_files_only: forwarded to ``from_pretrained`` when not ``None``.
    """

    name = "instruct_pix2pix"
    pipeline_class_name = IP2P_PIPELINE
    supports_image_condition = True
    recommended_guidance = {"guidance_scale": 7.5, "image_guidance_scale": 1.5}

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        *,
        torch_dtype: str | torch.dtype = "float32",
        max_rows_per_call: int | None = None,
        official_condition_latents: bool = False,
        condition_seed: int = 0,
        local_files_only: bool | None = None,
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
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        expected = 2 * self.latent_channels
        if int(self.unet.config.in_channels) != expected:
            raise ValueError(
                f"InstructPix2PixPrior needs a UNet with {expected} input channels ({self.latent_channels} noisy + "
                f"{self.latent_channels} image-conditioning latents) for CSD-Edit; this UNet has "
                f"{self.unet.config.in_channels}. A text-to-image checkpoint belongs in StableDiffusionPrior."
            )
        self.official_condition_latents = bool(official_condition_latents)
        self.condition_seed = int(condition_seed)

    # -- image conditioning ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image_condition(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x̃ conditioning latents: ``mode(VAE(2x − 1))`` (IP2P convention), or with
        ``official_condition_latents`` a posterior sample × scaling factor (drawn with ``generator``, by
        default a fresh one seeded with ``condition_seed``)."""
        dist = self._vae_latent_dist(images)
        if not self.official_condition_latents:
            return dist.mode().float()
        if generator is None:
            generator = torch.Generator(device=self.vae.device).manual_seed(self.condition_seed)
        return (dist.sample(generator=generator) * self.vae_scaling_factor).float()

    def condition_from_latents(self, latents: Tensor) -> Tensor:
        """Conditioning latents from latents made by ``encode`` (e.g. windows cropped from a latent canvas):
        z / s under the IP2P convention (exactly ``mode()``), z itself under the official one."""
        return latents if self.official_condition_latents else latents / self.vae_scaling_factor

    def make_conditioning(
        self,
        prompt: str,
        image_cond: Tensor | None = None,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str = "",
        source_prompt: str = "",
    ) -> Conditioning:
        if image_cond is not None and image_cond.shape[1] != self.latent_channels:
            raise ValueError(
                f"image_cond must have {self.latent_channels} latent channels; got "
                f"{image_cond.shape[1]} (use encode_image_condition on the source images)"
            )
        for text in {prompt, negative_prompt, source_prompt}:
            self.prompt_embeddings(text)
        return super().make_conditioning(
            prompt, image_cond, guidance_scale, image_guidance_scale, negative_prompt, source_prompt
        )

    # -- guided noise ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """Guided ε̂ for N noisy targets (3N rows) and, if given, the N noisy sources (2N rows), in one batch.

        Row layout: [x_t|x̃|y, x_t|x̃|∅, x_t|0|∅, (x̃_t|x̃|∅, x̃_t|0|∅ | x̃_t|x̃|y_src, x̃_t|x̃|∅, x̃_t|0|∅)].
        """
        t = self._check_timestep(t)
        n = noisy_latents.shape[0]
        image_cond = expand_image_condition(cond.image_cond, n, "InstructPix2PixPrior")
        image_cond = image_cond.to(device=self.device, dtype=self.dtype)
        no_image = torch.zeros_like(image_cond)
        x_t = noisy_latents.to(device=self.device, dtype=self.dtype)

        samples = [x_t, x_t, x_t]
        conditions = [image_cond, image_cond, no_image]
        prompts = [cond.prompt, cond.negative_prompt, cond.negative_prompt]
        source_has_text_row = cond.source_prompt != cond.negative_prompt
        if source_noisy_latents is not None:
            if source_noisy_latents.shape != noisy_latents.shape:
                raise ValueError(
                    "source_noisy_latents must have the shape of noisy_latents; got "
                    f"{tuple(source_noisy_latents.shape)} vs {tuple(noisy_latents.shape)}"
                )
            src_t = source_noisy_latents.to(device=self.device, dtype=self.dtype)
            if source_has_text_row:
                samples += [src_t]
                conditions += [image_cond]
                prompts += [cond.source_prompt]
            samples += [src_t, src_t]
            conditions += [image_cond, no_image]
            prompts += [cond.negative_prompt, cond.negative_prompt]

        sample = torch.cat([torch.cat(pair, dim=1) for pair in zip(samples, conditions)])
        embeds = self._prompt_rows(prompts, [n] * len(prompts))
        eps = self.unet_rows(sample, t, embeds).to(noisy_latents.device).chunk(len(prompts))

        target = instruct_pix2pix_guidance(eps[0], eps[1], eps[2], cond.guidance_scale, cond.image_guidance_scale)
        source = None
        if source_noisy_latents is not None:
            if source_has_text_row:
                source = instruct_pix2pix_guidance(
                    eps[3], eps[4], eps[5], cond.guidance_scale, cond.image_guidance_scale
                )
            else:  # ε^{ω_s}(x̃_t; x̃) = ε(∅,∅) + ω_s [ε(x̃,∅) − ε(∅,∅)]
                source = eps[4] + cond.image_guidance_scale * (eps[3] - eps[4])
        return NoisePrediction(target=target, source=source)
