"""task=video_pix2video: the CLI end to end on the bundled clip and a frame folder, the latent update's
gradient, batched frames = the sequential method (causality), and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from framework_support import FAST, compose_config, run_cli

from csd_exp.data.video_write import write_frames


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run as fast on one thread, and one thread is not slowed by a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ["task=video_pix2video", "model=tiny_sd", "task.frame_size=8", "data.max_frames=3"]
PROMPTS = ["source_prompt=a photo of a city street", "prompt=a watercolor photo of a city street"]
SUMMARY_KEYS = {"status", "metrics", "seed", "steps", "wall_time_s", "versions", "device", "world_size", "outputs"}
VIDEO_METRICS = {"fidelity/psnr", "fidelity/ssim", "consistency/warp_error"}


def test_the_cli_runs_two_steps_on_the_bundled_clip_and_on_a_frame_folder(tmp_path):
    """One CLI sweep over the two inputs; one DDIM step each way (inversion, then an edit with the
    anchor / previous-frame attention and the latent update)."""
    write_frames(torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(0)), tmp_path / "clip")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        *PROMPTS,
        *FAST,
        "task.num_inference_steps=1",
        f"data.path=sample:pan,{tmp_path / 'clip'}",
    ]
    result = run_cli(args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 2
    import imageio.v3 as iio

    for out, metrics in zip(runs, (VIDEO_METRICS, VIDEO_METRICS - {"consistency/warp_error"})):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        assert SUMMARY_KEYS <= set(summary) and set(summary["metrics"]) == metrics
        assert summary["config"]["method"] == "pix2video"
        for name in ("edited.mp4", "edited.gif", "source.mp4", "edited_grid.png", "edited_frames/frame_00002.png"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert iio.imread(runs[1] / "edited_frames" / "frame_00000.png").shape == (20, 30, 3)


def test_the_latent_update_is_the_gradient_of_the_official_loss():
    """Official: loss = lambda * mse(x0_prev, x0) per frame, x_{t-1} -= d loss / d x0 (x0_prev fixed)."""
    from csd_exp.tasks.video.pix2video import latent_update

    clean = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.zeros_like(clean)
    for i in (1, 2):
        x0 = clean[i].clone().requires_grad_(True)
        (100.0 * torch.nn.functional.mse_loss(clean[i - 1], x0)).backward()
        expected[i] = x0.grad
    assert torch.allclose(latent_update(clean, 100.0), expected, rtol=1e-12, atol=0)
    assert latent_update(clean, 100.0)[0].eq(0).all()


def _edited_latents(tmp_path, frames: int):
    from csd_exp.run import build_task

    clip = tmp_path / "clip"
    if not clip.is_dir():
        write_frames(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), clip)
    overrides = [
        *TINY,
        *PROMPTS,
        f"data.path={clip}",
        f"data.max_frames={frames}",
        "task.num_inference_steps=2",
        "model.torch_dtype=float64",
    ]
    task = build_task(compose_config(overrides, tmp_path / str(frames)))
    task.configure_particles(torch.device("cpu"))
    for index in range(4):
        task._advance(index, log_step=False)
    return task.latents.detach().clone()


def test_batched_frames_compute_the_sequential_method(tmp_path):
    """Frame i reads only frames 0 and i - 1 (attention and latent update), so editing 3 frames together gives
    frames 0-1 exactly as editing the first 2 alone, which is what the sequential method computes (float64:
    rows batched in different numbers round alike to ~1e-15)."""
    three, two = _edited_latents(tmp_path, 3), _edited_latents(tmp_path, 2)
    assert (three[:2] - two).abs().max() < 1e-10
    assert (three[1] - three[0]).abs().max() > 1e-3  # the frames are not all the same


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.temporal_attention_frames=[middle]"], "anchor and earlier frames only"),
        (["task.temporal_attention_blocks=[decoder]"], "expected a list of down, mid, up"),
    ],
)
def test_bad_pix2video_input_fails_before_any_step(overrides, message, tmp_path):
    from csd_exp.run import build_task

    with pytest.raises(ValueError, match=message):
        build_task(compose_config([*TINY, *PROMPTS, *overrides], tmp_path))


# ------------------------------------------------------------------------------------------------------------------
# As released (github.com/duyguceylan/pix2video at 304d318) on the tiny SD 2 depth pipeline.
DEPTH = ["task=video_pix2video", "model=tiny_sd2_depth", "task.frame_size=8"]
RELEASE_COND_LAYER = 7  # mydiffusers/models/unet_2d_blocks.py


class ReleaseSelfAttention:
    """The release's self-attention (code/custom_utils.py ``new_forward`` with the ``COND_LAYER`` test of
    unet_2d_blocks.py), re-implemented: it returns its input as this frame's features, and in layers of call-order
    index >= COND_LAYER with injected features it takes keys and values from them instead of its own input."""

    def __init__(self, shared: dict, name: str):
        self.shared, self.name = shared, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        shared = self.shared
        index = shared["order"].index(self.name) if self.name in shared["order"] else len(shared["order"])
        if self.name not in shared["order"]:
            shared["order"].append(self.name)
        shared["features"][index] = hidden_states
        source = hidden_states
        if shared["inject"] is not None and index >= RELEASE_COND_LAYER:
            source = shared["inject"][index]
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(source)), attn.head_to_batch_dim(attn.to_v(source))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(query, key, None), value))
        return attn.to_out[1](attn.to_out[0](out))


def release_depth(prior, image_uint8, latent_hw):
    """code/file_utils.py ``load_depth`` (no .npy on disk): estimator depth, bilinear to the latent, [-1, 1],
    float32."""
    pixel_values = prior.feature_extractor(images=[image_uint8], return_tensors="pt").pixel_values
    depth = prior.depth_estimator(pixel_values.to(prior.depth_estimator.dtype)).predicted_depth
    depth = depth.permute((1, 2, 0)).squeeze(dim=-1)[None, None]
    depth = torch.nn.functional.interpolate(depth, size=latent_hw, mode="bilinear", align_corners=False)
    low, high = torch.amin(depth, dim=[1, 2, 3], keepdim=True), torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    return (2.0 * (depth - low) / (high - low) - 1.0).type(torch.FloatTensor)


@torch.no_grad()
def release_loop(prior, frames_uint8, source_prompt, prompt, num_steps, guidance_scale):
    """code/video_model_cross_frame_attn.py ``perform_inversion`` then ``test``, frame by frame, with its
    DDIMScheduler (test_cfg.py: steps_offset 0, set_alpha_to_one false) and its latent update (weight 100 for
    steps <= 25). Returns (inverted latents, edited latents), one row per frame."""
    import numpy as np

    unet, dtype = prior.unet, prior.dtype
    shared = {"order": [], "features": {}, "inject": None}
    unet.set_attn_processor(
        {
            name: ReleaseSelfAttention(shared, name) if ".attn1." in name else proc
            for name, proc in unet.attn_processors.items()
        }
    )
    alphas_cumprod = prior.alphas_cumprod  # the scheduler's float32 tensor
    final_alpha_cumprod = alphas_cumprod[0]
    ratio = prior.num_train_timesteps // num_steps
    timesteps = torch.from_numpy((np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64)) + 0

    def embed(text):
        tokens = prior.tokenizer(
            [text],
            padding="max_length",
            max_length=prior.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return prior.text_encoder(tokens.input_ids)[0]

    def forward(latent, depth, t, context, inject):
        shared["inject"], shared["features"] = inject, {}
        out = unet(torch.cat((latent, depth), dim=1), t, encoder_hidden_states=context).sample
        return out, [shared["features"][j] for j in range(len(shared["features"]))]

    def get_noise_pred(latent, depth, t, context, inject_uncond, inject_cond, forward_step):
        scale = 1.0 if forward_step else guidance_scale
        uncond, feats_uncond = forward(latent, depth, t, context[0], inject_uncond)
        cond, feats_cond = forward(latent, depth, t, context[1], inject_cond)
        eps = uncond + scale * (cond - uncond)
        if forward_step:  # next_step
            timestep, next_timestep = min(int(t) - ratio, 999), int(t)
            alpha_t = alphas_cumprod[timestep] if timestep >= 0 else final_alpha_cumprod
            alpha_next = alphas_cumprod[next_timestep]
            x0 = (latent - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
            return alpha_next**0.5 * x0 + (1 - alpha_next) ** 0.5 * eps, x0, feats_uncond, feats_cond
        prev_timestep = int(t) - ratio  # prev_step
        alpha_t = alphas_cumprod[int(t)]
        alpha_prev = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod
        x0 = (latent - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
        return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps, x0, feats_uncond, feats_cond

    latent_hw = tuple(s // prior.latent_scale_factor for s in frames_uint8[0].shape[:2])
    latents, depths = [], []
    for image in frames_uint8:  # VideoDataset.image2latent
        pixels = torch.from_numpy(image).type(torch.FloatTensor) / 127.5 - 1
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).to(dtype)
        latents.append(prior.vae.encode(pixels)["latent_dist"].mean * prior.vae.config.scaling_factor)
        depths.append(release_depth(prior, image, latent_hw))

    context = [embed(""), embed(source_prompt)]  # perform_inversion
    inversions = []
    for latent, depth in zip(latents, depths):
        for i in range(num_steps):
            t = timesteps[len(timesteps) - i - 1]
            latent, _, _, _ = get_noise_pred(latent, depth, t, context, None, None, True)
        inversions.append(latent)

    context = [embed(""), embed(prompt)]  # test
    feats_uncond, feats_cond, prev_x0 = [], [], []
    edited = []
    for i, (latent, depth) in enumerate(zip(inversions, depths)):
        cur_uncond, cur_cond, x0_list = [], [], []
        for step in range(num_steps):  # decode
            weight = 0 if step > 25 else 100.0
            inject_uncond = feats_uncond[step] if feats_uncond else None
            inject_cond = feats_cond[step] if feats_cond else None
            latent, x0, f_uncond, f_cond = get_noise_pred(
                latent, depth, timesteps[step], context, inject_uncond, inject_cond, False
            )
            cur_uncond.append(f_uncond)
            cur_cond.append(f_cond)
            if prev_x0:
                with torch.enable_grad():
                    dummy = x0.clone().detach().requires_grad_(True)
                    (weight * torch.nn.functional.mse_loss(prev_x0[step], dummy)).backward()
                    latent = latent + dummy.grad.clone() * -1.0
            x0_list.append(x0)
        edited.append(latent)
        prev_x0 = x0_list
        if i == 0:
            first_uncond, first_cond = cur_uncond, cur_cond
        feats_uncond = [[torch.cat([a, b], dim=1) for a, b in zip(f, c)] for f, c in zip(first_uncond, cur_uncond)]
        feats_cond = [[torch.cat([a, b], dim=1) for a, b in zip(f, c)] for f, c in zip(first_cond, cur_cond)]
    return torch.cat(inversions), torch.cat(edited), list(shared["order"])


def _depth_task(tmp_path, *overrides, frames: int = 3, steps: int = 3):
    from csd_exp.run import build_task

    clip = tmp_path / "clip"
    if not clip.is_dir():  # frames at the task's size (16 px): read back exactly, as 8-bit values
        write_frames(torch.rand(frames, 3, 16, 16, generator=torch.Generator().manual_seed(2)), clip)
    cfg = compose_config(
        [*DEPTH, *PROMPTS, f"data.path={clip}", f"data.max_frames={frames}", f"task.num_inference_steps={steps}",
         "model.torch_dtype=float64", *overrides],
        tmp_path / "_".join(["run", *overrides]).replace("/", "_"),
    )  # fmt: skip
    task = build_task(cfg)
    task.configure_particles(torch.device("cpu"))
    return task


def _run(task) -> tuple[torch.Tensor, torch.Tensor]:
    for index in range(task.num_steps):
        task._advance(index, log_step=False)
    inverted = task.state.detach().clone()
    for index in range(task.num_steps, 2 * task.num_steps):
        task._advance(index, log_step=False)
    return inverted, task.latents.detach().clone()


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """Our batched run and the release's frame-by-frame loop on the same tiny SD 2 depth model and frames."""
    import copy

    tmp_path = tmp_path_factory.mktemp("pix2video_release")
    task = _depth_task(tmp_path)
    assert task.release_deviations() == []
    inverted, edited = _run(task)
    prior = copy.deepcopy(task.prior)  # the release loop installs its own attention processors
    frames = [image for image in (task.source_frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    steps, scale = task.num_steps, task.guidance_scale
    release_inverted, release_edited, order = release_loop(prior, frames, task.source_prompt, task.prompt, steps, scale)
    return dict(task=task, inverted=inverted, edited=edited, release_inverted=release_inverted,
                release_edited=release_edited, order=order, tmp_path=tmp_path)  # fmt: skip


def _float32_tolerance(reference: torch.Tensor, operations: int) -> float:
    """Ours keeps the latents in float32 between float64 UNet calls (the release: float64 throughout), so each of
    the chain's DDIM / update operations may round once at float32: eps32 · max|x| per operation."""
    return operations * torch.finfo(torch.float32).eps * float(reference.abs().max())


def test_batched_frames_equal_the_release_frame_by_frame_loop(release_run):
    """Same tiny SD 2 depth model, frames, prompts, 3 DDIM steps, ω 7.5, λ 100: the inverted and the edited
    latents of all 3 frames match the release's loop to float32 rounding (its frame 1 reads frame 0's features
    twice, frame 2 frame 0's and frame 1's, each at the same step and guidance branch; x̂₀ updates from step 0)."""
    run = release_run
    inverted, release_inverted = run["inverted"], run["release_inverted"].float()
    torch.testing.assert_close(inverted, release_inverted, rtol=0, atol=_float32_tolerance(release_inverted, 8))
    edited, release_edited = run["edited"], run["release_edited"].float()
    torch.testing.assert_close(edited, release_edited, rtol=0, atol=_float32_tolerance(release_edited, 32))
    assert float((edited[2] - edited[1]).abs().max()) > 1e-2  # three different frames, not a trivial match


def test_the_conditioning_layers_are_the_releases_cond_layer_selection(release_run):
    """The release injects features in self-attention layers of call-order index >= COND_LAYER = 7; on SD 2
    depth's layout (6 down, 1 mid, 9 up: the tiny pipeline keeps it) those are exactly our temporal layers."""
    order, task = release_run["order"], release_run["task"]
    assert len(order) == 16
    places = [name.split("_")[0] for name in order]
    assert places == ["down"] * 6 + ["mid"] + ["up"] * 9  # call order: down, mid, up
    assert set(task.attention.temporal_layers()) == set(order[RELEASE_COND_LAYER:])


def test_sd2_depth_has_the_layer_layout_the_tiny_model_copies():
    """stabilityai/stable-diffusion-2-depth's UNet config (its unet/config.json, block keys) built on the meta
    device: 6 down, 1 mid and 9 up self-attention layers, so COND_LAYER = 7 is the first up-block layer there too."""
    from diffusers import UNet2DConditionModel

    from csd_exp.priors.tiny_depth import SD2_DEPTH_BLOCKS

    config = dict(
        in_channels=5, out_channels=4, sample_size=64, block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, layers_per_block=2, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    assert {key: config[key] for key in SD2_DEPTH_BLOCKS} == SD2_DEPTH_BLOCKS
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    self_attention = [name for name in unet.attn_processors if ".attn1." in name]
    counts = {place: sum(name.startswith(place) for name in self_attention) for place in ("down", "mid", "up")}
    assert counts == {"down": 6, "mid": 1, "up": 9}
    assert counts["down"] + counts["mid"] == RELEASE_COND_LAYER


def test_the_release_timesteps_and_clean_level():
    """The release's DDIMScheduler(scaled_linear, clip_sample=False, set_alpha_to_one=False), steps_offset left at
    0: timesteps 980 ... 0 for 50 steps, final level alphas_cumprod[0]; the tiny pipeline saves that scheduler."""
    from diffusers import DDIMScheduler

    from csd_exp.tasks.sampling import leading_timesteps

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    assert scheduler.config.steps_offset == 0
    for steps in (50, 10, 3):
        scheduler.set_timesteps(steps)
        assert leading_timesteps(1000, steps, steps_offset=0) == scheduler.timesteps.tolist()
    assert leading_timesteps(1000, 50, steps_offset=0) == list(range(980, -1, -20))
    assert torch.equal(scheduler.final_alpha_cumprod, scheduler.alphas_cumprod[0])


@pytest.mark.parametrize(
    "override, deviation",
    [
        ("task.timestep_spacing=linspace", "timestep_spacing=linspace"),
        ("task.set_alpha_to_one=true", "set_alpha_to_one=true"),
        ("task.temporal_attention_min_level=1", "temporal_attention_min_level=1"),
    ],
)
def test_each_variant_switch_changes_the_result_and_is_recorded(override, deviation, release_run):
    task = _depth_task(release_run["tmp_path"], override)
    assert len(task.release_deviations()) == 1 and deviation in task.release_deviations()[0]
    _, edited = _run(task)
    assert float((edited - release_run["edited"]).abs().max()) > 1e-3


def test_the_text_to_image_variant_is_labelled(tmp_path):
    from csd_exp.run import build_task

    task = build_task(compose_config([*TINY, *PROMPTS, "data.path=sample:pan"], tmp_path))
    deviations = task.release_deviations()
    assert len(deviations) == 1 and "text-to-image without a depth map" in deviations[0]
    assert task.timesteps[:2] == [980, 960] and task.timesteps[-1] == 0  # the released timesteps all the same


def test_the_tiny_experiment_runs_as_released(tmp_path):
    from csd_exp.run import build_task

    cfg = compose_config(["experiment=video_pix2video_tiny_cpu"], tmp_path)
    task = build_task(cfg)
    assert type(task.prior).__name__ == "StableDiffusionDepthPrior" and task.release_deviations() == []
    assert task.timesteps == list(range(900, -1, -100))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=video_fatezero", "model=sd2_depth"], "method=fatezero needs a text-to-image prior, but "
         "model=sd2_depth is a depth one"),
        (["task=panorama", "model=tiny_sd2_depth"], r"model=tiny_sd2_depth \(StableDiffusionDepthPrior\) serves only "
         r"the tasks whose constructor names it as their prior \(task=video_pix2video\); task=panorama needs another "
         "model: model=deepfloyd_if, exact, exact_generation, ip2p, sd15, sd21, tiny_if, tiny_ip2p, tiny_sd"),
        (["task=video_pix2video", "model=ip2p"], r"method=pix2video needs a depth prior \(or a text-to-image one, "
         r"its variant\), but model=ip2p is an instruction one"),
    ],
)  # fmt: skip
def test_a_model_family_the_task_cannot_use_is_refused_in_one_line(overrides, message, tmp_path):
    from csd_exp.schema import ConfigError, validate_composed

    with pytest.raises(ConfigError, match=message) as error:
        validate_composed(compose_config(overrides, tmp_path))
    assert "\n" not in str(error.value)


