"""Interrupts are failures (exit 130 / 143 with last.ckpt and an ``interrupted`` summary, for a run, a sweep and
the local_parallel launcher), and checkpoints are whole or absent, and bounded in number."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import pytorch_lightning as pl
import torch
from framework_support import REPO_ROOT, compose_config

from csd_exp.infra.callbacks import RunFingerprint
from csd_exp.infra.checkpoint_files import PeriodicCheckpoint, write_checkpoint

# A CPU-sized job that runs until it is stopped; checkpoints every step so that a test can wait for one.
ENDLESS = [
    "experiment=panorama_exact_cpu",
    "debug=smoke",
    "data.short_side=32",
    "task.window_size=32",
    "task.window_stride=8",
    "trainer.max_steps=100000",
    "trainer.val_check_interval=1000000",
    "extras.print_config=false",
]
WAIT_S = 300  # bound on start-up plus a few steps on a busy 2-core machine
STOP_S = 120  # bound on stopping after the signal


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    return subprocess.Popen(
        [sys.executable, "-m", "csd_exp.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(process: subprocess.Popen, paths) -> None:
    """Until every path of ``paths()`` exists (the run has written a checkpoint: it is in fit)."""
    deadline = time.monotonic() + WAIT_S
    while not paths():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"ended before the signal (exit {process.returncode}): {err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint within {WAIT_S} s")
        time.sleep(0.2)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running {STOP_S} s after the signal")
    return process.returncode, err


def _interrupted_with_checkpoint(run_dir: Path, signal_name: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert signal_name in summary["error"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == summary["steps"] >= 1  # saved at the step the run stopped


@pytest.mark.parametrize(
    "signum, status, trainer",
    [
        (signal.SIGINT, 130, []),
        (signal.SIGTERM, 143, []),
        # 2 ranks: Lightning's own SIGTERM handler deadlocked them (a broadcast inside the signal handler)
        (signal.SIGTERM, 143, ["trainer=ddp_sim", "task.windows_per_step=4"]),
    ],
    ids=["SIGINT", "SIGTERM", "SIGTERM-2-ranks"],
)
def test_a_signal_ends_a_run_with_its_checkpoint_and_a_failing_exit_status(signum, status, trainer, tmp_path):
    run_dir = tmp_path / "run"
    process = _start([*ENDLESS, *trainer, "callbacks.checkpoint.every_n_train_steps=1", f"hydra.run.dir={run_dir}"])
    _wait_for(process, lambda: (run_dir / "checkpoints" / "last.ckpt").is_file())
    process.send_signal(signum)
    code, err = _finish(process)
    assert code == status, err[-3000:]
    _interrupted_with_checkpoint(run_dir, signal.Signals(signum).name)


def test_an_interrupted_sweep_fails_and_lists_its_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    # Job 0 completes (2 steps), job 1 runs until the signal, job 2 never starts.
    args = ["-m", *ENDLESS, "trainer.max_steps=2,100000,2", "callbacks.checkpoint.every_n_train_steps=1"]
    process = _start([*args, f"hydra.sweep.dir={sweep}"])
    _wait_for(process, lambda: list(sweep.glob("1_*/checkpoints/last.ckpt")))
    process.send_signal(signal.SIGTERM)
    code, err = _finish(process)
    assert code == 143, err[-3000:]
    assert "sweep interrupted (exit status 143): 1 completed, 1 interrupted, 1 never started" in err
    lines = err.splitlines()
    for number, status, steps in [(0, "completed", 2), (1, "interrupted", 100000), (2, "never started", 2)]:
        line = next(line for line in lines if line.strip().startswith(f"job {number}:"))
        assert status in line and f"trainer.max_steps={steps}" in line
    _interrupted_with_checkpoint(next(sweep.glob("1_*")), "SIGTERM")
    assert not list(sweep.glob("2_*"))


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-parent"])
def test_an_interrupted_local_parallel_sweep_keeps_every_running_job_and_leaves_no_process(how, tmp_path):
    """Ctrl-C in a terminal signals the whole process group; SIGTERM (a scheduler, kill) only the parent."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", *ENDLESS, "seed=0,1,2"]
    process = _start(
        [*args, "callbacks.checkpoint.every_n_train_steps=1", f"hydra.sweep.dir={sweep}"], start_new_session=True
    )
    _wait_for(process, lambda: len(list(sweep.glob("*/checkpoints/last.ckpt"))) == 2)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    code, err = _finish(process)
    assert code == (130 if how == "ctrl-c" else 143), err[-3000:]
    for seed in (0, 1):
        _interrupted_with_checkpoint(next(sweep.glob(f"{seed}_*_seed{seed}")), "SIG")
    assert "job 2: never started" in err and not list(sweep.glob("2_*"))
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"job processes outlived the sweep: {alive}"


