"""The run-folder lock (one live run per folder, free again once its holder dies) and atomic JSON writes."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from framework_support import REPO_ROOT, run_cli

from csd_exp.infra import run_folder
from csd_exp.infra.run_folder import LOCK_NAME, RunFolderInUse, hold_run_folder, write_json_atomically

HOLDER = textwrap.dedent("""
    import sys, time
    from csd_exp.infra.run_folder import hold_run_folder
    with hold_run_folder(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds ``tmp_path / "run"`` until killed."""
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "held"
        yield folder, process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_second_run_is_refused_while_the_first_holds_the_folder(holder):
    folder, process = holder
    with pytest.raises(RunFolderInUse) as refused:
        with hold_run_folder(folder):
            pass
    message = str(refused.value)
    assert str(folder) in message and f"pid {process.pid}" in message and socket.gethostname() in message
    assert "hydra.run.dir=" in message and "wait for it to finish" in message


def test_a_killed_holder_leaves_no_lock_that_blocks_a_resume(holder):
    folder, process = holder
    process.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
    process.wait(timeout=30)
    assert (folder / LOCK_NAME).is_file()
    with hold_run_folder(folder) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_other_ranks_pass_through_the_lock(holder):
    folder, _ = holder
    with hold_run_folder(folder, rank=1) as lock:
        assert lock is None


def test_sequential_runs_in_one_folder_leave_nothing_behind(tmp_path):
    folder = tmp_path / "new" / "run"
    for _ in range(2):
        with hold_run_folder(folder) as lock:
            info = json.loads(lock.read_text())
            assert info["host"] == socket.gethostname() and info["since"]
    assert list(folder.iterdir()) == []


def test_a_run_in_this_process_also_blocks_a_second_one(tmp_path):
    with hold_run_folder(tmp_path), pytest.raises(RunFolderInUse, match=f"pid {os.getpid()}"):
        with hold_run_folder(tmp_path):
            pass


def test_write_json_atomically_replaces_the_file(tmp_path):
    path = tmp_path / "deeper" / "summary.json"
    write_json_atomically(path, {"status": "failed"})
    write_json_atomically(path, {"status": "completed", "when": Path("x")})
    assert json.loads(path.read_text()) == {"status": "completed", "when": "x"}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_a_full_disk_leaves_no_temp_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomically(path, {"status": "running"})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.os, "fsync", disk_full)  # the data is written, the flush fails
    with pytest.raises(OSError) as failed:
        write_json_atomically(path, {"status": "completed"})
    assert failed.value.errno == errno.ENOSPC
    assert str(failed.value) == (
        f"[Errno {errno.ENOSPC}] could not write {path}: {os.strerror(errno.ENOSPC)}; free space on that disk"
    )
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert json.loads(path.read_text()) == {"status": "running"}, "the previous summary must survive"


# A run of two steps on the exact prior (seconds on a CPU).
SMALL = ["experiment=panorama_exact_cpu", "debug=smoke", "data.short_side=32", "task.window_size=32"]
SMALL += ["task.window_stride=8"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included), by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_refused_by_the_lock_writes_nothing_in_the_live_runs_folder(holder):
    folder, process = holder
    # What a live run has written by then: Hydra's records, its log, a checkpoint.
    (folder / ".hydra").mkdir()
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (folder / ".hydra" / name).write_text(f"# the live run's {name}\n")
    (folder / "cli.log").write_text("the live run's log\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"the live run's checkpoint")
    before = _files(folder)
    attempts = {
        "a new run": [*SMALL, f"hydra.run.dir={folder}"],
        "a resume in place": [*SMALL, f"hydra.run.dir={folder}", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"],
        "a sweep": ["-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={folder}"],
    }
    for what, args in attempts.items():
        result = run_cli(args)
        assert result.returncode == 1, what
        assert f"csd-exp: {folder} is in use by another run (pid {process.pid}" in result.stderr, (what, result.stderr)
        assert _files(folder) == before, f"{what} wrote into the live run's folder"


def test_a_new_run_in_a_finished_runs_folder_is_refused_and_a_resume_continues_there(tmp_path):
    import csv

    folder = tmp_path / "run"
    first = run_cli([*SMALL, f"hydra.run.dir={folder}"])
    assert first.returncode == 0, first.stderr[-3000:]
    finished = _files(folder)
    resume = [f"hydra.run.dir={folder}", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=4"]
    for args in ([f"hydra.run.dir={folder}"], [f"paths.output_dir={folder}"]):  # Hydra's folder or the outputs'
        refused = run_cli([*SMALL, *args])
        assert refused.returncode == 1
        assert (
            f"csd-exp: {folder} holds a finished run (summary.json: completed): a new run needs a folder of its own"
            in refused.stderr
        ), refused.stderr
        assert f"resume it: ckpt_path={folder}/checkpoints/last.ckpt" in refused.stderr
        assert _files(folder) == finished
    # A resume in place under a changed setting is refused before anything is written ...
    changed = run_cli([*SMALL, *resume, "guidance.guidance_scale=2.5"])
    assert changed.returncode == 1 and "guidance.guidance_scale: 1.5 -> 2.5" in changed.stderr, changed.stderr
    assert "resume.allow_config_change=true" in changed.stderr
    assert _files(folder) == finished
    # ... and continues the run there when asked to: to step 4, one checkpoint series, the CSV log kept.
    allowed = run_cli([*SMALL, *resume, "guidance.guidance_scale=2.5", "resume.allow_config_change=true"])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 4)
    assert summary["config_changed_on_resume"] == ["guidance.guidance_scale: 1.5 -> 2.5"]
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step00002.ckpt", "step00003.ckpt", "step00004.ckpt"]
    with open(folder / "csv" / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]
    assert steps == [0, 1, 2, 3], "the first run's rows are kept and the resumed steps follow them"


def _job_folder(tmp_path: Path, overrides: list[str]) -> Path:
    """A constructed run folder as Hydra leaves it: ``.hydra/overrides.yaml`` and ``checkpoints/last.ckpt``."""
    folder = tmp_path / "sweep" / "0_panorama_csd_edit_seed0"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    return folder


def test_a_resume_command_continues_in_the_checkpoints_run_folder_under_its_overrides(tmp_path, capsys):
    folder = _job_folder(tmp_path, ["experiment=panorama_exact_cpu", "seed=1", "trainer.max_steps=2"])
    ckpt = f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
    argv = ["csd-exp", "--config-dir", "/my/conf", ckpt, "trainer.max_steps=5"]
    assert run_folder.resume_in_own_folder(argv) == [
        "csd-exp",
        "--config-dir",
        "/my/conf",
        "experiment=panorama_exact_cpu",
        "seed=1",  # the run's own overrides, but those given now (trainer.max_steps=5 wins)
        ckpt,
        f"hydra.run.dir={folder}",
        "trainer.max_steps=5",
    ]
    assert f"resuming the run in its own folder {folder}" in capsys.readouterr().err
    # A folder named on the command line, a sweep, or a request for help: left as given.
    for argv in ([ckpt, f"hydra.run.dir={tmp_path}"], [ckpt, f"paths.output_dir={tmp_path}"], ["-m", ckpt]):
        assert run_folder.resume_in_own_folder(["csd-exp", *argv]) == ["csd-exp", *argv]
    assert run_folder.resume_in_own_folder(["csd-exp", "--cfg", "job", ckpt]) == ["csd-exp", "--cfg", "job", ckpt]
    # A sweep's job keeps the records the sweep wrote (its re-launch reads the job number there).
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n  job:\n    num: 0\n")
    assert run_folder.resume_in_own_folder(["csd-exp", ckpt])[-2:] == [
        f"hydra.run.dir={folder}",
        "hydra.output_subdir=null",
    ]
    assert f"resuming job {folder.name} of the sweep {folder.parent} in its own folder" in capsys.readouterr().err


def test_a_resume_keeps_a_stored_choice_of_another_package_of_the_same_group(tmp_path):
    """``model@priors.text_to_image=...`` is another setting than ``model=...``: giving one keeps the other."""
    stored = ["experiment=video_exact_cpu", "method=fatezero", "model@priors.text_to_image=tiny_sd"]
    folder = _job_folder(tmp_path, stored)
    ckpt = f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
    resumed = run_folder.resume_in_own_folder(["csd-exp", ckpt, "model=exact"])
    assert resumed[1:4] == stored and resumed[-1] == "model=exact"
    again = run_folder.resume_in_own_folder(["csd-exp", ckpt, "model@priors.text_to_image=sd15"])
    assert "model@priors.text_to_image=tiny_sd" not in again and again[-1] == "model@priors.text_to_image=sd15"


def test_a_checkpoint_outside_a_run_folder_resumes_in_a_new_folder_with_a_note(tmp_path, capsys):
    copied = tmp_path / "checkpoints" / "last.ckpt"  # a copied file: no .hydra/ beside its folder
    copied.parent.mkdir()
    copied.write_bytes(b"a checkpoint")
    for path in (copied, tmp_path / "copy.ckpt"):
        path.write_bytes(b"a checkpoint")
        argv = ["csd-exp", "experiment=panorama_exact_cpu", f"ckpt_path={path}"]
        assert run_folder.resume_in_own_folder(argv) == argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"ckpt_path={path} is not in a run's checkpoints/ folder" in err, err
        assert "resuming in a new run folder" in err
    missing = ["csd-exp", f"ckpt_path={tmp_path / 'nothing.ckpt'}"]  # left to the run, which names the fix
    assert run_folder.resume_in_own_folder(missing) == missing


@pytest.mark.slow
def test_a_sweep_job_resumed_with_only_ckpt_path_continues_in_its_folder_and_the_sweep_report_reads_it(tmp_path):
    import csv

    from wandb_offline import read_offline_run

    sweep = tmp_path / "sweep"
    env = {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    launched = run_cli(
        ["-m", f"hydra.sweep.dir={sweep}", *SMALL, "logger=wandb", "guidance.guidance_scale=1.5,3", "tags=[review]"],
        cwd=tmp_path,
        env=env,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    (job,) = [folder for folder in sweep.iterdir() if "guidance.guidance_scale=1.5" in _hydra_overrides(folder)]
    before = json.loads((job / "summary.json").read_text())
    (original,) = [read_offline_run(folder) for folder in (job / "wandb").glob("offline-run-*")]
    log_lines = (job / "cli.log").read_text().splitlines()
    folders = sorted(p.name for p in sweep.iterdir())
    records = _files(job / ".hydra")

    resumed = run_cli([f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=3"], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "outputs").exists(), "no new run folder"
    assert _files(job / ".hydra") == records, "the sweep's records of the job are kept"
    assert sorted(p.name for p in sweep.iterdir()) == folders, "nothing new in the sweep folder"
    summary = json.loads((job / "summary.json").read_text())
    assert (before["steps"], summary["status"], summary["steps"]) == (2, "completed", 3)
    assert "guidance.guidance_scale=1.5" in summary["overrides"] and summary["config"]["tags"] == ["review"]
    cli_log = (job / "cli.log").read_text().splitlines()
    assert cli_log[: len(log_lines)] == log_lines and len(cli_log) > len(log_lines), "cli.log is appended to"
    with open(job / "csv" / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("loss")]
    assert steps == [0, 1, 2], "the CSV log keeps the first steps and the resumed one follows"
    runs = sorted((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and original.id in runs[-1].name
    again = read_offline_run(runs[-1])
    assert (again.id, again.group, again.name, again.job_type, again.tags) == (
        original.id,
        original.group,
        original.name,
        original.job_type,
        original.tags,
    )
    assert again.group == f"panorama_exact_cpu-{sweep.name}" and "guidance_scale=1.5" in again.name

    report = subprocess.run(
        [sys.executable, "-m", "csd_exp.report", str(sweep), "--no-wandb"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with open(sweep / "report.csv") as handle:
        rows = {row["runs"]: row for row in csv.DictReader(handle)}
    psnr = float(rows[job.name]["fidelity/psnr_mean"])
    assert psnr == pytest.approx(summary["metrics"]["fidelity/psnr"], rel=1e-12)
    assert psnr != pytest.approx(before["metrics"]["fidelity/psnr"], rel=1e-6), "the report reads the resumed summary"


def _hydra_overrides(folder: Path) -> str:
    return (folder / ".hydra" / "overrides.yaml").read_text() if (folder / ".hydra").is_dir() else ""


def test_a_resume_in_place_of_a_method_on_another_familys_prior_is_not_refused(tmp_path):
    """method=csd on an exact-prior experiment takes priors.text_to_image (tiny SD) and rescales the pixel sizes;
    the folder guard fingerprints the config as the run did (after the method's prior), so resuming is not
    refused as a 'changed config' (it was: model and window sizes differed before the method was applied)."""
    folder = tmp_path / "run"
    first = run_cli([*SMALL, "method=csd", f"hydra.run.dir={folder}"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((folder / "summary.json").read_text())["prior_setting"] == "priors.text_to_image"
    resumed = run_cli([f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["method"]) == ("completed", 3, "csd")
