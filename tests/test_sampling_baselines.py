"""The sampling baselines against the implementations they follow (issue 23, docs/baselines.md).

* MultiDiffusion (``task=panorama_sampling task.method=multidiffusion``) on a text-to-image SD against diffusers'
  ``StableDiffusionPanoramaPipeline``;
* per-frame / per-window InstructPix2Pix (``task=video_sampling``, ``task.method=per_window``) against diffusers'
  ``StableDiffusionInstructPix2PixPipeline``;
* Instruct-NeRF2NeRF's image update against the release's ``InstructPix2Pix.edit_image`` (in2n/ip2p.py at
  2c0d385), re-implemented here line by line from reading it;

all on tiny random-weight models built offline, float32, from the same initial noise (and the same per-step
draws: the pipelines' ancestral draws are replaced by ours, which is all "the same noise" can mean for two
random number streams). Tolerances: float32 rounding (ε = 1.2e-7) amplified by the network; we allow
``RTOL_F32 = 1e3 ε`` times the largest magnitude compared (measured differences are 60–500× smaller).
"""

from __future__ import annotations

import pytest
import torch

from csd_exp.data import ClipSource, ImageSource
from csd_exp.tasks.base import RunInputs, step_generator

EPS_F32 = float(torch.finfo(torch.float32).eps)
RTOL_F32 = 1e3 * EPS_F32
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PROMPT = "turn it into a pop-art painting"


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    assert scale > 0.1  # not a comparison of zeros
    diff = float((ours - theirs).abs().max())
    assert diff <= RTOL_F32 * scale, f"max |Δ| {diff:.3g} > {RTOL_F32 * scale:.3g} (scale {scale:.3g})"


def _run_steps(task) -> None:
    for index in range(len(task.timesteps)):
        task.training_step(index, index)


@pytest.fixture(scope="module")
def tiny_ip2p_folder(tmp_path_factory):
    from csd_exp.priors.tiny import _cached_build, build_tiny_ip2p

    return _cached_build(tmp_path_factory.mktemp("models"), "tiny_ip2p", build_tiny_ip2p, 0)


class _GivenDraws:
    """Stands in for diffusers' ``randn_tensor`` inside a scheduler: returns our per-step draws in order."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws = list(draws)

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        draw = self.draws.pop(0)
        assert tuple(draw.shape) == tuple(shape)
        return draw.to(device=device, dtype=dtype)


def _sampling_draws(seed: int, steps: int, shape) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=step_generator(seed, i, "sampling")) for i in range(steps)]


# ------------------------------------------------------------------------------------------ schedules
def test_default_timesteps_are_the_pipelines_schedulers():
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    from csd_exp.priors.base import scaled_linear_alphas_cumprod
    from csd_exp.tasks.sampling import EulerAncestral, LeadingDDIM, reverse_process

    alphas = DDIMScheduler(**SD_SCHEDULE).alphas_cumprod
    ddim = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    ddim.set_timesteps(50)
    ours = reverse_process("ddim", "pipeline", alphas, None, None)
    assert isinstance(ours, LeadingDDIM) and ours.eta == 0.0
    assert ours.timesteps == ddim.timesteps.tolist() and ours.timesteps[:2] == [981, 961] and ours.timesteps[-1] == 1
    euler = EulerAncestralDiscreteScheduler(**SD_SCHEDULE)
    euler.set_timesteps(100)
    ours = reverse_process("euler_ancestral", "pipeline", alphas, None, None)
    assert isinstance(ours, EulerAncestral) and len(ours.timesteps) == 100
    assert ours.timesteps == euler.timesteps.tolist() and ours.timesteps[1] == pytest.approx(988.9091)
    assert torch.equal(ours.sigmas, euler.sigmas) and ours.init_sigma == float(euler.init_noise_sigma)
    # at a fractional timestep the priors take ᾱ from the scheduler's interpolated σ (the exact prior uses it)
    from csd_exp.priors.base import alpha_bar_at

    for index in (1, 50, 98):
        sigma = float(euler.sigmas[index])
        expected = 1.0 / (1.0 + sigma**2)
        assert alpha_bar_at(alphas, ours.timesteps[index]) == pytest.approx(expected, rel=10 * EPS_F32)
    former = reverse_process("ddim", "linspace_ddim", scaled_linear_alphas_cumprod(), None, None)
    assert former.eta == 1.0 and former.timesteps[0] == 999 and former.timesteps[-1] == 20


def test_eta_with_the_euler_sampler_is_refused_naming_the_switch():
    from csd_exp.priors.base import scaled_linear_alphas_cumprod
    from csd_exp.tasks.sampling import reverse_process

    with pytest.raises(ValueError, match="task.eta=0.5 does nothing .* task.sampler=linspace_ddim"):
        reverse_process("euler_ancestral", "pipeline", scaled_linear_alphas_cumprod(), None, 0.5)


# ------------------------------------------------------------------------------------- MultiDiffusion
def _tiny_sd_with_8x_vae(tmp_path):
    """Tiny SD parts with a 4-level VAE (8 px per latent px): the panorama pipeline's window arithmetic
    assumes 8 (``get_views`` divides the image size by 8), so this is the tiny model it is correct on. Its
    windows are 64 latent px, so the UNet is narrower than the project's tiny one (cross-attention only at
    16 px) to keep the test fast."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from csd_exp.priors.tiny import TINY_HIDDEN_SIZE, tiny_components

    parts = tiny_components(tmp_path / "tokenizer", in_channels=4, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        parts["unet"] = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=TINY_HIDDEN_SIZE,
            attention_head_dim=4,
            norm_num_groups=4,
        ).eval()
        parts["vae"] = AutoencoderKL(
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
        ).eval()
    parts["scheduler"] = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return parts


