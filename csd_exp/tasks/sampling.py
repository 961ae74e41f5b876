"""Guided ancestral / DDIM sampling with any ScorePrior: the InstructPix2Pix-style baselines.

One reverse step from t to t_prev (DDIM, Song et al. 2021, Eq. 12) with the guided noise estimate eps:

    x0 = (x_t - sigma_t * eps) / alpha_t
    x_prev = alpha_prev * x0 + sqrt(sigma_prev^2 - s^2) * eps + s * z,     z ~ N(0, I)
    s = eta * sqrt((sigma_prev^2 / sigma_t^2) * (1 - alpha_t^2 / alpha_prev^2))

with alpha = sqrt(alphas_cumprod), sigma = sqrt(1 - alphas_cumprod). ``eta = 1`` is DDPM's ancestral
sampler (exact for an exact score as the number of steps grows), ``eta = 0`` deterministic DDIM.
Starting from a noised image at ``strength < 1`` is SDEdit, which Instruct-NeRF2NeRF uses.

The baselines' reverse processes (:func:`reverse_process`, ``task.sampler``):

* ``pipeline`` (default): the scheduler, timesteps and η of the diffusers pipeline the baseline follows,
  written out here and tested equal to it (tests/test_sampling_baselines.py, docs/baselines.md):

  - :class:`LeadingDDIM`, ``StableDiffusionPanoramaPipeline`` (MultiDiffusion) with Stable Diffusion's
    DDIM: "leading" timesteps ``k · T/n + 1`` (981 … 1 for 50 steps), the step to ``t − T/n`` and, past
    the first training timestep, to ᾱ = ``alphas_cumprod[0]`` (``set_alpha_to_one=False``); η = 0;
  - :class:`EulerAncestral`, ``StableDiffusionInstructPix2PixPipeline`` with InstructPix2Pix's
    ``EulerAncestralDiscreteScheduler``: fractional timesteps ``linspace(T − 1, 0, n)``, the state in
    σ units (x = z + σ ε, σ = √((1 − ᾱ)/ᾱ) interpolated at fractional t), the network fed x / √(σ² + 1),
    one ancestral draw per step; no η.

* ``linspace_ddim`` (the former sampler): the DDIM update above on ``linspace(strength · (T − 1), 0, n)``
  rounded, to ᾱ = 1 at the end, with η (default 1: ancestral).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from csd_exp.arguments import checked

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt, UnitFraction

#: ``task.sampler`` values: the followed pipeline's scheduler, or the former linspace DDIM sampler.
SamplerName = Literal["pipeline", "linspace_ddim"]
#: The diffusers pipelines the baselines follow, and their default number of steps.
PIPELINE_STEPS = {"ddim": 50, "euler_ancestral": 100}


def sampling_timesteps(num_train_timesteps: int, num_steps: int, strength: float = 1.0) -> list[int]:
    """Descending, evenly spaced timesteps; ``strength`` < 1 starts part-way (SDEdit)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    t_start = strength * (num_train_timesteps - 1)
    steps = torch.linspace(t_start, 0, num_steps + 1)[:-1]
    return [int(round(float(t))) for t in steps]


