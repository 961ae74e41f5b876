"""Interrupts are failures: Ctrl-C (SIGINT) and SIGTERM end a run with ``last.ckpt``, an ``interrupted``
``summary.json`` and exit status 128 + the signal's number (130 / 143), as shells, schedulers and CI expect.

During ``trainer.fit`` either signal stops the run at the end of the current step (Lightning's own SIGTERM
mechanism, so the checkpoint is of a whole step and DDP ranks stop together); a second Ctrl-C stops it at
once. Outside ``fit`` (model loading, final metrics, between the jobs of a sweep) the first signal stops the
process at once and later ones are ignored while it writes its summary. Where another library already
handles a signal (submitit's SIGTERM on SLURM) its handler is kept.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals this process received, in order
_forwarding = False


class Interrupted(SystemExit):
    """Ends the process after an interrupt; ``code`` is the exit status (130 for SIGINT, 143 for SIGTERM)."""


def exit_status(signum: int) -> int:
    return 128 + int(signum)


def received() -> int | None:
    """The first SIGINT / SIGTERM this process received (None: none)."""
    return _received[0] if _received else None


def forget() -> None:
    """Start with no signal received (a forked job process inherits its parent's record)."""
    _received.clear()


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (main thread only) where they still have Python's defaults."""
    if threading.current_thread() is not threading.main_thread():
        return
    defaults = {signal.SIGINT: (signal.default_int_handler, signal.SIG_DFL), signal.SIGTERM: (signal.SIG_DFL,)}
    for signum in HANDLED:
        if signal.getsignal(signum) in defaults[signum]:
            signal.signal(signum, _handle)


def _lightning_fitting() -> bool:
    """Whether a Lightning trainer is in ``fit``: it then wraps the SIGTERM handler (and calls ours after its own)."""
    connector = sys.modules.get("pytorch_lightning.trainer.connectors.signal_connector")
    return connector is not None and isinstance(signal.getsignal(signal.SIGTERM), connector._HandlersCompose)


def _handle(signum: int, frame) -> None:
    global _forwarding
    if _forwarding:  # our own SIGINT -> SIGTERM hand-over, coming back through Lightning's handler
        return
    first = not _received
    _received.append(signum)
    name = signal.Signals(signum).name
    if _lightning_fitting():
        if first:
            log.warning("%s: stopping after this step and saving last.ckpt (Ctrl-C again to stop at once)", name)
            if signum != signal.SIGTERM:  # Lightning's graceful stop: a flag checked at the end of each step
                _forwarding = True
                try:
                    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, frame)
                finally:
                    _forwarding = False
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        return
    if not first:
        log.warning("%s ignored: already stopping (writing the summary); kill -9 %d forces it", name, os.getpid())
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(exit_status(signum))


def exit_status_of(stop: BaseException) -> int:
    """The exit status of a run that ``stop`` ended: 128 + the signal received, 130 for a KeyboardInterrupt
    raised in code, 143 for Lightning's SIGTERM exception, else the SystemExit's own non-zero code or 1."""
    if _received:
        return exit_status(_received[0])
    if isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt):
        return exit_status(signal.SIGINT)  # Lightning turns a KeyboardInterrupt into sys.exit(1)
    if type(stop).__name__ == "SIGTERMException":
        return exit_status(signal.SIGTERM)
    code = getattr(stop, "code", None)
    return code if isinstance(code, int) and code != 0 else 1


def describe(stop: BaseException) -> str:
    """A summary's ``error`` for an interrupted run: the signal and the exit status."""
    code = exit_status_of(stop)
    names = {exit_status(s): signal.Signals(s).name for s in HANDLED}
    cause = names.get(code, f"{type(stop).__name__}: {stop}".rstrip(": "))
    return f"interrupted by {cause} (exit status {code})"


def stop_ranks_at_step_end(trainer) -> None:
    """With several ranks, reduce Lightning's SIGTERM handler to its flag (call in ``on_train_start``, after
    Lightning installs it). Its handler also broadcasts from inside the signal handler, which deadlocks when
    the signal lands while the ranks are in another collective (measured: a 2-rank ddp_sim run hung on
    SIGTERM); the training loop already broadcasts rank zero's flag at the end of every step."""
    if trainer.world_size <= 1:
        return
    connector = trainer._signal_connector
    handlers = getattr(signal.getsignal(signal.SIGTERM), "signal_handlers", None)
    if not isinstance(handlers, list) or connector._sigterm_notifier_fn not in handlers:
        return  # a Lightning version that handles SIGTERM differently: leave it alone

    def flag_only(signum: int, frame) -> None:
        connector.received_sigterm = True

    handlers[handlers.index(connector._sigterm_notifier_fn)] = flag_only
