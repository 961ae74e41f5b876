"""A ``_target_``'s constructor and the facts its class declares, read from source (:mod:`csd_exp.ast_source`), never
imported.

:func:`read_signature` gives the settings a config node may have: the parameters of the ``__init__`` that runs
(the first in the class's method resolution order, or a dataclass's fields, or a function's), with those it
passes ``**kwargs`` to (``super().__init__`` or a class or function it calls). :func:`class_attribute` reads a
literal a class sets in its body (``uses_guidance = False``), :func:`is_a` whether a target builds a given class
(itself, a subclass, or a function annotated to return one), and :func:`parameter_classes` the classes a parameter
is annotated with (``prior: StableDiffusionPrior``) and :func:`required_parameters` those its constructor takes
without a default: the facts the cross-group rules ask of a class.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Any

from csd_exp.ast_source import (
    OPAQUE_PACKAGES,
    Definition,
    Module,
    Unresolved,
    annotation_of,
    find,
    literal_value,
    symbol_of,
)


@dataclass(frozen=True)
class Signature:
    """What a config node may set: parameter -> annotation (``Any`` where unreadable), and whether the
    constructor forwards ``**kwargs`` somewhere this reader cannot follow (then other keys are allowed)."""

    owner: Definition
    parameters: dict[str, Any]
    open: bool
    constructor: Definition | None = None  # the ``__init__`` (or function) that takes the first keys


def _decorated_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target).split(".")[-1] == "dataclass":
            return True
    return False


def bases(definition: Definition) -> tuple[list[Definition], bool, bool]:
    """The readable classes ``definition`` derives from, in order; whether one could not be read; whether one
    belongs to :data:`OPAQUE_PACKAGES` (known to be none of ours, never followed)."""
    found: list[Definition] = []
    unknown = opaque = False
    for expr in definition.node.bases:
        try:
            symbol = symbol_of(expr, definition.module)
        except Unresolved:
            symbol = None
        if symbol is object:
            continue
        if isinstance(symbol, Definition) and symbol.is_class:
            if symbol.module.name.split(".")[0] in OPAQUE_PACKAGES and not _same_package(symbol, definition):
                opaque = True
            else:
                found.append(symbol)
        elif _opaque(expr, definition.module):
            opaque = True
        else:
            unknown = True
    return found, unknown, opaque


def _same_package(a: Definition, b: Definition) -> bool:
    return a.module.name.split(".")[0] == b.module.name.split(".")[0]


def _opaque(expr: ast.expr, module: Module) -> bool:
    """A base named through a module of :data:`OPAQUE_PACKAGES` (``pl.LightningModule``, ``torch.nn.Module``)."""
    root = expr
    while isinstance(root, ast.Attribute):
        root = root.value
    if isinstance(root, ast.Name) and root.id in module.imported:
        return module.imported[root.id][0].split(".")[0] in OPAQUE_PACKAGES
    return False


_MROS: dict[tuple[str, int], tuple[tuple[Definition, ...], bool, bool]] = {}


def mro(definition: Definition) -> tuple[tuple[Definition, ...], bool, bool]:
    """:func:`_mro`, once per class."""
    key = (definition.qualname, definition.node.lineno)
    if key not in _MROS:
        _MROS[key] = _mro(definition)
    return _MROS[key]


def _mro(definition: Definition) -> tuple[tuple[Definition, ...], bool, bool]:
    """The readable classes of ``definition``'s method resolution order (C3), whether a base could not be read,
    and whether a base of :data:`OPAQUE_PACKAGES` was left out."""
    unknown = opaque = False

    def linearize(cls: Definition, seen: tuple[str, ...]) -> list[Definition]:
        nonlocal unknown, opaque
        if cls.qualname in seen:
            return [cls]
        parents, missing, heavy = bases(cls)
        unknown, opaque = unknown or missing, opaque or heavy
        sequences = [linearize(p, (*seen, cls.qualname)) for p in parents] + [list(parents)]
        sequences = [list(s) for s in sequences if s]
        result = [cls]
        while sequences:
            for sequence in sequences:
                head = sequence[0]
                if not any(head.qualname in [c.qualname for c in s[1:]] for s in sequences):
                    break
            else:  # no consistent order (Python would refuse the class): take the first candidate
                head = sequences[0][0]
            result.append(head)
            sequences = [[c for c in s if c.qualname != head.qualname] for s in sequences]
            sequences = [s for s in sequences if s]
        return result

    return tuple(linearize(definition, ())), unknown, opaque


_MISSING = object()


def class_attribute(target: str, name: str, default: Any = None) -> Any:
    """The literal value a class sets ``name`` to in its body (or a base's), ``default`` if unreadable."""
    definition = find(target)
    if definition is None or not definition.is_class:
        return default
    for cls in mro(definition)[0]:
        for statement in cls.node.body:
            value = _MISSING
            if isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in statement.targets
            ):
                value = statement.value
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                if statement.target.id == name and statement.value is not None:
                    value = statement.value
            if value is not _MISSING:
                try:
                    return literal_value(value, cls.module)
                except (Unresolved, TypeError, ValueError):
                    return default
    return default


