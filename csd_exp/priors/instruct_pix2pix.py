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

Negative / source prompts (the official ``--neg_prompt`` / ``--src_prompt``, default ''): as in diffusers'
``_encode_prompt`` for InstructPix2Pix, which the official code calls (csdedit.py L307–315, L561–569), the
negative prompt conditions both the ε(x̃, ∅) and the ε(∅, ∅) rows of target and source, and the source
prompt the source's text row.

Source and conditioning latents. InstructPix2Pix (and diffusers, Instruct-NeRF2NeRF, threestudio) conditions
on the **unscaled posterior mode** of the VAE, ``mode(VAE(2x̃ − 1))``, and the project's latents are
``s · mode``. The official CSD code encodes the source **once** as a posterior **sample times the scaling
factor** (``encode_latents``, csdedit.py L214–220) and uses that one tensor as the source x̃, as the
initial target θ₀ (``tgt_latent = src_latent.clone()``, L321, L573) and as the image condition
(L353–356, L576–577), about 5.5× smaller than IP2P's, which weakens the image condition. Two switches
reproduce it:

* ``official_source_latents=True``: ``encode(images)`` (no generator) returns that seeded sample × s;
* ``official_condition_latents=True``: ``encode_image_condition(images)`` (no generator) returns it too,
  and ``condition_from_latents`` passes latents cropped from ``encode``'s output through unchanged.

With both, a task's ``encode(images)`` and ``encode_image_condition(images)`` of the same source images
return the **same one draw** (cached, keyed on the image values), drawn with a fresh generator seeded with
``condition_seed`` on the VAE's device; the official code drew it from its global stream after
``seed_everything(0)``, so the draw itself is ours, the way it is used is theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from csd_exp.arguments import checked

from .base import Conditioning, NoisePrediction, expand_image_condition, instruct_pix2pix_guidance
from .diffusers_common import DiffusersPrior, posterior_picker

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.diffusers_common import DecoderName
    from csd_exp.priors.vae_tiles import TileStride
    from csd_exp.schema.fields import PositiveInt, Seed

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
        official_source_latents: ``encode`` returns the seeded ``sample × scaling_factor`` (the official source
            x̃ and θ₀) instead of ``mode × scaling_factor``; the same draw as the condition's.
        condition_seed: seed of the generator of the official-mode posterior sample (used by either switch).
        local_files_only: forwarded to ``from_pretrained`` when not ``None``.
        vae_tile_stride, decoder, decoder_path: see :class:`DiffusersPrior` (tiled VAE, consistency decoder).
    """

    name = "instruct_pix2pix"
    pipeline_class_name = IP2P_PIPELINE
    supports_image_condition = True

    @checked
    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        *,
        torch_dtype: TorchDtypeName | torch.dtype = "float32",
        max_rows_per_call: PositiveInt | None = None,
        official_condition_latents: bool = False,
        official_source_latents: bool = False,
        condition_seed: Seed = 0,
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
        expected = 2 * self.latent_channels
        if int(self.unet.config.in_channels) != expected:
            raise ValueError(
                f"InstructPix2PixPrior needs a UNet with {expected} input channels ({self.latent_channels} noisy + "
                f"{self.latent_channels} image-conditioning latents) for CSD-Edit; this UNet has "
                f"{self.unet.config.in_channels}. A text-to-image checkpoint belongs in StableDiffusionPrior."
            )
        self.official_condition_latents = official_condition_latents
        self.official_source_latents = official_source_latents
        self.condition_seed = condition_seed
        self._official_draw: tuple[tuple, Tensor, Tensor] | None = None  # (key, images, latents)

    # -- source and conditioning latents -----------------------------------------------------------
    def encode(
        self, images: Tensor, generator: torch.Generator | None = None, *, differentiable: bool = False
    ) -> Tensor:
        """z = s · mode(VAE(2x − 1)) (see :meth:`DiffusersPrior.encode`), or with ``official_source_latents``
        and no ``generator`` the official code's seeded ``s · sample`` (:meth:`official_latents`)."""
        if not self.official_source_latents or generator is not None:
            return super().encode(images, generator, differentiable=differentiable)
        if differentiable:  # a graph cannot be cached; the fresh seeded generator gives the same draw
            with torch.enable_grad():  # the scaling too: a no_grad caller still gets the graph
                latents = self._posterior_latents(images, posterior_picker(self._official_generator()))
                return (latents * self.vae_scaling_factor).float()
        return self.official_latents(images)

    @torch.no_grad()
    def encode_image_condition(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x̃ conditioning latents: ``mode(VAE(2x − 1))`` (IP2P convention), or with
        ``official_condition_latents`` a posterior sample × scaling factor: drawn with ``generator`` when
        one is given, else the official draw :meth:`official_latents` (the same tensor ``encode`` returns
        with ``official_source_latents``)."""
        if not self.official_condition_latents:
            return self._posterior_latents(images, posterior_picker(None)).float()
        if generator is not None:
            return (self._posterior_latents(images, posterior_picker(generator)) * self.vae_scaling_factor).float()
        return self.official_latents(images)

    def _official_generator(self) -> torch.Generator:
        return torch.Generator(device=self.vae.device).manual_seed(self.condition_seed)

    @torch.no_grad()
    def official_latents(self, images: Tensor) -> Tensor:
        """s · sample(VAE(2x − 1)) drawn with a fresh generator seeded with ``condition_seed``: the official
        code's one source latent (x̃, θ₀ and condition). The last draw is cached, keyed on the image values
        and on what the draw depends on, so the source and the condition of the same images are one tensor
        bit for bit even where the VAE is not bitwise deterministic (cuDNN autotuning)."""
        key = (tuple(images.shape), images.dtype, images.device, self.vae.device, self.vae.dtype)
        key += (self.condition_seed, self.vae_tile_stride)
        cached = self._official_draw
        if cached is not None and cached[0] == key and torch.equal(cached[1], images):
            return cached[2].clone()
        generator = self._official_generator()
        latents = (self._posterior_latents(images, posterior_picker(generator)) * self.vae_scaling_factor).float()
        self._official_draw = (key, images.detach().clone(), latents)
        return latents.clone()

    def condition_from_latents(self, latents: Tensor) -> Tensor:
        """Conditioning latents from latents made by ``encode`` (e.g. windows cropped from a latent canvas):
        z / s under the IP2P convention (exactly ``mode()``), z itself under the official one."""
        return latents if self.official_condition_latents else latents / self.vae_scaling_factor

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
        if image_cond is not None and image_cond.shape[1] != self.latent_channels:
            raise ValueError(
                f"image_cond must have {self.latent_channels} latent channels; got "
                f"{image_cond.shape[1]} (use encode_image_condition on the source images)"
            )
        for text in {prompt, negative_prompt, source_prompt}:
            self.prompt_embeddings(text)
        return super().make_conditioning(
            prompt,
            image_cond,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            negative_prompt=negative_prompt,
            source_prompt=source_prompt,
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