def test_multidiffusion_equals_diffusers_panorama_pipeline(tmp_path):
    from diffusers import StableDiffusionPanoramaPipeline

    from csd_exp.priors.stable_diffusion import StableDiffusionPrior
    from csd_exp.tasks.panorama.sampling_baselines import PanoramaSamplingTask

    parts = _tiny_sd_with_8x_vae(tmp_path)
    prior = StableDiffusionPrior(**parts)
    task = PanoramaSamplingTask(
        prior,
        inputs=RunInputs(prompt="a photo of a rocket", seed=3),
        data=ImageSource(path="sample:rocket", resize_policy="short_side", short_side=64),
        method="multidiffusion",
        num_inference_steps=2,
        guidance_scale=7.5,
        image_guidance_scale=1.5,  # a text-to-image prior reads none
        window_size=64,  # the pipeline's windows: 64 latent px at stride 8
        window_stride=8,
    )
    task.setup("fit")
    height, width = task.grid.height, task.grid.width
    assert height == 64 and len(task.grid) >= 3  # several overlapping windows along the width
    noise = torch.randn(1, 4, height, width, generator=step_generator(3, 0, "sampling-init"))
    _run_steps(task)

    pipe = StableDiffusionPanoramaPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "a photo of a rocket",
        height=8 * height,
        width=8 * width,
        num_inference_steps=2,
        guidance_scale=7.5,
        latents=noise,
        output_type="latent",
    ).images
    assert task.timesteps == pipe.scheduler.timesteps.tolist()
    assert task.release_deviations() == []
    _close(task.canvas, theirs)


# ------------------------------------------------------------------------------------- InstructPix2Pix
def _ip2p_pipeline(folder):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_ip2p_pipeline(pipe, monkeypatch, image, noise, draws, steps, prompts):
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_module

    monkeypatch.setattr(euler_module, "randn_tensor", _GivenDraws(draws))
    return pipe(
        prompts,
        image=image,
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        latents=noise,
        output_type="latent",
    ).images


