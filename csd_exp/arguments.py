"""A constructor's arguments checked against its own annotations: the one copy of each constraint, for Python too.

A constructor states what it accepts on its signature (``window_size: PositiveInt``, ``bandwidth:
Literal[...]``, ``Annotated[float, {"gt": 0}]``; the markers of :mod:`csd_exp.schema.fields`). The compose-time
check reads those annotations from source (:mod:`csd_exp.ast_signatures`, before torch loads) and validates a
config's values with pydantic. :func:`checked` gives a Python caller the same check from the same reading::

    class RBFKernel:
        @checked
        def __init__(self, bandwidth: BandwidthRule = "median", gamma: PositiveFloat | None = None, ...): ...

    RBFKernel(bandwidth="silverman")
    # ValueError: RBFKernel: bandwidth='silverman' is not allowed: input should be 'median', 'median_log_n' or 'fixed'

so a constructor writes no ``if not 0 < x: raise`` of its own; only rules between parameters (``gamma`` iff
``bandwidth="fixed"``) stay code. Each argument the caller passes is validated (defaults are not: they are the
constructor's own), strictly as the compose check does (no ``"3"`` for 3, no ``True`` for a number, no NaN).
A parameter annotated with a class a config cannot hold (``torch.dtype``, ``Tensor``, a kernel object, alone or
in a union) is not checked here. The annotations are read, and their pydantic ``TypeAdapter`` s built, once per
function at its first call, so a call costs a few microseconds per argument passed.

This module imports the standard library only (pydantic and the source reader at the first check;
``tests/test_import_graph.py`` keeps it so), which lets ``csd_exp.distill`` (torch and the standard library only)
use this one :func:`checked` through :mod:`csd_exp.distill.arguments`, a re-export.
"""

from __future__ import annotations

import ast
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@functools.lru_cache(maxsize=1024)
def _adapter(annotation: Any):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))


def _descriptions(annotation: Any) -> list[str]:
    """The ``Field(description=...)`` texts inside an annotation: how a pattern is explained to the user."""
    found = [m.description for m in getattr(annotation, "__metadata__", ()) if getattr(m, "description", None)]
    for argument in typing.get_args(annotation):
        found += _descriptions(argument)
    return found


def validator(annotation: Any) -> Callable[[Any], str | None]:
    """``problem(value)``: why ``value`` does not fit ``annotation`` (pydantic, strict, no NaN or inf), in a few
    words, or None if it fits. Its ``TypeAdapter`` is built once per annotation."""
    from pydantic import ValidationError

    if annotation is Any:
        return lambda value: None
    try:
        adapter = _adapter(annotation)
    except TypeError:  # an unhashable annotation (a marker without __hash__): not cached
        adapter = _adapter.__wrapped__(annotation)
    described = _descriptions(annotation)

    def problem(value: Any) -> str | None:
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            if described:
                return f"expected {' or '.join(described)}"
            reasons = (e["msg"][:1].lower() + e["msg"][1:] for e in error.errors())
            return " or ".join(dict.fromkeys(reasons))
        return None

    return problem


def annotation_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit ``annotation``, or None: the one validation of a value against its annotation,
    shared by the compose-time check (:func:`csd_exp.schema.checks.check_value`) and :func:`checked`."""
    return validator(annotation)(value)


# ------------------------------------------------------------------------------------------ the decorator
def _union_members(expr: ast.expr) -> list[ast.expr]:
    """The members of ``A | B`` / ``Optional[A]`` / ``Union[A, B]`` (``[expr]`` for anything else)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):  # a quoted annotation
        try:
            expr = ast.parse(expr.value, mode="eval").body
        except SyntaxError:
            return [expr]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _union_members(expr.left) + _union_members(expr.right)
    if isinstance(expr, ast.Subscript) and ast.unparse(expr.value).split(".")[-1] in ("Optional", "Union"):
        items = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        return [m for item in items for m in _union_members(item)]
    return [expr]


