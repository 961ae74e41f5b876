"""The run folder: one run at a time in it (:func:`hold_run_folder`), a new run never in a finished run's folder
(:class:`GuardRunFolder`), names that two launches in the same second never share (:func:`launch_id`), and
files written whole or not at all (:func:`write_json_atomically`).

The lock is ``<run folder>/.csd-exp.lock``, locked with ``fcntl.flock`` and holding the holder's pid, host
and start time. The OS drops a flock when its process ends, however it ends (SIGKILL, OOM killer, a lost
node), so a stale lock file never blocks a resume into the same folder; only a live holder does.

Hydra writes its records (``.hydra/config.yaml``, ``overrides.yaml``, ``hydra.yaml``) and opens the job's log
before the run starts, so the lock is taken earlier, by :class:`GuardRunFolder` (a Hydra callback, before Hydra
writes anything): a run that is refused leaves the other run's folder as it was. The run then takes the lock
over (:func:`hold_run_folder`). A sweep locks its sweep folder the same way for as long as it runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

LOCK_NAME = ".csd-exp.lock"
SUMMARY_NAME = "summary.json"
LAUNCH_ID_RESOLVER = "csd_exp_launch_id"  # conf/hydra/default.yaml: the default run and sweep folder names
# What to do about the errors a user can fix when a file cannot be written.
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EACCES: "make the folder writable or pick another (hydra.run.dir=...)",
    errno.EROFS: "pick a writable folder (hydra.run.dir=...)",
}


class RunFolderInUse(RuntimeError):
    """Another live process holds the run folder's lock."""


def launch_id() -> str:
    """``<pid>-<4 hex digits>``: what makes the default folder names of two launches in the same second differ
    (the pid on one machine, the random digits between machines). Registered as the ``csd_exp_launch_id``
    resolver with caching, so every job of a sweep, and every look at one run's folder, sees the same value."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_launch_id_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(LAUNCH_ID_RESOLVER):
        OmegaConf.register_new_resolver(LAUNCH_ID_RESOLVER, launch_id, use_cache=True)


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


#: Folders this process locked ahead of its run (:func:`claim_run_folder`): resolved path -> locked descriptor.
_CLAIMED: dict[Path, int | None] = {}


def claim_run_folder(path: str | Path) -> None:
    """Lock ``path`` now, for the run this process is about to start (which takes the lock over in
    :func:`hold_run_folder`); raise :class:`RunFolderInUse` if a live run holds it. Nothing is written in a
    folder that another run holds."""
    folder = Path(path).resolve()
    if folder in _CLAIMED:
        return
    try:
        import fcntl  # noqa: F401  (POSIX only)
    except ImportError:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    if fd is not None:
        _write_holder(fd)
    _CLAIMED[folder] = fd


def folder_in_use(path: str | Path) -> str | None:
    """The error text naming the live run that holds ``path``, or None (free, or no such folder). A look only:
    the lock is released at once."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    try:
        import fcntl  # noqa: F401  (POSIX only)
    except ImportError:
        return None
    try:
        fd = _lock(folder)
    except RunFolderInUse as error:
        return str(error)
    if fd is not None:
        _unlock(folder, fd)
    return None


def release_run_folder(path: str | Path) -> None:
    """Unlock a folder claimed with :func:`claim_run_folder` and not taken over by a run (no-op otherwise)."""
    folder = Path(path).resolve()
    fd = _CLAIMED.pop(folder, None)
    if fd is not None:
        _unlock(folder, fd)


def release_claims() -> None:
    """Unlock every folder this process still claims (at its end, after a refusal)."""
    for folder in list(_CLAIMED):
        release_run_folder(folder)


