"""The run's progress: a live bar over the real step total in a terminal, plain log lines everywhere else.

``callbacks.progress`` (conf/callbacks/default.yaml) calls :func:`progress_callback`. With ``style: auto``
a terminal on stdout gets :class:`StepBar` (rich, "step 120/300"), anything else (a log file, a pipe, a
SLURM job) gets :class:`StepLines`: one ``step <n>/<total> | loss … | it/s … | ETA …`` line at every tenth
of the run and, on a slow run, also whenever 30 s passed without one. The lines go through ``logging``,
so they land on the console and in the run folder's ``cli.log`` alike.

Steps are the task's ``completed_steps`` (optimizer steps; a sampling baseline's reverse steps), so a
resumed run counts on from its checkpoint and a sampling baseline, which makes no optimizer step, still
moves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar

log = logging.getLogger(__name__)

STYLES = ("auto", "bar", "lines")


def steps_done(trainer: Any, module: Any) -> int:
    """Updates completed so far: the task's ``completed_steps`` where it has one, else ``global_step``."""
    return int(getattr(module, "completed_steps", trainer.global_step))


def steps_total(trainer: Any, module: Any) -> int | None:
    """The run's length in steps: ``trainer.max_steps`` for a task that optimises, else the batches of one
    epoch (a sampling baseline's reverse steps); None when neither is finite."""
    if getattr(module, "automatic_optimization", True) and trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    batches = trainer.num_training_batches
    return int(batches) if isinstance(batches, int) or (batches and math.isfinite(batches)) else None


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour); ``?`` for an unknown duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(step: int, total: int | None, loss: float | None, rate: float | None) -> str:
    """``step 30/300 | loss 0.2271 | it/s 4.12 | ETA 1:05`` (the loss left out when the task logs none)."""
    parts = [f"step {step}/{total if total is not None else '?'}"]
    if loss is not None and math.isfinite(loss):
        parts.append(f"loss {loss:.4g}")
    if rate is not None and rate > 0:
        parts.append(f"it/s {rate:.3g}")
        parts.append(f"ETA {format_duration((total - step) / rate) if total is not None else '?'}")
    else:
        parts += ["it/s ?", "ETA ?"]
    return " | ".join(parts)


class StepLines(ProgressBar):
    """Plain progress lines for output that is not a terminal (no carriage returns, nothing at the end only).

    One line when the run passes each ``every_fraction`` of its steps (10 %, 20 %, ... of ``total``), and
    one whenever ``every_s`` seconds passed since the last line, checked after each step. ``it/s`` is the
    rate since the previous line; ``ETA`` extrapolates it. ``clock`` (seconds, monotonic) is for tests.
    """

    def __init__(self, every_fraction: float = 0.1, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        if not 0 < every_fraction <= 1:
            raise ValueError(f"callbacks.progress.every_fraction={every_fraction} must be in (0, 1], e.g. 0.1")
        if every_s <= 0:
            raise ValueError(f"callbacks.progress.every_s={every_s} must be > 0 seconds, e.g. 30")
        self.every_fraction = float(every_fraction)
        self.every_s = float(every_s)
        self.clock = clock
        self._enabled = True
        self._total: int | None = None
        self._marks: list[int] = []
        self._last_step = 0
        self._last_time = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def marks(self, total: int) -> list[int]:
        """The steps at which a line is due: ceil(k · every_fraction · total), each once, ending at ``total``."""
        count = math.ceil(1 / self.every_fraction - 1e-9)
        steps = {min(total, math.ceil(k * self.every_fraction * total - 1e-9)) for k in range(1, count + 1)}
        return sorted({step for step in steps if step > 0} | {total})

    def on_train_start(self, trainer, pl_module) -> None:
        self._total = steps_total(trainer, pl_module)
        self._last_step = steps_done(trainer, pl_module)  # a resumed run starts at its checkpoint's step
        self._marks = [mark for mark in self.marks(self._total) if mark > self._last_step] if self._total else []
        self._last_time = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled:
            return
        step, now = steps_done(trainer, pl_module), self.clock()
        due = [mark for mark in self._marks if mark <= step]
        if not due and now - self._last_time < self.every_s:
            return
        self._marks = [mark for mark in self._marks if mark > step]
        elapsed = now - self._last_time
        rate = (step - self._last_step) / elapsed if elapsed > 0 and step > self._last_step else None
        loss = trainer.progress_bar_metrics.get("loss")
        log.info(progress_line(step, self._total, None if loss is None else float(loss), rate))
        self._last_step, self._last_time = step, now


class StepBar(RichProgressBar):
    """Lightning's rich bar, counting the run's steps to their real total (``step 120/300``) instead of
    "Epoch 0/-2" with the batches of one epoch; no ``v_num``."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "step"

    def _reset_to_steps(self, trainer, pl_module) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            total = steps_total(trainer, pl_module)
            self.progress.reset(
                self.train_progress_bar_id,
                total=total if total is not None else float("inf"),
                completed=steps_done(trainer, pl_module),
                description=self._get_train_description(trainer.current_epoch),
                visible=True,
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._reset_to_steps(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:  # resumed in the middle of an epoch
            self._initialize_train_progress_bar_id()
            self._reset_to_steps(trainer, pl_module)
        self._update(self.train_progress_bar_id, steps_done(trainer, pl_module))
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def stdout_is_terminal() -> bool:
    """Whether rich (which draws the bar on stdout) sees a terminal; FORCE_TERMINAL / TTY_COMPATIBLE honoured."""
    from rich.console import Console

    return Console().is_terminal


def progress_callback(style: str = "auto", every_fraction: float = 0.1, every_s: float = 30.0) -> ProgressBar:
    """The progress callback of a run: ``style`` ``bar`` (:class:`StepBar`), ``lines`` (:class:`StepLines`)
    or ``auto`` (the bar when stdout is a terminal, the lines otherwise). ``every_fraction`` and ``every_s``
    set the cadence of the lines."""
    if style not in STYLES:
        raise ValueError(f"callbacks.progress.style={style!r}: expected one of {', '.join(STYLES)}")
    if style == "auto":
        style = "bar" if stdout_is_terminal() else "lines"
    lines = StepLines(every_fraction, every_s)  # checks the cadence values whichever style runs
    return StepBar() if style == "bar" else lines