def test_per_frame_sampling_equals_diffusers_instruct_pix2pix_pipeline(tiny_ip2p_folder, monkeypatch):
    from csd_exp.priors.instruct_pix2pix import InstructPix2PixPrior
    from csd_exp.tasks.video.per_frame import VideoSamplingTask

    steps, seed = 4, 2
    task = VideoSamplingTask(
        InstructPix2PixPrior(str(tiny_ip2p_folder)),
        inputs=RunInputs(prompt=PROMPT, seed=seed, max_steps=100),
        data=ClipSource(path="sample:pan", max_frames=2),
        frame_size=8,
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
    )
    task.setup("fit")
    shape = tuple(task.latents.shape)
    noise = torch.randn(shape, generator=step_generator(seed, 0, "sampling-init"))
    _run_steps(task)
    frames = task.source_frames  # in [0, 1]: the pipeline encodes them itself (the posterior mode, as we do)
    theirs = _run_ip2p_pipeline(
        _ip2p_pipeline(tiny_ip2p_folder),
        monkeypatch,
        frames,
        noise,
        _sampling_draws(seed, steps, shape),
        steps,
        [PROMPT] * shape[0],
    )
    assert task.release_deviations() == []
    _close(task.latents, theirs)


def test_per_window_sampling_equals_diffusers_instruct_pix2pix_pipeline(tiny_ip2p_folder, monkeypatch):
    from csd_exp.priors.instruct_pix2pix import InstructPix2PixPrior
    from csd_exp.tasks.panorama.sampling_baselines import PanoramaSamplingTask

    steps, seed = 4, 4
    task = PanoramaSamplingTask(
        InstructPix2PixPrior(str(tiny_ip2p_folder)),
        inputs=RunInputs(prompt=PROMPT, seed=seed),
        data=ImageSource(path="sample:rocket", resize_policy="short_side", short_side=8),
        method="per_window",
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        window_size=8,
        window_stride=4,
    )
    task.setup("fit")
    every = range(len(task.grid))
    assert len(task.grid) >= 3
    shape = (len(task.grid), 4, 8, 8)
    noise = torch.randn(shape, generator=step_generator(seed, 0, "sampling-init"))
    _run_steps(task)
    # The windows' conditions are crops of the encoded panorama (4-channel latents: the pipeline takes them as
    # they are); the pipeline itself would encode each crop of the image, which the VAE's receptive field changes.
    condition = task.grid.crop(task.image_condition, every)
    theirs = _run_ip2p_pipeline(
        _ip2p_pipeline(tiny_ip2p_folder),
        monkeypatch,
        condition,
        noise,
        _sampling_draws(seed, steps, shape),
        steps,
        [PROMPT] * shape[0],
    )
    _close(task.state, theirs)
    _close(task.canvas, task.stitch(theirs))


def test_the_former_sampler_is_a_switch_marked_non_released(tiny_ip2p_folder):
    from csd_exp.priors.exact import ExactScorePrior
    from csd_exp.tasks.panorama.sampling_baselines import PanoramaSamplingTask
    from csd_exp.tasks.sampling import LinspaceDDIM

    def task(**kwargs):
        return PanoramaSamplingTask(
            ExactScorePrior(),
            inputs=RunInputs(prompt=PROMPT),
            data=ImageSource(path="sample:rocket", short_side=16),
            window_size=16,
            window_stride=8,
            guidance_scale=1.5,
            image_guidance_scale=1.5,
            **kwargs,
        )

    former = task(method="per_window", sampler="linspace_ddim")
    assert isinstance(former.process, LinspaceDDIM) and former.process.eta == 1.0 and len(former.timesteps) == 50
    assert former.release_deviations() and "linspace_ddim" in former.release_deviations()[0]
    assert task(method="multidiffusion", eta=0.5).release_deviations() == [
        "task.eta=0.5: the panorama pipeline samples at eta=0"
    ]
    assert task(method="multidiffusion").release_deviations() == []


