"""Checkpoint files that are whole or absent, and a bounded number of them.

* :class:`AtomicCheckpointIO` writes every checkpoint (periodic, ``last.ckpt``, on interrupt) to a temporary
  file in the checkpoint's own folder, syncs it and renames it over the old one: the rename never crosses a
  file system (Lightning's fsspec transaction writes in ``/tmp`` and moves, which on a full disk leaves a
  truncated file). A failed write leaves the previous checkpoint as it was and says which one that is.
* :class:`PeriodicCheckpoint` is Lightning's ``ModelCheckpoint`` with ``keep_last``: the newest k periodic
  checkpoints are kept (``null`` keeps all); ``last.ckpt`` is always kept.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_FIXES = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space within your disk quota"}


def _kept(path: Path) -> str:
    """What a failed write leaves to resume from: the checkpoint it would have replaced, or the newest other."""
    if path.is_file():
        return f"the previous {path} is kept"
    with contextlib.suppress(OSError):
        others = [p for p in path.parent.glob("*.ckpt") if p.is_file()]
        if others:
            return f"the newest checkpoint kept is {max(others, key=lambda p: p.stat().st_mtime)}"
    return "no earlier checkpoint exists"


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` through ``.<name>.partial`` in the same folder, fsync, rename; on failure the
    partial file is removed and one OSError names the fix and the checkpoint that is kept."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # serialised first: a write error is then an OSError, not torch's zip writer's
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        reason = os.strerror(error.errno) if error.errno else str(error)
        fix = f" ({_FIXES[error.errno]})" if error.errno in _FIXES else ""
        raise OSError(error.errno, f"could not write checkpoint {path}: {reason}{fix}; {_kept(path)}") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for local folders, writing through :func:`write_checkpoint`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        write_checkpoint(checkpoint, path)


def use_atomic_checkpoints(trainer) -> None:
    """Give the trainer's strategy :class:`AtomicCheckpointIO` where it uses Lightning's plain torch IO."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class PeriodicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the newest ``keep_last`` periodic checkpoints (``None``: all of them).

    Other arguments are ModelCheckpoint's. It saves exactly as ``save_top_k=-1`` without a monitor (every
    ``every_n_train_steps``, and ``last.ckpt``), then deletes the oldest periodic files beyond ``keep_last``.
    Lightning's own top-k is not used: with a monitor it defers the save of a run's last step to a validation
    that may never come, so the final periodic checkpoint and ``last.ckpt`` were missed. The kept paths travel
    in the callback's state, so a resumed run goes on pruning what the first allocation wrote."""

    def __init__(self, *, keep_last: int | None = None, **kwargs: Any) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(
                f"callbacks.checkpoint.keep_last={keep_last!r}: give how many periodic checkpoints to keep "
                "(an integer >= 1), or null to keep them all"
            )
        taken = sorted({"monitor", "mode", "save_top_k"} & kwargs.keys())
        if taken:
            raise ValueError(f"callbacks.checkpoint: {', '.join(taken)} are set from keep_last; drop them")
        super().__init__(save_top_k=-1, **kwargs)
        self.keep_last = keep_last
        self.periodic_paths: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        use_atomic_checkpoints(trainer)
        super().setup(trainer, pl_module, stage)

    def _save_none_monitor_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_none_monitor_checkpoint(trainer, monitor_candidates)
        saved = self.best_model_path  # the periodic file just written (ModelCheckpoint sets it before saving)
        if not saved:
            return
        if saved in self.periodic_paths:
            self.periodic_paths.remove(saved)
        self.periodic_paths.append(saved)
        if self.keep_last is None:
            return
        while len(self.periodic_paths) > self.keep_last:
            oldest = self.periodic_paths.pop(0)
            if trainer.is_global_zero and oldest != saved:
                with contextlib.suppress(FileNotFoundError):
                    Path(oldest).unlink()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "periodic_paths": list(self.periodic_paths)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.periodic_paths = self._with_files_on_disk(list(state_dict.get("periodic_paths", [])))

    _SENTINEL_STEP = 987654321  # a step number no name holds otherwise: marks where the step goes in a file name

    def _step_of(self, path: str) -> int | None:
        """The step in a periodic checkpoint's file name (None: not one of this callback's periodic names)."""
        template = self.format_checkpoint_name({"step": self._SENTINEL_STEP})
        head, sentinel, tail = template.partition(str(self._SENTINEL_STEP))
        if not sentinel or not path.startswith(head) or not path.endswith(tail):
            return None
        digits = path[len(head) : len(path) - len(tail)]
        return int(digits) if digits.isdigit() else None

    def _with_files_on_disk(self, stored: list[str]) -> list[str]:
        """The stored periodic paths plus the periodic files in ``dirpath`` that a checkpoint could not list: the
        one it was itself (a periodic checkpoint's state is taken before it is written), or one written after it
        (a checkpoint saved as a run stopped, before that step's periodic save). Ordered by step, so pruning
        removes the oldest whatever checkpoint the run resumed from and ``keep_last`` holds."""
        if self.dirpath is None or not Path(self.dirpath).is_dir():
            return stored
        found = [str(p) for p in Path(self.dirpath).glob("*.ckpt") if self._step_of(str(p)) is not None]
        merged = list(dict.fromkeys([*stored, *found]))
        stepped = [p for p in merged if self._step_of(p) is not None]
        if len(stepped) < len(merged):  # names of another template: keep the stored order
            return merged
        return sorted(merged, key=lambda p: self._step_of(p))
