"""The constraint markers constructors put on their parameters, built from pydantic's ``Field``.

A constructor says what a config may set where it takes it: ``window_size: PositiveInt``,
``method: Literal["per_window", "downscaled", "multidiffusion"]``, ``seed: Seed``. The compose-time check
reads those annotations from the source (:mod:`csd_exp.ast_signatures`, no import of the constructor's
module) and validates the values with pydantic; a constructor imports these names under ``TYPE_CHECKING``
(its module need not import pydantic) or at run time, as it likes. Any ``Annotated[..., Field(...)]`` or
``Literal[...]`` written in place works the same, and so does ``Annotated[float, {"gt": 0}]`` (the keywords of
``Field`` in a dict, for a module that imports no pydantic: ``csd_exp.distill``).

The marker is the one copy of the constraint: a constructor decorated with ``@checked``
(:mod:`csd_exp.arguments`; in ``csd_exp.distill``, :mod:`csd_exp.distill.arguments`) refuses a Python caller's
bad argument from the same annotation, read by the same reader, so the constructor writes no check of its own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
#: A fraction in (0, 1].
UnitFraction = Annotated[float, Field(gt=0, le=1)]
#: A fraction in [0, 1].
Probability = Annotated[float, Field(ge=0, le=1)]
#: A fraction in (0, 1).
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
