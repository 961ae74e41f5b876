"""One value against one annotation, by pydantic (strict: no ``"3"`` for 3, no 1.0 for an integer, no NaN),
and one config node against the settings its owner takes; the errors are :class:`ConfigError`, a line that
names the key, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.arguments import annotation_problem

#: Hydra's own keys: they steer instantiation and are never constructor parameters.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_")


class ConfigError(ValueError):
    """A composed config with a bad value; the message names the key, the value and what is allowed."""


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` does not fit ``annotation``: the check of
    :func:`csd_exp.arguments.annotation_problem`, which a constructor's ``@checked`` arguments get too."""
    problem = annotation_problem(value, annotation)
    if problem is not None:
        raise ConfigError(f"{key}={value!r} is not allowed: {problem}")


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
