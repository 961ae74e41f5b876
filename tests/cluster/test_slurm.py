"""csd-exp on a real one-node SLURM cluster (conftest.py starts it): a sweep, a 2-task DDP job, a run longer than
its allocations that completes through time-limit requeues, a preempted job, and the bad inputs (resources the
cluster cannot give, a requeued job whose config changed on disk). See docs/clusters.md.

Every job runs with one torch thread (``Cluster.env``), so a job and its uninterrupted reference compute the same
floats and their ``edited.png`` files are compared byte for byte.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMON = ["metrics=none", "~callbacks.progress", "extras.print_config=false", "++trainer.enable_model_summary=false"]
SMALL = ["experiment=panorama_exact_cpu", "data.short_side=32", "task.window_size=32", "task.window_stride=8"]
# The requeue tests' run: ~20 s of training at ~20 ms a step on one core (a checkpoint every 100 steps).
STEPS = 1000
LONG = ["experiment=panorama_exact_cpu", f"trainer.max_steps={STEPS}", *COMMON]
LAUNCHER = ["-m", "hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
JOB_TIMEOUT_S = 420  # no test here waits longer for its jobs; a hang fails the test with the output so far


def csd_exp(cluster, args: list[str], cwd: Path, timeout: float = JOB_TIMEOUT_S, **env) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [sys.executable, "-m", "csd_exp.cli", *args],
            cwd=cwd,
            env=cluster.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"csd-exp {' '.join(args)} did not finish within {timeout} s: {str(expired.stderr)[-3000:]}")


def start(cluster, args: list[str], cwd: Path, **env) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "launcher.log", "w")  # noqa: SIM115 (closed when the process is collected)
    return subprocess.Popen(
        [sys.executable, "-m", "csd_exp.cli", *args], cwd=cwd, env=cluster.env(**env), stdout=log, stderr=log
    )


def finish(process: subprocess.Popen, cwd: Path, timeout: float = JOB_TIMEOUT_S) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the sweep did not finish within {timeout} s: {(cwd / 'launcher.log').read_text()[-3000:]}")
    return (cwd / "launcher.log").read_text()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.5)


def wandb_ids(run_dir: Path) -> list[str]:
    """The run id of every offline W&B run folder in ``run_dir`` (one per allocation)."""
    return [path.name.rsplit("-", 1)[1] for path in sorted((run_dir / "wandb").glob("offline-run-*"))]


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of the CSV log's training rows, in file order."""
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The requeue tests' run, uninterrupted and outside SLURM (started at once; waited for when first used)."""
    folder = tmp_path_factory.mktemp("reference")
    run_dir = folder / "run"
    process = start(cluster, [*LONG, f"hydra.run.dir={run_dir}"], folder)

    def result() -> Path:
        log = finish(process, folder)
        assert process.returncode == 0, log[-3000:]
        assert summary(run_dir)["status"] == "completed"
        return run_dir

    yield result
    if process.poll() is None:  # the tests that wait for it failed first
        process.kill()
        process.wait()


