"""Depth-conditioned Stable Diffusion 2 (diffusers' ``StableDiffusionDepth2ImgPipeline``) as a score prior.

The UNet takes ``latent_channels + 1`` input channels: the noisy latent and a depth map d at the latent's
size, normalised per image to [−1, 1]. As the pipeline's ``prepare_depth_map`` computes it:

    D = depth_estimator(feature_extractor(image)).predicted_depth      (DPT, e.g. Intel/dpt-hybrid-midas)
    d = 2 (r(D) − min r(D)) / (max r(D) − min r(D)) − 1,  r = resize to the latent size (bicubic)

The image condition x̃ of this prior (``encode_image_condition``) is that d; classifier-free guidance is
2-way over the text with the same d in every row (the pipeline repeats the depth map for the unconditional
rows):  ε^{ω}(x_t; y, d) = ε(x_t, d; n) + ω [ε(x_t, d; y) − ε(x_t, d; n)].

The depth estimator reads each image as an 8-bit RGB image (what the pipeline's PIL images and Pix2Video's
uint8 arrays give it), so the depth map is a fixed condition, not differentiable. It runs in float32 (float64
when the prior does): the DPT-hybrid backbone's batch norm is not fit for float16, which is why the pipeline
runs it under autocast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.arguments import checked

from .base import Conditioning, NoisePrediction, expand_image_condition, resolve_dtype
from .diffusers_common import (
    DiffusersPrior,
    _dtype_keyword,
    _from_folder_or_hub,
    _frozen,
    check_decoder,
    move_to_device,
)
from .stable_diffusion import text_guided_noise

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.diffusers_common import DecoderName
    from csd_exp.priors.vae_tiles import TileStride
    from csd_exp.schema.fields import PositiveInt

DEPTH_PIPELINE = "StableDiffusionDepth2ImgPipeline"
#: How the estimator's depth reaches the latent's size: ``bicubic`` as diffusers' pipeline, ``bilinear`` as
#: Pix2Video's ``load_depth`` (code/file_utils.py).
DEPTH_RESIZE_MODES = ("bicubic", "bilinear")


def normalized_depth(depth: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """(N, h', w') estimator depth -> (N, 1, *size): resized (``mode``, align_corners=False), then each map
    scaled to [−1, 1] by its own minimum and maximum."""
    if mode not in DEPTH_RESIZE_MODES:
        raise ValueError(f"depth resize mode {mode!r} is not one of {', '.join(DEPTH_RESIZE_MODES)}")
    resized = F.interpolate(depth.unsqueeze(1), size=tuple(size), mode=mode, align_corners=False)
    low = resized.amin(dim=(1, 2, 3), keepdim=True)
    high = resized.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (resized - low) / (high - low) - 1.0


def as_8bit_images(images: Tensor) -> list:
    """(N, 3, H, W) in [0, 1] -> N (H, W, 3) uint8 arrays (rounded), what the feature extractor is fed."""
    pixels = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


class StableDiffusionDepthPrior(DiffusersPrior):
    """Stable Diffusion 2 depth-to-image: text guidance with a depth map as the image condition.

    Args:
        pretrained_model_name_or_path: hub id (``stabilityai/stable-diffusion-2-depth``) or local folder of a
            ``StableDiffusionDepth2ImgPipeline``; or ``None`` and the components ``unet``, ``vae``,
            ``text_encoder``, ``tokenizer``, ``depth_estimator``, ``feature_extractor`` (``scheduler`` optional).
        torch_dtype: the dtype the UNet, VAE and text encoder run in (the depth estimator: float32, or float64).
        max_rows_per_call: at most this many UNet rows per call (``None``: one call).
        local_files_only: forwarded to ``from_pretrained`` when not ``None``.
        vae_tile_stride, decoder, decoder_path: see :class:`DiffusersPrior` (tiled VAE, consistency decoder).
    """

    name = "stable_diffusion_depth"
    pipeline_class_name = DEPTH_PIPELINE
    supports_image_condition = True
    python_only_parameters = (
        "unet", "vae", "text_encoder", "tokenizer", "scheduler", "depth_estimator", "feature_extractor",
    )  # fmt: skip
    #: Its image condition is a depth map, which only a task that names this class as its ``prior`` feeds:
    #: the compose-time check refuses it for every other task (csd_exp/schema/rules.py).
    serves_only_tasks_that_name_it: ClassVar[bool] = True
    #: Its own family for the method axis (csd_exp/prior_families.py): a depth map is not an instruction's image.
    prior_family: ClassVar[str] = "depth"

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
        unet: Any = None,
        vae: Any = None,
        text_encoder: Any = None,
        tokenizer: Any = None,
        scheduler: Any = None,
        depth_estimator: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        check_decoder(decoder, decoder_path)  # option errors before a slow load (@checked: the values)
        if pretrained_model_name_or_path is not None:
            given = (unet, vae, text_encoder, tokenizer, scheduler, depth_estimator, feature_extractor)
            if any(part is not None for part in given):
                raise ValueError("pass either pretrained_model_name_or_path or components, not both")
            pipe = load_depth_pipeline(pretrained_model_name_or_path, resolve_dtype(torch_dtype), local_files_only)
            unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
            scheduler, depth_estimator, feature_extractor = pipe.scheduler, pipe.depth_estimator, pipe.feature_extractor
        if depth_estimator is None or feature_extractor is None:
            raise ValueError(
                "StableDiffusionDepthPrior needs the pipeline's depth_estimator and feature_extractor "
                "(a StableDiffusionDepth2ImgPipeline folder such as stabilityai/stable-diffusion-2-depth)"
            )
        super().__init__(
            None,
            torch_dtype=torch_dtype,
            max_rows_per_call=max_rows_per_call,
            vae_tile_stride=vae_tile_stride,
            decoder=decoder,
            decoder_path=decoder_path,
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        if int(self.unet.config.in_channels) != self.latent_channels + 1:
            raise ValueError(
                f"StableDiffusionDepthPrior needs a depth-to-image UNet with {self.latent_channels + 1} input "
                f"channels (latent + depth); this one has {self.unet.config.in_channels} (a text-to-image UNet "
                "belongs in StableDiffusionPrior: model=sd15 / sd21 / tiny_sd)"
            )
        depth_dtype = torch.float64 if self.model_dtype == torch.float64 else torch.float32
        self.depth_estimator = _frozen(depth_estimator, depth_dtype)
        self.feature_extractor = feature_extractor

    def to_device(self, device: torch.device) -> StableDiffusionDepthPrior:
        """As :meth:`DiffusersPrior.to_device`; the depth estimator keeps its float32 / float64."""
        move_to_device(self, device, (self.unet, self.vae, self.text_encoder, self.consistency_decoder))
        return self

    # -- depth ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def estimate_depth(self, images: Tensor) -> Tensor:
        """(N, h', w') raw ``predicted_depth`` of images in [0, 1], read as 8-bit RGB, float32."""
        self._check_images(images)
        pixel_values = self.feature_extractor(images=as_8bit_images(images), return_tensors="pt").pixel_values
        estimator = self.depth_estimator
        device, dtype = next(estimator.parameters()).device, next(estimator.parameters()).dtype
        return estimator(pixel_values.to(device=device, dtype=dtype)).predicted_depth

    def depth_condition(self, images: Tensor, resize: Literal["bicubic", "bilinear"] = "bicubic") -> Tensor:
        """(N, 1, H/f, W/f) depth maps in [−1, 1] at the latent size (:func:`normalized_depth`), float32
        (float64 for a float64 prior)."""
        f = self.latent_scale_factor
        size = (images.shape[-2] // f, images.shape[-1] // f)
        depth = normalized_depth(self.estimate_depth(images), size, resize)
        return depth if depth.dtype == torch.float64 else depth.float()

    def encode_image_condition(self, images: Tensor) -> Tensor:
        """x̃ = the pipeline's depth map of ``images`` (bicubic resize)."""
        return self.depth_condition(images, "bicubic")

    # -- guidance ------------------------------------------------------------------------------------
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
        if image_cond is None:
            raise ValueError(
                "StableDiffusionDepthPrior is conditioned on a depth map: pass "
                "image_cond=prior.encode_image_condition(images)"
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

    def with_depth(self, latents: Tensor, depth: Tensor) -> Tensor:
        """The UNet's input: the latents with the depth map (one row, or one per latent) as the last channel."""
        depth = expand_image_condition(depth, latents.shape[0], "the depth-to-image UNet")
        return torch.cat([latents, depth.to(device=latents.device, dtype=latents.dtype)], dim=1)

    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """2-way guided ε̂ (:func:`text_guided_noise`) with the depth map ``cond.image_cond`` in every row."""
        depth = cond.image_cond
        source = None if source_noisy_latents is None else self.with_depth(source_noisy_latents, depth)
        return text_guided_noise(self, self.with_depth(noisy_latents, depth), t, cond, source)


def load_depth_pipeline(pretrained_model_name_or_path: str, torch_dtype: torch.dtype, local_files_only: bool | None):
    """``StableDiffusionDepth2ImgPipeline.from_pretrained`` (hub id or local folder), keeping its feature
    extractor (the DPT preprocessor; :func:`load_pipeline` drops the safety checker's)."""
    import diffusers

    kwargs: dict[str, Any] = {_dtype_keyword(): torch_dtype}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    pipeline_class = getattr(diffusers, DEPTH_PIPELINE)
    return _from_folder_or_hub(pipeline_class, pretrained_model_name_or_path, "pretrained_model_name_or_path", kwargs)
