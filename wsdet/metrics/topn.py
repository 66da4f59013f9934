"""wsdet's one top-n rule: :func:`round_half_up` detections are kept for a predicted count.

:mod:`wsdet.detection` re-exports :func:`round_half_up`: it is torch-free so that the
detection pipeline and the evaluation share it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet.metrics._checks import as_points, as_scores

__all__ = ["round_half_up", "top_n"]


def round_half_up(n: float, *, name: str = "n") -> int:
    """``max(0, floor(n + 0.5))``: round half up, never negative. wsdet's one top-n rule.

    The number of detections kept for a predicted count ``n``. Python's ``round`` and
    NumPy round half to even (``round(2.5) == 2``); detection counts should not depend on
    the parity of the integer part.

    Parameters
    ----------
    n : float
        A finite real number.
    name : str
        The argument's name in the error message.

    Returns
    -------
    int
        ``max(0, floor(n + 0.5))``.

    Raises
    ------
    ValueError
        If ``n`` is NaN or infinite.

    Examples
    --------
    >>> round_half_up(2.5), round_half_up(0.49), round_half_up(-1.2)
    (3, 0, 0)
    """
    x = float(n)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite to round, got {n!r}")
    return max(0, math.floor(x + 0.5))


def top_n(
    points: ArrayLike, scores: ArrayLike, count: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The :func:`round_half_up` ``(count)`` highest-scoring detections.

    Ties at the cut keep the input order (a stable sort), so detections already ordered by
    score then raster index keep that order.

    Examples
    --------
    >>> p, s = top_n([[0, 0], [1, 1], [2, 2]], [0.2, 0.9, 0.5], 1.5)
    >>> p.tolist(), s.tolist()
    ([[1.0, 1.0], [2.0, 2.0]], [0.9, 0.5])
    """
    n = round_half_up(count, name="count")
    pts = as_points(points, "points")
    sc = as_scores(scores, "scores", pts.shape[0])
    order = np.argsort(-sc, kind="stable")[:n]
    return pts[order], sc[order]
