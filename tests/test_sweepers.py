"""Sweepers and launchers users know (Optuna over a summary.json metric, local parallel jobs), the job list a sweep
writes at launch (``jobs.json``), the re-launch of an interrupted sweep, and sweeps started in the same second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from framework_support import REPO_ROOT, run_cli
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
    # jobs.json: the sweeper's n_trials, and each trial as it started, with the values it drew and its folder
    record = json.loads((sweep / "jobs.json").read_text())
    assert record["n_trials"] == 2 and [job["num"] for job in record["jobs"]] == [0, 1]
    for job in record["jobs"]:
        summary = json.loads((sweep / job["dir"] / "summary.json").read_text())
        assert job["overrides"] == summary["overrides"]


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
    record = json.loads((sweep / "jobs.json").read_text())
    assert record == {
        "jobs": [
            {"num": n, "overrides": [*SMALL, f"seed={n}"], "dir": f"{n}_panorama_csd_edit_seed{n}"} for n in (0, 1)
        ],
        "n_trials": None,
    }


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included), by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _popen(args: list[str], cwd: Path = REPO_ROOT, prefix: list[str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = prefix or ["-m", "csd_exp.cli"]
    return subprocess.Popen(
        [sys.executable, *command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _jobs(sweep: Path) -> list[dict]:
    return json.loads((sweep / "jobs.json").read_text())["jobs"]


# Job 1 runs long enough to be interrupted after its first checkpoint; 0 and 2 take 4 steps.
RESUMABLE = [*SMALL, "trainer.val_check_interval=1000000", "trainer.max_steps=4,40,4"]


@pytest.mark.slow
def test_a_relaunched_interrupted_sweep_runs_only_its_unfinished_jobs_and_equals_an_uninterrupted_one(tmp_path):
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    uninterrupted = run_cli(["-m", *RESUMABLE, f"hydra.sweep.dir={reference}"])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    process = _popen(["-m", *RESUMABLE, f"hydra.sweep.dir={sweep}"])
    deadline = time.monotonic() + 300
    while not list(sweep.glob("1_*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, "job 1 never wrote a checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert "1 completed, 1 interrupted, 1 never started" in err
    assert f"hydra.sweep.dir={sweep} hydra.sweeper.resume=true" in err
    # jobs.json was written at launch: every job's overrides; the folders of the jobs that started.
    jobs = _jobs(sweep)
    assert [(job["num"], job["overrides"][-1]) for job in jobs] == [
        (0, "trainer.max_steps=4"),
        (1, "trainer.max_steps=40"),
        (2, "trainer.max_steps=4"),
    ]
    assert [job["dir"] for job in jobs] == ["0_panorama_csd_edit_seed0", "1_panorama_csd_edit_seed0", None]
    interrupted = _files(sweep)
    completed_job = _files(sweep / jobs[0]["dir"])

    # Launched again with other overrides: refused, listing the difference, and nothing changes.
    other = ["-m", *SMALL, "trainer.val_check_interval=1000000", "trainer.max_steps=4,40,5"]
    refused = run_cli([*other, f"hydra.sweep.dir={sweep}", "hydra.sweeper.resume=true"])
    assert refused.returncode == 1
    assert f"this launch differs from the sweep in {sweep}:\n  trainer.max_steps: 4,40,4 -> 4,40,5" in refused.stderr
    assert _files(sweep) == interrupted

    resumed = run_cli(["-m", *RESUMABLE, f"hydra.sweep.dir={sweep}", "hydra.sweeper.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 of 3 jobs completed; running #1 (interrupted), #2 (never started)" in resumed.stdout + resumed.stderr
    assert _files(sweep / jobs[0]["dir"]) == completed_job, "the completed job is not run again"
    assert (sweep / "multirun.yaml").read_bytes() == interrupted["multirun.yaml"]
    assert [(job["num"], job["overrides"]) for job in _jobs(sweep)] == [(job["num"], job["overrides"]) for job in jobs]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in reference.iterdir() if not p.name.startswith(".")
    ), "the same job folders, under the same numbers"
    assert "resuming this run from its own checkpoint" in (sweep / jobs[1]["dir"] / "cli.log").read_text()
    for job, steps in zip(_jobs(sweep), (4, 40, 4), strict=True):
        mine, theirs = sweep / job["dir"], reference / job["dir"]
        summary = json.loads((mine / "summary.json").read_text())
        assert (summary["status"], summary["steps"]) == ("completed", steps)
        assert (mine / "edited.png").read_bytes() == (theirs / "edited.png").read_bytes(), job["dir"]
        params = torch.load(mine / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        expected = torch.load(theirs / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert params.keys() == expected["state_dict"].keys()
        assert all(torch.equal(params[k], expected["state_dict"][k]) for k in params), job["dir"]
        assert not [p.name for p in (mine / "checkpoints").iterdir() if "-v" in p.name], "old and new checkpoints mixed"


# Both sweeps see the same clock: the second in which they start is the same whatever the machine's load.
FROZEN_CLOCK = textwrap.dedent("""
    import datetime, sys
    import hydra.core.utils

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    hydra.core.utils.datetime = Frozen  # Hydra's ${now:...}
    from csd_exp.cli import entry

    sys.argv = ["csd-exp", *sys.argv[1:]]
    entry()
