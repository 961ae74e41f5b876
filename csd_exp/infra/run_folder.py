"""The run folder: one run at a time in it (:func:`hold_run_folder`), and files written whole or not at all
(:func:`write_json_atomically`).

The lock is ``<run folder>/.csd-exp.lock``, locked with ``fcntl.flock`` and holding the holder's pid, host
and start time. The OS drops a flock when its process ends, however it ends (SIGKILL, OOM killer, a lost
node), so a stale lock file never blocks a resume into the same folder; only a live holder does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".csd-exp.lock"
# What to do about the errors a user can fix when a file cannot be written.
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EACCES: "make the folder writable or pick another (hydra.run.dir=...)",
    errno.EROFS: "pick a writable folder (hydra.run.dir=...)",
}


class RunFolderInUse(RuntimeError):
    """Another live process holds the run folder's lock."""


def _holder_text(fd: int) -> str:
    """``pid N on host H since T`` from a lock file (its holder may not have written it yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')}"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a releasing holder unlinks it; then lock the new one)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _lock(folder: Path) -> int | None:
    """The locked file descriptor of ``folder``'s lock file, or None where the OS cannot lock."""
    import fcntl

    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise RunFolderInUse(
                f"{folder} is in use by another run ({holder}); give this run its own folder "
                "(hydra.run.dir=...) or wait for it to finish"
            ) from None
        except OSError as error:  # e.g. a file system without locks: run, but say it is unguarded
            os.close(fd)
            log.warning("could not lock %s (%s): nothing stops another run from writing there", path, error.strerror)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _unlock(folder: Path, fd: int) -> None:
    # Unlink while still locked: a later run then creates a fresh file, and one that opened this file
    # meanwhile sees it is gone (_same_file) instead of both believing they hold the lock.
    with contextlib.suppress(OSError):
        os.unlink(folder / LOCK_NAME)
    os.close(fd)


@contextlib.contextmanager
def hold_run_folder(path: str | Path, *, rank: int = 0) -> Iterator[Path | None]:
    """Hold ``path``'s lock for the ``with`` block; raise :class:`RunFolderInUse` if a live run holds it.

    Only rank 0 locks (DDP ranks share their folder): other ranks pass through. The caller gives the rank,
    e.g. ``rank_zero_only.rank``, which Lightning's launchers set from the environment before ``run`` is
    called. Yields the lock file's path, or None where nothing was locked.
    """
    folder = Path(path)
    if rank != 0:
        yield None
        return
    try:
        import fcntl  # noqa: F401  (POSIX only)
    except ImportError:
        log.warning("no fcntl on this platform: %s is not locked against a second run", folder)
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    if fd is None:
        yield None
        return
    try:
        _write_holder(fd)
        yield folder / LOCK_NAME
    finally:
        _unlock(folder, fd)


def _write_synced(path: Path, text: str) -> None:
    """Write and fsync: a full disk often only reports itself when the data is flushed."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomically(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename: readers see the old file or the
    new one, never half of one. On failure the temporary file is removed and one OSError says why."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=False, default=str, allow_nan=False)  # NaN/Infinity aren't JSON
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_synced(tmp, text)
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error))
        fix = f"; {_WRITE_FIXES[error.errno]}" if error.errno in _WRITE_FIXES else ""
        raise OSError(error.errno, f"could not write {path}: {reason}{fix}") from None
