"""A config node checked against the schema of its ``_target_`` (:data:`csd_exp.schema.nodes.TARGET_SCHEMAS`),
sub-nodes included. Above both :mod:`.checks` (the field types it checks with) and :mod:`.nodes` (the schemas
built from them), so neither imports the other back. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.schema.checks import HYDRA_KEYS, ConfigError, _fields, check_value
from csd_exp.schema.nodes import TARGET_SCHEMAS


def check_node(prefix: str, node: Mapping[str, Any], schema: type) -> None:
    """Every key of ``node`` is a field of ``schema`` and its value fits the field's type; sub-nodes with a
    ``_target_`` that has a schema are checked by theirs."""
    fields = _fields(schema)
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        if key not in fields:
            raise ConfigError(
                f"{prefix}.{key} is not a setting of {schema.__name__.removesuffix('Schema')}; "
                f"its settings are: {', '.join(fields)}"
            )
        check_value(f"{prefix}.{key}", value, fields[key])
        check_target(f"{prefix}.{key}", value)


def check_target(prefix: str, node: Any) -> None:
    """:func:`check_node` with the schema of ``node``'s ``_target_``; a target without one is left to Hydra's
    ``instantiate``, which refuses unknown keys itself (a new class needs no schema entry to run)."""
    if isinstance(node, Mapping):
        schema = TARGET_SCHEMAS.get(node.get("_target_"))
        if schema is not None:
            check_node(prefix, node, schema)
