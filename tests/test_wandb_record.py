"""What a run's W&B record holds, read back from the offline run files (``tests/wandb_offline.py``): media in the
history at the steps they belong to, and nothing W&B dropped."""

from __future__ import annotations

from framework_support import FAST
from wandb_offline import read_offline_run

VIDEO = ["experiment=video_exact_cpu", "task.frame_size=32", "data.max_frames=4", *FAST, "logger=wandb"]


def _offline_run(run_dir):
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return read_offline_run(folder)


def _rows_with(run, key):
    return [row for row in run.history if key in row]


def test_a_video_run_has_its_videos_in_the_history_at_the_final_step(run_job, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary, run_dir = run_job(VIDEO)
    assert summary["status"] == "completed" and summary["steps"] == 2
    run = _offline_run(run_dir)
    assert not [w for w in run.warnings if "ignoring" in w], run.warnings  # W&B dropped no row
    (final,) = _rows_with(run, "final/edited")
    assert final["trainer/global_step"] == 2
    for name in ("edited", "source", "source_vs_edited"):  # the written videos, each a video file of the run
        assert final[f"final/{name}"]["_type"] == "video-file", name
        assert len(list((run_dir / "wandb").glob(f"offline-run-*/files/{final[f'final/{name}']['path']}"))) == 1
    for name in ("edited_grid", "source_grid", "source_vs_edited_grid"):  # and the frame grids as images
        assert final[f"final/{name}"]["_type"] == "images/separated", name
    # Each snapshot is its own row at the step it shows.
    assert [row["trainer/global_step"] for row in _rows_with(run, "snapshots/edited_frames")] == [1, 2]
