"""Requeues without a cluster (csd_exp/infra/requeue.py): the run stops at a step boundary when submitit's time-limit
signal arrives, requeues only after its summary is written, and a requeued allocation resumes from its own
checkpoint, refuses a changed config, and appends its CSV log. tests/cluster/ does the same on a real SLURM."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from framework_support import FAST, compose_config
from omegaconf import OmegaConf

from csd_exp.infra import requeue
from csd_exp.infra.checkpoints import CHECKPOINT_KEY, run_fingerprint
from csd_exp.run import run

SMALL = ["experiment=panorama_exact_cpu", *FAST, "data.short_side=32", "task.window_size=32"]
SMALL += ["task.window_stride=8", "trainer.max_steps=6"]


class SignalAtStep(pl.Callback):
    """Sends this process the requeue signal during step ``step``, before its backward pass (as slurmctld would:
    at any moment)."""

    def __init__(self, step: int):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), requeue.requeue_signal())


class SigtermAfterValidation(pl.Callback):
    """A SIGTERM noticed after step ``step``'s validation: Lightning stops at the end of that step and the interrupt
    checkpoint is written there (as for a preemption that lands late in a step)."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


class SigtermInStep(pl.Callback):
    """A SIGTERM (or a Ctrl-C during fit, which csd-exp turns into one) noticed inside step ``step``: Lightning
    stops at that step's end."""

    def __init__(self, step: int):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


@pytest.fixture
def submitit_handler():
    """A stand-in for submitit's SIGUSR2 handler (it requeues and exits); records what the run's folder held then."""
    calls: list[dict] = []
    sig = requeue.requeue_signal()

    def handler(signum, frame):
        folder = handler.folder
        calls.append({"signum": signum, "summary": json.loads((folder / "summary.json").read_text())})
        raise SystemExit(-1)

    previous = signal.signal(sig, handler)
    yield handler, calls
    signal.signal(sig, previous)


def _canvas(path):
    return torch.load(path, weights_only=True)["state_dict"]["canvas"]