def built_class(target: str) -> Definition | None:
    """The class ``target`` builds: itself if it is a class, else its return annotation's (None if unreadable)."""
    definition = find(target)
    if definition is not None and not definition.is_class:
        returns = definition.node.returns
        try:
            symbol = (
                symbol_of(
                    ast.parse(returns.value, mode="eval").body if isinstance(returns, ast.Constant) else returns,
                    definition.module,
                )
                if returns is not None
                else None
            )
        except (Unresolved, SyntaxError):
            symbol = None
        definition = symbol if isinstance(symbol, Definition) and symbol.is_class else None
    return definition


def is_a(target: str, required: Definition) -> bool | None:
    """Whether ``target`` builds a ``required`` (the class, a subclass, or a function annotated to return one);
    None when its source or its return annotation cannot be read."""
    definition = built_class(target)
    if definition is None:
        return None
    classes, unknown, _ = mro(definition)
    if any(c.qualname == required.qualname for c in classes):
        return True
    return None if unknown else False


def parameter_classes(target: str, parameter: str) -> tuple[Definition, ...]:
    """The classes a constructor's ``parameter`` is annotated with: ``prior: StableDiffusionPrior`` gives one,
    ``prior: StableDiffusionPrior | StableDiffusionDepthPrior`` two; empty if unannotated or unreadable."""
    signature = read_signature(target)
    node = signature.constructor.node if signature is not None and signature.constructor is not None else None
    if not isinstance(node, ast.FunctionDef):
        return ()
    for argument in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
        if argument.arg == parameter and argument.annotation is not None:
            annotation = argument.annotation
            if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                annotation = ast.parse(annotation.value, mode="eval").body
            members = []
            pending = [annotation]
            while pending:  # the members of ``A | B | C``
                member = pending.pop()
                if isinstance(member, ast.BinOp) and isinstance(member.op, ast.BitOr):
                    pending += [member.right, member.left]
                    continue
                try:
                    symbol = symbol_of(member, signature.constructor.module)
                except Unresolved:
                    return ()
                if not (isinstance(symbol, Definition) and symbol.is_class):
                    return ()
                members.append(symbol)
            return tuple(members)
    return ()


def required_parameters(target: str) -> frozenset[str] | None:
    """The parameters of ``target``'s constructor that have no default (a config node must set them): those of
    the ``__init__`` (or function) that runs, or a dataclass's fields without a default; not what it forwards
    ``**kwargs`` to. None if unreadable."""
    signature = read_signature(target)
    if signature is None:
        return None
    node = signature.constructor.node if signature.constructor is not None else None
    if isinstance(node, ast.FunctionDef):
        arguments = node.args
        positional = [*arguments.posonlyargs, *arguments.args]
        without_default = positional[: len(positional) - len(arguments.defaults)]
        if signature.owner.is_class:
            without_default = without_default[1:]  # self
        kwonly = [a for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults) if default is None]
        return frozenset(a.arg for a in [*without_default, *kwonly])
    if signature.owner.is_class and node is None:  # a dataclass's fields (or object's constructor: none)
        required = set()
        for cls in mro(signature.owner)[0]:
            if _decorated_dataclass(cls.node):
                for statement in cls.node.body:
                    if (
                        isinstance(statement, ast.AnnAssign)
                        and isinstance(statement.target, ast.Name)
                        and statement.value is None
                        and "ClassVar" not in ast.unparse(statement.annotation)
                    ):
                        required.add(statement.target.id)
        return frozenset(required)
    return None