def test_python_callers_of_fatezero_get_the_family_error_for_the_depth_prior(release_run):
    from csd_exp.tasks.video.fatezero import require_text_to_image_prior

    with pytest.raises(ValueError, match="not StableDiffusionDepthPrior: choose model=sd15, model=sd21, model=tiny_sd"):
        require_text_to_image_prior(release_run["task"].prior, "video_fatezero")


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_the_last_editing_step_ends_at_the_clean_level(set_alpha_to_one, tmp_path, monkeypatch):
    """One DDIM step by hand: from τ = 0 to the clean level ᾱ_end = alphas_cumprod[0] (released: the step returns
    x itself) or 1 (x̂₀), with a fixed ε and no latent update."""
    from csd_exp.run import build_task

    overrides = [*TINY, *PROMPTS, "data.path=sample:pan", "task.num_inference_steps=2", "task.latent_update_weight=0"]
    task = build_task(compose_config([*overrides, f"task.set_alpha_to_one={str(set_alpha_to_one).lower()}"], tmp_path))
    assert task.timesteps == [500, 0]
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    monkeypatch.setattr(task, "guided_noise", lambda state, t, hook=None: (eps, eps))
    task.state = x.clone()
    task.editing_step(1)
    alpha_0 = float(task.prior.alphas_cumprod[0])
    clean = (x - (1 - alpha_0) ** 0.5 * eps) / alpha_0**0.5
    alpha_end = 1.0 if set_alpha_to_one else alpha_0
    expected = alpha_end**0.5 * clean + (1 - alpha_end) ** 0.5 * eps
    torch.testing.assert_close(task.state, expected, rtol=0, atol=1e-12)
    if not set_alpha_to_one:
        torch.testing.assert_close(task.state, x, rtol=0, atol=1e-12)  # the release's last step changes nothing