@contextlib.contextmanager
def hold_run_folder(path: str | Path, *, rank: int = 0) -> Iterator[Path | None]:
    """Hold ``path``'s lock for the ``with`` block; raise :class:`RunFolderInUse` if a live run holds it.

    Only rank 0 locks (DDP ranks share their folder): other ranks pass through. The caller gives the rank,
    e.g. ``rank_zero_only.rank``, which Lightning's launchers set from the environment before ``run`` is
    called. A folder this process claimed for the run (:func:`claim_run_folder`) is taken over, not locked
    twice. Yields the lock file's path, or None where nothing was locked.
    """
    folder = Path(path)
    if rank != 0:
        yield None
        return
    if folder.resolve() in _CLAIMED:
        fd = _CLAIMED.pop(folder.resolve())
        try:
            yield None if fd is None else folder / LOCK_NAME
        finally:
            if fd is not None:
                _unlock(folder.resolve(), fd)
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


def process_rank() -> int:
    """This process's rank as launchers set it in the environment (Lightning's rank-zero rule); 0 without one."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(variable)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


def within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or inside it (links resolved): a checkpoint of the run in that folder."""
    folder, path = Path(folder).resolve(), Path(str(path)).resolve()
    return folder in (path, *path.parents)


def finished_run(folder: str | Path) -> str | None:
    """What shows that a run already ran in ``folder`` (its ``summary.json`` status, or its checkpoints); None
    for a folder no run has finished in (new, empty, or a run killed before it wrote either)."""
    folder = Path(folder)
    summary = folder / SUMMARY_NAME
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status", "no status")
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        return f"{SUMMARY_NAME}: {status}"
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        return f"checkpoints/{checkpoints[-1].name}"
    return None


def check_new_run_folder(folder: str | Path, ckpt_path: str | None) -> None:
    """Refuse (ValueError, one line naming the fix) a run in a finished run's ``folder`` unless it resumes a
    checkpoint of that folder (``ckpt_path=<folder>/checkpoints/...``): the one way to continue a run there."""
    folder = Path(folder)
    found = finished_run(folder)
    if found is None or (ckpt_path and within(ckpt_path, folder)):
        return
    raise ValueError(
        f"{folder} holds a finished run ({found}): a new run needs a folder of its own (leave hydra.run.dir "
        f"unset, or give a new one); to continue that run there, resume it: ckpt_path={folder}/checkpoints/last.ckpt"
    )


