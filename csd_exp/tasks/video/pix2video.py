"""Pix2Video (Ceylan et al., ICCV 2023) zero-shot video editing, on Stable Diffusion 2 depth-to-image as released.

1. **DDIM inversion** of every frame on its own with the source prompt (conditional rows, guidance 1; no
   cross-frame attention, as the official ``perform_inversion``).
2. **Editing** from the inverted latents with the target prompt under classifier-free guidance, with
   * **self-attention feature injection** (Sec. 3.2): in the decoder's self-attention layers (the
     official ``COND_LAYER = 7``: every up-block layer of Stable Diffusion) frame i's queries attend to
     the keys and values of the anchor (first) frame and the previous frame,
     softmax(Q_i [K_a, K_{i−1}]ᵀ / √d) [V_a, V_{i−1}];
   * **latent update guidance** (Sec. 3.3): after each of the first ``latent_update_steps`` DDIM steps,
     x_{t−1}^i ← x_{t−1}^i − λ ∇_{x̂₀^i} mean((x̂₀^i − x̂₀^{i−1})²) = x_{t−1}^i − (2λ / D)(x̂₀^i − x̂₀^{i−1})
     for i >= 1, with x̂₀ the clean latents predicted at this step, x̂₀^{i−1} held fixed, D the size of
     one frame's latent and λ = ``latent_update_weight`` (official: λ = 100 for steps 0–25 of 50).

Pix2Video edits the frames one after another. Because frame i reads only frames 0 and i − 1 (causal),
running all frames as one batch per step computes exactly the sequential result: frame i − 1's features
and x̂₀ at step s do not depend on frame i, so they are the same whether frame i runs after it or beside it
(tests/test_video_pix2video.py runs a frame-by-frame re-implementation of the release's loop beside it).

**As released** (github.com/duyguceylan/pix2video at 304d318), the defaults:

* the model is Stable Diffusion 2 depth-to-image (``model=sd2_depth``, ``test_cfg.py``): every UNet row gets its
  frame's depth map as a fifth channel, from the pipeline's DPT estimator on the 8-bit frame, resized to the
  latent **bilinearly** and scaled to [−1, 1] (``file_utils.load_depth``; diffusers' pipeline resizes bicubically);
* the conditioning layers are the self-attention layers whose call-order index (down, mid, up) is at least
  ``COND_LAYER = 7`` (``unet_2d_blocks.py``): on SD 2's UNet (6 down, 1 mid, 9 up) exactly the up-block ones,
  which ``temporal_attention_blocks=[up]`` selects;
* the timesteps are its DDIMScheduler's (``test_cfg.py``: steps_offset left at 0, set_alpha_to_one false):
  "leading" spacing τ_k = (N − 1 − k)·⌊1000 / N⌋ (980, 960, …, 0 for 50 steps), and the clean end of both
  chains is the level ᾱ = alphas_cumprod[0] (its ``final_alpha_cumprod``): inversion starts from the clean
  latent taken at that level, the last editing step ends there (``prev_step`` / ``next_step``).

Variants, each a switch named for what it changes, listed by :meth:`VideoPix2VideoTask.release_deviations`
(and so in the run's record): a text-to-image prior (``model=sd15`` / ``sd21`` / ``tiny_sd``, no depth map),
``timestep_spacing=linspace`` (999 … evenly, the other baselines' sampler), ``set_alpha_to_one=true`` (clean
level ᾱ = 1), other ``temporal_attention_blocks`` / ``temporal_attention_min_level``. The frame-by-frame
release does its inversion with both guidance rows at scale 1 (ε(∅) + 1·(ε(y) − ε(∅))); this runs the
conditional row only, equal up to rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import torch

from csd_exp.arguments import checked
from csd_exp.data.sources import ClipSource
from csd_exp.priors.ddim_inversion import ddim_transfer, inversion_timestep, predicted_clean
from csd_exp.tasks.sampling import leading_timesteps, sampling_timesteps
from csd_exp.tasks.video.fatezero import InvertThenEditVideoTask, require_text_to_image_prior

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.priors.stable_diffusion import StableDiffusionPrior
    from csd_exp.priors.stable_diffusion_depth import StableDiffusionDepthPrior
    from csd_exp.schema.fields import NonNegativeFloat, NonNegativeInt, PositiveInt
    from csd_exp.tasks.base import RunInputs

#: Anchor and previous frame: the causal choices (frames after i would break the batched = sequential equality).
Pix2VideoFrame = Literal["first", "previous"]
PIX2VIDEO_FRAMES = get_args(Pix2VideoFrame)
#: The release's conditioning layers: self-attention layers at call-order index >= COND_LAYER (unet_2d_blocks.py).
RELEASE_COND_LAYER = 7
RELEASE_BLOCKS = ("up",)


class VideoPix2VideoTask(InvertThenEditVideoTask):
    """Pix2Video (module docstring).

    Args (beyond the run's inputs and ``task=video``'s data, frame_size):
        num_inference_steps, guidance_scale: DDIM steps N and classifier-free guidance ω.
        latent_update_weight: λ of the latent update (0: none).
        latent_update_steps: the update follows the first this many editing steps.
        temporal_attention_frames: ``[first, previous]`` (released) or ``[first]`` (its ``use_keyframe_only``).
        temporal_attention_blocks / _min_level: which self-attention layers read the other frames
            (released: ``[up]`` / 0, its ``COND_LAYER = 7``).
        timestep_spacing: ``leading`` (released: (N − 1 − k)·⌊1000 / N⌋) or ``linspace`` (999 … evenly).
        set_alpha_to_one: the clean end of the chains at ᾱ = 1 instead of the released ᾱ = alphas_cumprod[0].
    """

    task_option = "video_pix2video"
    temporal_inversion = False

    @checked
    def __init__(
        self,
        prior: StableDiffusionPrior | StableDiffusionDepthPrior,
        guidance: Any = None,
        *,
        inputs: RunInputs,
        data: ClipSource,
        frame_size: PositiveInt = 64,
        num_inference_steps: PositiveInt = 50,
        guidance_scale: float,
        latent_update_weight: NonNegativeFloat = 100.0,
        latent_update_steps: NonNegativeInt = 26,
        temporal_attention_frames: Annotated[
            Sequence[Pix2VideoFrame],
            Field(min_length=1, description="frames that read the anchor and earlier frames only: first, previous"),
        ] = PIX2VIDEO_FRAMES,
        temporal_attention_blocks: list[str] | tuple[str, ...] = RELEASE_BLOCKS,
        temporal_attention_min_level: NonNegativeInt = 0,
        timestep_spacing: Literal["leading", "linspace"] = "leading",
        set_alpha_to_one: bool = False,
    ):
        super().__init__(
            prior,
            guidance,
            inputs=inputs,
            data=data,
            frame_size=frame_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            temporal_attention_frames=temporal_attention_frames,
            temporal_attention_blocks=temporal_attention_blocks,
            temporal_attention_min_level=temporal_attention_min_level,
        )

        self.latent_update_weight = float(latent_update_weight)
        self.latent_update_steps = int(latent_update_steps)
        self.timestep_spacing = timestep_spacing
        self.set_alpha_to_one = bool(set_alpha_to_one)
        n, train = int(num_inference_steps), int(prior.num_train_timesteps)
        self.timesteps = (
            leading_timesteps(train, n, steps_offset=0)
            if timestep_spacing == "leading"
            else sampling_timesteps(train, n)
        )
        self.depth_conditioned = self._is_depth_prior(prior)
        for deviation in self.release_deviations():
            log.info("pix2video: not as released: %s", deviation)

    # ------------------------------------------------------------------ the release and its variants
    @staticmethod
    def _is_depth_prior(prior: Any) -> bool:
        from csd_exp.priors.stable_diffusion_depth import StableDiffusionDepthPrior

        return isinstance(prior, StableDiffusionDepthPrior)

    def check_prior(self, prior: Any) -> None:
        """SD 2 depth-to-image (as released) or SD text-to-image (the variant); anything else is refused."""
        if not self._is_depth_prior(prior):
            try:
                require_text_to_image_prior(prior, self.task_option)
            except ValueError:
                raise ValueError(
                    f"task=video_pix2video edits with a Stable Diffusion prior, not {type(prior).__name__}: choose "
                    "model=sd15, model=sd21, model=tiny_sd (text-to-image variant) or model=sd2_depth, "
                    "model=tiny_sd2_depth (SD 2 depth, as released)"
                ) from None

    def release_deviations(self) -> list[str]:
        """What this run does differently from the released code (empty: as released), one line each."""
        deviations = []
        if not self.depth_conditioned:
            deviations.append(
                f"prior: {self.prior.name} text-to-image without a depth map (released: SD 2 depth, model=sd2_depth)"
            )
        if self.timestep_spacing != "leading":
            deviations.append(f"timestep_spacing={self.timestep_spacing} (released: leading, 980 ... 0 for 50 steps)")
        if self.set_alpha_to_one:
            deviations.append("set_alpha_to_one=true: clean level 1 (released: alphas_cumprod[0])")
        if tuple(self.temporal_places) != RELEASE_BLOCKS or self.temporal_min_level != 0:
            deviations.append(
                f"temporal_attention_blocks={list(self.temporal_places)}, temporal_attention_min_level="
                f"{self.temporal_min_level} (released: the up-block self-attention, COND_LAYER = 7)"
            )
        return deviations

    def _alpha(self, t: int | None) -> torch.Tensor:
        """ᾱ at timestep t; ``None`` is the clean end: alphas_cumprod[0] as released, or 1 (set_alpha_to_one)."""
        alphas_cumprod = self.prior.alphas_cumprod.float()
        if t is None:
            return torch.ones(()) if self.set_alpha_to_one else alphas_cumprod[0].cpu()
        return alphas_cumprod[int(t)].cpu()

    # ------------------------------------------------------------------ depth
    def encode_sources(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Source latents and, on the depth prior, each frame's depth map as the release computes it (its
        ``load_depth``: bilinear resize to the latent, then [−1, 1])."""
        latents = self.prior.encode(images).float()
        if not self.depth_conditioned:
            return latents, None
        return latents, self.prior.depth_condition(images, resize="bilinear").float()

    def noise(self, x: torch.Tensor, t: int, prompts: list[str], hook=None, *, temporal: bool = True):
        """As the base class, with each frame's depth map as the UNet's fifth channel on the depth prior."""
        if self.depth_conditioned:
            x = self.prior.with_depth(x, self.image_condition.to(x.device))
        return super().noise(x, t, prompts, hook, temporal=temporal)

    # ------------------------------------------------------------------ steps
    def _inversion_step(self, step: int) -> int:
        """The release's ``next_step``: from τ_{N−step} (the clean level for step 0) to τ_{N−1−step}, with ε of
        the source prompt at τ_{N−1−step}, every frame on its own."""
        if step == 0:
            self.state = self.source_latents.clone()
        n = len(self.timesteps)
        t = inversion_timestep(self.timesteps, step)
        eps = self.noise(self.state, t, [self.source_prompt], temporal=False)[0]
        t_from = None if step == 0 else int(self.timesteps[n - step])
        self.state = ddim_transfer(self.state, eps, self._alpha(t_from).to(eps), self._alpha(t).to(eps))
        return t

    def editing_step(self, step: int) -> None:
        """The release's ``prev_step`` from τ_step to τ_{step+1} (the clean level after the last), then the
        latent update toward the previous frame's x̂₀."""
        t = int(self.timesteps[step])
        t_next = int(self.timesteps[step + 1]) if step + 1 < len(self.timesteps) else None
        eps, _ = self.guided_noise(self.state, t)
        alpha_t = self._alpha(t).to(eps)
        clean = predicted_clean(self.state, eps, alpha_t)
        self.state = ddim_transfer(self.state, eps, alpha_t, self._alpha(t_next).to(eps))
        if step < self.latent_update_steps and self.latent_update_weight > 0 and self.num_frames > 1:
            self.state = self.state - latent_update(clean, self.latent_update_weight)


def latent_update(clean: torch.Tensor, weight: float) -> torch.Tensor:
    """λ ∇_{x̂₀^i} mean((x̂₀^i − x̂₀^{i−1})²) for every frame (zero for frame 0, which has no previous frame)."""
    per_frame = clean[0].numel()
    update = torch.zeros_like(clean)
    update[1:] = (2.0 * weight / per_frame) * (clean[1:] - clean[:-1])
    return update
