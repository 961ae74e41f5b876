"""What the diffusers-backed priors share: loading (hub id or local folder), the VAE, the text-embedding
cache and row-chunked UNet calls.

* Latent convention (Stable Diffusion): z = s · mode(VAE(2x − 1)) with s = ``vae.config.scaling_factor``;
  decode x = (VAE⁻¹(z / s) + 1) / 2 clamped to [0, 1]. Image sides must be multiples of the VAE's
  downsampling factor 2^(len(block_out_channels) − 1) (8 for Stable Diffusion); other sizes are an error
  that names the nearest valid size (we never resize silently).
* Text embeddings: the CLIP text encoder's last hidden state for the prompt padded to
  ``tokenizer.model_max_length`` (what diffusers' pipelines feed the UNet), cached per prompt string.
* UNet calls: all rows of a step (particles × guidance branches) go through the UNet as one batch, or in
  chunks of at most ``max_rows_per_call`` rows, under ``torch.no_grad``. Rows are independent, so the
  chunking changes nothing but peak memory.

diffusers is imported lazily, so ``import csd_exp.priors`` stays cheap.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from csd_exp.arguments import checked

from .base import ScorePrior, alpha_bar_at, resolve_dtype
from .vae_tiles import tiled

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.vae_tiles import TileStride
    from csd_exp.schema.fields import PositiveInt

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "cannot load '{id}': this machine is offline or the id is unknown; download it on a connected "
    "machine (huggingface-cli download {id}) and set model.{key}=/path/to/folder"
)
DECODERS = ("vae", "consistency")
#: ``model.decoder``: the VAE's own decoder or the consistency decoder.
DecoderName = Literal[DECODERS]
#: the consistency decoder's noise when decode() gets no generator: decoding is then a function of the latents
CONSISTENCY_DECODER_SEED = 0


@functools.cache
def _dtype_keyword() -> str:
    """``dtype`` where ``from_pretrained`` takes it (diffusers deprecated ``torch_dtype`` in mid 2026, PR #14205),
    ``torch_dtype`` on older releases, which do not accept ``dtype``."""
    from diffusers import DiffusionPipeline

    source = inspect.getsource(DiffusionPipeline.from_pretrained)
    return "dtype" if 'kwargs.pop("dtype"' in source else "torch_dtype"


def load_pipeline(
    pipeline_class_name: str,
    pretrained_model_name_or_path: str,
    torch_dtype: torch.dtype,
    local_files_only: bool | None = None,
):
    """``<pipeline_class>.from_pretrained(path_or_id, torch_dtype=...)`` with the safety checker left out.

    A hub id that cannot be reached (offline machine, unknown id) becomes an ``OSError`` that says how to
    point at a local folder instead.
    """
    import diffusers

    pipeline_class = getattr(diffusers, pipeline_class_name)
    kwargs: dict[str, Any] = {
        _dtype_keyword(): torch_dtype,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    return _from_folder_or_hub(pipeline_class, pretrained_model_name_or_path, "pretrained_model_name_or_path", kwargs)


def _from_folder_or_hub(loader, location, key: str, kwargs: dict):
    """``loader.from_pretrained(location, **kwargs)``; a hub id that cannot be reached becomes an ``OSError``
    naming ``model.<key>``."""
    location = str(location)
    if os.path.isdir(os.path.expanduser(location)):
        return loader.from_pretrained(os.path.expanduser(location), **kwargs)
    hub_errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        from huggingface_hub import errors as hub_errors_module

        hub_errors += (hub_errors_module.HfHubHTTPError,)
    except ImportError:  # pragma: no cover - old huggingface_hub
        pass
    try:
        return loader.from_pretrained(location, **kwargs)
    except hub_errors as error:
        raise OSError(OFFLINE_HINT.format(id=location, key=key)) from error


def load_consistency_decoder(decoder_path: str, torch_dtype: torch.dtype, local_files_only: bool | None = None):
    """diffusers' ``ConsistencyDecoderVAE`` (OpenAI's consistency decoder, hub id ``openai/consistency-decoder``)
    from a local folder or hub id: the official code's ``--consistency_decoder`` (csdedit.py L140–142, L225–226),
    which used the ``consistencydecoder`` package; diffusers ships the same weights and 2-step schedule."""
    from diffusers import ConsistencyDecoderVAE

    kwargs: dict[str, Any] = {_dtype_keyword(): torch_dtype}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    return _from_folder_or_hub(ConsistencyDecoderVAE, decoder_path, "decoder_path", kwargs)


def _frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Evaluation mode, no gradients, ``dtype`` (cast only when it differs)."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.eval().requires_grad_(False)


def check_decoder(decoder: str, decoder_path: str | None) -> None:
    """``decoder_path`` is needed by, and only by, ``decoder="consistency"`` (the values themselves are checked
    by their annotations)."""
    if decoder == "consistency" and not decoder_path:
        raise ValueError(
            "model.decoder=consistency needs model.decoder_path: a local folder or hub id of a diffusers "
            "ConsistencyDecoderVAE (openai/consistency-decoder for Stable Diffusion 1.x / InstructPix2Pix)"
        )
    if decoder == "vae" and decoder_path is not None:
        raise ValueError(
            f"model.decoder_path={decoder_path!r} is only read with model.decoder=consistency: set that, or "
            "model.decoder_path=null"
        )


def posterior_picker(generator: torch.Generator | None):
    """The posterior's mode, or a sample drawn with ``generator`` when one is given."""
    if generator is None:
        return lambda posterior: posterior.mode()
    return lambda posterior: posterior.sample(generator=generator)