def _run_folders(config: Any) -> list[Path]:
    """The folders a single run writes in: Hydra's run folder (its records, the log) and ``paths.output_dir``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    HydraConfig.instance().set_config(config)  # ${hydra:...} in the folder names resolves
    run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(run_dir)  # what Hydra sets next (run_job), so paths.output_dir resolves
    HydraConfig.instance().set_config(config)
    try:
        output_dir = OmegaConf.select(config, "paths.output_dir", default=None)
    except OmegaConfBaseException:  # a broken value: the run reports it
        output_dir = None
    folders = [run_dir]
    if output_dir is not None and Path(os.path.abspath(str(output_dir))) != run_dir:
        folders.append(Path(os.path.abspath(str(output_dir))))
    return folders


def _check_resume_in_place(config: Any) -> None:
    """The checks of ``ckpt_path`` (:func:`csd_exp.infra.checkpoints.check_resume_checkpoint`) before a resume in a
    finished run's folder writes anything there: a refused resume leaves that run's records and summary as they
    were. A config that does not resolve here is left to the run, which checks again."""
    import copy

    from omegaconf import OmegaConf, open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    from csd_exp.infra.checkpoints import check_resume_checkpoint, run_fingerprint
    from csd_exp.methods import MethodError, apply_to_composed

    task = copy.deepcopy(config)
    try:  # the prior the method takes and its pixel sizes, as the run fingerprinted them (run.run applies it first)
        with read_write(task), open_dict(task):
            apply_to_composed(task)
    except (MethodError, OmegaConfBaseException):
        return  # left to the run, which checks again
    with read_write(task), open_dict(task):
        del task["hydra"]
    try:
        resolved = OmegaConf.to_container(task, resolve=True)
    except OmegaConfBaseException:
        return
    allow = bool(OmegaConf.select(task, "resume.allow_config_change", default=False))
    check_resume_checkpoint(task.get("ckpt_path"), run_fingerprint(resolved), allow)


def sweep_resumes(config: Any) -> bool:
    """Whether this multirun re-launches an earlier sweep (``hydra.sweeper.resume=true``)."""
    return bool(config.hydra.sweeper.get("resume", False))


class GuardRunFolder(Callback):
    """Before Hydra writes anything: a single run locks its folders (refused, writing nothing, if a live run holds
    one) and is refused in a finished run's folder unless it resumes that run's checkpoint; a sweep locks its sweep
    folder and is refused in an earlier sweep's folder unless it resumes that sweep (``hydra.sweeper.resume=true``).
    Other DDP ranks pass through, as in :func:`hold_run_folder`."""

    def __init__(self) -> None:
        self._held: list[Path] = []

    def _claim(self, folder: Path) -> None:
        try:
            claim_run_folder(folder)
        except RunFolderInUse as error:
            release_claims()
            raise SystemExit(f"csd-exp: {error}") from None
        self._held.append(folder)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if sweep_resumes(config):
            raise SystemExit(
                "csd-exp: hydra.sweeper.resume=true re-launches a sweep: add -m and hydra.sweep.dir=<the sweep's "
                "folder> (a single run continues with ckpt_path=<its folder>/checkpoints/last.ckpt)"
            )
        if process_rank() != 0:
            return
        folders = _run_folders(config)
        existing = [folder for folder in folders if folder.is_dir()]
        for folder in existing:  # a live run's folder: refused as in use, whatever it holds
            self._claim(folder)
        try:
            for folder in existing:
                check_new_run_folder(folder, config.get("ckpt_path"))
        except ValueError as error:
            release_claims()
            raise SystemExit(f"csd-exp: {error}") from None
        for folder in folders:  # new folders only now: a refused run creates none
            self._claim(folder)
        try:
            if any(finished_run(folder) for folder in folders):  # a resume in place: its checkpoint must fit
                _check_resume_in_place(config)
        except (ValueError, FileNotFoundError) as error:
            release_claims()
            raise SystemExit(f"csd-exp: {error}") from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        for folder in self._held:  # those the run did not take over
            release_run_folder(folder)
        self._held.clear()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)
        sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        record = sweep_dir / "multirun.yaml"
        resume = sweep_resumes(config)
        if not resume and record.is_file():
            again = (  # the switch exists where the sweeper has it (the grid sweeper; not a search)
                "; to run that sweep's missing, failed and interrupted jobs, launch it again with "
                "hydra.sweeper.resume=true"
                if "resume" in config.hydra.sweeper
                else ""
            )
            raise SystemExit(
                f"csd-exp: {sweep_dir} holds a sweep already ({record.name}): a new sweep needs a folder of its own "
                f"(leave hydra.sweep.dir unset, or give a new one){again}"
            )
        if resume and not record.is_file():
            raise SystemExit(
                f"csd-exp: hydra.sweeper.resume=true: {sweep_dir} holds no sweep ({record.name} missing); give the "
                "folder of the sweep to resume with hydra.sweep.dir=..."
            )
        self._claim(sweep_dir)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self.on_run_end(config)


#: Hydra options whose value is the next argument (the rest of the command line is overrides).
_VALUED_OPTIONS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun")
#: Options with which the command runs no single run (a sweep, help, a config shown).
_NOT_A_RUN = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")
#: Overrides that choose a single run's folder: given one, a resume runs where the user says.
_FOLDER_KEYS = ("hydra.run.dir", "paths.output_dir")


def _override_positions(argv: list[str]) -> list[int]:
    """The indices of ``argv`` (a ``csd-exp`` command line) that are overrides, not options or their values."""
    positions, skip = [], False
    for index, arg in enumerate(argv[1:], start=1):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUED_OPTIONS
        else:
            positions.append(index)
    return positions


def _key(override: str) -> str:
    """``+key=value`` / ``~key`` -> ``key``, ``key@pkg=value`` -> ``key@pkg`` (what two overrides of the same setting
    share: ``model@priors.text_to_image`` chooses another defaults entry than ``model``)."""
    return override.split("=", 1)[0].lstrip("+~").strip()


def _value(override: str) -> str:
    value = override.split("=", 1)[1].strip() if "=" in override else ""
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def checkpoint_run_folder(ckpt_path: str | Path) -> Path | None:
    """The csd-exp run folder a checkpoint belongs to: ``<run>`` for ``<run>/checkpoints/<file>`` when ``<run>``
    holds Hydra's records (``.hydra/``); None for a checkpoint anywhere else (a copied file)."""
    path = Path(os.path.abspath(os.path.expanduser(str(ckpt_path))))
    folder = path.parent.parent
    if path.parent.name == "checkpoints" and (folder / ".hydra" / "overrides.yaml").is_file():
        return folder
    return None


