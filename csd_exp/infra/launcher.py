"""``hydra/launcher=local_parallel``: several jobs of a sweep at once on this machine, one process per job,
that stop together and leave nothing behind.

Each job runs in a child process forked for it (``n_jobs`` at a time) and exits when the job ends. On Ctrl-C
or SIGTERM the parent starts no further job and passes SIGTERM to every running one; each stops after its
current step, writes ``last.ckpt`` and an ``interrupted`` ``summary.json``, and exits; a job still running
after ``stop_timeout_s`` is killed. The parent then lists what became of every job
(:func:`csd_exp.infra.sweep_end.report_interrupted_sweep`) and exits 130 / 143. A job whose parent died
without a word (SIGKILL) stops the same way on its own, so no job process outlives its sweep.

Unlike joblib's process pool (the launcher this preset used before), a job that ends early does not
make the pool kill its siblings while they write their checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

from csd_exp.infra import interrupts
from csd_exp.infra.interrupts import HANDLED, Interrupted, exit_status

log = logging.getLogger(__name__)

INTERRUPT_STATUSES = {exit_status(signum) for signum in HANDLED}
PARENT_CHECK_S = 1.0  # how often a job process checks that the sweep's process is still alive


class LocalParallelLauncher(Launcher):
    """``n_jobs`` job processes at a time; ``stop_timeout_s``: after an interrupt, how long running jobs get to
    write their checkpoint and summary before they are killed."""

    def __init__(self, n_jobs: int = 2, stop_timeout_s: float = 600.0) -> None:
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs}: give the number of jobs to run at once (>= 1)")
        if float(stop_timeout_s) <= 0:
            raise ValueError(f"hydra.launcher.stop_timeout_s={stop_timeout_s}: give a positive number of seconds")
        self.n_jobs = int(n_jobs)
        self.stop_timeout_s = float(stop_timeout_s)
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launch_numbered(list(enumerate(job_overrides, start=initial_job_idx)))

    def launch_numbered(self, jobs: Sequence[tuple[int, Sequence[str]]]) -> Sequence[JobReturn]:
        """Run ``(job number, overrides)`` pairs, ``n_jobs`` at a time, each under its own number (a resumed sweep
        runs the numbers that did not complete, gaps included: :class:`csd_exp.infra.sweep_record.GridSweeper`)."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, %d at a time, sweep output dir: %s", len(jobs), self.n_jobs, sweep_dir)
        for number, overrides in jobs:
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))

        signals: list[int] = []
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, lambda signum, _: signals.append(signum)) for signum in HANDLED}
        else:
            previous = {}
        running: dict[int, tuple[multiprocessing.Process, Any]] = {}
        try:
            results = self._run_all([(number, list(overrides)) for number, overrides in jobs], signals, running)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for process, _ in running.values():  # only after a failure of the launcher itself
                with contextlib.suppress(OSError):
                    process.kill()
                process.join()
        if signals:
            raise Interrupted(exit_status(signals[0]))
        return [results[number] for number, _ in jobs]

    def _run_all(self, jobs, signals, running) -> dict[int, JobReturn]:
        context = multiprocessing.get_context("fork")  # the job inherits the composed sweep; nothing is pickled
        pending = list(jobs)
        results: dict[int, JobReturn] = {}
        forwarded = 0  # how many of the parent's signals were passed on to the running jobs
        deadline = None
        while running or (pending and not signals):  # after an interrupt: no new job, wait for the running
            while pending and not signals and len(running) < self.n_jobs:
                number, overrides = pending.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=self._job, args=(sender, number, list(overrides), os.getpid()))
                process.start()
                sender.close()
                running[number] = (process, receiver)
            if len(signals) > forwarded:
                # The first signal stops every job gracefully (SIGTERM); a repeated Ctrl-C stops them at once.
                forward = signal.SIGTERM if forwarded == 0 else signals[-1]
                log.warning(
                    "%s: stopping the sweep; %d running job(s) save a checkpoint and their summary",
                    signal.Signals(signals[forwarded]).name,
                    len(running),
                )
                for process, _ in running.values():
                    with contextlib.suppress(OSError):
                        os.kill(process.pid, forward)
                forwarded = len(signals)
                deadline = deadline or time.monotonic() + self.stop_timeout_s
            if deadline is not None and time.monotonic() > deadline:
                for number, (process, _) in running.items():
                    log.error("job %d still running %.0f s after the interrupt: killed", number, self.stop_timeout_s)
                    with contextlib.suppress(OSError):
                        process.kill()
            wait([p.sentinel for p, _ in running.values()] + [r for _, r in running.values()], timeout=0.2)
            for number, (process, receiver) in list(running.items()):
                # Read a result as soon as it is sent: a large one fills the pipe and the job waits for us.
                if number not in results and receiver.poll():
                    results[number] = _receive(receiver)
                if process.is_alive():
                    continue
                process.join()
                receiver.close()
                if not isinstance(results.get(number), JobReturn):
                    error = RuntimeError(f"job {number} ended without a result (exit status {process.exitcode})")
                    results[number] = _failed(error)
                del running[number]
        return results

    def _job(self, sender, number: int, overrides: list[str], parent_pid: int) -> None:
        """The job process: run the job, send its JobReturn, exit with the job's status."""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # then ours: a signal while the job composes
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ends it at once, one during its fit after a step
        interrupts.forget()
        interrupts.install()
        threading.Thread(target=_stop_when_orphaned, args=(parent_pid,), daemon=True).start()
        status = 0
        try:
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{number}"
                sweep_config.hydra.job.num = number
            from hydra.core.hydra_config import HydraConfig

            HydraConfig.instance().set_config(sweep_config)
            ret = run_job(
                hydra_context=self.hydra_context,
                config=sweep_config,
                task_function=self.task_function,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            if ret.status == JobStatus.FAILED:
                log.error("job %d failed", number, exc_info=ret._return_value)
            _send(sender, ret)
        except (SystemExit, KeyboardInterrupt) as stop:  # interrupted (130 / 143: its summary is written), refused
            status = exit_status(signal.SIGINT) if isinstance(stop, KeyboardInterrupt) else stop.code
            if not isinstance(status, int):  # SystemExit("csd-exp: <why the job was refused>")
                print(status, file=sys.stderr)
                status = 1
            what = "was interrupted" if status in INTERRUPT_STATUSES else "stopped"
            _send(sender, _failed(RuntimeError(f"job {number} {what} (exit status {status}); see its summary.json")))
        except BaseException as error:  # composing the job failed: report it as the job's failure
            _send(sender, _failed(error))
            status = 1
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)  # a forked child: no atexit handlers of the parent's


def _receive(receiver) -> JobReturn | None:
    try:
        return receiver.recv()
    except (EOFError, OSError, pickle.UnpicklingError):  # the job died while sending
        return None


def _failed(error: BaseException) -> JobReturn:
    ret = JobReturn(status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def _send(sender, ret: JobReturn) -> None:
    try:
        sender.send(ret)
    except Exception:  # an unpicklable return value or error: send its text
        failed = JobReturn(status=ret.status, overrides=ret.overrides, working_dir=ret.working_dir)
        failed.return_value = RuntimeError(repr(ret._return_value))
        sender.send(failed)


def _stop_when_orphaned(parent_pid: int) -> None:
    """SIGTERM this job (a graceful stop: checkpoint and summary) once the sweep's process is gone."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)
