"""Launch a paper table as one Hydra multirun of ``csd-exp``: the table's experiment, its methods, nothing else.

    csd-exp -m hydra.sweep.dir=<out> method=<paper.methods> experiment=<the table> <paper.sweep> \\
        [<paper.cpu> with --cpu] [inputs] <the user's overrides>

Each method brings its own task implementation and prior family (the ``method`` group); the experiment
sets inputs, sizes, steps and scales, so every method runs on the same frames, in one sweep folder and one
W&B group, on whichever launcher ``hydra/launcher=...`` names. One input is given as overrides
(``data.path``, ``prompt``, ``source_prompt``); several become a config group ``paper_input`` written into
``<out>/paper_configs`` (one YAML per input, added to Hydra's search path) and swept as
``+paper_input=a,b``: Hydra's sweep is a product, and an input's path and prompts go together.

A user's override for a key of ``paper.sweep`` replaces it. ``method=`` and ``experiment=`` are the table's
(``--only`` picks methods), and a per-method override would make the methods' conditions differ: both are
refused.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from csd_exp.report.paper_inputs import Input
from csd_exp.report.paper_tables import Table
from csd_exp.report.runs import ReportError

CONFIG_FOLDER = "paper_configs"
INPUT_GROUP = "paper_input"
# The table chooses these; a user's value would launch something else under the table's name.
TABLE_KEYS = ("method", "experiment")


def _parse(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except Exception as error:  # Hydra's grammar error, shown as the one-line message
        raise ReportError(f"cannot parse the override {text!r}: {error}") from error


def _key(override: str) -> str:
    return _parse(override).key_or_group.lstrip("+~")


def check_overrides(arguments: Sequence[str], table: Table) -> list[str]:
    """The user's overrides, refused where they would change what the table is."""
    for argument in arguments:
        head = argument.partition("=")[0]
        if ":" in head:  # METHOD:key=value (a Hydra key never holds ':', a value may: data.path=sample:pan)
            raise ReportError(
                f"{argument!r}: per-method overrides are gone; every method of {table.name} runs on the same "
                "settings and brings its own prior family (the method group). Give the override for every job"
            )
        if _key(argument) in TABLE_KEYS:
            raise ReportError(
                f"{argument!r}: {table.name} is experiment={table.experiment} over its methods "
                f"({', '.join(table.methods)}); pick methods with --only, run another experiment with csd-exp -m"
            )
    return list(arguments)


def table_sweep(table: Table, given: Sequence[str]) -> list[str]:
    """The table's own sweep overrides but those whose key the command line sets too."""
    keys = {_key(override) for override in given}
    return [override for override in table.sweep if _key(override) not in keys]


def input_overrides(item: Input) -> list[str]:
    """One input as Hydra overrides (values quoted for Hydra's grammar)."""
    return [f"{key}={_quote(value)}" for key, value in item.values.items()]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_inputs(out: Path, inputs: Sequence[Input]) -> Path:
    """``<out>/paper_configs/paper_input/<name>.yaml`` per input (its data.path, prompt, source_prompt)."""
    from omegaconf import OmegaConf

    folder = out / CONFIG_FOLDER / INPUT_GROUP
    folder.mkdir(parents=True, exist_ok=True)
    for item in inputs:
        tree: dict = {}
        for dotted, value in item.values.items():
            *parents, last = dotted.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        text = f"# @package _global_\n# csd-exp-paper input {item.name}\n" + OmegaConf.to_yaml(OmegaConf.create(tree))
        (folder / f"{item.name}.yaml").write_text(text)
    return out / CONFIG_FOLDER


def sweep_command(
    out: Path,
    table: Table,
    methods: Sequence[str],
    inputs: Sequence[Input],
    overrides: Sequence[str],
    cpu: bool = False,
) -> list[str]:
    """The argv of the sweep (``python -m csd_exp.cli -m ...``); several inputs need :func:`write_inputs`."""
    command = [sys.executable, "-m", "csd_exp.cli", "-m", f"hydra.sweep.dir={out.resolve()}"]
    command += [f"method={','.join(methods)}", f"experiment={table.experiment}"]
    extra = [*(table.cpu if cpu else ()), *overrides]
    command += table_sweep(table, extra)
    if len(inputs) == 1:
        command += input_overrides(inputs[0])
    elif inputs:
        command.append(f'hydra.searchpath=["file://{(out / CONFIG_FOLDER).resolve()}"]')
        command.append(f"+{INPUT_GROUP}=" + ",".join(item.name for item in inputs))
    return command + extra


def shown(command: Sequence[str]) -> str:
    """The command as a user would type it."""
    return " ".join(shlex.quote(part) for part in ["csd-exp", *command[3:]])


def launch(command: Sequence[str]) -> int:
    """Run the sweep in a subprocess (its own Hydra app), streaming its output; returns its exit code."""
    print("+ " + shown(command), flush=True)
    return subprocess.run(list(command)).returncode