def move_to_device(prior, device: torch.device, modules) -> None:
    """Move a diffusers-backed prior to ``device``; with ``torch_dtype=auto`` also cast ``modules`` (None ones
    skipped) to the device's dtype and drop the cached prompt embeddings; warn about float16 on a CPU."""
    from csd_exp.infra.devices import default_model_dtype, describe_dtype_choice

    prior.to(device)
    if prior.auto_dtype:
        dtype = default_model_dtype(device)
        if dtype != prior.model_dtype:
            prior.model_dtype = dtype
            for module in modules:
                if module is not None:
                    module.to(dtype=dtype)
            prior._prompt_embeds.clear()
        log.info("prior on %s, model.torch_dtype=auto -> %s", device, describe_dtype_choice(device))
    elif torch.device(device).type == "cpu" and prior.model_dtype == torch.float16:
        log.warning("prior: float16 on a CPU is very slow (about 20x float32); use model.torch_dtype=auto or float32")


class DiffusersPrior(ScorePrior):
    """Shared machinery of :class:`InstructPix2PixPrior` and :class:`StableDiffusionPrior`.

    Subclasses name their diffusers pipeline class in ``pipeline_class_name``; the networks come from
    ``pretrained_model_name_or_path`` (hub id or local folder) or from the given components.

    VAE options (both off by default, which is the plain whole-image VAE):

    * ``vae_tile_stride``: encode / decode in 64-latent-px tiles at this stride, averaged where they
      overlap (the official ``--stride_vae``, see :mod:`.vae_tiles`), for images larger than the VAE's
      training size;
    * ``decoder="consistency"`` with ``decoder_path``: decode with OpenAI's consistency decoder
      (diffusers' ``ConsistencyDecoderVAE``; the official ``--consistency_decoder``) instead of the VAE's
      decoder. Encoding stays with the pipeline's VAE, as in the official code.
    """

    #: the pipeline's components, for Python callers: not config settings
    python_only_parameters = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

    pipeline_class_name: str

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
        super().__init__()
        # Option errors first: they must not wait for (or hide behind) a slow checkpoint load.
        self.vae_tile_stride = vae_tile_stride
        check_decoder(decoder, decoder_path)
        self.decoder = decoder
        components = load_components(
            self.pipeline_class_name,
            pretrained_model_name_or_path,
            torch_dtype,
            local_files_only,
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        unet, vae = components["unet"], components["vae"]
        text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]
        alphas_cumprod, prediction_type = components["alphas_cumprod"], components["prediction_type"]
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported UNet prediction_type {prediction_type!r} (epsilon or v_prediction)")
        self.prediction_type = prediction_type
        self.max_rows_per_call = None if max_rows_per_call is None else int(max_rows_per_call)
        self.auto_dtype = str(torch_dtype) == "auto"  # float32 until to_device picks the device's dtype
        self.model_dtype = resolve_dtype(torch_dtype)
        self.unet = _frozen(unet, self.model_dtype)
        self.vae = _frozen(vae, self.model_dtype)
        self.text_encoder = _frozen(text_encoder, self.model_dtype)
        self.tokenizer = tokenizer
        self._register_schedule(alphas_cumprod)
        self.latent_channels = int(vae.config.latent_channels)
        self.latent_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_scaling_factor = float(vae.config.scaling_factor)
        self.consistency_decoder = None
        if decoder == "consistency":
            consistency = load_consistency_decoder(decoder_path, self.model_dtype, local_files_only)
            self._check_consistency_decoder(consistency, decoder_path)
            self.consistency_decoder = _frozen(consistency, self.model_dtype)
        self._prompt_embeds: dict[str, Tensor] = {}
        #: number of UNet rows and calls since construction (benchmarks and tests read these)
        self.unet_rows_evaluated = 0
        self.unet_calls = 0

    # -- loading -----------------------------------------------------------------------------------
    @staticmethod
    def _schedule_from(scheduler) -> Tensor:
        """ᾱ_t of the pipeline's training schedule, rebuilt through DDPMScheduler from its config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler.config).alphas_cumprod

    # -- devices -----------------------------------------------------------------------------------
    def to_device(self, device: torch.device) -> DiffusersPrior:
        """Move to ``device``; with ``torch_dtype=auto`` also cast to its dtype (CUDA float16, CPU float32:
        float16 on a CPU is ~20x slower than float32 and looks hung)."""
        move_to_device(self, device, (self.unet, self.vae, self.text_encoder, self.consistency_decoder))
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- VAE ---------------------------------------------------------------------------------------
    def _check_consistency_decoder(self, consistency, decoder_path: str) -> None:
        """The consistency decoder must read this VAE's latents: same channels and upsampling factor, and
        the same scaling factor (it normalises VAE latents × its own scaling factor)."""
        factor = 2 ** (len(consistency.config.block_out_channels) - 1)
        channels = int(consistency.config.latent_channels)
        scaling = float(consistency.config.scaling_factor)
        if (channels, factor) != (self.latent_channels, self.latent_scale_factor) or scaling != self.vae_scaling_factor:
            raise ValueError(
                f"model.decoder_path={decoder_path!r} decodes {channels}-channel latents at {factor}x with scaling "
                f"factor {scaling}, but this pipeline's VAE has {self.latent_channels} channels, "
                f"{self.latent_scale_factor}x, {self.vae_scaling_factor}: use a consistency decoder trained for "
                "this VAE (openai/consistency-decoder for Stable Diffusion 1.x / InstructPix2Pix)"
            )

    def _posterior_latents(self, images: Tensor, pick) -> Tensor:
        """Unscaled latents ``pick(posterior)`` (mode or a sample) of images in [0, 1], whole-image or tiled
        (``vae_tile_stride``); gradients flow only where the caller enables them."""
        self._check_images(images)
        pixels = (2.0 * images - 1.0).to(device=self.vae.device, dtype=self.vae.dtype)

        def encode_tile(tile: Tensor) -> Tensor:
            return pick(self.vae.encode(tile).latent_dist)

        if self.vae_tile_stride is None:
            return encode_tile(pixels)
        return tiled(encode_tile, pixels, self.latent_scale_factor, 1, self.vae_tile_stride)

    def encode(
        self, images: Tensor, generator: torch.Generator | None = None, *, differentiable: bool = False
    ) -> Tensor:
        """z = s · VAE(2x − 1): the posterior mode, or a sample drawn with ``generator`` when one is given
        (tiled: the average of the tiles' modes / samples, drawn tile by tile, row-major, from ``generator``).

        ``differentiable=True`` keeps the graph through the (frozen) VAE encoder, so a loss on z reaches
        the images: what generation tasks need, whose images are renders of the parameters. Editing tasks
        encode fixed images and keep the default, which builds no graph. The scaling and the cast stay inside the
        grad mode too, so a caller running under ``torch.no_grad`` still gets the graph it asked for."""
        with torch.set_grad_enabled(differentiable):
            latents = self._posterior_latents(images, posterior_picker(generator))
            return (latents * self.vae_scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x = (D(z / s) + 1) / 2, clamped to [0, 1], float32; D is the VAE decoder or the consistency decoder,
        on the whole latent or tiled (``vae_tile_stride``: tiles averaged before the clamp, as the official
        code does).

        The consistency decoder is stochastic: its noise comes from ``generator``, by default a fresh one
        seeded with ``CONSISTENCY_DECODER_SEED``, so decoding the same latents gives the same image (a
        resumed run's snapshots match); the official code drew it from the global stream."""
        scaled = (latents / self.vae_scaling_factor).to(device=self.vae.device, dtype=self.vae.dtype)
        if self.consistency_decoder is None:

            def decode_tile(tile: Tensor) -> Tensor:
                return self.vae.decode(tile).sample

        else:
            decoder = self.consistency_decoder
            if generator is None:
                generator = torch.Generator(device=decoder.device).manual_seed(CONSISTENCY_DECODER_SEED)
            scaled = scaled.to(device=decoder.device, dtype=decoder.dtype)

            def decode_tile(tile: Tensor) -> Tensor:
                return decoder.decode(tile, generator=generator).sample

        if self.vae_tile_stride is None:
            images = decode_tile(scaled)
        else:
            images = tiled(decode_tile, scaled, 1, self.latent_scale_factor, self.vae_tile_stride)
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- text --------------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeddings(self, prompt: str) -> Tensor:
        """(1, L, D) text-encoder hidden states for ``prompt`` (cached per prompt, on the prior's device)."""
        cached = self._prompt_embeds.get(prompt)
        if cached is None:
            cached = self._prompt_embeds[prompt] = self.encode_prompt(prompt)
        elif cached.device != self.text_encoder.device:
            cached = self._prompt_embeds[prompt] = cached.to(self.text_encoder.device)
        return cached

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Tensor:
        """(1, L, D) text-encoder hidden states for ``prompt``, computed now (:meth:`prompt_embeddings` caches them)."""
        device = self.text_encoder.device
        tokens = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(device)
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]

    def _prompt_rows(self, prompts: list[str], repeats: list[int]) -> Tensor:
        """Stack cached embeddings: ``prompts[i]`` repeated ``repeats[i]`` times, in the UNet's dtype."""
        rows = [self.prompt_embeddings(p).expand(n, -1, -1) for p, n in zip(prompts, repeats)]
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    # -- UNet --------------------------------------------------------------------------------------
    @torch.no_grad()
    def unet_rows(self, sample: Tensor, t: int, encoder_hidden_states: Tensor) -> Tensor:
        """ε_φ for every row of ``sample`` at timestep t, in chunks of ``max_rows_per_call`` rows, float32.

        A v-prediction UNet's output is turned into ε = √ᾱ_t v + √(1 − ᾱ_t) x_t (x_t: the first
        ``latent_channels`` channels of the row).
        """
        sample = sample.to(device=self.device, dtype=self.dtype)
        # an integer t as int64 (as DDIM pipelines pass it), a fractional one (Euler samplers) as float32
        timestep = torch.tensor(t if isinstance(t, float) else int(t), device=self.device)
        chunk = self.max_rows_per_call or sample.shape[0]
        outputs = []
        for start in range(0, sample.shape[0], chunk):
            rows = slice(start, start + chunk)
            out = self.unet(
                sample[rows], timestep, encoder_hidden_states=encoder_hidden_states[rows], return_dict=False
            )[0]
            outputs.append(out.float())
            self.unet_calls += 1
            self.unet_rows_evaluated += out.shape[0]
        eps = torch.cat(outputs)
        if self.prediction_type == "v_prediction":
            alpha_bar = torch.tensor(alpha_bar_at(self.alphas_cumprod, t), device=eps.device)
            noisy = sample[:, : self.latent_channels].float()
            eps = alpha_bar.sqrt() * eps + (1.0 - alpha_bar).sqrt() * noisy
        return eps


