"""Launch a paper entry as one Hydra multirun of ``csd-exp``.

Methods and inputs become generated configs in ``<out>/paper_configs`` (added to Hydra's search path):
each method an experiment, ``experiment/<method>.yaml`` (it includes the method's own experiment, then
sets its other group choices and values), and each input ``paper_input/<input>.yaml`` (``data.path``,
``prompt``, ``source_prompt``), so that

    csd-exp -m hydra.searchpath=[file://<out>/paper_configs] experiment=csd_edit,in2n +paper_input=a,b ...

is the cartesian product method × input × the swept values × seeds, in one sweep folder and one W&B
group, on whichever launcher ``hydra/launcher=...`` names (basic locally, submitit on SLURM). A method
sits where an experiment sits in the defaults list, so ``debug=smoke`` and the debug sizes still win over
it, as over any experiment; an input comes last, so its clip and prompts win over the debug sizes.

Overrides on the command line apply to every job, and one for a key of the entry's own sweep replaces
it; ``experiment=X`` replaces every method's own experiment. ``METHOD[,METHOD]:override`` applies to
those methods only (``csd_edit:model=tiny_ip2p``): a group choice or a value written into the method's
generated config (one value, no ``~``), e.g. a different model per method. Being part of the method's
experiment, it has an experiment's precedence: ``debug=smoke`` and its sizes win over it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from csd_exp.report.paper_entries import Entry, Method
from csd_exp.report.paper_inputs import Input
from csd_exp.report.runs import ReportError

CONFIG_FOLDER = "paper_configs"
METHOD_GROUP = "experiment"
INPUT_GROUP = "paper_input"
# Read by csd_exp.cli: a user's config folder, searched first.
CONFIG_DIR_VARIABLE = "CSD_EXP_CONFIG_DIR"


@dataclass
class Overrides:
    """The command line's Hydra overrides: for every job, and per method."""

    common: list[str] = field(default_factory=list)
    scoped: dict[str, list[str]] = field(default_factory=dict)  # method name -> overrides