def test_a_two_job_sweep_runs_as_two_slurm_jobs(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = csd_exp(
        cluster,
        [*LAUNCHER, *SMALL, *COMMON, "trainer.max_steps=4", "seed=0,1", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [summary(folder) for folder in job_folders(sweep)]
    assert [run["status"] for run in runs] == ["completed", "completed"]
    assert [run["seed"] for run in runs] == [0, 1] and all(run["steps"] == 4 for run in runs)
    assert all(run["allocations"] == 1 for run in runs)
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2, tasks  # one SLURM array task per job (submitit's folder <array id>_<index>)


def test_two_slurm_tasks_with_ddp_equal_one_process(cluster, tmp_path):
    steps = ["trainer.max_steps=4", "task.windows_per_step=4"]
    single = tmp_path / "single"
    result = csd_exp(cluster, [*SMALL, *COMMON, *steps, f"hydra.run.dir={single}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "ddp"
    result = csd_exp(
        cluster,
        [*LAUNCHER, "hydra.launcher.tasks_per_node=2", "trainer=ddp_sim", *SMALL, *COMMON, *steps]
        + [f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sharded,) = job_folders(sweep)
    written = summary(sharded)
    assert written["status"] == "completed" and written["world_size"] == 2 and written["steps"] == 4
    ours = torch.load(sharded / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    theirs = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ours.keys() == theirs.keys()
    for name in ours:  # as tests/test_distributed.py: equal up to float32 rounding of the sharded sums
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-5, msg=name)
    assert (sharded / "edited.png").read_bytes() == (single / "edited.png").read_bytes()


def assert_resumed_like_reference(
    run_dir: Path, reference_dir: Path, allocations: int | None = None, rows_lost: int = 0
) -> dict:
    written = summary(run_dir)
    assert written["status"] == "completed", written.get("error")
    assert written["steps"] == STEPS
    if allocations is not None:
        assert written["allocations"] == allocations
    assert written["allocations"] >= 2
    ids = wandb_ids(run_dir)
    assert len(ids) == written["allocations"] and len(set(ids)) == 1, ids  # one W&B run, continued
    assert written["wandb"]["id"] == ids[0]
    log = (run_dir / "cli.log").read_text()  # Hydra's job log, appended by every allocation
    assert f"{STEPS - 1} steps to go" in log  # the first allocation's lines are still there
    assert f"allocation {written['allocations']}: resuming this run from its own checkpoint" in log
    steps = logged_steps(run_dir)  # the CSV log of every allocation, in order, each step once
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == STEPS - 1
    assert STEPS - rows_lost <= len(steps) <= STEPS
    assert (run_dir / "edited.png").read_bytes() == (reference_dir / "edited.png").read_bytes()
    return written


def test_a_run_past_its_time_limit_signal_completes_through_a_requeue(cluster, tmp_path, reference, release_held_jobs):
    """SLURM's time-limit warning is SIGUSR2 to the job's processes, ``signal_delay_s`` before the limit. slurmctld
    sends it on a 30 s tick, so with a real 1-minute limit the step a run reaches first depends on the machine's
    load; the test sends the same signal itself once the run is past its first periodic checkpoint."""
    sweep = tmp_path / "sweep"
    limits = ["hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=2", "hydra.launcher.name=timed"]
    process = start(cluster, [*LAUNCHER, *limits, *LONG, f"hydra.sweep.dir={sweep}"], tmp_path)
    checkpoints = sweep / "0_panorama_csd_edit_seed0" / "checkpoints"
    wait_for(lambda: (checkpoints / "step00100.ckpt").is_file(), "the first periodic checkpoint")
    (job,) = cluster.slurm("squeue", "-h", "-n", "timed", "-o", "%i").split()
    cluster.slurm("scancel", "--signal=USR2", job)  # what `sbatch --signal=USR2@<signal_delay_s>` sends
    log = finish(process, tmp_path)
    assert process.returncode == 0, log[-3000:]
    (run_dir,) = job_folders(sweep)
    written = assert_resumed_like_reference(run_dir, reference(), allocations=2)
    assert len(release_held_jobs) == written["allocations"] - 1
    job_log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert "this job is timed-out" in job_log and "Requeued job" in job_log  # submitit's time-out requeue


def test_a_preempted_job_resumes_where_it_stopped(cluster, tmp_path, reference, release_held_jobs):
    sweep = tmp_path / "sweep"
    process = start(cluster, [*LAUNCHER, "hydra.launcher.name=preempted", *LONG, f"hydra.sweep.dir={sweep}"], tmp_path)
    run_log = sweep / "0_panorama_csd_edit_seed0" / "cli.log"
    wait_for(lambda: run_log.is_file() and "steps to go" in run_log.read_text(), "the first training step")
    time.sleep(3)  # well inside the run (2,000 steps)
    (job,) = cluster.slurm("squeue", "-h", "-n", "preempted", "-o", "%i").split()
    cluster.slurm("scontrol", "requeue", job)  # what a preempting partition does: SIGTERM, back in the queue
    log = finish(process, tmp_path)
    assert process.returncode == 0, log[-3000:]
    (run_dir,) = job_folders(sweep)
    # SLURM stops W&B's service with the same SIGTERM: the row of the step in flight may not reach the CSV log
    # (W&B is the first logger and fails first); its update is in the checkpoint and the result is unchanged.
    assert_resumed_like_reference(run_dir, reference(), allocations=2, rows_lost=1)
    assert "SIGTERM" in (run_dir / "cli.log").read_text()


def test_resources_the_cluster_cannot_give_are_refused_in_one_line(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    refused = ["-m", "hydra/launcher=slurm_gpu", "hydra.launcher.name=refused"]
    result = csd_exp(cluster, [*refused, *SMALL, *COMMON, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("csd-exp: SLURM cannot run the jobs of hydra/launcher=slurm_gpu: "), result.stderr[-2000:]
    assert "gres" in last and "gpus_per_node=1" in last and "hydra.launcher.<key>=" in last
    assert "Traceback" not in result.stderr
    assert not (sweep / ".submitit").exists()  # nothing was submitted
    assert cluster.slurm("squeue", "-h", "-n", "refused").strip() == ""


def test_a_requeued_job_whose_config_changed_on_disk_is_refused(cluster, tmp_path, release_held_jobs):
    config_dir = tmp_path / "conf"
    (config_dir / "experiment").mkdir(parents=True)
    experiment = config_dir / "experiment" / "requeue_probe.yaml"
    text = "# @package _global_\ndefaults:\n  - panorama_exact_cpu\n\nprompt: {}\n"
    experiment.write_text(text.format('"make it night"'))
    sweep = tmp_path / "sweep"
    overrides = ["experiment=requeue_probe", "trainer.max_steps=2000", *COMMON, f"hydra.sweep.dir={sweep}"]
    process = start(
        cluster, [*LAUNCHER, "hydra.launcher.name=changed", *overrides], tmp_path, CSD_EXP_CONFIG_DIR=str(config_dir)
    )
    checkpoints = sweep / "0_panorama_csd_edit_seed0" / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("step*.ckpt")), "the first periodic checkpoint")
    experiment.write_text(text.format('"make it day"'))  # edited while the job runs
    (job,) = cluster.slurm("squeue", "-h", "-n", "changed", "-o", "%i").split()
    cluster.slurm("scontrol", "requeue", job)
    log = finish(process, tmp_path)
    assert process.returncode != 0
    (run_dir,) = job_folders(sweep)
    written = summary(run_dir)
    assert written["status"] == "failed" and written["allocations"] == 2
    assert "config changed on disk" in written["error"]
    assert 'prompt: "make it night" -> "make it day"' in written["error"]
    assert "config changed on disk" in log
    assert any(checkpoints.glob("step*.ckpt")) and (checkpoints / "last.ckpt").is_file()  # nothing lost