def _checkable(expr: ast.expr | None, module) -> Any:
    """The type the compose check reads from ``expr``, or ``Any`` when a member of it is a class a config cannot
    hold (the compose check drops such a member; a Python caller may pass exactly that, so nothing is checked)."""
    from csd_exp.ast_source import annotation_of

    if expr is None:
        return Any
    for member in _union_members(expr):
        if annotation_of(member, module) is Any and ast.unparse(member).split(".")[-1] != "Any":
            return Any
    return annotation_of(expr, module)


def _read_annotations(function: Callable) -> dict[str, Any]:
    """Parameter -> checkable annotation of ``function`` (a module-level function or a method of a module-level
    class), read from its source by the compose check's reader; empty if its source cannot be read."""
    from csd_exp.ast_source import find

    owner, *rest = function.__qualname__.split(".")
    definition = find(f"{function.__module__}.{owner}")
    if definition is None or "<locals>" in function.__qualname__:
        return {}
    node, module = definition.node, definition.module
    for index, name in enumerate(rest):
        inner = next(
            (s for s in getattr(node, "body", ()) if isinstance(s, (ast.FunctionDef, ast.ClassDef)) and s.name == name),
            None,
        )
        if inner is None and not (name == "__init__" and index == len(rest) - 1 and isinstance(node, ast.ClassDef)):
            return {}
        node = inner or node
    if isinstance(node, ast.ClassDef) and rest == ["__init__"]:  # no __init__ written: a dataclass's fields
        found = {
            s.target.id: _checkable(s.annotation, module)
            for s in node.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            if "ClassVar" not in ast.unparse(s.annotation)
        }
        return {name: annotation for name, annotation in found.items() if annotation is not Any}
    if not isinstance(node, ast.FunctionDef):
        return {}
    arguments = node.args
    named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    found = {a.arg: _checkable(a.annotation, module) for a in named}
    return {name: annotation for name, annotation in found.items() if annotation is not Any}


def _plain(value: Any) -> Any:
    """A container as the compose check sees it: Hydra passes a config's lists as ``ListConfig``."""
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return value


def argument_checker(function: Callable) -> Callable[[tuple, dict], None]:
    """``check(args, kwargs)``: raise ``ValueError`` naming the owner, the parameter, the value and the constraint
    if an argument a caller passes to ``function`` does not fit that parameter's annotation (see the module
    docstring). The annotations are read here, once."""
    parameters = [
        p for p in inspect.signature(function).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    owner = function.__qualname__.removesuffix(".__init__")
    validators = {name: validator(annotation) for name, annotation in _read_annotations(function).items()}

    def check(args: tuple, kwargs: dict) -> None:
        for name, value in zip(positional, args):
            if name in validators:
                _check(validators[name], name, value)
        for name, value in kwargs.items():
            if name in validators:
                _check(validators[name], name, value)

    def _check(problem_of: Callable[[Any], str | None], name: str, value: Any) -> None:
        problem = problem_of(_plain(value))
        if problem is not None:
            raise ValueError(f"{owner}: {name}={value!r} is not allowed: {problem}")

    return check


def checked(function: F) -> F:
    """Decorate a constructor (or any function) so that each argument a caller passes is validated against the
    parameter's annotation, as the compose-time check validates a config (:func:`argument_checker`, built at the
    first call). On a dataclass (written above ``@dataclass``) it checks the generated ``__init__`` against the
    fields' annotations (the class's own fields; a ``ClassVar`` is no field). ``csd_exp.distill`` imports it
    as :func:`csd_exp.distill.arguments.checked`."""
    if isinstance(function, type):
        function.__init__ = checked(function.__init__)  # type: ignore[misc]
        return function
    check: Callable[[tuple, dict], None] | None = None

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        nonlocal check
        if check is None:
            check = argument_checker(function)
        check(args, kwargs)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