class Tiny(pl.LightningModule):
    """One parameter vector and SGD: a real Lightning checkpoint in well under a second."""

    def __init__(self, size: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch.mean()).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(folder: Path, max_steps: int, keep_last: int | None, module=None, callbacks=(), ckpt_path=None) -> pl.Trainer:
    checkpoints = PeriodicCheckpoint(
        dirpath=folder,
        filename="step{step:02d}",
        auto_insert_metric_name=False,
        every_n_train_steps=1,
        keep_last=keep_last,
        save_last=True,
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[checkpoints, RunFingerprint({"keys": {}, "hash": "test"}), *callbacks],
    )
    trainer.fit(module or Tiny(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("keep_last, kept", [(2, ["step04", "step05"]), (None, [f"step0{i}" for i in range(1, 6)])])
def test_keep_last_keeps_exactly_the_newest_periodic_checkpoints(keep_last, kept, tmp_path):
    _fit(tmp_path, max_steps=5, keep_last=keep_last)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == sorted([f"{name}.ckpt" for name in kept] + ["last.ckpt"])
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("resumed_from", ["step03.ckpt", "last.ckpt"])
def test_keep_last_holds_after_a_resume_whatever_checkpoint_it_resumes_from(resumed_from, tmp_path):
    _fit(tmp_path, max_steps=4, keep_last=2)
    if resumed_from == "last.ckpt":  # as a run stopped by a signal saves it: before that step's periodic file
        checkpoint = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
        (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PeriodicCheckpoint")]
        assert state["periodic_paths"] == [str(tmp_path / "step03.ckpt"), str(tmp_path / "step04.ckpt")]
        state["periodic_paths"] = state["periodic_paths"][:1]
        torch.save(checkpoint, tmp_path / "last.ckpt")
    # A periodic checkpoint's state lists the files before it, not itself: resumed from it, it is pruned all the same.
    _fit(tmp_path, max_steps=7, keep_last=2, ckpt_path=tmp_path / resumed_from)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step06.ckpt", "step07.ckpt"]


def test_keep_last_is_checked_when_the_config_is_composed(tmp_path):
    from csd_exp.schema import ConfigError, validate_composed

    cfg = compose_config(["experiment=panorama_exact_cpu", "callbacks.checkpoint.keep_last=0"], tmp_path)
    message = "callbacks.checkpoint.keep_last=0 is not allowed: input should be greater than or equal to 1"
    with pytest.raises(ConfigError, match=message):
        validate_composed(cfg)
    validate_composed(
        compose_config(["experiment=panorama_exact_cpu", "callbacks.checkpoint.keep_last=null"], tmp_path)
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs of its own (needs root and mount), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small file system for the full-disk test needs root and mount(8)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


class FillDiskAt(pl.Callback):
    """Fill the file system of ``folder`` once ``step`` is done, before its checkpoints are written."""

    def __init__(self, folder: Path, step: int):
        self.folder, self.step = folder, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with contextlib.suppress(OSError), open(self.folder / "filler", "wb") as handle:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
                    os.fsync(handle.fileno())


def test_a_full_disk_keeps_the_previous_checkpoint_loadable_and_names_it(small_disk):
    folder = small_disk / "checkpoints"
    module = Tiny(size=60_000)  # a checkpoint of ~0.5 MB: two fit on the disk, a third does not after the filler
    with pytest.raises(OSError, match="could not write checkpoint .*No space left on device") as failed:
        # FillDiskAt runs before ModelCheckpoint's own on_train_batch_end (callbacks run in list order, and
        # Lightning moves checkpoint callbacks last).
        _fit(folder, max_steps=5, keep_last=2, module=module, callbacks=[FillDiskAt(small_disk, step=2)])
    named = Path(str(failed.value).split("the newest checkpoint kept is ")[1].split()[0])
    assert named.parent == folder and named.name in ("last.ckpt", "step01.ckpt")
    for path in (named, folder / "last.ckpt"):  # whole, and of the last step that was saved
        kept = torch.load(path, map_location="cpu", weights_only=True)
        assert kept["global_step"] == 1
        assert torch.equal(kept["state_dict"]["weight"], torch.load(folder / "step01.ckpt")["state_dict"]["weight"])
    assert not list(folder.glob(".*partial")), "the partial file of the failed write is removed"


def test_a_failed_write_names_the_checkpoint_it_would_have_replaced(small_disk):
    path = small_disk / "last.ckpt"
    write_checkpoint({"state_dict": {"w": torch.arange(1000.0)}}, path)
    with pytest.raises(
        OSError, match=f"could not write checkpoint {path}: No space left on device .*the previous {path} is kept"
    ):
        write_checkpoint({"state_dict": {"w": torch.zeros(1_000_000)}}, path)  # 4 MB on a 2 MiB disk
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.arange(1000.0))
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.ckpt"]
