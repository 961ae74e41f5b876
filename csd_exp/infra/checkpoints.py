"""Resume safety: a checkpoint remembers the config it was trained with, and a resume checks it.

:func:`run_fingerprint` keeps the keys of the resolved config that change the math of a run (prior,
guidance, kernel, schedule, task, data, prompts, seed, numeric precision) and drops what may
legitimately differ on resume: the run length (extending a run is the main use of resuming), loggers,
callbacks, paths, hardware. :class:`csd_exp.infra.callbacks.RunFingerprint` stores it in every checkpoint
under ``checkpoint["csd_exp"]["fingerprint"]``; :func:`check_resume_checkpoint` compares it with the
current run's before anything heavy is built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from csd_exp.infra.dotted import flatten

log = logging.getLogger(__name__)

# Top-level config entries that define what a run computes.
FINGERPRINT_SECTIONS = (
    "model", "guidance", "kernel", "schedule", "task", "data", "prompt", "source_caption", "source_prompt", "seed",
)  # fmt: skip
# Trainer keys that change the optimisation itself; devices, strategy, max_steps etc. may differ on resume.
FINGERPRINT_TRAINER_KEYS = ("precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")
# Leaf names ignored wherever they appear: run length, caches, and throughput knobs that leave results alone.
IGNORED_LEAVES = frozenset({"max_steps", "max_epochs", "cache_dir", "local_files_only", "max_rows_per_call"})
# The task's copies of the run's inputs (``task.data: ${data}``; before RunInputs also ``task.prompt: ${prompt}``, ...,
# still in older checkpoints' fingerprints): already fingerprinted at the top.
TASK_INPUTS = frozenset({"prompt", "source_prompt", "seed", "data"})
CHECKPOINT_KEY = "csd_exp"
ALLOW_OVERRIDE = "resume.allow_config_change=true"
MAX_LISTED = 10
_ABSENT = "<absent>"


def _matters(key: str) -> bool:
    """Whether a dotted key is part of the fingerprint (also applied to stored ones, so the rule can evolve)."""
    parts = key.split(".")
    if parts[-1] in IGNORED_LEAVES:
        return False
    if parts[0] == "trainer":
        return len(parts) == 2 and parts[1] in FINGERPRINT_TRAINER_KEYS
    if parts[0] == "task" and len(parts) > 1 and parts[1] in TASK_INPUTS:
        return False
    return parts[0] in FINGERPRINT_SECTIONS


def _hash(keys: dict[str, Any]) -> str:
    text = json.dumps(keys, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprint(resolved_config: dict) -> dict:
    """``{"keys": {dotted key: value}, "hash": str}`` of the config keys a resumed run must share.

    Values are JSON-like (str, numbers, bools, None, lists), so checkpoints stay loadable with
    ``torch.load(weights_only=True)``.
    """
    keys = {key: value for key, value in flatten(resolved_config).items() if _matters(key)}
    keys = json.loads(json.dumps(keys, sort_keys=True, default=str))  # plain types only, stable order
    return {"keys": keys, "hash": _hash(keys)}


def _short(value: Any) -> str:
    text = _ABSENT if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _value(flat: dict[str, Any], key: str) -> Any:
    """A leaf, or the keys under ``key`` (a leaf on one side may be a section on the other: null vs a kernel)."""
    if key in flat:
        return flat[key]
    under = {k[len(key) + 1 :]: v for k, v in flat.items() if k.startswith(key + ".")}
    return under or _ABSENT


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """``key: checkpoint value -> this run's value`` lines; changed values first, added / removed keys after."""
    old = {k: v for k, v in stored.get("keys", {}).items() if _matters(k)}
    new = {k: v for k, v in current.get("keys", {}).items() if _matters(k)}
    keys = old.keys() | new.keys()
    # Report a leaf-versus-section change once, at the leaf, instead of once per key of the section.
    keys = [k for k in keys if not any(k.startswith(other + ".") for other in keys)]
    pairs = {k: (_value(old, k), _value(new, k)) for k in keys}
    changed = [k for k, (before, after) in pairs.items() if before != after and not _same_class(k, before, after)]
    changed.sort(key=lambda k: (_ABSENT in pairs[k], k))
    return [f"{k}: {_short(pairs[k][0])} -> {_short(pairs[k][1])}" for k in changed]


def _same_class(key: str, before: Any, after: Any) -> bool:
    """Two ``_target_`` paths of one object (a class re-exported from a new home: ``csd_exp.tasks.PanoramaTask``
    and ``csd_exp.tasks.panorama.windows.PanoramaTask``), so a checkpoint written before a module moved resumes."""
    if not (key.endswith("_target_") and isinstance(before, str) and isinstance(after, str)):
        return False
    from hydra.utils import get_object

    try:
        return get_object(before) is get_object(after)
    except Exception:  # a path that no longer imports names another class: a real difference
        return False


def _siblings(path: Path) -> str:
    """Other non-empty checkpoints in the same folder, newest first, as a hint of what to resume from."""
    try:
        others = [p for p in path.parent.glob("*.ckpt") if p != path and p.stat().st_size > 0]
    except OSError:
        return ""
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    if not others:
        return "; no other checkpoint in that folder: start the run again without ckpt_path"
    return "; resume from another checkpoint in that folder instead, e.g. ckpt_path=" + ", ".join(
        str(p) for p in others[:3]
    )


# torch's weights-only unpickler refusing a pickled object: "Unsupported global: GLOBAL a.B" (a class),
# "unsupported GLOBAL posix.system whose module posix is blocked" (a function call; torch >= 2.10).
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# A plain pickle (not written by torch.save) starts with the PROTO opcode and a protocol number; torch then
# reports "Unsupported operand", as it does for random bytes.
_PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


