"""Short answers to the mistakes Hydra reports at composition: a mistyped key or option, a missing extra.

Hydra answers a mistyped key (``task.windw_size=8``) with seven lines that end by suggesting ``+key``, which
would add a key that does nothing. :func:`explain_composition_error` turns such errors into one line that names
the nearest existing keys (``did you mean task.window_size?``), and offers ``+key`` only when none is near. A
launcher or sweeper whose plugin is not installed is named with the extra that installs it, before Hydra
fails (:func:`missing_extra`) or when it does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from csd_exp.schema.inputs import PLUGIN_EXTRAS, closest, install_hint, missing

#: Groups whose options choose a Hydra plugin, directly or through one of our configs.
PLUGIN_GROUPS = ("hydra/launcher", "hydra/sweeper", "hparams_search", "experiment", "local")
_OVERRIDE_FAILED = re.compile(r"Could not override '([^']+)'")
_NOT_FOUND = re.compile(r"Could not find '([^']+)/([^'/]+)'")
# A defaults-list entry that chooses a plugin config: ``- joblib`` in hydra/launcher/*.yaml, or
# ``override /hydra/sweeper: optuna`` / ``- /hydra/launcher: local_parallel`` anywhere; a trailing comment allowed.
_DEFAULT_ENTRY = re.compile(
    r"^\s*-\s*(?:override\s+)?(/?[\w/]+)\s*:\s*([\w.-]+)\s*(?:#.*)?$|^\s*-\s*([\w.-]+)\s*(?:#.*)?$", re.M
)


def _split(override: str) -> tuple[str, str] | None:
    """``(key, value)`` of a plain ``key=value`` override (prefixes ``+``, ``++``, ``~`` removed)."""
    if "=" not in override or override.startswith("-"):
        return None
    key, value = override.split("=", 1)
    return key.lstrip("+~"), value


def _plugins(group: str, option: str, config_dirs: Iterable[Path], depth: int = 0) -> list[str]:
    """The plugin configs (``hydra/launcher/joblib``, ...) that choosing ``group=option`` brings in."""
    name = f"{group}/{option}"
    if name in PLUGIN_EXTRAS:
        return [name]
    if depth > 3:
        return []
    found: list[str] = []
    for folder in config_dirs:
        path = Path(folder) / group / f"{option}.yaml"
        if not path.is_file():
            continue
        for entry_group, entry_option, same_group in _DEFAULT_ENTRY.findall(path.read_text(errors="replace")):
            if same_group:  # ``- joblib`` in hydra/launcher/local_parallel.yaml: an option of the same group
                found += _plugins(group, same_group, config_dirs, depth + 1)
            elif entry_group:  # Hydra's rule: ``/group`` is absolute, ``group`` is relative to this file's group
                target = entry_group[1:] if entry_group.startswith("/") else f"{group}/{entry_group}"
                found += _plugins(target, entry_option, config_dirs, depth + 1)
        break  # the first folder that has the file is the one Hydra reads
    return found


def missing_extra(overrides: Iterable[str], config_dirs: Iterable[Path]) -> str | None:
    """One line naming the extra to install, if an override chooses a plugin that is not installed."""
    config_dirs = list(config_dirs)
    for override in overrides:
        pair = _split(override)
        if pair is None or pair[0] not in PLUGIN_GROUPS:
            continue
        group, values = pair
        for option in values.split(","):
            for plugin in _plugins(group, option.strip(), config_dirs):
                module, package, extra = PLUGIN_EXTRAS[plugin]
                if missing(module):
                    return f"{group}={option.strip()} needs {package}, of the {extra} extra: {install_hint(extra)}"
    return None


def key_paths(config: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a (plain) config tree; list items are not descended into."""
    paths: list[str] = []
    if isinstance(config, Mapping):
        for key, value in config.items():
            path = f"{prefix}{key}"
            paths.append(path)
            paths += key_paths(value, f"{path}.")
    return paths


def suggest_key(key: str, paths: Iterable[str]) -> list[str]:
    """The existing key paths nearest a mistyped ``key`` (nearest first), Hydra's own node left out."""
    candidates = [p for p in paths if key.startswith("hydra.") or not p.startswith("hydra.")]
    return closest(key, candidates, limit=3, cutoff=0.8 if "." in key else 0.7)


def unknown_key_message(key: str, value: str, paths: list[str]) -> str:
    near = suggest_key(key, paths)
    if near:
        return f"{key} is not a key of this config; did you mean {' or '.join(near)}?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    depth = key.count(".")
    siblings = [p[len(parent) + 1 :] for p in paths if parent and p.startswith(f"{parent}.") and p.count(".") == depth]
    where = f" ({parent} has: {', '.join(siblings[:12])}{', ...' if len(siblings) > 12 else ''})" if siblings else ""
    return f"{key} is not a key of this config{where}; to add a new key, write +{key}={value}"


def explain_composition_error(
    error: Exception, overrides: list[str], compose: Callable[[list[str]], Any]
) -> str | None:
    """One or two lines for Hydra's composition ``error``, or None to leave it to Hydra.

    ``compose(overrides)`` returns the composed config as plain containers (it may raise); it is called only
    to list the existing keys, with the overrides that failed left out.
    """
    message = str(error)
    found = _NOT_FOUND.search(message)
    if found:
        plugin = f"{found.group(1)}/{found.group(2)}"
        if plugin in PLUGIN_EXTRAS and missing(PLUGIN_EXTRAS[plugin][0]):
            _, package, extra = PLUGIN_EXTRAS[plugin]
            return f"{plugin} needs {package}, of the {extra} extra: {install_hint(extra)}"
        options = re.findall(r"^\t(\S+)$", message.split(f"Available options in '{found.group(1)}':", 1)[-1], re.M)
        if "Available options" in message and options:
            group, option = found.group(1), found.group(2)
            near = closest(option, options)
            hint = f"did you mean {' or '.join(f'{group}={o}' for o in near)}? " if near else ""
            return f"{group}={option} is not an option; {hint}(options: {', '.join(options)})"
        return None
    failed = _OVERRIDE_FAILED.match(message)
    if not failed or not re.search(r"Key '[^']+' (is )?not in", str(error.__cause__ or "")):
        return None
    bad = {failed.group(1)}
    for _ in range(8):  # several typos in one command line: each is named
        rest = [o for o in overrides if (_split(o) or ("",))[0] not in bad and not _is_sweep(o)]
        try:
            config = compose(rest)
            break
        except Exception as again:  # noqa: BLE001  (only the keys are wanted; any failure: Hydra's message)
            more = _OVERRIDE_FAILED.match(str(again))
            if not more or more.group(1) in bad:
                return None
            bad.add(more.group(1))
    else:
        return None
    paths = key_paths(config)
    values = {pair[0]: pair[1] for pair in map(_split, overrides) if pair}
    return "\n".join(unknown_key_message(key, values.get(key, "..."), paths) for key in sorted(bad))


def _is_sweep(override: str) -> bool:
    pair = _split(override)
    return pair is not None and ("," in pair[1] or pair[1].startswith(("glob(", "range(", "choice(", "interval(")))