def _hydra_value(path: Path) -> str:
    """``path`` as an override value Hydra's grammar reads back as the same string."""
    text = str(path)
    if all(c.isalnum() or c in "/._-" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_in_own_folder(argv: list[str]) -> list[str]:
    """A single run given ``ckpt_path=<run>/checkpoints/<file>`` and no folder of its own continues in ``<run>``
    (a sweep's job folder included, so the sweep's report reads the resumed summary), under the overrides that
    made that run (``<run>/.hydra/overrides.yaml``); overrides given now replace those of the same key. Returns
    ``argv`` with those overrides and ``hydra.run.dir=<run>`` added (and, for a sweep's job, ``hydra.output_subdir
    =null``: the job keeps the records the sweep wrote, which its re-launch reads; this resume's own overrides are
    in ``summary.json``); unchanged for a sweep (``-m``), a command
    that names the folder (``hydra.run.dir`` / ``paths.output_dir``), or a checkpoint outside a run folder (a
    copied file: it gets a new folder, as any run, and a one-line note says so). The folder lock, the refusal of a
    changed config (``resume.allow_config_change``) and the W&B identity (id, group, name, tags, from the
    checkpoint) then apply as for any resume in place."""
    import sys

    from omegaconf import OmegaConf

    if any(arg.split("=", 1)[0] in _NOT_A_RUN for arg in argv[1:]):
        return argv
    positions = _override_positions(argv)
    given = {_key(argv[i]): i for i in positions}
    if "ckpt_path" not in given or any(key in given for key in _FOLDER_KEYS):
        return argv
    ckpt = _value(argv[given["ckpt_path"]])
    if not ckpt or ckpt == "null" or not Path(ckpt).expanduser().is_file():
        return argv  # nothing to resume (the run says so)
    folder = checkpoint_run_folder(ckpt)
    if folder is None:
        print(
            f"csd-exp: note: ckpt_path={ckpt} is not in a run's checkpoints/ folder (no .hydra/ beside it): "
            "resuming in a new run folder",
            file=sys.stderr,
        )
        return argv
    stored = [str(item) for item in OmegaConf.load(folder / ".hydra" / "overrides.yaml") or []]
    kept = [item for item in stored if _key(item) not in given and _key(item) not in _FOLDER_KEYS]
    at = given["ckpt_path"]
    added = [f"hydra.run.dir={_hydra_value(folder)}"]
    if _sweep_job(folder):  # the sweep's records of its job stay as the sweep wrote them (job number included)
        added.append("hydra.output_subdir=null")
        print(f"csd-exp: resuming job {folder.name} of the sweep {folder.parent} in its own folder", file=sys.stderr)
    else:
        print(f"csd-exp: resuming the run in its own folder {folder}", file=sys.stderr)
    return [*argv[:at], *kept, argv[at], *added, *argv[at + 1 :]]


def _sweep_job(folder: Path) -> bool:
    """Whether Hydra's records in ``folder`` are those of a sweep's job (``hydra.mode: MULTIRUN``)."""
    import yaml

    try:
        record = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return str((record.get("hydra") or {}).get("mode", "")) == "MULTIRUN"
