"""The 3D task's dataset editors (Instruct-NeRF2NeRF's iterative dataset update, which CSD-Edit plugs
into): strategy objects chosen by ``task.editor._target_`` (config group ``editor=csd_edit | in2n``).

Every ``every`` steps from ``task.pretrain_steps`` an edit round takes the next ``views`` training views
(:meth:`csd_exp.tasks.scene3d.editing.Scene3DTask.edit_round_views`) and an editor replaces them by edited images:

* :class:`CSDEditEditor` (the paper): the renders of the round's views are the particles of CSD-Edit
  (Eq. 9), edited JOINTLY by ``iterations`` SGD steps of the task's guidance on their latents, with the
  original photos as sources and image condition.
* :class:`IN2NEditor` (the baseline of Table 2, Haque et al. 2023): each view is edited independently:
  the render is encoded, noised to a strength drawn from ``[noise_lower, noise_upper]`` of the training
  timesteps (IN2N: [0.02, 0.98]) and denoised in ``diffusion_steps`` (20) DDIM steps of InstructPix2Pix
  conditioned on the ORIGINAL photo, i.e. SDEdit from the render; consistency comes only from the
  radiance field averaging the edits and later edits starting at renders of that average. By default
  (``schedule=release``) the update is the release's ``InstructPix2Pix.edit_image`` (:func:`in2n_release_edit`,
  tested equal to it in tests/test_sampling_baselines.py; docs/baselines.md); ``schedule=linspace_ddim`` is
  the former update (:func:`in2n_edit`).

A new editor is one subclass of :class:`DatasetEditor` and one YAML naming it. An editor sees the task through
a :class:`~csd_exp.tasks.scene3d.view.SceneView` (prior, guidance, prompt, seed, the training image set and the
renders it edits), never the task itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

from csd_exp.arguments import checked
from csd_exp.distill.particles import Particles
from csd_exp.tasks.base import step_generator
from csd_exp.tasks.sampling import LeadingDDIM, guided_sample
from csd_exp.tasks.scene3d.view import SceneView

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveFloat, PositiveInt, Probability, UnitFraction


@torch.no_grad()
def in2n_edit(
    prior,
    render: torch.Tensor,
    original: torch.Tensor,
    *,
    prompt: str,
    generator: torch.Generator,
    lower: float = 0.02,
    upper: float = 0.98,
    diffusion_steps: int = 20,
    eta: float = 0.0,
    guidance_scale: float,
    image_guidance_scale: float,
) -> tuple[torch.Tensor, float]:
    """Edit ``render`` ``(N, 3, H, W)`` in [0, 1] conditioned on ``original`` (same shape).

    One strength (noise level as a fraction of the training timesteps) ~ U[lower, upper] is drawn from
    ``generator`` for the whole call (IN2N edits one view per call); ``eta = 0`` is DDIM as in IN2N.
    Returns the edited images in [0, 1] and the strength used.
    """
    if not 0.0 < lower <= upper <= 1.0:
        raise ValueError(f"need 0 < lower <= upper <= 1, got {lower}, {upper}")
    strength = lower + (upper - lower) * float(torch.rand((), generator=generator))
    init = prior.encode(render).float()
    image_cond = prior.encode_image_condition(original) if prior.supports_image_condition else None
    cond = prior.make_conditioning(
        prompt, image_cond=image_cond, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale
    )
    latents = guided_sample(
        prior,
        cond,
        tuple(init.shape),
        num_steps=diffusion_steps,
        eta=eta,
        strength=strength,
        init_latents=init,
        generator=generator,
        device=init.device,
    )
    return prior.decode(latents).float().clamp(0, 1), strength


def in2n_draws(
    generator: torch.Generator, shape: tuple, lower: float, upper: float, num_train_timesteps: int
) -> tuple[int, torch.Tensor]:
    """The release's two draws for one edit, from ``generator``: the start T ~ U{⌊T·lower⌋ … ⌊T·upper⌋} and the
    noise ε (the release draws both from the global RNG)."""
    low, high = int(num_train_timesteps * lower), int(num_train_timesteps * upper)
    start = int(torch.randint(low, high + 1, (1,), generator=generator))
    return start, torch.randn(shape, generator=generator, dtype=torch.float32)


@torch.no_grad()
def in2n_release_edit(
    prior,
    render: torch.Tensor,
    original: torch.Tensor,
    *,
    prompt: str,
    generator: torch.Generator,
    lower: float = 0.02,
    upper: float = 0.98,
    diffusion_steps: int = 20,
    eta: float = 0.0,
    guidance_scale: float,
    image_guidance_scale: float,
) -> tuple[torch.Tensor, float]:
    """Instruct-NeRF2NeRF's ``InstructPix2Pix.edit_image`` (in2n/ip2p.py at 2c0d385): a start T drawn as
    :func:`in2n_draws`; its DDIM scheduler (Stable Diffusion's config) re-spaced over T, so ``diffusion_steps``
    "leading" timesteps ``k · (T // n) + 1`` on the full ᾱ table, each step down by T // n, the last to
    ᾱ = alphas_cumprod[0]; the render's latents noised to the first of them; η = ``eta`` (the release: 0).
    Differs from the release only in its random draws: the render is encoded to the posterior mode (the
    release samples the posterior from the global RNG) and T and ε come from ``generator``.
    Returns the edited images in [0, 1] and T / num_train_timesteps."""
    if not 0.0 < lower <= upper <= 1.0:
        raise ValueError(f"need 0 < lower <= upper <= 1, got {lower}, {upper}")
    init = prior.encode(render).float()
    start, noise = in2n_draws(generator, tuple(init.shape), lower, upper, prior.num_train_timesteps)
    if start < diffusion_steps:
        raise ValueError(
            f"the drawn start timestep {start} is below task.editor.diffusion_steps={diffusion_steps} (the release's "
            "DDIM refuses more steps than timesteps): raise task.editor.noise_lower or lower diffusion_steps"
        )
    image_cond = prior.encode_image_condition(original) if prior.supports_image_condition else None
    cond = prior.make_conditioning(
        prompt, image_cond=image_cond, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale
    )
    process = LeadingDDIM(prior.alphas_cumprod, int(diffusion_steps), float(eta), spacing_timesteps=start)
    x = process.start(noise.to(init.device), init)
    for index, t in enumerate(process.timesteps):
        eps = prior.predict_noise(x, t, cond).target.float()
        x = process.step(index, x, eps, generator)
    return prior.decode(x).float().clamp(0, 1), start / prior.num_train_timesteps


def edit_round_positions(num_views: int, round_size: int, seed: int, round_index: int) -> list[int]:
    """Positions (in the training-view list) edited in round ``round_index``: consecutive slices of a
    stream of random permutations ("epochs") of the ``num_views`` training views, so every view is edited
    once before any is edited twice and no round holds a view twice (the paper: "at random without
    replacement"). A pure function of (seed, round): a resumed run edits what the uninterrupted one would."""
    stream: list[int] = []
    epoch = 0
    rounds: list[list[int]] = []
    while len(rounds) <= round_index:
        batch: list[int] = []
        while len(batch) < round_size:
            if not stream:
                stream = torch.randperm(num_views, generator=step_generator(seed, epoch, "edit-epoch")).tolist()
                epoch += 1
            candidate = stream.pop(0)
            if candidate not in batch:  # an epoch boundary may repeat a view of this round: skip it
                batch.append(candidate)
        rounds.append(batch)
    return rounds[round_index]


#: Where a CSD-Edit round starts: the render (as IN2N does) or the photo (``task.editor.init``).
EditInit = Literal["render", "source"]


class DatasetEditor:
    """Edits ``views`` training views every ``every`` steps; subclasses implement :meth:`edit_round`."""

    #: whether the task's guidance (a distillation method) drives this editor
    uses_guidance = False

    @checked
    def __init__(self, every: PositiveInt, views: PositiveInt):
        self.every, self.views = int(every), int(views)

    def attach(self, scene: SceneView) -> None:
        """Called once the task knows its scene and schedule (a hook for checks and horizons)."""

    def release_deviations(self) -> list[str]:
        """How a baseline editor departs from its release (see ``DistillationTask.release_deviations``)."""
        return []

    def edit_round(self, scene: SceneView, views: list[int], step: int, round_index: int) -> dict[str, float]:
        """Replace ``views`` in ``scene.images`` by edited images; return diagnostics for the loggers."""
        raise NotImplementedError


class CSDEditEditor(DatasetEditor):
    """Joint CSD-Edit of the round's renders (views = particles) with the task's guidance.

    ``iterations`` SGD steps of size ``lr`` (times ``lr_decay`` every ``lr_decay_every`` steps: the
    official code's SGD + StepLR) act on a local latent tensor that starts from the render
    (``init=render``, as IN2N starts from the render; UNCONFIRMED for CSD, paper notes §2.4) or the photo
    (``init=source``). Each iteration is one guidance call with its own stream id
    ``global_step * iterations + k`` (fresh t and noise, reproducible after a resume); an annealed
    timestep schedule runs over all edit iterations of the run (round r, iteration k sits at
    ``r * iterations + k``).
    """

    uses_guidance = True

    @checked
    def __init__(
        self,
        every: PositiveInt,
        views: PositiveInt,
        iterations: PositiveInt,
        lr: PositiveFloat,
        lr_decay: UnitFraction,
        lr_decay_every: PositiveInt,
        init: EditInit,
    ):
        super().__init__(every, views)
        self.iterations, self.lr = int(iterations), float(lr)
        self.lr_decay, self.lr_decay_every, self.init = float(lr_decay), int(lr_decay_every), init

    def attach(self, scene: SceneView) -> None:
        if scene.guidance is None:
            raise ValueError("editor=csd_edit needs a guidance (guidance=csd_edit | csd_edit_no_svgd | sds)")
        scene.guidance.schedule.set_horizon(scene.num_edit_rounds * self.iterations)

    def edit_round(self, scene: SceneView, views: list[int], step: int, round_index: int) -> dict[str, float]:
        """Under DDP each rank edits its contiguous share of the views (the guidance gathers what the
        kernel needs), then every rank receives every edited view, so the training sets stay equal."""
        shard = scene.shard(len(views))
        rendered, originals = scene.edit_inputs(views[shard.rows])
        source_latents, image_cond = scene.encode_sources(originals)
        z = scene.prior.encode(rendered).float() if self.init == "render" else source_latents.clone()
        grad_norms = []
        for k in range(self.iterations):
            lr = self.lr * self.lr_decay ** (k // self.lr_decay_every)
            out = scene.guidance(
                scene.prior,
                Particles(z, source_latents=source_latents, condition=image_cond),
                prompt=scene.prompt,
                step=step * self.iterations + k,
                schedule_step=round_index * self.iterations + k,
                seed=scene.seed,
                shard=shard,
            )
            if not torch.isfinite(out.gradients).all():
                raise FloatingPointError(
                    f"non-finite CSD-Edit gradient in the edit round at step {step}: lower "
                    "task.editor.lr or the guidance scales, or set guidance.grad_clip"
                )
            z = z - lr * out.gradients.to(z.dtype)
            grad_norms.append(float(out.diagnostics.get("grad_norm", math.nan)))
        edited = scene.prior.decode(z).float().clamp(0, 1)
        change = (edited - rendered).abs().flatten(1).mean(dim=1)
        if scene.process_group() is not None:
            from csd_exp.distill.distributed import gather_particles

            (edited, change), _ = gather_particles([edited.contiguous(), change], scene.process_group())
        for view, image in zip(views, edited):
            scene.images.replace(view, image.cpu())
        return {"views": len(views), "grad_norm": sum(grad_norms) / len(grad_norms), "change": float(change.mean())}


class IN2NEditor(DatasetEditor):
    """Instruct-NeRF2NeRF's per-view edit (:func:`in2n_release_edit`, or :func:`in2n_edit` with
    ``schedule=linspace_ddim``); its scales are the guidance group's."""

    @checked
    def __init__(
        self,
        every: PositiveInt,
        views: PositiveInt,
        diffusion_steps: PositiveInt,
        noise_lower: UnitFraction,
        noise_upper: UnitFraction,
        sampler_eta: Probability,
        guidance_scale: float,
        image_guidance_scale: float,
        schedule: Literal["release", "linspace_ddim"] = "release",
    ):
        super().__init__(every, views)
        self.schedule = schedule
        if noise_lower > noise_upper:  # each in (0, 1]: their annotations
            raise ValueError(
                f"need 0 < task.editor.noise_lower <= task.editor.noise_upper <= 1, got {noise_lower}, {noise_upper}"
            )
        self.diffusion_steps, self.sampler_eta = int(diffusion_steps), float(sampler_eta)
        self.noise_lower, self.noise_upper = float(noise_lower), float(noise_upper)
        self.guidance_scale, self.image_guidance_scale = float(guidance_scale), float(image_guidance_scale)

    def release_deviations(self) -> list[str]:
        """How this editor departs from the release's ``edit_image`` (empty: it follows it)."""
        if self.schedule == "linspace_ddim":
            return [
                "task.editor.schedule=linspace_ddim: continuous strength, linspace DDIM to ᾱ=1 (release: leading DDIM)"
            ]
        if self.sampler_eta != 0.0:
            return [f"task.editor.sampler_eta={self.sampler_eta}: the release samples at eta=0"]
        return []

    def edit_round(self, scene: SceneView, views: list[int], step: int, round_index: int) -> dict[str, float]:
        rendered, originals = scene.edit_inputs(views)
        strengths = []
        edit = in2n_release_edit if self.schedule == "release" else in2n_edit
        for i, view in enumerate(views):
            edited, strength = edit(
                scene.prior,
                rendered[i : i + 1],
                originals[i : i + 1],
                prompt=scene.prompt,
                generator=step_generator(scene.seed, step, f"in2n/{view}"),
                lower=self.noise_lower,
                upper=self.noise_upper,
                diffusion_steps=self.diffusion_steps,
                eta=self.sampler_eta,
                guidance_scale=self.guidance_scale,
                image_guidance_scale=self.image_guidance_scale,
            )
            scene.images.replace(view, edited[0].cpu())
            strengths.append(strength)
        return {"views": len(views), "strength": sum(strengths) / len(strengths)}