def test_the_signal_stops_the_run_after_the_step_then_requeues_and_the_requeued_run_resumes(
    tmp_path, submitit_handler, monkeypatch
):
    handler, calls = submitit_handler
    straight = run(compose_config(SMALL, tmp_path / "straight"))
    folder = tmp_path / "requeued"
    handler.folder = folder
    signalled = [*SMALL, "+callbacks.signal._target_=test_requeue.SignalAtStep", "+callbacks.signal.step=2"]
    with pytest.raises(SystemExit):
        run(compose_config(signalled, folder))
    # submitit's handler ran once, after the run had stopped at the end of step 3 and written its summary
    assert [call["signum"] for call in calls] == [requeue.requeue_signal()]
    assert calls[0]["summary"]["status"] == "interrupted" and calls[0]["summary"]["steps"] == 3
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    monkeypatch.setenv(requeue.RESTART_VARIABLE, "1")  # SLURM starts the same job again
    resumed = run(compose_config(SMALL, folder))
    assert resumed["status"] == "completed" and resumed["steps"] == 6 and resumed["allocations"] == 2
    torch.testing.assert_close(
        _canvas(folder / "checkpoints" / "last.ckpt"), _canvas(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    )
    assert straight["allocations"] == 1
    assert (folder / "edited.png").read_bytes() == (tmp_path / "straight" / "edited.png").read_bytes()
    steps = [int(row["step"]) for row in csv.DictReader(open(folder / "csv" / "metrics.csv")) if row.get("loss")]
    assert steps == list(range(6))  # the first allocation's rows kept, the second's appended


def test_without_a_submitit_handler_nothing_is_held_back(tmp_path):
    with requeue.requeue_after_run():
        assert signal.getsignal(requeue.requeue_signal()) in (signal.SIG_DFL, signal.SIG_IGN, None)


def _checkpoint(path, step, fingerprint=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {CHECKPOINT_KEY: {"fingerprint": fingerprint}} if fingerprint else {}
    torch.save({"global_step": step, "state_dict": {"x": torch.zeros(1)}, **entry}, path)
    return path


def test_own_checkpoint_is_the_newest_that_loads(tmp_path):
    folder = tmp_path / "checkpoints"
    assert requeue.own_checkpoint(tmp_path) is None
    _checkpoint(folder / "step00100.ckpt", 100)
    last = _checkpoint(folder / "last.ckpt", 150)
    assert requeue.own_checkpoint(tmp_path) == last
    newer = _checkpoint(folder / "step00200.ckpt", 200)  # killed without warning after a periodic save
    assert requeue.own_checkpoint(tmp_path) == newer
    newer.write_bytes(newer.read_bytes()[:50])  # truncated: the next one that loads
    assert requeue.own_checkpoint(tmp_path) == last


def test_a_requeued_allocation_refuses_a_config_changed_on_disk(tmp_path, monkeypatch):
    cfg = compose_config(["experiment=panorama_exact_cpu", "prompt=make it night"], tmp_path)
    stored = run_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    last = _checkpoint(tmp_path / "checkpoints" / "last.ckpt", 10, stored)
    assert requeue.resume_requeued_run(cfg, tmp_path, stored) is None  # a first allocation: nothing to resume
    monkeypatch.setenv(requeue.RESTART_VARIABLE, "2")
    assert requeue.resume_requeued_run(cfg, tmp_path, stored) == last and cfg.ckpt_path == str(last)
    changed = compose_config(["experiment=panorama_exact_cpu", "prompt=make it day"], tmp_path)
    current = run_fingerprint(OmegaConf.to_container(changed, resolve=True))
    with pytest.raises(ValueError, match="config changed on disk") as error:
        requeue.resume_requeued_run(changed, tmp_path, current)
    assert 'prompt: "make it night" -> "make it day"' in str(error.value)
    assert changed.ckpt_path is None


def test_lightning_auto_requeue_is_off_inside_slurm(monkeypatch):
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    assert requeue.trainer_plugins({}) == {}
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "csd")
    (environment,) = requeue.trainer_plugins({})["plugins"]
    assert environment.auto_requeue is False
    assert requeue.trainer_plugins({"plugins": []}) == {}  # the config's own choice stands


@pytest.mark.parametrize("sigterm", [True, False])
def test_a_logger_failing_after_sigterm_is_the_preemption_not_a_crash(sigterm):
    from types import SimpleNamespace

    from pytorch_lightning.utilities.exceptions import SIGTERMException

    trainer = SimpleNamespace(received_sigterm=sigterm)
    expected = SIGTERMException if sigterm else ConnectionResetError
    with pytest.raises(expected, match="Connection lost"):
        with requeue.preemption_stops_cleanly(trainer):
            raise ConnectionResetError("Connection lost")  # W&B's service, stopped by SLURM with the job


def test_a_run_stopped_by_sigterm_resumes_with_every_step_logged_once(tmp_path, monkeypatch):
    folder = tmp_path / "preempted"
    stopped = [*SMALL, "+callbacks.sigterm._target_=test_requeue.SigtermAfterValidation", "+callbacks.sigterm.step=3"]
    with pytest.raises(SystemExit):
        run(compose_config(stopped, folder))
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setenv(requeue.RESTART_VARIABLE, "1")
    resumed = run(compose_config(SMALL, folder))
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    steps = [int(row["step"]) for row in csv.DictReader(open(folder / "csv" / "metrics.csv")) if row.get("loss")]
    assert steps == list(range(6))
    # keep_last (3) holds across the stop: the periodic checkpoint of the stopping step is pruned like the others.
    kept = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert kept == ["last.ckpt", "step00004.ckpt", "step00005.ckpt", "step00006.ckpt"], kept


def test_a_run_stopped_after_a_step_writes_its_checkpoint_once(tmp_path, monkeypatch):
    """Stopped at a step's end (SIGTERM, or Ctrl-C during fit), the step is saved there and that file becomes
    last.ckpt; the on-exception save does not write the same step again."""
    from csd_exp.infra.checkpoint_files import AtomicCheckpointIO

    written = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        written.append(os.path.basename(path))
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    stopped = [*SMALL, "+callbacks.sigterm._target_=test_requeue.SigtermInStep", "+callbacks.sigterm.step=2"]
    stopped += ["callbacks.checkpoint.every_n_train_steps=100"]
    with pytest.raises(SystemExit):
        run(compose_config(stopped, tmp_path))
    assert written == [requeue.REQUEUE_CHECKPOINT], written
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