def _parse(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except Exception as error:  # Hydra's grammar error, shown as the one-line message
        raise ReportError(f"cannot parse the override {text!r}: {error}") from error


def split_overrides(arguments: Sequence[str], entry: Entry) -> Overrides:
    """``METHOD:key=value`` (a Hydra key never holds ``:``, a value may: ``data.path=sample:pan``) goes to
    those methods, anything else to every job."""
    names = [method.name for method in entry.methods]
    overrides = Overrides()
    for argument in arguments:
        head, equals, _ = argument.partition("=")
        scope, colon, override = argument.partition(":")
        if not (equals and colon and ":" in head):
            if head.lstrip("+") == METHOD_GROUP:  # the experiment is each method's: replace it in all
                for name in names:
                    overrides.scoped.setdefault(name, []).append(argument)
            else:
                overrides.common.append(argument)
            continue
        for name in scope.split(","):
            if name not in names:
                raise ReportError(f"{argument!r}: {entry.name} has no method {name!r}; its methods: {', '.join(names)}")
            overrides.scoped.setdefault(name, []).append(override)
    return overrides


def _key(override: str) -> str:
    return _parse(override).key_or_group


def entry_sweep(entry: Entry, common: Sequence[str]) -> list[str]:
    """The entry's own overrides but those whose key the command line sets too."""
    given = {_key(override) for override in common}
    return [override for override in entry.sweep if _key(override) not in given]


def _config_groups() -> set[str]:
    """Config groups of csd_exp.conf and of the user's config folder (``CSD_EXP_CONFIG_DIR``)."""
    groups = {path.name for path in resources.files("csd_exp.conf").iterdir() if path.is_dir()}
    user = os.environ.get(CONFIG_DIR_VARIABLE)
    if user and Path(user).is_dir():
        groups |= {path.name for path in Path(user).iterdir() if path.is_dir()}
    return groups - {"__pycache__"}


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ReportError(f"{dotted}: {part} is a value, not a config node")
    tree[last] = value


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def method_config(method: Method, scoped: Sequence[str], wandb_group: str | None = None) -> dict:
    """The generated ``experiment/<name>.yaml``: the method's experiment included first, then the body (its
    values), then its other group choices as defaults-list overrides; a scoped override replaces the
    method's choice of the same group, or adds a value."""
    groups = dict(method.groups)
    values: dict = {}
    known = _config_groups()
    for text in scoped:
        override = _parse(text)
        key = override.key_or_group
        if override.is_sweep_override() or override.is_delete() or override.package:
            raise ReportError(
                f"{method.name}:{text}: a method's override takes one value (no sweep, ~ or @package); "
                "sweep a key for every method without the METHOD: prefix"
            )
        if key.split("/")[0] == "hydra" or key.startswith("hydra."):
            raise ReportError(f"{method.name}:{text}: Hydra settings are the sweep's, give them without METHOD:")
        if key.lstrip("+") in known:
            groups[key.lstrip("+")] = str(override.value())
        else:
            _set(values, key, override.value())
    values = _merge(method.values, values)
    if wandb_group is not None:
        values = _merge(values, {"logger": {"wandb": {"group": wandb_group}}})
    base = groups.pop(METHOD_GROUP, None)
    defaults: list = [f"/{METHOD_GROUP}/{base}"] if base else []
    defaults += ["_self_", *({f"override /{group}": option} for group, option in groups.items())]
    return {"defaults": defaults, **values}


def input_config(item: Input) -> dict:
    config: dict = {}
    for key, value in item.values.items():
        _set(config, key, value)
    return config


def _write_yaml(path: Path, tree: dict, comment: str) -> None:
    from omegaconf import OmegaConf

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package _global_\n# {comment}\n" + OmegaConf.to_yaml(OmegaConf.create(tree)))


def search_path(config_dir: Path) -> str:
    return f'hydra.searchpath=["file://{config_dir.resolve()}"]'


def _logs_to_wandb(config_dir: Path, method: Method, first_input: Input | None, common: Sequence[str]) -> bool:
    """Whether the method's jobs have a W&B logger: its first job composed (Hydra and swept keys left out,
    neither chooses the logger) from the same config folders as ``csd-exp``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    folders = [config_dir.resolve()]
    if os.environ.get(CONFIG_DIR_VARIABLE):
        folders.insert(0, Path(os.environ[CONFIG_DIR_VARIABLE]).resolve())
    overrides = ["hydra.searchpath=[" + ",".join(f'"file://{folder}"' for folder in folders) + "]"]
    overrides.append(f"{METHOD_GROUP}={method.name}")
    if first_input is not None:
        overrides.append(f"+{INPUT_GROUP}={first_input.name}")
    for text in common:
        override = _parse(text)
        if not override.is_sweep_override() and not override.key_or_group.startswith("hydra"):
            overrides.append(text)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="csd_exp.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as error:  # Hydra's composition error names the bad override or missing option
        raise ReportError(f"{method.name}: the config does not compose: {error}") from error
    finally:
        GlobalHydra.instance().clear()
    logger = cfg.get("logger") or {}
    return "wandb" in logger and logger.get("wandb") is not None


def write_configs(
    out: Path, entry: Entry, methods: Sequence[Method], inputs: Sequence[Input], overrides: Overrides, group: str
) -> Path:
    """The generated config groups; a method with a W&B logger gets ``logger.wandb.group`` = ``group``, so
    every run of the entry (whatever experiment it comes from) shares one W&B group."""
    config_dir = out / CONFIG_FOLDER
    for item in inputs:
        _write_yaml(
            config_dir / INPUT_GROUP / f"{item.name}.yaml", input_config(item), f"csd-exp-paper input {item.name}"
        )
    for method in methods:
        scoped = overrides.scoped.get(method.name, [])
        path = config_dir / METHOD_GROUP / f"{method.name}.yaml"
        comment = f"csd-exp-paper {entry.name}: {method.title}"
        _write_yaml(path, method_config(method, scoped), comment)
        if _logs_to_wandb(config_dir, method, inputs[0] if inputs else None, overrides.common):
            _write_yaml(path, method_config(method, scoped, wandb_group=group), comment)
    return config_dir


def sweep_command(
    out: Path, entry: Entry, methods: Sequence[Method], inputs: Sequence[Input], overrides: Overrides
) -> list[str]:
    command = [sys.executable, "-m", "csd_exp.cli", "-m", f"hydra.sweep.dir={out.resolve()}"]
    command.append(search_path(out / CONFIG_FOLDER))
    command.append(f"{METHOD_GROUP}=" + ",".join(method.name for method in methods))
    if inputs:
        command.append(f"+{INPUT_GROUP}=" + ",".join(item.name for item in inputs))
    return command + entry_sweep(entry, overrides.common) + list(overrides.common)


def launch(command: Sequence[str]) -> int:
    """Run the sweep in a subprocess (its own Hydra app), streaming its output; returns its exit code."""
    shown = ["csd-exp", *command[3:]]
    print("+ " + " ".join(shlex.quote(part) for part in shown), flush=True)
    return subprocess.run(list(command)).returncode
