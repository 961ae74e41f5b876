"""The machinery of the schemas: typed fields (``Range``, the number aliases, ``MAX_SEED``) and ``check_value``.

A field's annotation is the whole rule: ``Annotated[int, Range(min=1)]`` for bounded numbers, ``Literal[...]``
for choices, ``X | None`` where null is allowed, :data:`Node` for a sub-config. The schemas (:mod:`.nodes`)
are built from these types, and :mod:`.targets` checks a node against its ``_target_``'s schema: this module
imports neither. Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

#: Hydra's own keys: they steer instantiation and are never constructor parameters.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_")


class ConfigError(ValueError):
    """A composed config with a bad value; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number (inclusive unless ``open_min``)."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False

    def describe(self) -> str:
        low = "" if self.min is None else (f"> {self.min}" if self.open_min else f">= {self.min}")
        high = "" if self.max is None else (f"< {self.max}" if self.open_max else f"<= {self.max}")
        return " and ".join(part for part in (low, high) if part)

    def holds(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        return self.max is None or (value < self.max if self.open_max else value <= self.max)


@dataclass(frozen=True)
class Pattern:
    """A string matching ``regex`` as a whole (case-insensitive), described as ``description`` in errors."""

    regex: str
    description: str

    def holds(self, value: str) -> bool:
        return re.fullmatch(self.regex, value, flags=re.IGNORECASE) is not None


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, open_min=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
UnitFraction = Annotated[float, Range(min=0, max=1, open_min=True)]
Probability = Annotated[float, Range(min=0, max=1)]
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
#: A sub-config with a ``_target_`` of its own (optimizer, LR scheduler), checked by its own schema if any.
Node = Mapping[str, Any]


def _fields(schema: type) -> dict[str, Any]:
    """Field name -> annotation (with its ``Annotated`` extras) of a schema dataclass."""
    hints = typing.get_type_hints(schema, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _is_union(annotation: Any) -> bool:
    # ``X | None`` (types.UnionType) and ``Optional[X]`` (typing.Union) read the same in a schema.
    return typing.get_origin(annotation) is Union or isinstance(annotation, types.UnionType)


def _type_error(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        patterns = [m.description for m in meta if isinstance(m, Pattern)]
        return " or ".join(patterns) if patterns else f"{_describe(base)} {' '.join(ranges)}".strip()
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if _is_union(annotation):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(annotation))
    if annotation is Node or origin in (Mapping, dict):
        return "a config node"
    return getattr(annotation, "__name__", str(annotation))


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` does not fit ``annotation`` (see the module docstring)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        check_value(key, value, base)
        for bound in (m for m in meta if isinstance(m, (Range, Pattern))):
            if not bound.holds(value):
                raise _type_error(key, value, _describe(annotation))
        return
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise _type_error(key, value, _describe(annotation))
        return
    if _is_union(annotation):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return
        for option in (o for o in options if o is not type(None)):
            try:
                return check_value(key, value, option)
            except ConfigError:
                continue
        raise _type_error(key, value, _describe(annotation))
    if annotation is Any:
        return
    if annotation is Node or origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise _type_error(key, value, "a config node")
        return
    if annotation is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false")
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _type_error(key, value, "a finite number")
    elif annotation is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string")
    elif annotation is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, "a list")
