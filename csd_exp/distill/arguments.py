"""``@checked``: a constructor's arguments validated against its own annotations (:mod:`csd_exp.arguments`).

The constraint markers of this package (``PositiveFloat = Annotated[float, {"gt": 0}]``, ``Literal[...]``) are the
one copy of each constraint: the compose-time check reads them from source before torch loads, and this decorator
applies them to a Python caller's arguments. It is :func:`csd_exp.arguments.checked` itself (one implementation):
that module imports the standard library only at module level (``tests/test_import_graph.py`` keeps it so) and
pydantic and the source reader at the first call of a checked function, so this package still imports torch and
the standard library only when it loads.
"""

from __future__ import annotations

from csd_exp.arguments import checked

__all__ = ["checked"]
