"""How configs and messages name a guidance's parts, read from plain config nodes (no import of ``distill``):
the compose-time check (csd_exp/schema) and the method axis (csd_exp/methods.py) share these.

A part is named by what its class declares, read from its source (:func:`csd_exp.ast_signatures.class_attribute`,
never imported), so a class written outside the package that declares the same is named the same:

* a baseline's ``name`` (``SourceBranch.name = "source_branch"``, ``RandomNoise.name = "random_noise"``);
* a kernel's ``kernel_family``: ``"identity"`` (``IdentityKernel``: K = I, R = 0; with ``normalize_by_count``
  true it is ``identity_mean``), ``"released_coupling"`` (``ReleasedCoupling``: a coupling schedule), else
  ``"coupling"`` (the default: any kernel that couples its particles).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csd_exp.ast_signatures import class_attribute

#: The values a kernel class may declare as its ``kernel_family`` (the default is ``coupling``).
KERNEL_FAMILIES = ("coupling", "identity", "released_coupling")


def short_name(target: Any) -> str:
    """``csd_exp.distill.RBFKernel`` -> ``RBFKernel``."""
    return str(target).rsplit(".", 1)[-1]


def baseline_of(guidance: Mapping[str, Any]) -> str:
    """The guidance's baseline by its short name (``source_branch``, ``random_noise``): the name a ``_target_``
    node's class declares (``name = "source_branch"``), or the class's own name for one that declares none."""
    baseline = guidance.get("baseline")
    if isinstance(baseline, Mapping):
        target = baseline.get("_target_")
        declared = class_attribute(target, "name") if isinstance(target, str) else None
        return declared if isinstance(declared, str) and declared else short_name(target)
    return str(baseline)


def kernel_family(kernel: Mapping[str, Any] | None) -> str | None:
    """``identity`` (SDS's normaliser 1), ``identity_mean`` (1/N, no repulsion), ``released_coupling`` (a
    coupling schedule: consensus, then released) or ``coupling`` (any other), from the ``kernel_family`` the
    kernel's class declares (a value outside :data:`KERNEL_FAMILIES` is kept as declared); None without a kernel."""
    if not kernel or not isinstance(kernel.get("_target_"), str):
        return None
    family = class_attribute(kernel["_target_"], "kernel_family", "coupling")
    if not isinstance(family, str) or not family:
        family = "coupling"
    if family == "identity":
        return "identity_mean" if kernel.get("normalize_by_count") else "identity"
    return family