def load_components(
    pipeline_class_name: str,
    pretrained_model_name_or_path: str | None,
    torch_dtype: str | torch.dtype,
    local_files_only: bool | None,
    **given,
) -> dict:
    """The networks, tokenizer and ᾱ_t schedule, from a pipeline folder / hub id or from given components.

    ``given`` holds ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and optionally ``scheduler`` (whose
    config gives the training schedule; without one, Stable Diffusion's scaled-linear schedule).
    """
    from .base import scaled_linear_alphas_cumprod

    scheduler = given.pop("scheduler", None)
    if pretrained_model_name_or_path is not None:
        if scheduler is not None or any(v is not None for v in given.values()):
            raise ValueError("pass either pretrained_model_name_or_path or components, not both")
        pipe = load_pipeline(
            pipeline_class_name, pretrained_model_name_or_path, resolve_dtype(torch_dtype), local_files_only
        )
        return dict(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            alphas_cumprod=DiffusersPrior._schedule_from(pipe.scheduler),
            prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
        )
    missing = [k for k in ("unet", "vae", "text_encoder", "tokenizer") if given.get(k) is None]
    if missing:
        raise ValueError(
            "pass pretrained_model_name_or_path, or all of unet, vae, text_encoder, tokenizer "
            f"(missing: {', '.join(missing)})"
        )
    alphas_cumprod = (
        DiffusersPrior._schedule_from(scheduler) if scheduler is not None else scaled_linear_alphas_cumprod()
    )
    prediction_type = scheduler.config.get("prediction_type", "epsilon") if scheduler is not None else "epsilon"
    return dict(given, alphas_cumprod=alphas_cumprod, prediction_type=prediction_type)
