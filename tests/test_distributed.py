"""Lightning DDP: a 2-process CPU run (``trainer=ddp_sim``, gloo) equals a 1-process run, writes its outputs once,
and stops (does not hang) on bad input or when a rank dies.

Every run is the real ``csd-exp`` CLI in a subprocess whose environment has no DDP variables: running
``strategy="ddp"`` inside the pytest process would make Lightning relaunch pytest as rank 1
(the project environment notes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DDP_ENV_VARS = (
    "LOCAL_RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GLOBAL_RANK",
    "RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
)
RUN_TIMEOUT_S = 240  # one CLI run here takes 10-30 s; a hang is caught, never waited out
FAILURE_TIMEOUT_S = 120  # a failing DDP run must stop well before ddp_sim's 5-minute collective timeout
# The weight-free metrics (= metrics=none): compared between the runs.
WEIGHT_FREE_METRICS = ["metrics.clip=null", "metrics.lpips_net=null"]
COMMON = ["logger=csv", *WEIGHT_FREE_METRICS, "~callbacks.progress", "++trainer.enable_model_summary=false"]
PANORAMA = [
    "experiment=panorama_exact_cpu",
    "data.short_side=32",
    "task.window_size=32",
    "task.window_stride=8",
    "trainer.max_steps=4",
]
VIDEO = ["experiment=video_exact_cpu", "task.frame_size=32", "data.max_frames=4", "trainer.max_steps=4"]
# 3 pre-training steps (clamped to max_steps - 1), then one CSD-Edit round of 4 views: 2 + 2 per rank.
SCENE = [
    "experiment=scene3d_exact_cpu",
    "data.image_size=16",
    "data.max_views=8",
    "task.field.resolution=16",
    "task.field.num_samples=16",
    "task.editor.views=4",
    "task.editor.iterations=3",
    "task.turntable_views=4",
    "trainer.max_steps=4",
]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def csd_exp(args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the CLI in a clean environment; a timeout fails the test (with the output so far), it never hangs it."""
    env = {key: value for key, value in os.environ.items() if key not in DDP_ENV_VARS}
    env.update(
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])),
    )
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [sys.executable, "-m", "csd_exp.cli", *COMMON, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"")[-3000:], (expired.stderr or b"")[-3000:]
        pytest.fail(f"csd-exp {' '.join(args)} did not stop within {timeout} s (hang?): {output}")


def completed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def load_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_result(single_dir: Path, sharded_dir: Path) -> float:
    """The final checkpoints hold the same tensors (to float tolerance); returns the largest absolute difference."""
    single, sharded = load_checkpoint(single_dir), load_checkpoint(sharded_dir)
    assert single["global_step"] == sharded["global_step"]
    assert single["state_dict"].keys() == sharded["state_dict"].keys() and single["state_dict"]
    largest = 0.0
    for name, expected in single["state_dict"].items():
        actual = sharded["state_dict"][name]
        assert actual.shape == expected.shape, name
        largest = max(largest, float((actual - expected).abs().max()))
        torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")
    assert single["lr_schedulers"] == sharded["lr_schedulers"]
    # Theta must also have moved: equal because nothing happened would prove nothing.
    source = json.loads((single_dir / "summary.json").read_text())
    assert source["steps"] == single["global_step"] > 0
    return largest


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_written_once(run_dir: Path) -> None:
    """One summary.json (rank zero's), one checkpoints folder and one Hydra config, all in the run folder."""
    assert [p.parent for p in run_dir.parent.rglob("summary.json")] == [run_dir]
    assert [p.parent for p in run_dir.parent.rglob("checkpoints")] == [run_dir]
    assert [p.parent for p in run_dir.parent.rglob(".hydra")] == [run_dir]
    assert list((run_dir / "checkpoints").iterdir()) == [run_dir / "checkpoints" / "last.ckpt"]
    written = summary(run_dir)
    assert written["status"] == "completed" and written["world_size"] == 2


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("panorama_even", [*PANORAMA, "task.windows_per_step=4"]),  # 2 + 2 windows
        ("panorama_uneven", [*PANORAMA, "task.windows_per_step=3"]),  # 2 + 1 windows (documented uneven split)
        ("video", VIDEO),  # all 4 frames every step: 2 + 2
        ("scene3d", SCENE),  # 4 views per edit round: 2 + 2, edits gathered back to every rank
    ],
)
def test_two_processes_equal_one(tmp_path, name, overrides):
    single_dir = tmp_path / "single" / "run"
    completed(csd_exp([*overrides, "trainer=cpu", f"hydra.run.dir={single_dir}"], cwd=tmp_path))
    # The sharded run uses the default, relative, time-stamped Hydra run folder: rank 1 must reuse rank 0's.
    cwd = tmp_path / "sharded"
    result = csd_exp([*overrides, "trainer=ddp_sim"], cwd=cwd)
    completed(result)
    runs = list((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, f"one Hydra run folder expected, got {runs}"
    assert sorted(os.listdir(cwd)) == ["outputs"] and os.listdir(cwd / "outputs") == ["runs"]
    sharded_dir = runs[0]
    assert_written_once(sharded_dir)
    largest = assert_same_result(single_dir, sharded_dir)
    single, sharded = summary(single_dir), summary(sharded_dir)
    assert single["world_size"] == 1
    assert sharded["metrics"].keys() == single["metrics"].keys()
    for key, value in single["metrics"].items():
        assert sharded["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    print(f"{name}: max |theta_2proc - theta_1proc| = {largest:.3g}")


def test_fewer_particles_than_processes_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    result = csd_exp(
        [*PANORAMA, "task.windows_per_step=1", "trainer=ddp_sim", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=FAILURE_TIMEOUT_S,
    )
    assert result.returncode != 0
    message = "1 particles per step cannot be shared by 2 processes"
    assert message in result.stderr
    written = summary(run_dir)
    assert written["status"] == "failed" and message in written["error"]


@pytest.mark.parametrize("failing_rank", [1, 0])
def test_a_dying_rank_stops_the_run(tmp_path, failing_rank):
    run_dir = tmp_path / "run"
    result = csd_exp(
        [
            *PANORAMA,
            "task.windows_per_step=4",
            "trainer=ddp_sim",
            "trainer.max_steps=20",
            f"hydra.run.dir={run_dir}",
            "+callbacks.fail._target_=ddp_support.FailOnRank",
            f"+callbacks.fail.rank={failing_rank}",
            "+callbacks.fail.step=2",
        ],
        cwd=tmp_path,
        timeout=FAILURE_TIMEOUT_S,
    )
    assert result.returncode != 0
    assert f"InjectedFailure: injected failure on rank {failing_rank} at step 2" in result.stderr
    written = summary(run_dir)  # rank zero records the failure
    assert written["status"] == "failed" and written["steps"] == 2
    if failing_rank == 1:
        assert "local rank 1" in written["error"] and "exited with code 1" in written["error"]
    else:
        assert "stopping the 1 other rank(s) still running" in result.stdout + result.stderr
