"""FROC curves, their area (FAUC), and readings at a false-positive budget.

A FROC curve is built from one global sort of every counted event of every image:

- a *true-positive event* per target found, at the score of the detection credited to it;
- a *false-positive event* per detection labelled 0.

Thresholds are all unique event scores, inclusive (``score >= t``), in descending order, each
tie group kept together as one point, none dropped, with the origin prepended at
``t = +inf``. ``fp_avg = FP / N`` where ``N`` counts every image, including images without
targets and images without detections; ``sensitivity = TP / L`` with ``L`` the number of
counted targets (pooled, "micro"), or the mean over images with targets of their own
sensitivity (``sensitivity="macro"``).

Beyond its last point the curve is flat: lowering the threshold further cannot add marks to
a finite candidate list. Every reading below uses that convention unless
``extrapolate="nan"``.

The functions accept single curves (1-D arrays, returning floats) and stacks of curves
sharing their thresholds (``(B, G)`` arrays, returning ``(B,)`` arrays), which is how
:func:`~wsdet.metrics.bootstrap` evaluates all replicates at once.

This module builds curves (:func:`froc_curve`, :func:`weighted_froc_curves`); the curve type
is in :mod:`wsdet.metrics.curve`, the sorted events behind it in :mod:`wsdet.metrics.events`
and the readings in :mod:`wsdet.metrics.readings`. Every name is importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet.metrics._checks import Compat, SensitivityKind, to_numpy
from wsdet.metrics._checks import Extrapolate as Extrapolate
from wsdet.metrics._checks import Interpolation as Interpolation
from wsdet.metrics.curve import CAMELYON_FPS, FROC, LUNA16_FPS, OperatingPoint
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult
from wsdet.metrics.readings import fauc, froc_score, operating_point, sensitivity_at_fp

__all__ = [
    "CAMELYON_FPS",
    "FROC",
    "LUNA16_FPS",
    "OperatingPoint",
    "fauc",
    "froc_curve",
    "froc_score",
    "operating_point",
    "sensitivity_at_fp",
    "weighted_froc_curves",
]


def froc_curve(
    results: Sequence[MatchResult],
    *,
    n_images: int | None = None,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
) -> FROC[float]:
    """FROC curve of matched detections over a set of images.

    Parameters
    ----------
    results : sequence of MatchResult
        One per image (from :func:`~wsdet.metrics.match_points` and friends), including
        images without targets and images without detections.
    n_images : int, optional
        The false-positive denominator ``N``, if larger than ``len(results)`` (images that
        were left out of ``results`` because they have neither targets nor detections).
    compat : {"monai", "luna16"}, optional
        ``"monai"`` reproduces MONAI's ``compute_froc_curve_data``: the lowest unique
        probability is dropped (a real threshold when every target was found) and TP
        probabilities are rounded to float32. ``"luna16"`` changes nothing here.
    sensitivity : {"micro", "macro"}
        Pooled ``TP / L`` (default), or the mean per-image sensitivity over images with
        targets (the convention of some point-detection evaluators).

    Returns
    -------
    FROC
        The curve, origin first, one point per unique score.

    Examples
    --------
    >>> from wsdet.metrics import match_points
    >>> a = match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])
    >>> b = match_points([[5, 5]], [0.7], [[5, 6], [20, 20]])
    >>> c = froc_curve([a, b])
    >>> c.thresholds.tolist(), c.tp.tolist(), c.fp.tolist()
    ([inf, 0.9, 0.7, 0.5], [0, 1, 2, 2], [0, 0, 0, 1])
    >>> c.sensitivity.round(3).tolist(), c.fp_avg.tolist()
    ([0.0, 0.333, 0.667, 0.667], [0.0, 0.0, 0.0, 0.5])
    """
    return EventTable(results, n_images, compat, sensitivity).curve()


def weighted_froc_curves(
    results: Sequence[MatchResult],
    weights: ArrayLike,
    *,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
) -> FROC[NDArray[np.float64]]:
    """FROC curves of the same images reweighted: one curve per row of ``weights``.

    Row ``b`` gives each image an integer multiplicity ``weights[b, i]`` (a bootstrap sample
    is a multinomial draw with ``sum = N``); the curve is the one of the list in which image
    ``i`` appears ``weights[b, i]`` times: ``N_b = sum_i weights[b, i]`` and
    ``L_b = sum_i weights[b, i] * L_i``. All curves share the thresholds of the unweighted
    data (thresholds whose images all have weight 0 repeat the previous point).

    Parameters
    ----------
    results : sequence of MatchResult
        One per image.
    weights : array_like
        ``(B, N)`` non-negative integers.
    compat, sensitivity
        As in :func:`froc_curve`.

    Returns
    -------
    FROC
        A stack: ``fp_avg``, ``sensitivity``, ``tp``, ``fp`` have shape ``(B, G)``.

    Examples
    --------
    >>> from wsdet.metrics import match_points
    >>> res = [match_points([[0, 0]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.7], [])]
    >>> c = weighted_froc_curves(res, [[1, 1], [2, 0], [0, 2]])
    >>> c.tp.tolist(), c.fp.tolist()
    ([[0, 1, 1], [0, 2, 2], [0, 0, 0]], [[0, 0, 1], [0, 0, 0], [0, 0, 2]])
    """
    table = EventTable(results, None, compat, sensitivity)
    w = _as_weights(weights, table.n_images)
    return table.weighted(w, table.n_groups)


def _as_weights(weights: ArrayLike, n_images: int) -> NDArray[np.int64]:
    arr = np.asarray(to_numpy(weights))
    if arr.ndim != 2 or arr.shape[1] != n_images:
        raise ValueError(
            f"weights must have shape (B, {n_images}) (one column per image); got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise TypeError("weights must be non-negative integers (image multiplicities)")
    if (arr < 0).any():
        raise ValueError("weights must be non-negative")
    return arr.astype(np.int64)