""")


def test_two_sweeps_launched_in_the_same_second_keep_their_own_folders(tmp_path):
    args = ["-m", *SMALL, "debug=fdr"]
    processes = {seed: _popen([*args, f"seed={seed}"], cwd=tmp_path, prefix=["-c", FROZEN_CLOCK]) for seed in (0, 1)}
    for process in processes.values():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    sweeps = sorted((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 2 and all(s.name.startswith("2026-01-02_03-04-05_") for s in sweeps), sweeps
    seeds = set()
    for sweep in sweeps:
        (job,) = _jobs(sweep)
        seed = int(job["overrides"][-1].removeprefix("seed="))
        assert OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task[-1] == f"seed={seed}"
        folders = [p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert folders == [job["dir"]] == [f"0_panorama_csd_edit_seed{seed}"]
        summary = json.loads((sweep / job["dir"] / "summary.json").read_text())
        assert (summary["status"], summary["seed"], summary["overrides"][-1]) == ("completed", seed, f"seed={seed}")
        seeds.add(seed)
    assert seeds == {0, 1}


def test_a_resume_plan_runs_every_job_that_did_not_complete_and_refuses_another_sweep(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from csd_exp.infra.run_folder import hold_run_folder
    from csd_exp.infra.sweep_record import resume_plan, write_jobs

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose(config_name="config", overrides=["experiment=panorama_exact_cpu"], return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = ["experiment=panorama_exact_cpu", "seed=0,1,2,3,4"]
    OmegaConf.save(config, tmp_path / "multirun.yaml")
    jobs = [["experiment=panorama_exact_cpu", f"seed={n}"] for n in range(5)]
    write_jobs(tmp_path, jobs, None)
    statuses = {0: "completed", 1: "failed", 2: "interrupted", 3: None}  # 3: started, killed; 4: never started
    for number, status in statuses.items():
        folder = tmp_path / f"{number}_panorama_csd_edit_seed{number}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {number}\n")
        if status:
            (folder / "summary.json").write_text(json.dumps({"status": status}))
    plan = resume_plan(tmp_path, config, jobs)
    assert [(n, overrides[-1], status) for n, overrides, status in plan] == [
        (1, "seed=1", "failed"),
        (2, "seed=2", "interrupted"),
        (3, "seed=3", "no summary"),
        (4, "seed=4", "never started"),
    ]
    with hold_run_folder(tmp_path / "2_panorama_csd_edit_seed2"):  # job 2 of the first launch still runs
        with pytest.raises(SystemExit, match=f"job 2 still runs: .* is in use by another run \\(pid {os.getpid()}"):
            resume_plan(tmp_path, config, jobs)
    with open_dict(config):
        config.hydra.overrides.task = ["experiment=panorama_exact_cpu", "seed=0,1,2"]
    with pytest.raises(SystemExit, match=r"seed: 0,1,2,3,4 -> 0,1,2\nlaunch it with the sweep's own overrides"):
        resume_plan(tmp_path, config, jobs[:3])
    with open_dict(config):  # the same overrides over a config file that changed since
        config.hydra.overrides.task = ["experiment=panorama_exact_cpu", "seed=0,1,2,3,4"]
        config.prompt = "make it night"
    with pytest.raises(SystemExit, match=r"composed config .*\n  prompt: turn it into a pop-art painting -> make it"):
        resume_plan(tmp_path, config, jobs)


def test_the_resume_switch_needs_a_sweep_to_resume(tmp_path):
    single = run_cli([*SMALL, "hydra.sweeper.resume=true", f"hydra.run.dir={tmp_path / 'run'}"])
    assert single.returncode == 1 and "hydra.sweeper.resume=true re-launches a sweep: add -m" in single.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    sweep = run_cli(["-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={empty}", "hydra.sweeper.resume=true"])
    assert sweep.returncode == 1
    assert f"csd-exp: hydra.sweeper.resume=true: {empty} holds no sweep (multirun.yaml missing)" in sweep.stderr
    assert list(tmp_path.rglob("*")) == [empty], "nothing written"
