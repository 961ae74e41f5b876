"""Video task: outputs, metrics, particle subsets and bad input, through the real config."""

from __future__ import annotations

import pytest
import torch
from framework_support import FAST, compose_config

from csd_exp.data.video_write import write_frames

SMALL = ["experiment=video_exact_cpu", "task.frame_size=32", "data.max_frames=4"]


def test_video_run_writes_the_clip_and_temporal_metrics(run_job):
    summary, run_dir = run_job([*SMALL, *FAST])
    assert summary["status"] == "completed"
    for name in ("edited.mp4", "edited.gif", "source.mp4", "edited_grid.png", "edited_frames/frame_00003.png"):
        assert (run_dir / name).is_file(), name
    from csd_exp.data.video import read_video

    source, edited = (read_video(run_dir / f"{name}.mp4").frames for name in ("source", "edited"))
    beside = read_video(run_dir / "source_vs_edited.mp4").frames  # source | edited, frame by frame
    assert beside.shape[0] == edited.shape[0] and beside.shape[-1] == source.shape[-1] + edited.shape[-1]
    metrics = summary["metrics"]
    for key in ("consistency/warp_error", "consistency/mode_agreement", "fidelity/psnr"):
        assert key in metrics, key
    assert 0.0 <= metrics["consistency/warp_error"] < 1.0


def test_random_frame_subsets_are_per_step_and_sorted(tmp_path):
    from csd_exp.run import build_task

    task = build_task(compose_config([*SMALL, "task.frames_per_step=2"], tmp_path))
    first = task.sample_frames(5)
    assert len(first) == 2 and torch.equal(first, first.sort().values)
    assert torch.equal(first, task.sample_frames(5))
    assert len({tuple(task.sample_frames(s).tolist()) for s in range(20)}) > 1


def test_a_user_frame_folder_is_read_and_resized(tmp_path, run_job):
    frames = torch.rand(3, 3, 20, 30)
    write_frames(frames, tmp_path / "clip")
    summary, run_dir = run_job([*SMALL, *FAST, f"data.path={tmp_path / 'clip'}", "data.max_frames=null"])
    assert summary["status"] == "completed"
    assert "consistency/warp_error" not in summary["metrics"]  # no known motion for a user clip
    import imageio.v3 as iio

    assert iio.imread(run_dir / "edited_frames" / "frame_00000.png").shape == (20, 30, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.frames_per_step=9"], "frames_per_step"),
        (["data.path=/nonexistent/clip.mp4"], "clip.mp4"),
    ],
)
def test_bad_video_input_fails_early(overrides, message, tmp_path):
    from csd_exp.run import build_task

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_task(compose_config([*SMALL, *overrides], tmp_path))


def test_a_single_frame_is_refused(tmp_path):
    from csd_exp.run import build_task

    write_frames(torch.rand(1, 3, 16, 16), tmp_path / "one")
    with pytest.raises(ValueError, match="frame"):
        build_task(compose_config([*SMALL, f"data.path={tmp_path / 'one'}"], tmp_path / "run"))


def test_wandb_offline_receives_the_edited_clip_as_a_video(run_job, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary, run_dir = run_job([*SMALL, *FAST, "logger=wandb"])
    assert summary["status"] == "completed"
    videos = list((run_dir / "wandb").glob("offline-run-*/files/media/videos/final/edited_*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
