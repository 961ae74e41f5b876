"""Source files read without running them: where a module lives, what its names are bound to, and what an
annotation means, with :mod:`ast`.

The compose-time check must not import torch, Lightning or diffusers, yet the constraints live on the
constructors (``window_size: PositiveInt``, ``method: Literal["per_window", ...]``). So the module that defines
a target is located without running it (:func:`module_file`: ``importlib.util.find_spec`` on the top-level
package only, then the folders) and parsed; names are followed through ``from ... import`` (re-exports and
``if TYPE_CHECKING:`` imports included) to the module that assigns them.

An annotation becomes a real type only out of literals and the markers' own libraries
(:data:`REAL_MODULES`: ``typing``, ``pydantic``, ``annotated_types``), so ``Annotated[int, Field(ge=1)]``,
``Literal[...]``, ``X | None`` and aliases of them (``PositiveInt``, ``Literal[BANDWIDTH_RULES]``) are read
exactly, while a class (``torch.dtype``, ``ScorePrior``) is not: a union drops it (a config holds plain values
only), and an annotation that is only such a class is not checked.

With :mod:`csd_exp.ast_signatures` (constructors and class facts) this is the package's one reader of source,
below both its users: the compose-time check (:mod:`csd_exp.schema`) and the method axis
(:mod:`csd_exp.prior_families`). Both modules import the standard library only (pydantic lazily) and no other
module of csd_exp.
"""

from __future__ import annotations

import ast
import functools
import gc
import importlib
import importlib.util
import operator
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Modules an annotation may take real objects from: the markers' libraries, light and free of our code.
REAL_MODULES = ("typing", "typing_extensions", "collections.abc", "pydantic", "annotated_types")
#: Packages whose classes are never followed as bases (their constructors take objects, not config values):
#: parsing them would cost time and tell nothing a config can set.
OPAQUE_PACKAGES = ("torch", "pytorch_lightning", "lightning", "lightning_fabric", "diffusers", "transformers")
_BUILTINS = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "bytes": bytes,
    "object": object,
    "type": type,
}
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
}


class Unresolved(Exception):
    """A name that cannot become a value without importing the module that defines it."""


@dataclass(frozen=True, eq=False)
class Module:
    name: str
    path: Path
    is_package: bool
    defined: dict[str, ast.AST]  # top-level classes, functions and assigned expressions
    imported: dict[str, tuple[str, str | None]]  # local name -> (module, attribute; None: the module itself)


@dataclass(frozen=True, eq=False)
class Definition:
    """A class or function found in ``module`` (``node`` is its ``ClassDef`` / ``FunctionDef``)."""

    module: Module
    node: ast.AST

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def qualname(self) -> str:
        return f"{self.module.name}.{self.node.name}"

    @property
    def is_class(self) -> bool:
        return isinstance(self.node, ast.ClassDef)


# ------------------------------------------------------------------------------------------ modules
@functools.cache
def module_file(module: str) -> tuple[Path, bool] | None:
    """(source file, is a package) of ``module``, found without importing it or its parent packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: located, not imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        if spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin), spec.submodule_search_locations is not None
        return None
    folders = [Path(f) for f in (spec.submodule_search_locations or [])]
    for index, part in enumerate(rest):
        last = index == len(rest) - 1
        nxt: list[Path] = []
        for folder in folders:
            if (folder / part / "__init__.py").is_file():
                if last:
                    return folder / part / "__init__.py", True
                nxt = [folder / part]
                break
            if last and (folder / f"{part}.py").is_file():
                return folder / f"{part}.py", False
            if (folder / part).is_dir():  # a namespace package
                nxt.append(folder / part)
        if not nxt:
            return _mapped_module_file(module) if len(rest) == 1 else None
        folders = nxt
    return _mapped_module_file(module) if len(rest) == 1 else None


def _mapped_module_file(module: str) -> tuple[Path, bool] | None:
    """A child of a top-level package that the walk above cannot see: a package mapped from elsewhere by an
    editable install (``csd_exp.conf`` is the checkout's top-level ``conf/``, pyproject's package-dir). Asks the
    import system, which imports the top-level package only (``csd_exp/__init__.py`` imports nothing); deeper
    names are never asked, since their parents (``csd_exp.priors``) import torch."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin), spec.submodule_search_locations is not None


def _statements(body: list[ast.stmt]):
    """Top-level statements, those inside ``if`` / ``try`` blocks (``if TYPE_CHECKING:``) included."""
    for statement in body:
        if isinstance(statement, ast.If):
            yield from _statements(statement.body)
            yield from _statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            yield from _statements(statement.body)
            for handler in statement.handlers:
                yield from _statements(handler.body)
        else:
            yield statement


