"""How configs and messages name a guidance's parts, read from plain config nodes (no import of ``distill``):
the compose-time check (csd_exp/schema) and the method axis (csd_exp/methods.py) share these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IDENTITY_KERNEL = "csd_exp.distill.IdentityKernel"
SOURCE_BRANCH = "csd_exp.distill.baselines.SourceBranch"


def short_name(target: Any) -> str:
    """``csd_exp.distill.RBFKernel`` -> ``RBFKernel``."""
    return str(target).rsplit(".", 1)[-1]


def baseline_of(guidance: Mapping[str, Any]) -> str:
    """The guidance's baseline by its short name (``source_branch``, ``random_noise``), or its class's name for a
    ``_target_`` node of another baseline."""
    baseline = guidance.get("baseline")
    if isinstance(baseline, Mapping):
        target = baseline.get("_target_")
        return "source_branch" if target == SOURCE_BRANCH else short_name(target)
    return str(baseline)
