"""Time-to-quality curves (ideal-edit PSNR vs UNet rows) come from a run's own logged series."""

from __future__ import annotations

import csv
import json

import pytest
from framework_support import FAST

from csd_exp.metrics.time_to_quality import CurvePoint, compare, read_curve, rows_to_reach

SMALL = ["experiment=video_exact_cpu", "task.frame_size=16", "data.max_frames=3"]


def test_a_run_logs_its_curve_and_its_last_point_is_the_final_result(run_job):
    steps = 3
    summary, run_dir = run_job([*SMALL, *FAST, f"trainer.max_steps={steps}", "trainer.val_check_interval=1"])
    curve = read_curve(run_dir)
    # one point per validation, UNet rows 5 per frame and step (CSD-Edit, InstructPix2Pix rows)
    assert [point.unet_rows for point in curve] == [5.0 * 3 * step for step in range(1, steps + 1)]
    final = summary["metrics"]
    assert curve[-1].ideal_psnr == pytest.approx(final["fidelity/ideal_psnr"], rel=1e-6)
    assert curve[-1].agreement == final["consistency/mode_agreement"]
    assert len({point.ideal_psnr for point in curve}) == steps  # the edit moves every step


def _write_run(folder, seed, points):
    (folder / "csv").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"seed": seed}))
    with (folder / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["step", "loss", "val/unet_rows", "val/fidelity/ideal_psnr", "val/consistency/mode_agreement"]
        )
        writer.writeheader()
        for step, (rows, psnr, agreement) in enumerate(points):
            writer.writerow({"step": step, "loss": 1.0})  # a training row: no validation values
            writer.writerow(
                {
                    "step": step,
                    "val/unet_rows": rows,
                    "val/fidelity/ideal_psnr": psnr,
                    "val/consistency/mode_agreement": agreement,
                }
            )


def test_rows_to_reach_needs_both_the_psnr_and_the_agreement(tmp_path):
    curve = [CurvePoint(10, 20.0, 0.5), CurvePoint(20, 30.0, 0.5), CurvePoint(30, 31.0, 1.0)]
    assert rows_to_reach(curve, 25.0, 0.5) == 20
    assert rows_to_reach(curve, 25.0, 0.75) == 30
    assert rows_to_reach(curve, 32.0, 0.5) is None
    _write_run(tmp_path / "official_s3", 3, [(100, 20.0, 0.5), (200, 30.0, 0.5)])
    _write_run(tmp_path / "fast_s3", 3, [(50, 25.0, 0.5), (100, 30.5, 0.5)])
    (row,) = compare([tmp_path / "official_s3"], [tmp_path / "fast_s3"])
    assert (row["seed"], row["candidate_rows_to_reach"], row["ratio"]) == (3, 100, 0.5)
    with pytest.raises(ValueError, match="pair the runs by seed"):
        compare([tmp_path / "official_s3"], [])
    with pytest.raises(FileNotFoundError, match="logger=csv"):
        read_curve(tmp_path / "nowhere")
