"""The benchmarks still run against the current API (a smoke run at tiny sizes, not a measurement)."""

from __future__ import annotations

import subprocess
import sys

from framework_support import REPO_ROOT


def test_scaling_benchmark_runs_at_tiny_sizes():
    args = ["--skip-unet", "--skip-processes", "--particles", "2", "--repeats", "1", "--latent-size", "16"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scaling", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 2 |" in result.stdout and "CSD / SDS" in result.stdout


def test_video_baselines_benchmark_runs_at_tiny_sizes():
    args = ["--frames", "2", "--steps", "2", "--csd-steps", "1", "--frame-size", "8"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_video_baselines", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("fatezero", "pix2video", "csd_edit"):
        assert f"| {method} | 2 |" in result.stdout
