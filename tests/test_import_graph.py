"""The arrows between csd_exp's packages run one way: no cycle, data below render below tasks.

``python -m pytest tests/test_import_graph.py -q -s`` prints the graph."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "csd_exp"
# Packages that must not import the ones listed (lower layers never reach up).
FORBIDDEN = {
    "csd_exp.distill": {"csd_exp.priors", "csd_exp.tasks", "csd_exp.data", "csd_exp.render", "csd_exp.metrics"},
    "csd_exp.data": {"csd_exp.render", "csd_exp.tasks", "csd_exp.priors", "csd_exp.metrics"},
    "csd_exp.render": {"csd_exp.tasks", "csd_exp.priors"},
    "csd_exp.priors": {"csd_exp.tasks", "csd_exp.data", "csd_exp.render"},
    "csd_exp.metrics": {"csd_exp.tasks"},
    "csd_exp.schema": {"csd_exp.tasks", "csd_exp.priors", "csd_exp.distill"},  # must stay light
}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Package -> the csd_exp packages it imports (at any depth of its modules, lazy imports included)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                targets = [".".join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("csd_exp.") and _package(target) != _package(module):
                    edges[_package(module)].add(_package(target))
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def test_no_import_cycle_between_packages():
    edges = import_graph()
    for package in sorted(edges):
        print(f"{package} -> {', '.join(sorted(edges[package]))}")
    assert _cycles(edges) == []


def test_lower_layers_never_import_upper_ones():
    edges = import_graph()
    wrong = {package: edges.get(package, set()) & banned for package, banned in FORBIDDEN.items()}
    assert not any(wrong.values()), wrong