# --------------------------------------------------------------------------------------- signatures
def _init_of(cls: Definition) -> Definition | None:
    for statement in cls.node.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "__init__":
            return Definition(cls.module, statement)
    return None


def _parameters(function: Definition, owner_classes: tuple[Definition, ...]) -> tuple[dict[str, Any], bool]:
    """Parameters of a function or of the ``__init__`` of ``owner_classes[0]`` (its MRO from there on), and
    whether the node may hold other keys (``**kwargs`` passed where this reader cannot follow)."""
    node = function.node
    if isinstance(node, ast.ClassDef):  # a dataclass: its fields, bases first
        fields: dict[str, Any] = {}
        for cls in reversed([c for c in owner_classes if _decorated_dataclass(c.node)]):
            for statement in cls.node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    if "ClassVar" not in ast.unparse(statement.annotation):
                        fields[statement.target.id] = annotation_of(statement.annotation, cls.module)
        return fields, False
    arguments = node.args
    named = [*arguments.posonlyargs, *arguments.args][1 if owner_classes else 0 :] + list(arguments.kwonlyargs)
    parameters = {a.arg: annotation_of(a.annotation, function.module) for a in named}
    if arguments.kwarg is None:
        return parameters, False
    forwarded = _forwarded(function, arguments.kwarg.arg, owner_classes)
    if forwarded is None:
        return parameters, True
    return {**forwarded.parameters, **parameters}, forwarded.open


def _forwarded(function: Definition, kwarg: str, owner_classes: tuple[Definition, ...]) -> Signature | None:
    """The signature ``function`` passes its ``**kwarg`` to: ``super().__init__`` or a class / function it names."""
    for call in ast.walk(function.node):
        if not isinstance(call, ast.Call) or not any(
            k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg for k in call.keywords
        ):
            continue
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "__init__"
            and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "super"
        ):
            return _class_signature(owner_classes[0], owner_classes[1:], False) if owner_classes else None
        try:
            symbol = symbol_of(func, function.module)
        except Unresolved:
            return None
        return _signature_of(symbol) if isinstance(symbol, Definition) else None
    return None


def _class_signature(owner: Definition, classes: tuple[Definition, ...], unknown_base: bool) -> Signature:
    """The constructor that runs for ``classes`` (an MRO): the first ``__init__`` or dataclass in it."""
    for index, cls in enumerate(classes):
        init = _init_of(cls)
        if init is not None or _decorated_dataclass(cls.node):
            parameters, is_open = _parameters(init or cls, classes[index:])
            return Signature(owner, parameters, is_open, init)
    return Signature(owner, {}, unknown_base, None)  # object's (or an unread base's) constructor


def _signature_of(definition: Definition) -> Signature:
    if not definition.is_class:
        parameters, is_open = _parameters(definition, ())
        return Signature(definition, parameters, is_open, definition)
    init = _init_of(definition)
    if init is not None and init.node.args.kwarg is None:  # its own constructor, all of it: no base needed
        parameters, is_open = _parameters(init, (definition,))
        return Signature(definition, parameters, is_open, init)
    classes, unknown, opaque = mro(definition)
    return _class_signature(definition, classes, unknown or opaque)


@functools.cache
def read_signature(target: str) -> Signature | None:
    """The settings a node with this ``_target_`` may have, read from source; None if unreadable."""
    definition = find(target)
    return None if definition is None else _signature_of(definition)
