"""DeepFloyd IF stage I (text-to-image in pixel space, 64 × 64) as a score prior, through diffusers' ``IFPipeline``.

The paper's text-to-3D experiments distil IF stage I (Sec. 4.4, Table 3: DeepFloyd IF, CFG 20). IF denoises
pixels directly, so the prior's "latents" are the images themselves on IF's [−1, 1] range:

    encode(x) = 2x − 1,   decode(z) = (z + 1) / 2 clamped to [0, 1],   latent_scale_factor 1, 3 channels.

A loss on the latents therefore reaches the renders through an affine map (``differentiable=True`` keeps it).

Noise prediction. IF's UNet predicts the noise and a variance interpolation (``variance_type="learned_range"``):
6 output channels, of which the first 3 are ε (diffusers' ``IFPipeline`` splits them the same way before its
guidance). Classifier-free guidance is the 2-way form of Stable Diffusion (:mod:`.stable_diffusion`),

    ε^{ω}(x_t; y) = ε(x_t; n) + ω [ε(x_t; y) − ε(x_t; n)]   (CSD paper Eq. 2, ω = guidance_scale),

with the same DDS-style source rows. Text: the T5 encoder's last hidden state for the prompt padded to 77
tokens with its attention mask, as ``IFPipeline.encode_prompt`` does (IF's T5 was trained with 77 tokens);
prompts are lower-cased and stripped, the pipeline's preprocessing with ``clean_caption=False`` (its default
caption cleaning needs bs4 and ftfy, and only removes URLs, HTML and the like from web captions).

The schedule is the pipeline's training schedule rebuilt through ``DDPMScheduler`` (IF: ``squaredcos_cap_v2``).
diffusers is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from csd_exp.arguments import checked

from .base import Conditioning, NoisePrediction, ScorePrior, resolve_dtype
from .diffusers_common import _dtype_keyword, _from_folder_or_hub, _frozen, move_to_device
from .stable_diffusion import text_guided_noise

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.schema.fields import PositiveInt

IF_MAX_LENGTH = 77  # IF's T5 was trained with 77 tokens (diffusers IFPipeline.encode_prompt)
IF_CHANNELS = 3


def load_if_components(
    pretrained_model_name_or_path: str,
    torch_dtype: torch.dtype,
    local_files_only: bool | None,
    variant: str | None,
) -> dict:
    """UNet, T5 encoder, tokenizer and scheduler of an ``IFPipeline`` folder or hub id (safety checker, feature
    extractor and watermarker left out: the prior never produces final images for viewers)."""
    import diffusers

    kwargs: dict[str, Any] = {
        _dtype_keyword(): torch_dtype,
        "safety_checker": None,
        "feature_extractor": None,
        "watermarker": None,
        "requires_safety_checker": False,
    }
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    if variant is not None:
        kwargs["variant"] = variant
    pipe = _from_folder_or_hub(
        diffusers.IFPipeline, pretrained_model_name_or_path, "pretrained_model_name_or_path", kwargs
    )
    return dict(unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)


class DeepFloydIFPrior(ScorePrior):
    """DeepFloyd IF stage I for SDS / CSD generation in pixel space (text-to-3D, paper Sec. 4.4).

    Args:
        pretrained_model_name_or_path: hub id (``DeepFloyd/IF-I-XL-v1.0``; gated: accept the licence on the hub
            and log in, or download once and pass the folder) or local folder of an ``IFPipeline``; or ``None`` and
            the components ``unet``, ``text_encoder``, ``tokenizer`` (``scheduler`` optional: IF's cosine schedule).
        torch_dtype: the dtype the networks run in; ``auto`` = float16 on CUDA, float32 on CPU.
        max_rows_per_call: at most this many UNet rows per call (``None``: one call).
        local_files_only: forwarded to ``from_pretrained`` when not ``None``.
        variant: forwarded to ``from_pretrained`` when not ``None`` (``fp16``: the hub's half-size weight files).
    """

    #: the pipeline's components, for Python callers: not config settings
    python_only_parameters = ("unet", "text_encoder", "tokenizer", "scheduler")

    name = "deepfloyd_if"
    supports_image_condition = False
    #: sizes are pixels (latent_scale_factor 1): resize so the short side is the configured size
    default_resize_policy = "short_side"
    latent_channels = IF_CHANNELS
    latent_scale_factor = 1

    @checked
    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        *,
        torch_dtype: TorchDtypeName | torch.dtype = "float32",
        max_rows_per_call: PositiveInt | None = None,
        local_files_only: bool | None = None,
        variant: str | None = None,
        unet=None,
        text_encoder=None,
        tokenizer=None,
        scheduler=None,
    ) -> None:
        super().__init__()
        self.auto_dtype = str(torch_dtype) == "auto"
        self.model_dtype = resolve_dtype(torch_dtype)
        given = dict(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)
        if pretrained_model_name_or_path is not None:
            if scheduler is not None or any(v is not None for v in given.values()):
                raise ValueError("pass either pretrained_model_name_or_path or components, not both")
            components = load_if_components(pretrained_model_name_or_path, self.model_dtype, local_files_only, variant)
        else:
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise ValueError(
                    "pass pretrained_model_name_or_path, or all of unet, text_encoder, tokenizer "
                    f"(missing: {', '.join(missing)})"
                )
            components = dict(given, scheduler=scheduler)
        unet, scheduler = components["unet"], components["scheduler"]
        in_channels, out_channels = int(unet.config.in_channels), int(unet.config.out_channels)
        if in_channels != IF_CHANNELS or out_channels not in (IF_CHANNELS, 2 * IF_CHANNELS):
            raise ValueError(
                f"DeepFloydIFPrior needs an IF stage I UNet (3 input channels; 3 or 6 output channels: ε, and the "
                f"learned variance); this one has {in_channels} in, {out_channels} out (a stage II super-resolution "
                "UNet takes 6 input channels and is not a text-to-image prior)"
            )
        prediction_type = "epsilon" if scheduler is None else scheduler.config.get("prediction_type", "epsilon")
        if prediction_type != "epsilon":
            raise ValueError(f"unsupported UNet prediction_type {prediction_type!r} for IF (epsilon)")
        self.max_rows_per_call = None if max_rows_per_call is None else int(max_rows_per_call)
        self.unet = _frozen(unet, self.model_dtype)
        self.text_encoder = _frozen(components["text_encoder"], self.model_dtype)
        self.tokenizer = components["tokenizer"]
        self._register_schedule(self._schedule_from(scheduler))
        self._prompt_embeds: dict[str, Tensor] = {}
        #: number of UNet rows and calls since construction (benchmarks and tests read these)
        self.unet_rows_evaluated = 0
        self.unet_calls = 0

    @staticmethod
    def _schedule_from(scheduler) -> Tensor:
        """ᾱ_t of the pipeline's training schedule, rebuilt through DDPMScheduler (IF's cosine one without it)."""
        from diffusers import DDPMScheduler

        if scheduler is None:
            return DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
        return DDPMScheduler.from_config(scheduler.config).alphas_cumprod

    # -- devices -----------------------------------------------------------------------------------
    def to_device(self, device: torch.device) -> DeepFloydIFPrior:
        """Move to ``device``; with ``torch_dtype=auto`` also cast to its dtype (CUDA float16, CPU float32)."""
        move_to_device(self, device, (self.unet, self.text_encoder))
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- pixel space -------------------------------------------------------------------------------
    def encode(self, images: Tensor, *, differentiable: bool = False) -> Tensor:
        """z = 2x − 1 (IF's pixel range), float32; ``differentiable=True`` keeps the graph to ``images``."""
        self._check_images(images)
        with torch.set_grad_enabled(differentiable):
            return (2.0 * images - 1.0).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """x = (z + 1) / 2 clamped to [0, 1], float32."""
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_image_condition(self, images: Tensor) -> Tensor:
        raise ValueError(
            "DeepFloydIFPrior takes no image condition (text-to-image; CSD-Edit needs InstructPix2PixPrior)"
        )

    # -- text --------------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeddings(self, prompt: str) -> Tensor:
        """(1, 77, D) T5 hidden states for ``prompt`` (lower-cased, stripped; with the attention mask), cached."""
        cached = self._prompt_embeds.get(prompt)
        device = self.text_encoder.device
        if cached is None:
            tokens = self.tokenizer(
                prompt.lower().strip(),
                padding="max_length",
                max_length=IF_MAX_LENGTH,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            cached = self.text_encoder(
                tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
            ).last_hidden_state
            self._prompt_embeds[prompt] = cached
        elif cached.device != device:
            cached = self._prompt_embeds[prompt] = cached.to(device)
        return cached

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
            raise ValueError("DeepFloydIFPrior takes no image_cond (text-to-image)")
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

    # -- UNet --------------------------------------------------------------------------------------
    @torch.no_grad()
    def unet_rows(self, sample: Tensor, t: int, encoder_hidden_states: Tensor) -> Tensor:
        """ε_φ (the first 3 of the UNet's output channels) for every row, in chunks of ``max_rows_per_call``."""
        sample = sample.to(device=self.device, dtype=self.dtype)
        timestep = torch.tensor(int(t), device=self.device)
        chunk = self.max_rows_per_call or sample.shape[0]
        outputs = []
        for start in range(0, sample.shape[0], chunk):
            rows = slice(start, start + chunk)
            out = self.unet(
                sample[rows], timestep, encoder_hidden_states=encoder_hidden_states[rows], return_dict=False
            )[0]
            outputs.append(out[:, :IF_CHANNELS].float())  # the rest is the learned variance
            self.unet_calls += 1
            self.unet_rows_evaluated += out.shape[0]
        return torch.cat(outputs)

    def _prompt_rows(self, prompts: list[str], repeats: list[int]) -> Tensor:
        rows = [self.prompt_embeddings(p).expand(n, -1, -1) for p, n in zip(prompts, repeats)]
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def predict_noise(
        self, noisy_latents: Tensor, t: int, cond: Conditioning, *, source_noisy_latents: Tensor | None = None
    ) -> NoisePrediction:
        """Guided ε̂ of RGB pixels: Stable Diffusion's 2-way guidance and row layout (:func:`text_guided_noise`)."""
        if noisy_latents.ndim != 4 or noisy_latents.shape[1] != IF_CHANNELS:
            raise ValueError(f"IF denoises RGB pixels (N, 3, H, W); got noisy latents {tuple(noisy_latents.shape)}")
        return text_guided_noise(self, noisy_latents, t, cond, source_noisy_latents)
