"""Guided ancestral / DDIM sampling with any ScorePrior: the InstructPix2Pix-style baselines.

One reverse step from t to t_prev (DDIM, Song et al. 2021, Eq. 12) with the guided noise estimate eps:

    x0 = (x_t - sigma_t * eps) / alpha_t
    x_prev = alpha_prev * x0 + sqrt(sigma_prev^2 - s^2) * eps + s * z,     z ~ N(0, I)
    s = eta * sqrt((sigma_prev^2 / sigma_t^2) * (1 - alpha_t^2 / alpha_prev^2))

with alpha = sqrt(alphas_cumprod), sigma = sqrt(1 - alphas_cumprod). ``eta = 1`` is DDPM's ancestral
sampler (exact for an exact score as the number of steps grows), ``eta = 0`` deterministic DDIM.
Starting from a noised image at ``strength < 1`` is SDEdit, which Instruct-NeRF2NeRF uses.
"""

from __future__ import annotations

import torch


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
) -> torch.Tensor:
    """One reverse step from ``t`` to ``t_prev`` (``None``: to the clean sample)."""
    abar_t = alphas_cumprod[t].to(x_t)
    abar_prev = alphas_cumprod[t_prev].to(x_t) if t_prev is not None else torch.ones((), device=x_t.device)
    x0 = predicted_clean(alphas_cumprod, x_t, eps, t)
    if t_prev is None:
        return x0
    sigma_prev_sq = 1 - abar_prev
    noise_scale = eta * ((sigma_prev_sq / (1 - abar_t)) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()
    direction = (sigma_prev_sq - noise_scale**2).clamp(min=0).sqrt() * eps
    z = torch.randn(x_t.shape, generator=generator, device="cpu", dtype=torch.float32).to(x_t)
    return abar_prev.sqrt() * x0 + direction + noise_scale * z


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
        num_inference_steps: int,
        eta: float,
        guidance_scale: float,
        image_guidance_scale: float,
        strength: float = 1.0,
    ) -> None:
        self.automatic_optimization = False
        self.eta, self.strength = float(eta), float(strength)
        self.guidance_scale, self.image_guidance_scale = float(guidance_scale), float(image_guidance_scale)
        self.timesteps = sampling_timesteps(self.prior.num_train_timesteps, int(num_inference_steps), self.strength)
        self.state: torch.Tensor | None = None
        self.reverse_steps_done = 0
        self.clean_estimate: torch.Tensor | None = None  # the clean sample the last reverse step predicts
        self.result_ready = False  # the task's latents hold the finished result

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
        t_prev = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else None
        alphas_cumprod = self.prior.alphas_cumprod.float()
        self.clean_estimate = predicted_clean(alphas_cumprod, self.state, eps, t)
        self.state = ddim_step(
            alphas_cumprod,
            self.state,
            eps,
            t,
            t_prev,
            self.eta,
            step_generator(self.seed, index, "sampling"),
        )
        self.reverse_steps_done = index + 1
        self.result_ready = t_prev is None  # the caller puts the final state into its latents
        self.log("t", float(t), prog_bar=True, on_step=True, rank_zero_only=True)
        return t_prev is None
