"""``@checked``: a constructor's arguments validated against its own annotations (:mod:`csd_exp.arguments`).

The constraint markers of this package (``PositiveFloat = Annotated[float, {"gt": 0}]``, ``Literal[...]``) are the
one copy of each constraint: the compose-time check reads them from source before torch loads, and this decorator
applies them to a Python caller's arguments. This package imports torch and the standard library only, so the
checker (pydantic and the source reader) is imported at the first call of a checked function, not here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def checked(function: F) -> F:
    """Validate each argument a caller passes to ``function`` against that parameter's annotation; a bad one
    raises ``ValueError`` naming the owner, the parameter, the value and the constraint."""
    check: Callable[[tuple, dict], None] | None = None

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        nonlocal check
        if check is None:
            from csd_exp.arguments import argument_checker  # the one import from outside distill, at first use

            check = argument_checker(function)
        check(args, kwargs)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
