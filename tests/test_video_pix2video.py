"""task=video_pix2video: the CLI end to end on the bundled clip and a frame folder, the latent update's
gradient, batched frames = the sequential method (causality), and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from framework_support import FAST, compose_config, run_cli

from csd_exp.data.video_write import write_frames

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
    from csd_exp.tasks.video_pix2video import latent_update

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
