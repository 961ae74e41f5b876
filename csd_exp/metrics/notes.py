"""The one-line note that a metric is skipped (its weights are missing): said every time by default, once
per sweep inside :func:`once_per_sweep`.

A sweep's jobs all miss the same weights, so the run (``csd_exp.run``) wraps each job of a multirun in
``once_per_sweep(<sweep folder>)``: the first job that skips a metric says so, later jobs log the same
note at DEBUG only. Jobs in one process remember it in memory; jobs in other processes (joblib, SLURM)
find the marker file the first one left in ``<sweep folder>/.csd-exp-notes/``. How to provide the
weights is in docs/metrics.md, "Missing metric weights".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

#: The docs section every skip note points to.
DOCS = 'docs/metrics.md "Missing metric weights"'
MARKER_FOLDER = ".csd-exp-notes"

_scope: list[Path | None] = [None]
_said: set[tuple[str, str]] = set()


@contextlib.contextmanager
def once_per_sweep(folder: str | Path | None) -> Iterator[None]:
    """Within this block, each distinct skip note is logged once for all jobs that share ``folder`` (the
    sweep's folder); ``None`` keeps every note (a single run)."""
    previous = _scope[0]
    _scope[0] = Path(folder) if folder is not None else None
    try:
        yield
    finally:
        _scope[0] = previous


def _first_time(folder: Path, message: str) -> bool:
    key = hashlib.sha1(message.encode("utf-8")).hexdigest()[:16]
    if (str(folder), key) in _said:
        return False
    _said.add((str(folder), key))
    marker = folder / MARKER_FOLDER / key
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False  # another process of this sweep said it
    except OSError:
        return True  # no marker possible (read-only folder): saying it again is better than never
    return True


def note_skipped(logger: logging.Logger, message: str) -> None:
    """Log ``message`` (one line) as a warning, or at DEBUG when this sweep already said it."""
    folder = _scope[0]
    if folder is not None and not _first_time(folder, message):
        logger.debug(message)
        return
    logger.warning(message)