def predicted_clean(alphas_cumprod: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """The clean sample that ``x_t`` and its noise estimate ``eps`` at timestep ``t`` imply (x0 above)."""
    abar_t = alphas_cumprod[t].to(x_t)
    return (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()


def ddim_step(
    alphas_cumprod: torch.Tensor,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int | None,
    eta: float,
    generator: torch.Generator | None,
    *,
    final_alpha_bar: float | None = None,
) -> torch.Tensor:
    """One reverse step from ``t`` to ``t_prev``. ``t_prev=None`` (or negative) steps to ᾱ =
    ``final_alpha_bar``; with that ``None`` too, to the clean sample itself (ᾱ = 1)."""
    abar_t = alphas_cumprod[t].to(x_t)
    x0 = predicted_clean(alphas_cumprod, x_t, eps, t)
    if t_prev is not None and t_prev >= 0:
        abar_prev = alphas_cumprod[t_prev].to(x_t)
    elif final_alpha_bar is not None:
        abar_prev = torch.tensor(final_alpha_bar, dtype=x_t.dtype, device=x_t.device)
    else:
        return x0
    sigma_prev_sq = 1 - abar_prev
    noise_scale = eta * ((sigma_prev_sq / (1 - abar_t)) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()
    direction = (sigma_prev_sq - noise_scale**2).clamp(min=0).sqrt() * eps
    z = torch.randn(x_t.shape, generator=generator, device="cpu", dtype=torch.float32).to(x_t)
    return abar_prev.sqrt() * x0 + direction + noise_scale * z


def leading_timesteps(num_train_timesteps: int, num_steps: int, steps_offset: int = 1) -> list[int]:
    """diffusers' DDIM "leading" spacing: ``k · (T // n) + steps_offset`` for k = n − 1 … 0."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [k * ratio + steps_offset for k in range(num_steps - 1, -1, -1)]


def img2img_start(num_steps: int, strength: float) -> int:
    """The first of ``num_steps`` steps that a start at ``strength`` < 1 runs (diffusers' image-to-image rule)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return num_steps - min(int(num_steps * strength), num_steps)


class ReverseProcess:
    """A reverse process over a fixed timestep list; the task keeps the state ``x`` between steps.

    :meth:`start` makes the first state from unit noise (and, at ``strength`` < 1, the clean latents),
    :meth:`model_input` is what the noise predictor sees at step ``index`` (with :attr:`timesteps`),
    :meth:`clean` the clean latents the step's noise estimate implies, :meth:`step` the next state (the last
    step's is the result, in latent units).
    """

    timesteps: list

    def start(self, noise: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def model_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def clean(self, index: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, index: int, x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class _DDIMProcess(ReverseProcess):
    """DDIM steps (Eq. 12 of Song et al.) between the timesteps of :attr:`timesteps` and :meth:`previous`."""

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: list[int], eta: float):
        self.alphas_cumprod = alphas_cumprod.float()
        self.timesteps, self.eta = timesteps, float(eta)

    def previous(self, index: int) -> int | None:
        raise NotImplementedError

    final_alpha_bar: float | None = None

    def start(self, noise: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
        if clean is None:
            return noise
        alpha_bar = float(self.alphas_cumprod[self.timesteps[0]])  # as ScorePrior.add_noise
        return alpha_bar**0.5 * clean.float() + (1.0 - alpha_bar) ** 0.5 * noise.float()

    def clean(self, index: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return predicted_clean(self.alphas_cumprod, x, eps, self.timesteps[index])

    def step(self, index: int, x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = self.timesteps[index]
        return ddim_step(
            self.alphas_cumprod,
            x,
            eps,
            t,
            self.previous(index),
            self.eta,
            generator,
            final_alpha_bar=self.final_alpha_bar,
        )


class LinspaceDDIM(_DDIMProcess):
    """The former sampler: ``linspace(strength · (T − 1), 0, n)`` rounded, the last step to ᾱ = 1."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_steps: int, eta: float, strength: float = 1.0):
        super().__init__(alphas_cumprod, sampling_timesteps(len(alphas_cumprod), num_steps, strength), eta)

    def previous(self, index: int) -> int | None:
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else None


class LeadingDDIM(_DDIMProcess):
    """diffusers' ``DDIMScheduler`` as Stable Diffusion configures it (``steps_offset=1``,
    ``set_alpha_to_one=False``, "leading" spacing): steps of T // n, the last one to ᾱ = alphas_cumprod[0]."""

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        num_steps: int,
        eta: float = 0.0,
        strength: float = 1.0,
        *,
        spacing_timesteps: int | None = None,
    ):
        # spacing_timesteps: the T the spacing is computed over (default the schedule's own length);
        # Instruct-NeRF2NeRF sets the scheduler's num_train_timesteps to its drawn start T (docs/baselines.md)
        spacing = len(alphas_cumprod) if spacing_timesteps is None else int(spacing_timesteps)
        self.ratio = spacing // num_steps
        timesteps = leading_timesteps(spacing, num_steps)
        super().__init__(alphas_cumprod, timesteps[img2img_start(num_steps, strength) :], eta)
        self.final_alpha_bar = float(alphas_cumprod[0])

    def previous(self, index: int) -> int:
        return self.timesteps[index] - self.ratio


class EulerAncestral(ReverseProcess):
    """diffusers' ``EulerAncestralDiscreteScheduler`` ("linspace" spacing, epsilon prediction), InstructPix2Pix's.

    The state is x = z + σ ε (σ = √((1 − ᾱ)/ᾱ)); the network sees x / √(σ² + 1), which is the usual
    √ᾱ z + √(1 − ᾱ) ε, at the fractional timestep t. A step moves x to σ_down with the Euler derivative ε̂ and
    adds σ_up times a fresh draw (σ_up² = σ_next² (σ² − σ_next²) / σ², σ_down² = σ_next² − σ_up²).
    """

    @checked
    def __init__(self, alphas_cumprod: torch.Tensor, num_steps: PositiveInt, strength: UnitFraction = 1.0):
        import numpy as np

        total = len(alphas_cumprod)
        grid = np.linspace(0, total - 1, num_steps, dtype=np.float32)[::-1].copy()
        all_sigmas = np.array(((1 - alphas_cumprod.float()) / alphas_cumprod.float()) ** 0.5)
        sigmas = np.concatenate([np.interp(grid, np.arange(total), all_sigmas), [0.0]]).astype(np.float32)
        first = img2img_start(num_steps, strength)
        self.full_start = first == 0
        self.timesteps = [float(t) for t in grid[first:]]  # fractional: the network takes them as they are
        self.sigmas = torch.from_numpy(sigmas[first:])
        self.init_sigma = float(sigmas.max())  # linspace spacing: the initial noise is σ_max ε

    def start(self, noise: torch.Tensor, clean: torch.Tensor | None = None) -> torch.Tensor:
        if clean is None:
            return noise * self.init_sigma
        return clean.float() + noise * self.sigmas[0].to(noise)

    def model_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x / ((self.sigmas[index] ** 2 + 1) ** 0.5).to(x)

    def clean(self, index: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return x - self.sigmas[index].to(x) * eps

    def step(self, index: int, x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x.float()
        derivative = (x - self.clean(index, x, eps)) / sigma.to(x)
        x = x + derivative * (sigma_down - sigma).to(x)
        z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
        return x + z * sigma_up.to(x)


def reverse_process(
    kind: Literal["ddim", "euler_ancestral"],
    sampler: SamplerName,
    alphas_cumprod: torch.Tensor,
    num_steps: int | None,
    eta: float | None,
    strength: float = 1.0,
) -> ReverseProcess:
    """The baseline's reverse process: ``kind`` is the scheduler of the pipeline it follows (``ddim``:
    MultiDiffusion's panorama pipeline, ``euler_ancestral``: InstructPix2Pix's); ``sampler=linspace_ddim`` is
    the former sampler instead. ``num_steps`` / ``eta`` None: the sampler's default (pipeline: 50 DDIM steps
    at η = 0 / 100 Euler steps; linspace_ddim: 50 steps at η = 1)."""
    if sampler == "linspace_ddim":
        return LinspaceDDIM(alphas_cumprod, int(num_steps or 50), 1.0 if eta is None else float(eta), strength)
    steps = int(num_steps or PIPELINE_STEPS[kind])
    if kind == "ddim":
        return LeadingDDIM(alphas_cumprod, steps, 0.0 if eta is None else float(eta), strength)
    if eta is not None:
        raise ValueError(
            f"task.eta={eta} does nothing with InstructPix2Pix's Euler-ancestral sampler (task.sampler=pipeline): "
            "leave task.eta=null, or set task.sampler=linspace_ddim for the DDIM sampler with eta"
        )
    return EulerAncestral(alphas_cumprod, steps, strength)


def sampler_deviations(sampler: str, kind: str, eta: float | None) -> list[str]:
    """How a baseline's reverse process departs from the pipeline it follows (for ``release_deviations``)."""
    if sampler == "linspace_ddim":
        return [
            "task.sampler=linspace_ddim: DDIM on linspace timesteps to ᾱ=1 instead of the pipeline's "
            + ("leading-DDIM" if kind == "ddim" else "Euler-ancestral")
            + " scheduler"
        ]
    if kind == "ddim" and eta not in (None, 0.0):
        return [f"task.eta={eta}: the panorama pipeline samples at eta=0"]
    return []


@torch.no_grad()
def guided_sample(
    prior,
    cond,
    shape,
    *,
    num_steps: int = 50,
    eta: float = 1.0,
    strength: float = 1.0,
    init_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Sample latents of ``shape`` from ``prior`` under ``cond`` (a prior.make_conditioning result).

    With ``strength < 1`` sampling starts from ``init_latents`` noised to the first timestep.
    """
    alphas_cumprod = prior.alphas_cumprod.float()
    timesteps = sampling_timesteps(prior.num_train_timesteps, num_steps, strength)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    if strength < 1.0:
        if init_latents is None:
            raise ValueError("strength < 1 needs init_latents to start from")
        x = prior.add_noise(init_latents.float(), noise, timesteps[0])
    else:
        x = noise
    for index, t in enumerate(timesteps):
        eps = prior.predict_noise(x, t, cond).target.float()
        t_prev = timesteps[index + 1] if index + 1 < len(timesteps) else None
        x = ddim_step(alphas_cumprod, x, eps, t, t_prev, eta, generator)
    return x


class ReverseSamplingMixin:
    """For baseline tasks whose ``training_step`` is one reverse-diffusion step (no optimiser).

    Mixed into a task (before it in the bases): the dataloader yields one ticket per reverse step,
    ``completed_steps`` counts reverse steps, and :meth:`reverse_step` advances ``self.state``.

    Until the last step the task's own latents still hold the source, so what a validation or a snapshot
    shows mid-way is the clean sample the last reverse step predicts (:meth:`show_estimate` puts it into the
    task's latents at each validation); before the first reverse step (or, for a task that predicts none,
    before its result) there is nothing to show, and no validation point or snapshot is made
    (:attr:`has_result`): none ever scores the source against itself.
    """

    draws_per_step = False  # one reverse process, not one random draw per step: nothing to overfit
    uses_guidance = False  # only the guidance scales (its own keys): no distillation guidance, kernel or schedule

    def setup_reverse_process(
        self,
        num_inference_steps: int | None,
        eta: float | None,
        guidance_scale: float,
        image_guidance_scale: float,
        strength: float = 1.0,
        *,
        kind: Literal["ddim", "euler_ancestral"] | None = None,
        sampler: SamplerName = "linspace_ddim",
    ) -> None:
        """``kind``: the scheduler of the diffusers pipeline this baseline follows, with ``sampler``,
        ``num_inference_steps`` and ``eta`` as in :func:`reverse_process`. Without ``kind`` (a task that
        keeps its own timestep conventions, e.g. FateZero) the process is :class:`LinspaceDDIM` and reports no
        deviation: the task knows its release."""
        self.automatic_optimization = False
        self.strength = float(strength)
        self.sampler, self.sampler_kind = sampler, kind
        self.eta = None if eta is None else float(eta)
        self.guidance_scale, self.image_guidance_scale = float(guidance_scale), float(image_guidance_scale)
        alphas_cumprod = self.prior.alphas_cumprod
        if kind is None:
            eta_value = 1.0 if self.eta is None else self.eta
            self.process = LinspaceDDIM(alphas_cumprod, int(num_inference_steps or 50), eta_value, self.strength)
        else:
            self.process = reverse_process(kind, sampler, alphas_cumprod, num_inference_steps, self.eta, self.strength)
        self.timesteps = self.process.timesteps
        self.state: torch.Tensor | None = None
        self.reverse_steps_done = 0
        self.clean_estimate: torch.Tensor | None = None  # the clean sample the last reverse step predicts
        self.result_ready = False  # the task's latents hold the finished result

    def release_deviations(self) -> list[str]:
        if self.sampler_kind is None:
            return super().release_deviations()
        return sampler_deviations(self.sampler, self.sampler_kind, self.eta)

    def model_input(self, index: int) -> torch.Tensor:
        """What the noise predictor sees at reverse step ``index`` (the state, scaled for the Euler sampler)."""
        return self.process.model_input(index, self.state)

    @property
    def has_result(self) -> bool:
        """True once there is something to validate and snapshot: a reverse step's estimate or the result."""
        return self.result_ready or self.clean_estimate is not None

    def show_estimate(self, clean: torch.Tensor) -> None:
        """Put the clean estimate ``clean`` (the shape of ``self.state``) into the task's latents."""
        raise NotImplementedError

    def on_validation_start(self) -> None:
        super().on_validation_start()
        if not self.result_ready and self.clean_estimate is not None:
            self.show_estimate(self.clean_estimate)

    def validation_step(self, batch, batch_idx):
        if not self.has_result:
            return None
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        from csd_exp.tasks.base import StepTickets

        return DataLoader(StepTickets(len(self.timesteps)), batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return None

    @property
    def completed_steps(self) -> int:
        return self.reverse_steps_done

    def conditioning(self, image_cond: torch.Tensor | None):
        return self.prior.make_conditioning(
            self.prompt,
            image_cond=image_cond,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
        )

    def reverse_step(self, index: int, eps: torch.Tensor) -> bool:
        """Move ``self.state`` from timestep ``index`` to the next; True after the last step."""
        from csd_exp.tasks.base import step_generator

        t = self.timesteps[index]
        last = index + 1 == len(self.timesteps)
        self.clean_estimate = self.process.clean(index, self.state, eps)
        self.state = self.process.step(index, self.state, eps, step_generator(self.seed, index, "sampling"))
        self.reverse_steps_done = index + 1
        self.result_ready = last  # the caller puts the final state into its latents
        self.log("t", float(t), prog_bar=True, on_step=True, rank_zero_only=True)
        return last
