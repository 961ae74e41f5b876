"""Sweepers and launchers users know: Optuna over a summary.json metric, joblib for local parallel jobs."""

from __future__ import annotations

import json

from framework_support import run_cli
from omegaconf import OmegaConf

SMALL = ["experiment=panorama_exact_cpu", "debug=smoke", "data.short_side=32", "task.window_size=32"]
SMALL += ["task.window_stride=8"]


def test_a_two_trial_optuna_sweep_optimises_the_named_metric(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "hparams_search=guidance_scale_optuna",
            *SMALL,
            "optimized_metric=fidelity/psnr",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.rglob("summary.json"))]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    scales = {s["config"]["guidance"]["guidance_scale"] for s in summaries}
    assert len(scales) == 2 and all(1.0 <= g <= 15.0 for g in scales)  # drawn by the sampler in its interval
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == max(s["metrics"]["fidelity/psnr"] for s in summaries)


def test_an_optimized_metric_the_run_lacks_names_the_available_ones(tmp_path):
    # A name no run writes is refused at compose time (tests/test_compose_checks.py); one this run lacks (no
    # CLIP weights offline) only once its metrics are known.
    result = run_cli([*SMALL, "optimized_metric=clip/directional", f"paths.output_dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert "optimized_metric='clip/directional' is not among this run's metrics (consistency/mode_agreement" in (
        result.stderr
    )


def test_the_joblib_launcher_runs_a_sweep_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=local_parallel", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.rglob("summary.json"))]
    assert [s["seed"] for s in summaries] == [0, 1] and all(s["status"] == "completed" for s in summaries)
