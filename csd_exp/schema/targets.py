"""A config node checked against the constructor its ``_target_`` names, sub-nodes included.

The constructor's parameters and their annotations are read from its source (:mod:`.signatures`), so a class
written outside the package is checked like ours and a new parameter is checked as soon as it is annotated.
A ``_target_`` whose source cannot be found is left to Hydra's ``instantiate`` (its constructor refuses
unknown keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.ast_signatures import class_attribute, read_signature
from csd_exp.schema.checks import HYDRA_KEYS, check_keys


def check_target(prefix: str, node: Any) -> None:
    """Check ``node``'s keys and values against its ``_target_``'s signature, then its sub-nodes'."""
    if not isinstance(node, Mapping):
        return
    target = node.get("_target_")
    signature = read_signature(target) if isinstance(target, str) else None
    if signature is not None:
        # Parameters only Python callers pass (objects, weights' components): the class lists them itself.
        hidden = class_attribute(target, "python_only_parameters", ())
        settings = {k: v for k, v in signature.parameters.items() if k not in hidden}
        name = str(target).rsplit(".", 1)[-1]
        owner = name if signature.owner.is_class else "".join(part.capitalize() for part in name.split("_"))
        check_keys(prefix, node, settings, owner, open_=signature.open)
    for key, value in node.items():
        if key not in HYDRA_KEYS and isinstance(value, Mapping) and "_target_" in value:
            check_target(f"{prefix}.{key}", value)
