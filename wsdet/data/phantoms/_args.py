"""Argument checks of the phantom generators: fixed values or ``(min, max)`` ranges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsdet._checks import check_float, check_int

__all__: list[str] = []


def _pair(name: str, value: object, kind: str) -> tuple[object, object]:
    """``(v, v)`` for a scalar ``v``, else the two entries of a ``(min, max)`` pair."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    ):
        return value, value
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) and len(value) == 2:
        return value[0], value[1]
    raise ValueError(f"{name} must be {kind} or a (min, max) pair of them; got {value!r}")


def _check_range(name: str, value: float | Sequence[float], lo: float = 0.0) -> tuple[float, float]:
    """A scalar ``v`` means ``(v, v)``; checks finiteness and ``lo <= min <= max``.

    >>> _check_range("radius", (1, 2.5))
    (1.0, 2.5)
    >>> _check_range("radius", (2.0, 1.0))
    Traceback (most recent call last):
    ...
    ValueError: radius must satisfy 0.0 <= min <= max; got (2.0, 1.0)
    """
    a, b = _pair(name, value, "a number")
    pair = (check_float(f"{name}[0]", a), check_float(f"{name}[1]", b))
    if not lo <= pair[0] <= pair[1]:
        raise ValueError(f"{name} must satisfy {lo} <= min <= max; got {value!r}")
    return pair


def _check_count_range(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int ``v`` means ``(v, v)``; checks ``0 <= min <= max``.

    >>> _check_count_range("distractors", 3)
    (3, 3)
    >>> _check_count_range("distractors", (0, 2.5))
    Traceback (most recent call last):
    ...
    TypeError: distractors[1] must be an int; got float 2.5
    """
    a, b = _pair(name, value, "an int")
    pair = (check_int(f"{name}[0]", a, minimum=0), check_int(f"{name}[1]", b, minimum=0))
    if not pair[0] <= pair[1]:
        raise ValueError(f"{name} must satisfy 0 <= min <= max; got {value!r}")
    return pair