@functools.cache
def load(module: str) -> Module | None:
    found = module_file(module)
    if found is None:
        return None
    path, is_package = found
    enabled = gc.isenabled()
    gc.disable()  # a parse makes many small objects: collections of the caller's large heap would double its cost
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    finally:
        if enabled:
            gc.enable()
    defined: dict[str, ast.AST] = {}
    imported: dict[str, tuple[str, str | None]] = {}
    here = module.split(".") if is_package else module.split(".")[:-1]
    for statement in _statements(tree.body):
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defined[statement.name] = statement
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            if isinstance(statement.targets[0], ast.Name):
                defined[statement.targets[0].id] = statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            if isinstance(statement.target, ast.Name):
                defined[statement.target.id] = statement.value
        elif isinstance(statement, ast.ImportFrom):
            base = here[: len(here) - statement.level + 1] if statement.level else []
            source = ".".join(base + ([statement.module] if statement.module else []))
            for alias in statement.names:
                imported[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    imported[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    imported[top] = (top, None)
    return Module(module, path, is_package, defined, imported)


def _is_real(module: str) -> bool:
    return any(module == real or module.startswith(f"{real}.") for real in REAL_MODULES)


# ----------------------------------------------------------------------------------------- symbols
@dataclass(frozen=True)
class _Ref:
    """A module (``attribute`` None) or a name in one, not yet looked up."""

    module: str


def _lookup(module: str, name: str, depth: int = 0, follow_opaque: bool = False) -> Any:
    """What ``name`` is in ``module``: a real object (from :data:`REAL_MODULES`), a :class:`Definition`, a
    ``(Module, ast.expr)`` pair (an assigned value, evaluated on use) or a :class:`_Ref` to a module.

    A name of :data:`OPAQUE_PACKAGES` (``torch.dtype``, ``Tensor``) is no config value: it is not looked up
    (their large modules are not parsed) unless ``follow_opaque`` (a ``_target_`` there, ``torch.optim.SGD``)."""
    if depth > 12 or (not follow_opaque and module.split(".")[0] in OPAQUE_PACKAGES):
        raise Unresolved(f"{module}.{name}")
    if _is_real(module):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise Unresolved(f"{module}.{name}") from None
    source = load(module)
    if source is None:
        raise Unresolved(f"{module}.{name}")
    if name in source.defined:
        node = source.defined[name]
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            return Definition(source, node)
        return (source, node)
    if name in source.imported:
        other, attribute = source.imported[name]
        if attribute is None:
            return _Ref(other)
        try:
            return _lookup(other, attribute, depth + 1, follow_opaque)
        except Unresolved:
            if module_file(f"{other}.{attribute}") is not None:
                return _Ref(f"{other}.{attribute}")
            raise
    if source.is_package and module_file(f"{module}.{name}") is not None:
        return _Ref(f"{module}.{name}")
    raise Unresolved(f"{module}.{name}")


def symbol_of(expr: ast.expr, module: Module) -> Any:
    """The symbol a ``Name`` or dotted ``Attribute`` expression names in ``module``."""
    if isinstance(expr, ast.Name):
        if expr.id in module.defined or expr.id in module.imported:
            return _lookup(module.name, expr.id)
        if expr.id in _BUILTINS:
            return _BUILTINS[expr.id]
        raise Unresolved(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = symbol_of(expr.value, module)
        if isinstance(owner, _Ref):
            return _lookup(owner.module, expr.attr)
        if not isinstance(owner, (Definition, tuple)) and hasattr(owner, expr.attr):
            return getattr(owner, expr.attr)
    raise Unresolved(ast.unparse(expr))


@functools.cache
def find(target: str) -> Definition | None:
    """The class or function a ``_target_`` names, or None if its source cannot be read."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        if _is_real(module) or module_file(module) is None:
            continue
        try:
            found: Any = _Ref(module)
            for name in parts[split:]:
                if not isinstance(found, _Ref):
                    return None
                found = _lookup(found.module, name, follow_opaque=True)
        except Unresolved:
            return None
        return found if isinstance(found, Definition) else None
    return None


# ---------------------------------------------------------------------------------------- annotations
def literal_value(expr: ast.expr, module: Module) -> Any:
    """A literal value (numbers, strings, tuples, names bound to them, calls of the markers' constructors)."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Dict) and all(isinstance(k, ast.Constant) for k in expr.keys):
        return {k.value: literal_value(v, module) for k, v in zip(expr.keys, expr.values)}
    if isinstance(expr, (ast.Tuple, ast.List)):
        values = [literal_value(e, module) for e in expr.elts]
        return tuple(values) if isinstance(expr, ast.Tuple) else values
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        return -literal_value(expr.operand, module)
    if isinstance(expr, ast.BinOp) and type(expr.op) in _OPERATORS:
        return _OPERATORS[type(expr.op)](literal_value(expr.left, module), literal_value(expr.right, module))
    if isinstance(expr, ast.Call):
        function = symbol_of(expr.func, module)
        if isinstance(function, (Definition, tuple, _Ref)) or not callable(function):
            raise Unresolved(ast.unparse(expr))
        args = [literal_value(a, module) for a in expr.args]
        return function(*args, **{k.arg: literal_value(k.value, module) for k in expr.keywords if k.arg})
    if isinstance(expr, ast.Subscript):
        return _annotation(expr, module)
    symbol = symbol_of(expr, module)
    if isinstance(symbol, tuple):
        return literal_value(symbol[1], symbol[0])
    if isinstance(symbol, (Definition, _Ref)):
        raise Unresolved(ast.unparse(expr))
    return symbol


def _union(options: list[ast.expr], module: Module) -> Any:
    """``A | B | ...`` of the options that resolve (classes a config cannot hold are dropped)."""
    resolved = []
    for option in options:
        try:
            resolved.append(_annotation(option, module))
        except Unresolved:
            continue
    if not resolved:
        raise Unresolved("no member of the union is a config value")
    return resolved[0] if len(resolved) == 1 else typing.Union[tuple(resolved)]  # noqa: UP007


def _flatten_or(expr: ast.expr) -> list[ast.expr]:
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _flatten_or(expr.left) + _flatten_or(expr.right)
    return [expr]


def _annotation(expr: ast.expr, module: Module) -> Any:
    """The type an annotation expression means; :class:`Unresolved` if it names only what a config cannot hold."""
    from pydantic import Field, Strict

    if isinstance(expr, ast.Constant):
        if expr.value is None:
            return type(None)
        if isinstance(expr.value, str):  # a quoted annotation
            return _annotation(ast.parse(expr.value, mode="eval").body, module)
        raise Unresolved(repr(expr.value))
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _union(_flatten_or(expr), module)
    if isinstance(expr, ast.Subscript):
        base = literal_value(expr.value, module)
        items = list(expr.slice.elts) if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        if base is typing.Literal:
            values: list[Any] = []
            for item in items:
                value = literal_value(item, module)
                if typing.get_origin(value) is typing.Literal:
                    values.extend(typing.get_args(value))
                else:  # ``Literal[NAMES]`` with ``NAMES`` a tuple: its members, as typing reads it
                    values.extend(value if isinstance(value, tuple) else [value])

            return typing.Literal[tuple(values)]
        if base is typing.Annotated:
            # A dict is the keywords of pydantic's Field, for a module that imports nothing but the standard
            # library (csd_exp.distill): ``Annotated[float, {"gt": 0}]`` is ``Annotated[float, Field(gt=0)]``.
            metadata = [literal_value(i, module) for i in items[1:]]
            metadata = [Field(**m) if isinstance(m, dict) else m for m in metadata]
            return typing.Annotated[(_annotation(items[0], module), *metadata)]
        if base in (typing.Union, typing.Optional):
            union = _union(items, module)
            return typing.Optional[union] if base is typing.Optional else union  # noqa: UP007, UP045
        args = tuple(
            Ellipsis if isinstance(i, ast.Constant) and i.value is ... else _annotation(i, module) for i in items
        )
        result = base[args if len(args) > 1 else args[0]]
        # A tuple is written as a list in YAML: accept the list, check its items strictly.
        return typing.Annotated[result, Strict(False)] if base in (tuple, typing.Tuple) else result  # noqa: UP006
    value = literal_value(expr, module)
    if value is typing.Any or isinstance(value, type) or typing.get_origin(value) is not None:
        return value
    if value is None:
        return type(None)
    raise Unresolved(ast.unparse(expr))


def annotation_of(expr: ast.expr | None, module: Module) -> Any:
    """The checkable type of an annotation, ``Any`` when there is none or it names no config value."""
    if expr is None:
        return Any
    try:
        return _annotation(expr, module)
    except (Unresolved, TypeError, ValueError, SyntaxError):
        return Any


# ------------------------------------------------------------------------------------------ constants
def module_constant(module: str, name: str, default: Any = None) -> Any:
    """The literal value ``module`` binds ``name`` to at its top level (``TINY_BLOCK_OUT_CHANNELS = (32, 64)``),
    ``default`` if the module or the name cannot be read, or names a class or function."""
    source = load(module)
    node = source.defined.get(name) if source is not None else None
    if node is None or isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return default
    try:
        return literal_value(node, source)
    except (Unresolved, TypeError, ValueError):
        return default
