"""Scalar argument checks shared by the whole package (torch-free: NumPy only).

Every public function of wsdet validates its scalar arguments through these helpers, so
that a bad value always gets the same kind of error: a ``TypeError`` when the type is
wrong, a ``ValueError`` when the value is out of range, both naming the argument and what
was expected. ``bool`` is never accepted as a number (``True`` is an ``int`` in Python).

>>> check_int("epochs", 3, minimum=1)
3
>>> check_int("epochs", 0, minimum=1)
Traceback (most recent call last):
...
ValueError: epochs must be >= 1; got 0
>>> check_float("lr", 1e-3, positive=True)
0.001
>>> check_float("lr", 0.0, positive=True)
Traceback (most recent call last):
...
ValueError: lr must be a finite number > 0; got 0.0
>>> check_bool("eval_mode", "no")
Traceback (most recent call last):
...
TypeError: eval_mode must be a bool (True or False); got 'no'
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import TypeAlias

import numpy as np

__all__ = [
    "PathLike",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_path",
]

#: A file-system path as users pass it: ``str`` or any ``os.PathLike[str]``.
PathLike: TypeAlias = str | os.PathLike[str]


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an ``int`` (Python or NumPy integer, not ``bool``) within the bounds."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {v}")
    return v


def check_float(
    name: str,
    value: object,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    unit: bool = False,
    probability: bool = False,
    level: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float`` (any real number, not ``bool``).

    ``positive``: ``> 0``; ``nonnegative``: ``>= 0``; ``unit``: in ``[0, 1)``;
    ``probability``: in ``[0, 1]``; ``level`` (a confidence level): in ``(0, 1)``;
    ``finite`` (default): not NaN or infinite (NaN is always rejected).

    >>> check_float("alpha", 1.0, probability=True)
    1.0
    >>> check_float("ci", 1.0, level=True)
    Traceback (most recent call last):
    ...
    ValueError: ci must be a finite number in (0, 1); got 1.0
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    if isinstance(value, complex | np.complexfloating):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    v = float(value)
    bad = math.isnan(v) or (finite and math.isinf(v))
    if positive:
        bad, kind = bad or not v > 0, "> 0"
    elif unit:
        bad, kind = bad or not 0 <= v < 1, "in [0, 1)"
    elif probability:
        bad, kind = bad or not 0 <= v <= 1, "in [0, 1]"
    elif level:
        bad, kind = bad or not 0 < v < 1, "in (0, 1)"
    elif nonnegative:
        bad, kind = bad or not v >= 0, ">= 0"
    else:
        kind = ""
    if bad:
        what = "a finite number" if finite else "a number (not NaN)"
        raise ValueError(f"{name} must be {what}{' ' + kind if kind else ''}; got {value!r}")
    return v


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool`` (or NumPy bool); strings such as ``"no"`` are refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool (True or False); got {value!r}")
    return bool(value)


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {sorted(map(repr, choices))}; got {value!r}")


def check_path(name: str, value: object) -> Path:
    """``value`` as a :class:`pathlib.Path` (``str`` or ``os.PathLike[str]``)."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike; got {type(value).__name__}")
    return Path(value)