def test_a_run_with_the_former_sampler_is_marked_in_summary_and_wandb(run_job):
    summary, _ = run_job(
        [
            "experiment=video_exact_cpu",
            "method=per_frame",
            "debug=smoke",
            "task.sampler=linspace_ddim",
            "task.num_inference_steps=2",
            "logger=wandb",
        ]
    )
    assert summary["status"] == "completed"
    assert summary["release_deviations"] and "linspace_ddim" in summary["release_deviations"][0]
    assert "non-released" in summary["wandb"]["tags"]


# --------------------------------------------------------------------------------- Instruct-NeRF2NeRF
def _release_edit_image(pipe, text_embeddings, image, image_cond, start, noise, diffusion_steps, gs, igs):
    """in2n/ip2p.py ``InstructPix2Pix.edit_image`` (2c0d385), written again from reading it, with its two
    global-RNG draws given (``start`` = T, ``noise``) and the render's posterior *sample* replaced by the mode
    (the one difference we keep, see docs/baselines.md). ``pipe.scheduler`` is its DDIMScheduler."""
    const_scale = 0.18215
    scheduler = pipe.scheduler
    scheduler.config.num_train_timesteps = start  # what the release does (the ᾱ table is not rebuilt)
    scheduler.set_timesteps(diffusion_steps)
    with torch.no_grad():
        latents = pipe.vae.encode(2 * image - 1).latent_dist.mode() * const_scale
        cond = pipe.vae.encode(2 * image_cond - 1).latent_dist.mode()
        image_cond_latents = torch.cat([cond, cond, torch.zeros_like(cond)], dim=0)
    latents = scheduler.add_noise(latents, noise, scheduler.timesteps[0])
    for t in scheduler.timesteps:
        with torch.no_grad():
            model_input = torch.cat([torch.cat([latents] * 3), image_cond_latents], dim=1)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=text_embeddings).sample
        text, img, uncond = noise_pred.chunk(3)
        noise_pred = uncond + gs * (text - img) + igs * (img - uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / const_scale).sample
    return (decoded / 2 + 0.5).clamp(0, 1), scheduler.timesteps.tolist()


def test_in2n_update_equals_the_release_edit_image(tiny_ip2p_folder):
    from diffusers import DDIMScheduler

    from csd_exp.priors.instruct_pix2pix import InstructPix2PixPrior
    from csd_exp.tasks.scene3d.editors import in2n_draws, in2n_release_edit

    prior = InstructPix2PixPrior(str(tiny_ip2p_folder))
    pipe = _ip2p_pipeline(tiny_ip2p_folder)
    # The release's scheduler: DDIMScheduler.from_pretrained("CompVis/stable-diffusion-v1-4", subfolder="scheduler")
    pipe.scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    lower, upper, seed, steps = 0.02, 0.98, 0, 10  # IN2N's bounds (in2n_pipeline.py); 10 of its 20 steps
    render = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    original = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 100))
    ours, strength = in2n_release_edit(
        prior,
        render,
        original,
        prompt=PROMPT,
        generator=torch.Generator().manual_seed(seed),
        lower=lower,
        upper=upper,
        diffusion_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
    )
    start, noise = in2n_draws(torch.Generator().manual_seed(seed), (1, 4, 8, 8), lower, upper, 1000)
    assert int(1000 * lower) <= start <= int(1000 * upper) and strength == start / 1000
    embeddings = pipe._encode_prompt(PROMPT, "cpu", 1, True, "")  # [text, "", ""] as in2n_pipeline.py builds them
    theirs, timesteps = _release_edit_image(pipe, embeddings, render, original, start, noise, steps, 7.5, 1.5)
    ratio = start // steps
    assert ratio < 1000 // steps  # this draw's T makes the spacing over T differ from the spacing over 1000
    assert timesteps == [k * ratio + 1 for k in range(steps - 1, -1, -1)]
    assert float(theirs.std()) > 1e-3  # a non-constant image
    diff = float((ours - theirs).abs().max())
    assert diff <= RTOL_F32, f"max |Δ| {diff:.3g} on images in [0, 1]"
