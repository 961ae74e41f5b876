"""What a run leaves for review besides ``summary.json``: ``val/`` metric curves, snapshots, final files."""

from __future__ import annotations

import csv
import math

import pytest
from framework_support import FAST

SMALL_EXACT = ["data.short_side=32", "task.window_size=32", "task.window_stride=8"]


def _csv_rows(run_dir):
    (metrics_file,) = run_dir.rglob("metrics.csv")
    with metrics_file.open() as handle:
        return list(csv.DictReader(handle))


def _column(rows, name):
    return [(int(row["step"]), float(row[name])) for row in rows if row.get(name) not in (None, "")]


def test_validation_logs_metric_curves_that_end_at_the_final_metrics(run_job):
    summary, run_dir = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "trainer.max_steps=3"])
    rows = _csv_rows(run_dir)
    metrics = summary["metrics"]
    for name in ("fidelity/psnr", "fidelity/ssim", "consistency/mode_agreement"):
        curve = _column(rows, f"val/{name}")
        assert len(curve) == 3, name  # one point per validation (every step here)
        # The last validation sees the final canvas, so the curve ends at the value summary.json reports.
        assert curve[-1][1] == pytest.approx(metrics[name], rel=1e-6), name
    # The final metrics sit in the CSV under summary.json's own names, at the last step; lr is logged every step.
    final = _column(rows, "fidelity/psnr")
    assert final == [(3, pytest.approx(metrics["fidelity/psnr"]))]
    assert len(_column(rows, "train/lr")) == 3
    psnr = [value for _, value in _column(rows, "val/fidelity/psnr")]
    assert all(math.isfinite(value) for value in psnr) and len(set(psnr)) > 1, "the curve moves as the edit proceeds"


def test_snapshots_come_from_the_media_callback(run_job):
    _, run_dir = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT])
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["edited_step00001.png", "edited_step00002.png"]
    _, without = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "~callbacks.snapshots"], name="bare")
    assert not (without / "snapshots").exists()
    assert (without / "edited.png").is_file() and (without / "edited_fullres.png").is_file()


def test_video_curves_and_final_video(run_job):
    summary, run_dir = run_job(["experiment=video_exact_cpu", "debug=smoke"])
    rows = _csv_rows(run_dir)
    assert _column(rows, "val/fidelity/psnr")[-1][1] == pytest.approx(summary["metrics"]["fidelity/psnr"], rel=1e-6)
    assert (run_dir / "edited.mp4").is_file() and (run_dir / "source.mp4").is_file()


def test_snapshots_after_a_resumed_ctrl_c_carry_the_steps_of_an_uninterrupted_run(run_job, tmp_path, monkeypatch):
    from csd_exp.tasks import PanoramaTask

    overrides = [
        "experiment=panorama_exact_cpu",
        *FAST,
        *SMALL_EXACT,
        "trainer.max_steps=9",
        "trainer.val_check_interval=3",
        "callbacks.checkpoint.every_n_train_steps=100",
    ]
    original = PanoramaTask.distillation_step

    def interrupt_inside_step_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(PanoramaTask, "distillation_step", interrupt_inside_step_4)
    with pytest.raises(SystemExit):
        run_job(overrides)
    monkeypatch.setattr(PanoramaTask, "distillation_step", original)
    summary, run_dir = run_job([*overrides, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"])
    assert summary["status"] == "completed" and summary["steps"] == 9
    # Lightning counted the batch of the interrupted step: the resumed run validated after steps 5 and 8.
    names = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert names == ["edited_step00003.png", "edited_step00006.png", "edited_step00009.png"]


def test_final_media_are_captioned_and_shown_source_beside_edit(monkeypatch, tmp_path):
    import numpy as np
    import torch
    from pytorch_lightning.loggers import WandbLogger

    from csd_exp.tasks.media import log_final_media

    rows = []  # one history row per call: {key: [wandb.Image, ...]}, step
    monkeypatch.setattr(WandbLogger, "log_metrics", lambda self, metrics, step=None: rows.append((metrics, step)))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    source, edited = torch.rand(1, 3, 16, 40), torch.rand(1, 3, 32, 80)  # the edit at output size
    log_final_media([logger], {"source": source, "edited": edited}, {}, step=3, caption="make it red · seed 0")
    assert len(rows) == 1 and rows[0][1] == 3  # all final media in one row at the final step
    by_key = rows[0][0]
    assert set(by_key) == {"final/source", "final/edited", "final/source_vs_edited"}
    (pair,) = by_key["final/source_vs_edited"]
    assert pair.image.size == (160, 32)  # the source scaled to the edit's height, then the edit
    expected = (edited[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    assert (np.asarray(pair.image)[:, 80:] == expected).all()
    assert all(image._caption == "make it red · seed 0" for images in by_key.values() for image in images)


@pytest.mark.parametrize(
    "overrides, identity",
    [
        (
            ["experiment=panorama_exact_cpu", "guidance=sds"],
            {"task": "panorama", "method": "sds", "model": "exact", "model_id": "exact", "model_family": "exact"},
        ),
        (
            ["experiment=video_exact_cpu", "model=tiny_ip2p", "task=video_sampling"],
            {
                "task": "video_sampling",
                "method": "per_frame",
                "model": "tiny_ip2p",
                "model_id": "tiny_ip2p",
                "model_family": "instruct_pix2pix",
            },
        ),
    ],
)
def test_summary_records_what_ran_and_the_report_reads_it(overrides, identity, run_job):
    from csd_exp.report.runs import load_runs

    summary, run_dir = run_job([*overrides, "debug=smoke"])
    assert summary["status"] == "completed"
    assert {key: summary[key] for key in identity} == identity
    (run,), _ = load_runs([run_dir])
    assert (run.task, run.method) == (identity["task"], identity["method"])
