"""The paper's figures and tables, read from the experiments that are them.

Each is one experiment, ``conf/experiment/paper_*.yaml``: its inputs, sizes, steps and scales, and a
top-level ``paper`` node that ``csd-exp-paper`` reads to launch it as

    csd-exp -m method=<paper.methods> experiment=<that experiment> <paper.sweep>

and to report it (``csd-exp-report`` reads the same node from the runs' saved config, to name the table's
methods that have no run). The runs themselves do not read it. Keys of ``paper``:

- ``table``: the name ``csd-exp-paper`` takes (``table1``); ``title``: the paper's caption, shown beside the
  paper's numbers (the table itself is titled by what ran);
- ``methods``: the ``method`` options, in table order; ``titles``: label -> the paper's name for it;
- ``tasks``: the task options its runs may have (``--report-only`` refuses a folder of another);
- ``metrics``: the paper's columns, first in the table; ``figure``: ``bars`` | ``grid`` | ``scatter``
  (``scatter``: [x metric, y metric]);
- ``sweep``: Hydra sweep overrides of every job (``guidance.guidance_scale=3,5,7.5,10``);
- ``inputs``: a list of the paper's inputs in ``csd_exp.conf`` (conf/paper/), used with ``--root``;
- ``cpu``: the overrides of ``--cpu`` (tiny random-weight or exact priors at smoke sizes);
- ``notes``: lines for the table's notes.

A user's experiment with a ``paper`` node (``CSD_EXP_CONFIG_DIR``) is a table too. The paper's published
numbers are csd_exp/report/paper_numbers.py's, by table name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from csd_exp.report.paper_numbers import NUMBERS, PaperNumbers
from csd_exp.report.runs import ReportError

KEYS = (
    "table",
    "title",
    "methods",
    "titles",
    "tasks",
    "metrics",
    "figure",
    "scatter",
    "sweep",
    "inputs",
    "cpu",
    "notes",
)
FIGURES = ("bars", "grid", "scatter")
# Read by csd_exp.cli too: a user's config folder, searched first.
CONFIG_DIR_VARIABLE = "CSD_EXP_CONFIG_DIR"


@dataclass(frozen=True)
class Table:
    """One figure or table of the paper: the ``paper`` node of its experiment."""

    name: str
    experiment: str  # the experiment option that is this table
    title: str
    methods: tuple[str, ...]
    titles: dict[str, str]
    tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    figure: str
    scatter: tuple[str, str] | None
    sweep: tuple[str, ...]
    inputs: str | None
    cpu: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def paper(self) -> PaperNumbers | None:
        return NUMBERS.get(self.name)


def _strings(node: Any, key: str, where: str) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node, list) or not all(isinstance(item, str) for item in node):
        raise ReportError(f"{where}: paper.{key} must be a list of strings, got {node!r}")
    return tuple(node)


def table_from_node(node: Any, experiment: str) -> Table:
    """A :class:`Table` from an experiment's ``paper`` node (plain data); a one-line error naming the key."""
    where = f"experiment={experiment}"
    if not isinstance(node, dict):
        raise ReportError(f"{where}: paper must be a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(node) - set(KEYS))
    missing = sorted(set(KEYS) - set(node))
    if unknown or missing:
        raise ReportError(
            f"{where}: paper has "
            + "; ".join(
                part
                for part in (
                    f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                    f"no {', '.join(missing)}" if missing else "",
                )
                if part
            )
            + f" (its keys: {', '.join(KEYS)})"
        )
    methods = _strings(node["methods"], "methods", where)
    if not methods:
        raise ReportError(f"{where}: paper.methods lists no method")
    if node["figure"] not in FIGURES:
        raise ReportError(f"{where}: paper.figure is {node['figure']!r}; one of {', '.join(FIGURES)}")
    scatter = _strings(node["scatter"], "scatter", where)
    if node["figure"] == "scatter" and len(scatter) != 2:
        raise ReportError(f"{where}: a scatter figure needs paper.scatter: [x metric, y metric]")
    titles = node["titles"] or {}
    if not isinstance(titles, dict):
        raise ReportError(f"{where}: paper.titles must map method -> title")
    return Table(
        name=str(node["table"]),
        experiment=experiment,
        title=str(node["title"]),
        methods=methods,
        titles={str(key): str(value) for key, value in titles.items()},
        tasks=_strings(node["tasks"], "tasks", where),
        metrics=_strings(node["metrics"], "metrics", where),
        figure=node["figure"],
        scatter=(scatter[0], scatter[1]) if len(scatter) == 2 else None,
        sweep=_strings(node["sweep"], "sweep", where),
        inputs=node["inputs"] if isinstance(node["inputs"], str) else None,
        cpu=_strings(node["cpu"], "cpu", where),
        notes=_strings(node["notes"], "notes", where),
    )


def _experiment_files() -> list[Path]:
    """The experiments of ``csd_exp.conf`` and of the user's config folder (searched first: its file wins)."""
    files: dict[str, Path] = {}
    user = os.environ.get(CONFIG_DIR_VARIABLE)
    folders = [Path(str(resources.files("csd_exp.conf").joinpath("experiment")))]
    if user and (Path(user) / "experiment").is_dir():
        folders.append(Path(user) / "experiment")
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            files[path.stem] = path
    return list(files.values())


def load_tables() -> dict[str, Table]:
    """Every experiment with a ``paper`` node, by table name (a quick text test before parsing any YAML)."""
    from omegaconf import OmegaConf

    tables: dict[str, Table] = {}
    for path in _experiment_files():
        text = path.read_text()
        if "\npaper:" not in text and not text.startswith("paper:"):
            continue
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("paper")
        table = table_from_node(node, path.stem)
        if table.name in tables:
            raise ReportError(
                f"two experiments are paper table {table.name}: {tables[table.name].experiment}, {path.stem}"
            )
        tables[table.name] = table
    return tables


def method_options() -> list[str] | None:
    """The ``method`` config group's options (conf/method/ and the user's); None when there is no such group."""
    folders = [Path(str(resources.files("csd_exp.conf").joinpath("method")))]
    user = os.environ.get(CONFIG_DIR_VARIABLE)
    if user:
        folders.append(Path(user) / "method")
    found = [path.stem for folder in folders if folder.is_dir() for path in folder.glob("*.yaml")]
    return sorted(set(found)) if any(folder.is_dir() for folder in folders) else None
