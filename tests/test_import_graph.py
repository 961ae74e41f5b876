"""The arrows between csd_exp's packages run one way: no cycle, data below render below tasks; and no module
imports itself back through others (lazy and ``TYPE_CHECKING`` imports included).

``python -m pytest tests/test_import_graph.py -q -s`` prints the package graph."""

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

# The one source reader (csd_exp/ast_source.py, ast_signatures.py) sits below the schema and the method axis.
_READER = {"csd_exp.ast_source", "csd_exp.ast_signatures"}
FORBIDDEN.update(
    {reader: {f"csd_exp.{p.stem}" for p in ROOT.iterdir() if p.stem != "__init__"} - _READER for reader in _READER}
)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(module named, names imported from it) of every import statement of ``path`` at any depth: lazy imports
    in functions and ``if TYPE_CHECKING:`` blocks too (``ast.walk`` sees every statement)."""
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Package -> the csd_exp packages it imports (at any depth of its modules, lazy imports included)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        for target, _ in _imports(path, module):
            if target.startswith("csd_exp.") and _package(target) != _package(module):
                edges[_package(module)].add(_package(target))
    return edges


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``root``'s package it imports. ``from pkg import name`` is an arrow to the
    module ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``), whose namespace it reads.

    Not counted: the ``__init__`` of each enclosing package that Python runs before importing a submodule.
    Those files only re-export their modules' names (a facade above them, which no module of the package
    imports back by name); counting that implicit step would join every re-exporting package with its own
    members in one circle although no module needs another back. An explicit import of a package's
    namespace (``from csd_exp.metrics import ModeAgreement``) is an arrow to its ``__init__`` and counted."""
    modules = {_module_name(path, root): path for path in root.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for target, names in _imports(path, module):
            for name in names or [""]:
                resolved = f"{target}.{name}" if f"{target}.{name}" in modules else target
                if resolved in modules and resolved != module:
                    edges[module].add(resolved)
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


def test_no_import_cycle_between_modules():
    """The circles once made by file splits (scene3d's editors and diagnostics importing the task back,
    ``schema/checks -> nodes -> video_baselines -> checks``) stay gone: a split shares a small object or a
    lower module instead."""
    assert _cycles(module_graph()) == []


def test_module_cycles_are_found_through_lazy_and_type_checking_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.task import Task\n")
    (package / "task.py").write_text("from pkg.editor import Editor\n\nclass Task:\n    pass\n")
    (package / "editor.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.task import Task\n\nclass Editor:\n"
        "    pass\n"
    )
    (package / "lazy.py").write_text("def f():\n    from . import lazy_back\n")
    (package / "lazy_back.py").write_text("from pkg.lazy import f\n")
    cycles = _cycles(module_graph(package))
    assert sorted(sorted(set(cycle)) for cycle in cycles) == [["pkg.editor", "pkg.task"], ["pkg.lazy", "pkg.lazy_back"]]


def test_the_argument_checker_imports_the_standard_library_only_at_module_level():
    """``csd_exp.arguments`` (``@checked``) is imported by the data sources, the tasks, the compose-time check and,
    through ``csd_exp.distill.arguments``, by the torch-only distillation core: at module level it may import the
    standard library only; inside its functions only the source reader and pydantic."""
    import sys

    path = ROOT / "arguments.py"
    tree = ast.parse(path.read_text())
    lazy_allowed = {"csd_exp.ast_source", "csd_exp.ast_signatures", "pydantic"}
    top_level, lazy = set(), set()
    for statement in tree.body:
        for node in ast.walk(statement):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                inside = isinstance(statement, (ast.FunctionDef, ast.ClassDef))
                (lazy if inside else top_level).update(names)
    assert {n for n in top_level if n.split(".")[0] not in sys.stdlib_module_names and n != "__future__"} == set()
    assert lazy and {n for n in lazy if n not in lazy_allowed and n.split(".")[0] != "pydantic"} == set()
