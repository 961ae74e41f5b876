"""FateZero (Qi et al., ICCV 2023) zero-shot video editing on a Stable Diffusion text-to-image prior.

1. **DDIM inversion** of every frame with the source prompt (``source_prompt``, its caption), conditional
   rows only (guidance 1), through a UNet whose self-attention is spatio-temporal (frame i attends to the
   frames of ``temporal_attention_frames``, FateZero Sec. 3.3), storing the cross- and self-attention maps
   of every inversion step at the resolutions FateZero stores (:mod:`csd_exp.priors.attention_control`).
2. **Editing** from the inverted latents with the target prompt (``prompt``) under classifier-free
   guidance, fusing the stored maps into the target's conditional rows: cross-attention refinement (or
   replacement) of the words the prompts share for the first ``cross_replace_steps`` of the steps, the
   ``eq_params`` reweighting, and self-attention from the source, blended with the mask thresholded
   (``blend_th``) from the source cross-attention of ``blend_words``, for the first ``self_replace_steps``
   (FateZero Sec. 3.2, Eq. 4–6).

One training step is one UNet call over all frames (batched): steps 0 … N − 1 invert, N … 2N − 1 edit
(``ReverseSamplingMixin``'s one-reverse-step-per-step, with the inversion in front), so the progress bar,
the loggers, the snapshots and ``summary.json`` are those of every sampling baseline. Everything is
deterministic (DDIM, η = 0): a run resumed from a checkpoint replays the steps before it (inversion and
the attention store are not checkpointed) and ends as the uninterrupted run.

``official_release=true`` reproduces every deterministic behaviour of FateZero's released code
(github.com/ChenyangQiQi/FateZero at 9b6cb7b; measured equal on a tiny SD, docs/baselines.md): GroupNorm
statistics over the whole clip, DDIM "leading" timesteps with steps_offset 1, the clean level
alphas_cumprod[0], its blend-mask layers, its refine mapper's padding, its cross-replace step count, its
stored-map size limit and its configs' sparse-causal choice; each has a switch named for what it changes
(``clip_groupnorm``, ``timestep_spacing``, ``clean_level``, ``blend_layers``, ``refine_padding``,
``cross_replace_count``, ``stored_maps``; null follows ``official_release``). Four more switches make our
float32 arithmetic follow the release's order of operations where the two compute the same values differently
(``attention_product``: the explicit attention products; ``time_embedding_rows``: the timestep MLPs once per
clip; ``decode_arithmetic``: z · (1/s) and x / 2 + 0.5; ``latent_layout``: contiguous latents), so that its
frames are equal to float32 rounding. Its two random draws are not
reproduced: the VAE posterior *sample* (here: the mode) and the random bias of its zero-initialised temporal
attention (here: absent, i.e. a zero bias). Differences kept on purpose: no Tune-A-Video weights (its
zero-shot setting), one ``blend_words`` list (the source words that make the self-attention mask;
FateZero's target words only feed its latent blending, which its configs leave off), a single ``blend_th``
(FateZero's mask reads only its first entry).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal

import torch

from csd_exp.data.sources import ClipSource
from csd_exp.data.video import default_memory_budget
from csd_exp.priors.attention_control import (
    STORE_MIN_LEVEL,
    TEMPORAL_ATTENTION_FRAMES,
    UNET_PLACES,
    AttentionStore,
    VideoAttention,
    attention_layers,
)
from csd_exp.priors.attention_fusion import AttentionFusion, fusion_settings, released_blend_layers
from csd_exp.priors.attention_release import released_text_attention, released_vae_attention
from csd_exp.priors.ddim_inversion import ddim_transfer, inversion_timestep
from csd_exp.tasks.sampling import ReverseSamplingMixin, leading_timesteps
from csd_exp.tasks.video.fatezero_release import (
    RELEASE_SWITCHES,
    RELEASED_EXPLICIT_MAX_QUERIES,
    RELEASED_TEMPORAL_FRAMES,
    RELEASED_TEMPORAL_MIN_CHANNELS,
    released_store_min_level,
    resolve_release_switches,
)
from csd_exp.tasks.video.frames import VideoTask

if TYPE_CHECKING:
    from csd_exp.priors.stable_diffusion import StableDiffusionPrior
    from csd_exp.schema.fields import NonNegativeInt, PositiveInt, Probability
    from csd_exp.tasks.base import RunInputs

log = logging.getLogger(__name__)

#: The model groups of a Stable Diffusion text-to-image prior, for the error a Python caller gets (the
#: compose-time check finds them in conf/model by the ``prior`` annotation of the task's constructor).
TEXT_TO_IMAGE_MODEL_GROUPS = ("sd15", "sd21", "tiny_sd")


def require_text_to_image_prior(prior: Any, task: str) -> None:
    """These baselines edit with a Stable Diffusion text-to-image UNet (4 latent channels, text only)."""
    from csd_exp.priors.stable_diffusion import StableDiffusionPrior

    if not isinstance(prior, StableDiffusionPrior):
        raise ValueError(
            f"task={task} edits with a Stable Diffusion text-to-image prior, not {type(prior).__name__}: choose "
            f"model={', model='.join(TEXT_TO_IMAGE_MODEL_GROUPS)} (any SD 1.x / 2.x folder: model=sd15 "
            "model.pretrained_model_name_or_path=/path)"
        )


class InvertThenEditVideoTask(ReverseSamplingMixin, VideoTask):
    """DDIM inversion of the clip (N steps), then N editing steps, one batched UNet call per step.

    Subclasses implement :meth:`inversion_hook` (what records the inversion's attention, or None),
    :meth:`editing_step` and say whether the inversion uses the cross-frame attention.
    """

    task_option = "video_inversion"
    temporal_inversion = True

    def __init__(
        self,
        prior: StableDiffusionPrior,
        guidance: Any = None,
        optimizer=None,
        lr_scheduler=None,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float,
        temporal_attention_frames: list[str] | tuple[str, ...] = ("first", "previous"),
        temporal_attention_blocks: list[str] | tuple[str, ...] = UNET_PLACES,
        temporal_attention_min_level: int = 0,
        temporal_attention_min_channels: int | None = None,
        clip_groupnorm: bool = False,
        timestep_spacing: Literal["leading", "linspace"] = "linspace",
        clean_level: Literal["alphas_cumprod_0", "one"] = "one",
        explicit_attention_max_queries: int = 0,
        per_clip_time_embedding: bool = False,
        **kwargs,
    ):
        self.check_prior(prior)  # before the clip is read
        super().__init__(prior, guidance, optimizer, lr_scheduler, **kwargs)
        self.latents.requires_grad_(False)
        self.setup_reverse_process(int(num_inference_steps), 0.0, guidance_scale, 1.0)
        if timestep_spacing == "leading":
            self.timesteps = leading_timesteps(self.prior.num_train_timesteps, int(num_inference_steps))
        self.timestep_spacing, self.clean_level = timestep_spacing, clean_level
        self.clip_groupnorm = bool(clip_groupnorm)
        self.explicit_attention_max_queries = int(explicit_attention_max_queries)
        self.per_clip_time_embedding = bool(per_clip_time_embedding)
        self.temporal_min_channels = (
            None if temporal_attention_min_channels is None else int(temporal_attention_min_channels)
        )
        frames, places = list(temporal_attention_frames), list(temporal_attention_blocks)
        if not frames or any(f not in TEMPORAL_ATTENTION_FRAMES for f in frames):
            raise ValueError(
                f"task.temporal_attention_frames={frames} is not allowed: expected a non-empty list of "
                f"{', '.join(TEMPORAL_ATTENTION_FRAMES)}"
            )
        if any(p not in UNET_PLACES for p in places):
            raise ValueError(
                f"task.temporal_attention_blocks={places} is not allowed: expected a list of {', '.join(UNET_PLACES)}"
            )
        limit = prior.max_rows_per_call
        if limit is not None and limit < self.num_frames:
            raise ValueError(
                f"task={self.task_option} attends across all {self.num_frames} frames in one UNet call, but "
                f"model.max_rows_per_call={limit}: set it to at least {self.num_frames} (or null), or read fewer "
                "frames (data.max_frames)"
            )
        self.temporal_frames, self.temporal_places = frames, places
        self.temporal_min_level = int(temporal_attention_min_level)
        self.attention: VideoAttention | None = None
        self._next_index = 0

    def check_prior(self, prior: Any) -> None:
        """Refuse a prior of the wrong family (FateZero: Stable Diffusion text-to-image)."""
        require_text_to_image_prior(prior, self.task_option)

    # ------------------------------------------------------------------ steps
    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        from csd_exp.tasks.base import StepTickets

        return DataLoader(StepTickets(2 * self.num_steps), batch_size=None, shuffle=False)

    def configure_particles(self, device: torch.device) -> None:
        super().configure_particles(device)
        if self.attention is None:
            self.attention = VideoAttention(
                self.prior.unet,
                temporal_frames=self.temporal_frames,
                temporal_places=self.temporal_places,
                temporal_min_level=self.temporal_min_level,
                temporal_min_channels=self.temporal_min_channels,
                clip_groupnorm=self.clip_groupnorm,
                explicit_max_queries=self.explicit_attention_max_queries,
                per_clip_time_embedding=self.per_clip_time_embedding,
            )

    @torch.no_grad()
    def training_step(self, batch, batch_idx):
        index = int(batch)
        while self._next_index < index:  # resumed from a checkpoint: replay the deterministic steps before it
            self._advance(self._next_index, log_step=False)
        self._advance(index, log_step=True)
        return None

    def _advance(self, index: int, log_step: bool) -> None:
        if index < self.num_steps:
            t = self._inversion_step(index)
        else:
            t = self.timesteps[index - self.num_steps]
            self.editing_step(index - self.num_steps)
            if index == 2 * self.num_steps - 1:
                self.latents.data.copy_(self.state)
                self.result_ready = True  # validations and snapshots before this would show the source
                self.release_inversion()
        self._next_index = index + 1
        self.reverse_steps_done = index + 1
        if log_step:
            self.log("t", float(t), prog_bar=True, on_step=True, rank_zero_only=True)
            self.log("train/inverting", float(index < self.num_steps), on_step=True, rank_zero_only=True)

    def _inversion_step(self, step: int) -> int:
        if step == 0:
            self.state = self.source_latents.clone()
        t = inversion_timestep(self.timesteps, step)
        hook = self.inversion_hook(step)
        eps = self.noise(self.state, t, [self.source_prompt], hook, temporal=self.temporal_inversion)[0]
        self.after_inversion_call(step)
        n = self.num_steps
        level_from = self.alpha_bar(None if step == 0 else self.timesteps[n - step], self.state)
        self.state = ddim_transfer(self.state, eps, level_from, self.alpha_bar(t, self.state))
        return t

    def alpha_bar(self, t: int | None, like: torch.Tensor) -> torch.Tensor:
        """ᾱ at timestep ``t``; ``None`` is the clean level: 1, or alphas_cumprod[0] (``clean_level``)."""
        alphas_cumprod = self.prior.alphas_cumprod.float()
        if t is None:
            value = alphas_cumprod[0] if self.clean_level == "alphas_cumprod_0" else torch.ones(())
        else:
            value = alphas_cumprod[int(t)]
        return value.to(dtype=like.dtype, device=like.device)

    def sampling_step(self, x: torch.Tensor, eps: torch.Tensor, step: int) -> torch.Tensor:
        """Editing step ``step``: DDIM (η = 0) from τ_step to τ_{step+1}, the clean level after the last."""
        t_to = self.timesteps[step + 1] if step + 1 < self.num_steps else None
        return ddim_transfer(x, eps, self.alpha_bar(self.timesteps[step], x), self.alpha_bar(t_to, x))

    def inversion_hook(self, step: int):
        return None

    def after_inversion_call(self, step: int) -> None:
        pass

    def release_inversion(self) -> None:
        pass

    def editing_step(self, step: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------- UNet
    def noise(self, x: torch.Tensor, t: int, prompts: list[str], hook=None, *, temporal: bool = True):
        """ε for the frames ``x`` under each prompt: a list of (F, C, h, w), one per prompt.

        Rows are [prompt 0 × F frames, prompt 1 × F, …] in as few UNet calls as ``model.max_rows_per_call``
        allows, never splitting a prompt's frames (they attend to each other); ``hook`` sees the call that
        holds the last prompt's rows, which are that call's last F rows."""
        prior, frames = self.prior, x.shape[0]
        embeds = torch.cat([self.prompt_embeddings(p).expand(frames, -1, -1) for p in prompts])
        embeds = embeds.to(device=prior.device, dtype=prior.dtype)
        rows = torch.cat([x] * len(prompts))
        per_call = len(prompts) if prior.max_rows_per_call is None else max(prior.max_rows_per_call // frames, 1)
        outputs = []
        for start in range(0, len(prompts), per_call):
            stop = min(start + per_call, len(prompts))
            part = slice(start * frames, stop * frames)
            call_hook = hook if stop == len(prompts) else None
            context = self.attention.clip(frames, tuple(x.shape[-2:]), call_hook) if temporal else nullcontext()
            with context:
                outputs.append(prior.unet_rows(rows[part], t, embeds[part]))
        return list(torch.cat(outputs).to(x.device).chunk(len(prompts)))

    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """(1, L, D) text-encoder states of ``prompt`` (the prior's, cached there)."""
        return self.prior.prompt_embeddings(prompt)

    def guided_noise(self, x: torch.Tensor, t: int, hook=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided ε, ε of the target prompt): ε(∅) + ω (ε(y) − ε(∅)), the target's rows last."""
        eps_uncond, eps_text = self.noise(x, t, ["", self.prompt], hook)
        return eps_uncond + self.guidance_scale * (eps_text - eps_uncond), eps_text

    def teardown(self, stage: str) -> None:
        if self.attention is not None:
            self.attention.remove()
            self.attention = None


class VideoFateZeroTask(InvertThenEditVideoTask):
    """FateZero: inversion with an attention store, then editing with attention fusion (module docstring).

    Args (beyond ``task=video``'s prompt, source_prompt, data, frame_size, seed):
        num_inference_steps: DDIM steps N (inversion and editing each take N).
        guidance_scale: classifier-free guidance ω of the editing rows.
        cross_replace_steps: fraction of the editing steps whose cross-attention takes the source's maps.
        self_replace_steps: fraction of the editing steps whose self-attention takes the source's maps.
        is_replace_controller: replacement (token for token, prompts of equal token length) instead of
            refinement (shared words only).
        blend_words: source-prompt words whose cross-attention masks where the target's own self-attention
            is kept; None = the source's self-attention everywhere.
        blend_th: threshold of that mask (on the map normalised to max 1).
        eq_params: ``{words: [...], values: [...]}``: multiply the target words' cross-attention.
        temporal_attention_frames / _blocks / _min_level: the spatio-temporal self-attention. Frames or
            min_level given (not None) replace the release's choice entirely; both None: the release's
            (frame i reads the middle frame, layers of >= 640 channels) under ``official_release``, else
            [first, previous] at level >= 1.
        attention_store_device: where the inversion's maps are kept (None: the UNet's device; ``cpu``).
        official_release: every deterministic behaviour of FateZero's released code (github.com/ChenyangQiQi/
            FateZero at 9b6cb7b); each switch below set to None follows it, set explicitly wins:
        clip_groupnorm: GroupNorm statistics over the whole clip in every ResNet block and the output norm
            (release) instead of per frame.
        timestep_spacing: ``leading`` (DDIM leading spacing, steps_offset 1: 901 … 1 for 10 steps; release)
            or ``linspace`` (999 … 20 for 10).
        clean_level: ᾱ of the clean latent at both ends, ``alphas_cumprod_0`` (set_alpha_to_one false;
            release) or ``one``.
        blend_layers: the blend mask's layers, ``released`` (stored cross-attention layers in call order,
            down [2:4] + up [:3]) or ``coarsest`` (the coarsest down / up cross-attention layers).
        refine_padding: the refine mapper's padding alignment, ``released`` (target position p <- source p)
            or ``shifted`` (the source's padding in order).
        cross_replace_count: the number of cross-replaced steps, ``n_plus_1`` (int(c · (N + 1)); release) or
            ``n`` (int(c · N)).
        stored_maps: which layers' maps are stored and fused, ``max_1024_tokens`` (queries of at most 32²
            positions; release) or ``level1`` (half the latent's side and coarser).
        attention_product: ``explicit``: attention in the release's order of operations (release): in
            every UNet layer of at most 32² queries baddbmm(q, kᵀ, α = scale) → softmax → bmm, the same in
            the VAE, and the text encoder's q · scale before the product (transformers 4.25); or ``fused``:
            the installed libraries' kernels (``scaled_dot_product_attention`` wherever no map is stored or
            fused). Same attention, other float32 rounding.
        decode_arithmetic: ``times_inverse_scale``: frames = D(z · (1 / s)) / 2 + 0.5 in chunks of 16 frames
            (release) or ``divide_by_scale``: (D(z / s) + 1) / 2 (the prior's decode).
        latent_layout: ``contiguous``: frames and latents in contiguous (F, C, H, W) memory, as the release
            hands them to its VAE and UNet (release), or ``as_encoded``: the layout the frames came in
            (channels-last from H, W, C images); a convolution rounds differently on the two.
        time_embedding_rows: ``per_clip``: the timestep MLP and the ResNet blocks' timestep projections on one
            row per clip, repeated over its frames (the release's pseudo-3D UNet), or ``per_row``. Same
            values, other float32 rounding.
    """

    task_option = "video_fatezero"
    temporal_inversion = True

    def __init__(
        self,
        prior: StableDiffusionPrior,
        guidance: Any = None,
        *,
        inputs: RunInputs,
        data: ClipSource,
        frame_size: PositiveInt = 64,
        num_inference_steps: PositiveInt = 50,
        guidance_scale: float,
        cross_replace_steps: Probability = 0.8,
        self_replace_steps: Probability = 0.9,
        is_replace_controller: bool = False,
        blend_words: list[str] | None = None,
        blend_th: Probability = 0.3,
        eq_params: dict | None = None,
        temporal_attention_frames: list[str] | tuple[str, ...] | None = None,
        temporal_attention_blocks: list[str] | tuple[str, ...] = UNET_PLACES,
        temporal_attention_min_level: NonNegativeInt | None = None,
        attention_store_device: str | None = None,
        official_release: bool = False,
        clip_groupnorm: bool | None = None,
        timestep_spacing: Literal["leading", "linspace"] | None = None,
        clean_level: Literal["alphas_cumprod_0", "one"] | None = None,
        blend_layers: Literal["released", "coarsest"] | None = None,
        refine_padding: Literal["released", "shifted"] | None = None,
        cross_replace_count: Literal["n_plus_1", "n"] | None = None,
        stored_maps: Literal["max_1024_tokens", "level1"] | None = None,
        attention_product: Literal["explicit", "fused"] | None = None,
        time_embedding_rows: Literal["per_clip", "per_row"] | None = None,
        decode_arithmetic: Literal["times_inverse_scale", "divide_by_scale"] | None = None,
        latent_layout: Literal["contiguous", "as_encoded"] | None = None,
    ):
        switches = resolve_release_switches(
            bool(official_release),
            temporal_attention_frames=temporal_attention_frames,
            temporal_attention_min_level=temporal_attention_min_level,
            clip_groupnorm=clip_groupnorm,
            timestep_spacing=timestep_spacing,
            clean_level=clean_level,
            blend_layers=blend_layers,
            refine_padding=refine_padding,
            cross_replace_count=cross_replace_count,
            stored_maps=stored_maps,
            attention_product=attention_product,
            time_embedding_rows=time_embedding_rows,
            decode_arithmetic=decode_arithmetic,
            latent_layout=latent_layout,
        )
        self.official_release = bool(official_release)
        self.release_switches = {name: switches[name] for name in RELEASE_SWITCHES}
        self.released_attention = switches["attention_product"] == "explicit"
        self.decode_arithmetic = switches["decode_arithmetic"]
        self.latent_layout = switches["latent_layout"]
        self._released_embeddings: dict[str, torch.Tensor] = {}
        self.blend_layer_choice, self.stored_maps = switches["blend_layers"], switches["stored_maps"]
        super().__init__(
            prior,
            guidance,
            inputs=inputs,
            data=data,
            frame_size=frame_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            temporal_attention_frames=switches["temporal_attention_frames"],
            temporal_attention_blocks=temporal_attention_blocks,
            temporal_attention_min_level=switches["temporal_attention_min_level"],
            temporal_attention_min_channels=switches["temporal_attention_min_channels"],
            clip_groupnorm=switches["clip_groupnorm"],
            timestep_spacing=switches["timestep_spacing"],
            clean_level=switches["clean_level"],
            explicit_attention_max_queries=(
                RELEASED_EXPLICIT_MAX_QUERIES if switches["attention_product"] == "explicit" else 0
            ),
            per_clip_time_embedding=switches["time_embedding_rows"] == "per_clip",
        )

        self.fusion = fusion_settings(
            prior.tokenizer,
            self.source_prompt,
            self.prompt,
            num_steps=self.num_steps,
            cross_replace_steps=cross_replace_steps,
            self_replace_steps=self_replace_steps,
            replace=bool(is_replace_controller),
            blend_words=blend_words,
            blend_th=blend_th,
            eq_params=eq_params,
            refine_padding=switches["refine_padding"],
            cross_count_of_n_plus_1=switches["cross_replace_count"] == "n_plus_1",
        )
        latent_hw = tuple(self.latents.shape[-2:])
        self.store_min_level = (
            released_store_min_level(latent_hw) if self.stored_maps == "max_1024_tokens" else STORE_MIN_LEVEL
        )
        self.blend_layers: list[str] | None = None
        if self.fusion.blend_positions and self.blend_layer_choice == "released":  # refused here, before any step
            self.blend_layers = released_blend_layers(attention_layers(prior.unet), self.store_min_level)
        if attention_store_device is not None:
            torch.device(attention_store_device)  # a bad name fails here, not after the first step
        self.attention_store_device = attention_store_device
        self.store: AttentionStore | None = None
        self.fuser: AttentionFusion | None = None
        self._store_budget: int | None = None

    def release_deviations(self) -> list[str]:
        """Each switch not at the release's value, and a temporal-attention choice other than the released
        configs' (summary.json ``release_deviations``, W&B tag ``non-released``; docs/baselines.md)."""
        notes = [
            f"task.{name}={value} (released: {RELEASE_SWITCHES[name][0]})"
            for name, value in self.release_switches.items()
            if value != RELEASE_SWITCHES[name][0]
        ]
        released_temporal = (RELEASED_TEMPORAL_FRAMES, 0, RELEASED_TEMPORAL_MIN_CHANNELS)
        if (tuple(self.temporal_frames), self.temporal_min_level, self.temporal_min_channels) != released_temporal:
            notes.append(
                f"task.temporal_attention_frames={list(self.temporal_frames)} temporal_attention_min_level="
                f"{self.temporal_min_level} (released configs: the middle frame in layers of >= 640 channels)"
            )
        return notes

    # ------------------------------------------------- the release's arithmetic outside the UNet
    def encode_sources(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The source latents, with the VAE's attention as ``attention_product`` says; ``latent_layout=
        contiguous``: in the release's memory layout. Its frames reach the VAE as a contiguous (F, 3, H, W)
        batch (``data/dataset.py`` 118-119, then ``rearrange`` to (b f), a copy) and every latent after is
        contiguous, where ours may be channels-last (frames read as H, W, C): a convolution rounds
        differently on the two layouts."""
        if self.latent_layout == "contiguous":
            images = images.contiguous()
        context = released_vae_attention(self.prior.vae) if self.released_attention else nullcontext()
        with context:
            latents, condition = super().encode_sources(images)
        return (latents.contiguous() if self.latent_layout == "contiguous" else latents), condition

    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """The prior's embeddings, or (``attention_product=explicit``) the text encoder's output with the
        release's attention arithmetic, cached here (the prior's cache keeps its own)."""
        if not self.released_attention:
            return super().prompt_embeddings(prompt)
        cached = self._released_embeddings.get(prompt)
        if cached is None:
            with released_text_attention(self.prior.text_encoder):
                cached = self._released_embeddings[prompt] = self.prior.encode_prompt(prompt)
        return cached

    def edited_frames(self) -> torch.Tensor:
        """The decoded frames; ``decode_arithmetic=times_inverse_scale`` decodes as the release does
        (``pipelines/stable_diffusion.py`` 297-311), with the VAE's attention as ``attention_product`` says."""
        prior = self.prior
        tiled_or_consistency = prior.vae_tile_stride is not None or prior.consistency_decoder is not None
        if self.decode_arithmetic != "times_inverse_scale" or tiled_or_consistency:  # the prior's decode
            if not self.released_attention:
                return super().edited_frames()
            with released_vae_attention(prior.vae):
                return super().edited_frames()
        vae = prior.vae
        scaled = (self.latents.detach() * (1.0 / prior.vae_scaling_factor)).to(device=vae.device, dtype=vae.dtype)
        context = released_vae_attention(vae) if self.released_attention else nullcontext()
        with torch.no_grad(), context:
            images = torch.cat([vae.decode(chunk).sample for chunk in torch.split(scaled, 16)])
        return (images / 2 + 0.5).clamp(0, 1).float().cpu()

    def inversion_hook(self, step: int) -> AttentionStore:
        if step == 0:
            self.store, self.fuser = AttentionStore(self.attention_store_device, self.store_min_level), None
            self._store_budget = self._memory_budget()
        keep_cross, keep_self = self.fusion.store_needs(self.num_steps - 1 - step)
        self.store.step, self.store.keep_cross, self.store.keep_self = step, keep_cross, keep_self
        return self.store if (keep_cross or keep_self) else None

    def _memory_budget(self) -> int | None:
        device = self.store.device or self.prior.device
        if device.type == "cpu":
            return default_memory_budget()
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0] * 0.8)
        return None

    def after_inversion_call(self, step: int) -> None:
        """The memory guard: project the store's size from this step; refuse before it outgrows the budget."""
        if self._store_budget is None or step not in self.store.maps:
            return
        later = sum(any(self.fusion.store_needs(self.num_steps - 1 - j)) for j in range(step + 1, self.num_steps))
        projected = self.store.total_bytes + self.store.step_bytes(step) * later
        if projected > self._store_budget:
            self.store = None
            device = self.attention_store_device or self.prior.device
            raise ValueError(
                f"FateZero's attention store would need {projected / 2**20:,.1f} MiB for {self.num_frames} frames "
                f"and {self.num_steps} steps on {device}, more than the {self._store_budget / 2**20:,.1f} MiB "
                "available: read fewer frames (data.max_frames), set task.attention_store_device=cpu, or lower "
                "task.num_inference_steps / task.self_replace_steps"
            )

    def editing_step(self, step: int) -> None:
        if self.fuser is None:
            self.fuser = AttentionFusion(self.store, self.fusion, self.attention.layers, self.blend_layers)
            self.fuser.latent_hw = tuple(self.state.shape[-2:])
            log.info(
                "fatezero: inverted %d frames; attention store %.1f MiB on %s",
                self.num_frames,
                self.store.total_bytes / 2**20,
                self.attention_store_device or self.prior.device,
            )
        self.fuser.edit_step = step
        eps, _ = self.guided_noise(self.state, self.timesteps[step], self.fuser)
        self.store.maps.pop(self.num_steps - 1 - step, None)  # each source step is read once
        self.state = self.sampling_step(self.state, eps, step)

    def release_inversion(self) -> None:
        self.store, self.fuser = None, None
