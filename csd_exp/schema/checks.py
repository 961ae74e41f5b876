"""One value against one annotation, by pydantic (strict: no ``"3"`` for 3, no 1.0 for an integer, no NaN),
and one config node against the settings its owner takes; the errors are :class:`ConfigError`, a line that
names the key, the value and what is allowed."""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from typing import Any

#: Hydra's own keys: they steer instantiation and are never constructor parameters.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_")


class ConfigError(ValueError):
    """A composed config with a bad value; the message names the key, the value and what is allowed."""


@functools.lru_cache(maxsize=1024)
def _adapter(annotation: Any):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))


def _sentence(message: str) -> str:
    return message[:1].lower() + message[1:]


def _descriptions(annotation: Any) -> list[str]:
    """The ``Field(description=...)`` texts inside an annotation: how a pattern is explained to the user."""
    found = [m.description for m in getattr(annotation, "__metadata__", ()) if getattr(m, "description", None)]
    for argument in typing.get_args(annotation):
        found += _descriptions(argument)
    return found


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` does not fit ``annotation``."""
    from pydantic import ValidationError

    if annotation is Any:
        return
    try:
        adapter = _adapter(annotation)
    except TypeError:  # an unhashable annotation (a marker without __hash__): not cached
        adapter = _adapter.__wrapped__(annotation)
    try:
        adapter.validate_python(value)
    except ValidationError as error:
        described = _descriptions(annotation)
        reasons = [f"expected {' or '.join(described)}"] if described else []
        reasons = reasons or list(dict.fromkeys(_sentence(e["msg"]) for e in error.errors()))
        raise ConfigError(f"{key}={value!r} is not allowed: {' or '.join(reasons)}") from None


def is_node(value: Any) -> bool:
    """A sub-config with a ``_target_`` (checked against its own target), or an empty one (a group set to none)."""
    return isinstance(value, Mapping) and (not value or "_target_" in value)


def check_keys(prefix: str, node: Mapping[str, Any], settings: Mapping[str, Any], owner: str, *, open_: bool = False):
    """Every key of ``node`` is one of ``settings`` (unless ``open_``) and its value fits that setting's annotation.
    Sub-nodes are left to the caller (:func:`is_node`)."""
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        if key not in settings:
            if open_:
                continue
            raise ConfigError(f"{prefix}.{key} is not a setting of {owner}; its settings are: {', '.join(settings)}")
        if not is_node(value):
            check_value(f"{prefix}.{key}", value, settings[key])
