"""What a run's W&B record holds, read back from the offline run files (``tests/wandb_offline.py``): media in the
history at the steps they belong to, and nothing W&B dropped."""

from __future__ import annotations

import json

import pytest
from framework_support import FAST, run_cli
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


SAMPLING = {
    "video": ["experiment=video_exact_cpu", "task=video_sampling", "data.max_frames=4"],
    "panorama": ["task=panorama_sampling", "data.short_side=32", "task.window_size=32", "task.window_stride=8"],
}


@pytest.mark.parametrize("modality", sorted(SAMPLING))
def test_a_sampling_baseline_logs_media_and_validation_at_its_reverse_steps(modality, run_job, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*SAMPLING[modality], "debug=smoke", "logger=wandb"]
    summary, run_dir = run_job([*overrides, "trainer.max_steps=3"])  # a sampling baseline: 3 denoising steps
    assert summary["status"] == "completed" and summary["steps"] == 3
    # One snapshot per reverse step, each in its own file (the optimizer's global_step stays 0 throughout).
    snapshots = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert [name.rsplit("_step", 1)[1] for name in snapshots] == ["00001.png", "00002.png", "00003.png"], snapshots
    run = _offline_run(run_dir)
    assert not [w for w in run.warnings if "ignoring" in w], run.warnings
    (snapshot_key,) = {key for row in run.history for key in row if key.startswith("snapshots/")}
    assert [row["trainer/global_step"] for row in _rows_with(run, snapshot_key)] == [1, 2, 3]
    (final,) = _rows_with(run, "final/edited")
    assert final["trainer/global_step"] == 3
    # Every validation point scores an estimate of the edit, never the source against itself (identical images
    # give a PSNR above 100 dB, capped only by float rounding; a 3-step sample is far from the source).
    psnr = [row["val/fidelity/psnr"] for row in _rows_with(run, "val/fidelity/psnr")]
    assert len(psnr) == 3 and max(psnr) < 60, psnr
    assert psnr[-1] == pytest.approx(summary["metrics"]["fidelity/psnr"], rel=1e-6)  # the last one is the result


def test_a_sweep_over_experiments_is_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            "experiment=panorama_exact_cpu,video_exact_cpu",
            "debug=smoke",
            "logger=wandb",
            "trainer.max_steps=1",
        ],
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_offline_run(folder) for folder in sorted(sweep.glob("*/wandb/offline-run-*"))]
    assert len(runs) == 2
    assert {run.group for run in runs} == {f"panorama_exact_cpu+video_exact_cpu-{sweep.name}"}
    assert sorted(run.job_type for run in runs) == ["panorama", "video"]  # each job still says what it ran


PANORAMA = ["experiment=panorama_exact_cpu", "debug=smoke", "logger=wandb", "data.short_side=32"]
PANORAMA += ["task.window_size=32", "task.window_stride=8"]


def test_a_resumed_sweep_job_keeps_its_wandb_id_group_name_and_tags(tmp_path):
    sweep, resumed = tmp_path / "sweep", tmp_path / "resumed"
    _cli_ok(["-m", f"hydra.sweep.dir={sweep}", *PANORAMA, "guidance.guidance_scale=1.5,3", "tags=[review]"])
    (job,) = [folder for folder in sweep.iterdir() if "guidance.guidance_scale=1.5" in _overrides(folder)]
    original = _offline_run(job)
    assert original.group == f"panorama_exact_cpu-{sweep.name}" and "guidance_scale=1.5" in original.name
    # Resumed as a single run (the command the interrupted job printed), with more steps.
    checkpoint = job / "checkpoints" / "last.ckpt"
    again = [*PANORAMA, "guidance.guidance_scale=1.5", "tags=[review]", "trainer.max_steps=3"]
    _cli_ok([*again, f"ckpt_path={checkpoint}", f"paths.output_dir={resumed}"])
    run = _offline_run(resumed)
    assert (run.id, run.group, run.name, run.job_type, run.tags) == (
        original.id,
        original.group,
        original.name,
        original.job_type,
        original.tags,
    )


def _cli_ok(args):
    result = run_cli(args, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _overrides(folder):
    return (folder / ".hydra" / "overrides.yaml").read_text() if (folder / ".hydra").is_dir() else ""


def test_optuna_trials_have_distinct_names_with_their_drawn_values(tmp_path):
    sweep = tmp_path / "sweep"
    search = ["hparams_search=guidance_scale_optuna", "optimized_metric=fidelity/psnr", "hydra.sweeper.n_trials=2"]
    _cli_ok(["-m", f"hydra.sweep.dir={sweep}", *PANORAMA, *search])
    runs = {folder.parent.parent.name: read_offline_run(folder) for folder in sweep.glob("*/wandb/offline-run-*")}
    assert len(runs) == 2 and len({run.name for run in runs.values()}) == 2
    for job, run in runs.items():
        drawn = dict(
            line[2:].split("=", 1) for line in _overrides(sweep / job).splitlines() if "guidance_scale=" in line
        )
        assert run.name.split("·") == [
            "csd_edit",
            f"guidance_scale={drawn['guidance.guidance_scale']}",
            f"image_guidance_scale={drawn['guidance.image_guidance_scale']}",
            f"#{job.split('_', 1)[0]}",
            "s0",
        ]
        assert run.group == f"panorama_exact_cpu-{sweep.name}"


def test_reporting_a_sweep_again_updates_its_one_report_run(tmp_path, monkeypatch):
    from test_report import write_run

    from csd_exp.report.cli import main as report_main

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        folder = write_run(sweep, f"{seed}_panorama_csd_edit_seed{seed}", seed=seed)
        summary = json.loads((folder / "summary.json").read_text())
        summary["wandb"] = {"name": f"csd_edit·s{seed}", "group": "panorama_exact_cpu-sweep", "job_type": "panorama"}
        (folder / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for _ in range(2):
        assert report_main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
        ids.append(json.loads((sweep / "report_wandb.json").read_text())["id"])
    assert ids[0] == ids[1]
    recorded = [read_offline_run(folder) for folder in sorted((sweep / "wandb").glob("offline-run-*"))]
    assert len(recorded) == 2 and {run.id for run in recorded} == {ids[0]}  # `wandb sync` uploads both into it
    assert {(run.group, run.job_type) for run in recorded} == {("panorama_exact_cpu-sweep", "report")}
    # Another sweep gets its own report run.
    other = tmp_path / "other"
    write_run(other, "0_panorama_csd_edit_seed0", seed=0)
    summary = json.loads((other / "0_panorama_csd_edit_seed0" / "summary.json").read_text())
    summary["wandb"] = {"name": "csd_edit·s0", "group": "panorama_exact_cpu-other", "job_type": "panorama"}
    (other / "0_panorama_csd_edit_seed0" / "summary.json").write_text(json.dumps(summary))
    assert report_main([str(other), "--metrics", "fidelity/psnr"]) == 0
    assert json.loads((other / "report_wandb.json").read_text())["id"] != ids[0]
