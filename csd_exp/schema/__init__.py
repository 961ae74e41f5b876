"""Config values checked as soon as a config is composed, against the constructors they are passed to.

The check runs before torch, diffusers or any model is imported (``csd-exp`` calls :func:`validate_composed`
first; the sweeper calls it for every job of a multirun before the first one starts), so a bad value costs a
second, not a model load, and a sweep with one bad value starts no job.

Each constraint is written once, on the constructor that takes the value (``window_size: PositiveInt``,
``method: Literal[...]``, markers of :mod:`csd_exp.schema.fields`), and each cross-group rule a class needs is
declared on that class (``uses_guidance = False``, ``on_images = True``, ``passes_renders = True``, a data
source's ``reads``, a baseline's ``name``, a kernel's ``kernel_family``, an annotated ``prior``, a ``regions``
parameter, a ``kernel`` parameter without a default). Nothing here names a class of the package:

* :mod:`csd_exp.ast_signatures` (below this package, shared with the method axis): a ``_target_``'s
  constructor read from its source with :mod:`ast` (never imported), its annotations turned into types, and
  the class facts the rules read;
* :mod:`csd_exp.schema.checks`: a value against an annotation (pydantic, strict) and :class:`ConfigError`;
* :mod:`csd_exp.schema.targets`: :func:`check_target`, a node (and its sub-nodes) against its constructor;
* :mod:`csd_exp.schema.rules`: what only a combination of groups can get wrong, and the entry points;
* :mod:`csd_exp.schema.inputs`: what the run would read (input files, folders, scenes, region boxes and masks,
  the checkpoint) and ``optimized_metric``, checked from file headers and folder listings (Pillow, no torch);
* :mod:`csd_exp.schema.regions`: the ``task.regions`` entries of region editing, shared with the task;
* :mod:`csd_exp.schema.composition`: Hydra's composition errors in a line (a mistyped key names the nearest
  ones) and the extra a launcher or sweeper needs (``csd-exp`` uses it before and around Hydra).

A key the constructor does not take is an error (a key that does nothing must not exist), unless the
constructor passes ``**kwargs`` on where the reader cannot follow. A ``_target_`` whose source cannot be found
is not checked here: its constructor refuses unknown keys when Hydra instantiates it.

This package imports the standard library and pydantic (omegaconf and hydra lazily, in
:func:`validate_composed`; Pillow to read an image header). tests/test_compose_checks.py checks that a refused
run has imported none of torch, pytorch_lightning and diffusers.
"""

from csd_exp.ast_signatures import read_signature
from csd_exp.schema.checks import ConfigError, check_value
from csd_exp.schema.fields import (
    MAX_SEED,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
    UnitFraction,
)
from csd_exp.schema.rules import (
    CHECKED_NODES,
    GUIDANCE_PRESETS,
    guidance_label,
    hydra_choices,
    validate_composed,
    validate_config,
)
from csd_exp.schema.targets import check_target

__all__ = [
    "CHECKED_NODES",
    "ConfigError",
    "GUIDANCE_PRESETS",
    "MAX_SEED",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Seed",
    "UnitFraction",
    "check_target",
    "check_value",
    "guidance_label",
    "hydra_choices",
    "read_signature",
    "validate_composed",
    "validate_config",
]