def _refused_pickle(message: str, path: Path) -> str | None:
    """What a weights-only load refused (a global's name, or "a plain pickle"); None if the error is not such
    a refusal (a damaged file)."""
    found = _PICKLED_GLOBAL.search(message)
    if found:
        return found.group(1)
    if "Unsupported operand" in message:
        with open(path, "rb") as file:
            if file.read(2) in _PICKLE_HEADERS:
                return "a plain pickle, not written by torch.save"
    return None


def load_checkpoint(path: Path) -> dict:
    """The checkpoint on CPU, tensors and plain containers only (never arbitrary pickled objects); a ValueError
    naming the fix for an empty, damaged, pickled or non-Lightning file."""
    if path.stat().st_size == 0:
        raise ValueError(f"ckpt_path={path} is empty (0 bytes: a save that never finished){_siblings(path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_pickle(str(error), path)
        if refused is not None:  # a readable file holding Python objects: refuse it rather than unpickle code
            raise ValueError(
                f"ckpt_path={path} is not a weights-only checkpoint: it holds a Python object ({refused}) that "
                "loading would have to unpickle, which can run code; csd-exp loads only tensors and plain "
                f"containers, so resume from a checkpoint csd-exp wrote{_siblings(path)}"
            ) from None
        raise ValueError(
            f"ckpt_path={path} is corrupt or truncated (not a readable torch checkpoint){_siblings(path)}"
        ) from None
    except Exception as error:  # truncated zip (OSError, RuntimeError), EOFError, stray bytes (KeyError)
        detail = f"{type(error).__name__}: {str(error).strip()[:100]}"
        raise ValueError(f"ckpt_path={path} is corrupt or truncated ({detail}){_siblings(path)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"ckpt_path={path} is a torch file but not a Lightning checkpoint (no state_dict); "
            "point it at a run's checkpoints/last.ckpt"
        )
    return checkpoint


def checkpoint_record(path: str | Path) -> dict[str, Any]:
    """What csd-exp reads of a checkpoint before Lightning loads it: ``global_step`` and csd-exp's entry
    (fingerprint, W&B identity). Loaded once per file version (path, size, modification time): the checks of a
    resume, its W&B identity and a requeue's choice of checkpoint read it in one process, and the whole
    checkpoint (a 3D scene's weights) need not be read again for each; errors as :func:`load_checkpoint`."""
    path = Path(path).resolve()
    status = path.stat()
    return _record(str(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _record(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    checkpoint = load_checkpoint(Path(path))
    return {"global_step": checkpoint.get("global_step"), CHECKPOINT_KEY: checkpoint.get(CHECKPOINT_KEY) or {}}


def check_resume_checkpoint(path: str | Path | None, fingerprint: dict, allow_config_change: bool = False) -> list[str]:
    """Check ``ckpt_path`` before a resume: it exists, loads safely, and was trained with this config.

    Raises FileNotFoundError (missing), ValueError (empty, corrupt, not a checkpoint, or a different config
    unless ``allow_config_change``). A checkpoint without a fingerprint (older runs) only gets a warning.
    Returns the differing-key lines (empty when the configs match) so the caller can record them.
    Cheap enough for every rank to call: all ranks then agree on whether the run starts.
    """
    if not path:
        return []
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"ckpt_path={path} is a folder; point it at a file in it, e.g. {path / 'last.ckpt'}")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; point it at a run's checkpoints/last.ckpt")
    stored = checkpoint_record(path)[CHECKPOINT_KEY].get("fingerprint")
    if not stored:
        log.warning(
            "ckpt_path=%s has no config fingerprint (written before csd-exp stored one): cannot check "
            "that it was trained with this config",
            path,
        )
        return []
    if stored.get("hash") == fingerprint.get("hash"):
        return []
    differences = fingerprint_differences(stored, fingerprint)
    if not differences:  # only keys the current rule ignores differ
        return []
    listed = differences[:MAX_LISTED]
    if len(differences) > MAX_LISTED:
        listed.append(f"... and {len(differences) - MAX_LISTED} more")
    details = "\n  ".join(listed)
    if allow_config_change:
        log.warning("resuming %s with a changed config (%s):\n  %s", path, ALLOW_OVERRIDE, details)
        return differences
    raise ValueError(
        f"ckpt_path={path} was trained with a different config:\n  {details}\n"
        f"Resume with the checkpoint's settings, or add {ALLOW_OVERRIDE} to continue it under "
        "this run's config on purpose"
    )


def stored_wandb_run_id(path: str | Path | None) -> str | None:
    """The W&B run id a checkpoint was written under (None: none recorded, or no checkpoint)."""
    return stored_wandb_identity(path).get("id")


#: What a checkpoint records of its W&B run besides the id, so that a resume keeps them.
WANDB_IDENTITY_KEYS = ("name", "group", "job_type", "tags")


def stored_wandb_identity(path: str | Path | None) -> dict[str, Any]:
    """The W&B run a checkpoint was written under: ``id`` and, where recorded, its ``name``, ``group``,
    ``job_type`` and ``tags`` ({} without a checkpoint or a W&B run; empty values are left out)."""
    if not path or not Path(path).is_file():
        return {}
    entry = checkpoint_record(path)[CHECKPOINT_KEY]
    if not entry.get("wandb_run_id"):
        return {}
    stored = entry.get("wandb_identity") or {}
    identity = {key: stored[key] for key in WANDB_IDENTITY_KEYS if stored.get(key)}
    return {"id": str(entry["wandb_run_id"]), **identity}
