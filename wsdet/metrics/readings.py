"""Readings of a FROC curve: sensitivity at a false-positive budget, FROC score, FAUC,
operating point.

Every reading takes its ``curve`` from :func:`~wsdet.metrics.froc_curve`: a single curve
(the reading is a float) or a stack of curves sharing their thresholds (the reading is an
array, one value per curve). Readings hold the curve flat beyond its last point unless
``extrapolate="nan"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from numpy.typing import NDArray

from wsdet._checks import check_choice, check_float
from wsdet.metrics._checks import Extrapolate, Interpolation
from wsdet.metrics.curve import CAMELYON_FPS, FROC, OperatingPoint, R
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult

__all__ = ["fauc", "froc_score", "operating_point", "sensitivity_at_fp"]


def _last_at_or_below(x: float, xp: NDArray[np.float64]) -> NDArray[np.intp]:
    """Per curve, the index of the last point with ``xp <= x`` (``-1`` if none), shape (..., 1)."""
    count: NDArray[np.intp] = np.asarray(np.count_nonzero(xp <= x, axis=-1), dtype=np.intp)
    return count[..., None] - 1


def _interp(
    x: float,
    xp: NDArray[np.float64],
    fp: NDArray[np.float64],
    j: NDArray[np.intp] | None = None,
) -> NDArray[np.float64]:
    """``np.interp(x, xp, fp)`` along the last axis, bit for bit (xp non-decreasing)."""
    g = xp.shape[-1]
    if j is None:
        j = _last_at_or_below(x, xp)
    j0 = np.maximum(j, 0)
    j1 = np.minimum(j0 + 1, g - 1)
    x0 = np.take_along_axis(xp, j0, axis=-1)[..., 0]
    x1 = np.take_along_axis(xp, j1, axis=-1)[..., 0]
    y0 = np.take_along_axis(fp, j0, axis=-1)[..., 0]
    y1 = np.take_along_axis(fp, j1, axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (y1 - y0) / (x1 - x0)
        value = slope * (x - x0) + y0
    exact = (j[..., 0] >= g - 1) | (x0 == x) | (j[..., 0] < 0)
    return np.where(exact, y0, value)


def _check_curve(curve: object, interpolation: str = "linear") -> None:
    check_choice("interpolation", interpolation, ("linear", "step"))
    if not isinstance(curve, FROC):
        raise TypeError(f"curve must be a FROC (from froc_curve); got {type(curve).__name__}")


def _out(curve: FROC[R], value: NDArray[np.float64]) -> R:
    result: object = value if curve.batched else float(value)
    return cast(R, result)


def sensitivity_at_fp(curve: FROC[R], fp: float, interpolation: Interpolation = "linear") -> R:
    """Sensitivity at ``fp`` false positives per image.

    ``"linear"`` reads the polyline (``np.interp``, as MONAI's ``compute_froc_score``);
    ``"step"`` reads the right-continuous step function (the last point with
    ``fp_avg <= fp``, as picai_eval / TIGER). Both are flat beyond the end-point and agree
    when there are no score ties.

    Parameters
    ----------
    curve : FROC
        One curve or a stack (see the module).
    fp : float
        False positives per image, ``>= 0``.
    interpolation : {"linear", "step"}
        How to read between points.

    Returns
    -------
    float or numpy.ndarray
        The sensitivity, per curve for a stack.

    Examples
    --------
    One true and one false positive, tied at 0.5: the step function jumps at one false
    positive, the polyline rises linearly to it.

    >>> from wsdet.metrics import match_points, froc_curve
    >>> c = froc_curve([match_points([[0, 0], [9, 9]], [0.5, 0.5], [[0, 1]])])
    >>> sensitivity_at_fp(c, 0.5), sensitivity_at_fp(c, 0.5, "step")
    (0.5, 0.0)
    """
    _check_curve(curve, interpolation)
    f = check_float("fp", fp, nonnegative=True)
    if interpolation == "linear":
        return _out(curve, _interp(f, curve.fp_avg, curve.sensitivity))
    j = _last_at_or_below(f, curve.fp_avg)
    return _out(curve, np.take_along_axis(curve.sensitivity, j, axis=-1)[..., 0])


def froc_score(
    curve: FROC[R],
    fps: Sequence[float] = CAMELYON_FPS,
    interpolation: Interpolation = "linear",
) -> R:
    """Mean sensitivity at the given false positives per image (CAMELYON16 / LUNA16 CPM).

    Parameters
    ----------
    curve : FROC
        One curve or a stack (see the module).
    fps : sequence of float
        Budgets; default ``(1/4, 1/2, 1, 2, 4, 8)``; LUNA16's CPM uses
        :data:`LUNA16_FPS` ``(1/8, ..., 8)``.
    interpolation : {"linear", "step"}
        As in :func:`sensitivity_at_fp`.

    Returns
    -------
    float or numpy.ndarray
        The mean sensitivity over ``fps``, per curve for a stack.

    Examples
    --------
    The true positive scores above the false one, so the sensitivity is 1 from zero false
    positives on:

    >>> from wsdet.metrics import LUNA16_FPS, froc_curve, match_points
    >>> curve = froc_curve([match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])])
    >>> froc_score(curve), froc_score(curve, LUNA16_FPS, "step")
    (1.0, 1.0)
    """
    _check_curve(curve)
    values = [np.asarray(sensitivity_at_fp(curve, f, interpolation)) for f in fps]
    if not values:
        raise ValueError("fps must contain at least one false-positive budget")
    return _out(curve, np.mean(np.stack(values, axis=-1), axis=-1))


def fauc(
    curve: FROC[R],
    max_fp: float,
    interpolation: Interpolation = "linear",
    normalize: bool = True,
    *,
    extrapolate: Extrapolate = "flat",
) -> R:
    """Area under the FROC curve from 0 to ``max_fp`` false positives per image.

    ``(1 / F) * integral_0^F S(x) dx`` with ``F = max_fp``: the paper's FAUC uses ``F = 2``
    on MNIST and ``F = 15`` on brain lesions. ``S`` is the polyline through the curve's
    points (``"linear"``, exact trapezoids and interpolation at ``F``) or its
    right-continuous step function (``"step"``). Beyond the curve's end-point ``S`` is flat
    at the end-point sensitivity (``extrapolate="flat"``); ``"nan"`` returns ``nan`` when the
    curve does not reach ``F``.

    Parameters
    ----------
    curve : FROC
        One curve or a stack (see the module).
    max_fp : float
        Upper limit ``F > 0``.
    interpolation : {"linear", "step"}
        Polyline or step function.
    normalize : bool
        Divide by ``F`` (default), giving a value in ``[0, 1]``; ``False`` gives the raw area.
    extrapolate : {"flat", "nan"}
        Beyond the end-point.

    Returns
    -------
    float or numpy.ndarray
        The area (or mean sensitivity, normalised), per curve for a stack.

    Examples
    --------
    The polyline from ``(0, 0)`` to ``(1, 1)``, flat after, has area ``1/2 + 1`` up to
    ``F = 2`` (``0.75`` once divided by ``F``); the step function is 0 below one false
    positive and 1 from there on (area 1). The curve ends at one false positive, so
    ``extrapolate="nan"`` gives ``nan`` for ``F = 2``:

    >>> from wsdet.metrics import froc_curve, match_points
    >>> tied = match_points([[0, 0], [9, 9]], [0.5, 0.5], [[0, 1]])
    >>> fauc(froc_curve([tied]), 2.0), fauc(froc_curve([tied]), 2.0, "step")
    (0.75, 0.5)
    >>> fauc(froc_curve([tied]), 2.0, extrapolate="nan")
    nan
    """
    _check_curve(curve, interpolation)
    check_choice("extrapolate", extrapolate, ("flat", "nan"))
    f = check_float("max_fp", max_fp, positive=True)
    x: NDArray[np.float64] = curve.fp_avg
    y: NDArray[np.float64] = curve.sensitivity
    j = _last_at_or_below(f, x)  # >= 0: every curve starts at the origin
    # only the points up to the first one beyond F matter
    cols = min(x.shape[-1], int(j.max(initial=0)) + 2)
    x, y = x[..., :cols], y[..., :cols]
    dx = np.diff(x, axis=-1)
    # area of the complete segments before point j (trapezoids summed doubled, halved once:
    # halving is exact, so this equals the sum of halved trapezoids)
    seg = dx * (y[..., 1:] + y[..., :-1]) if interpolation == "linear" else dx * y[..., :-1]
    if seg.shape[-1]:
        cum = np.cumsum(seg, axis=-1)
        before = np.take_along_axis(cum, np.maximum(j - 1, 0), axis=-1)[..., 0]
        before = np.where(j[..., 0] > 0, before, 0.0)
    else:
        before = np.zeros(j.shape[:-1])
    xj = np.take_along_axis(x, j, axis=-1)[..., 0]
    yj = np.take_along_axis(y, j, axis=-1)[..., 0]
    if interpolation == "linear":
        area = before / 2.0 + (f - xj) * (yj + _interp(f, x, y, j)) / 2.0
    else:
        area = before + (f - xj) * yj
    if extrapolate == "nan":
        area = np.where(curve.fp_avg[..., -1] < f, np.nan, area)
    if normalize:
        area = area / f
    return _out(curve, np.asarray(area, dtype=np.float64))


def operating_point(
    curve_or_results: FROC[float] | Sequence[MatchResult],
    threshold: float | None = None,
) -> OperatingPoint:
    """Sensitivity and false positives per image at a threshold, or at the end-point.

    Parameters
    ----------
    curve_or_results : FROC or sequence of MatchResult
        A curve, or per-image match results (a curve is built from them).
    threshold : float, optional
        Count detections with ``score >= threshold``. Without it, all counted detections
        (the end-point): the operating point of detections already selected, e.g. the top
        ``round(count)`` per image.

    Returns
    -------
    OperatingPoint
        ``(sensitivity, fp_avg, tp, fp, threshold)``; ``threshold`` is the lowest score
        counted (``inf`` when nothing is).

    Examples
    --------
    >>> from wsdet.metrics import match_points
    >>> res = [match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])]
    >>> operating_point(res)
    OperatingPoint(sensitivity=1.0, fp_avg=1.0, tp=1, fp=1, threshold=0.5)
    >>> operating_point(res, threshold=0.6)
    OperatingPoint(sensitivity=1.0, fp_avg=0.0, tp=1, fp=0, threshold=0.9)
    """
    if isinstance(curve_or_results, FROC):
        curve = curve_or_results
    else:
        curve = EventTable(curve_or_results).curve()
    if curve.batched:
        raise ValueError("operating_point needs a single curve, not a stack of curves")
    if threshold is None:
        j = len(curve) - 1
    else:
        t = float(threshold)
        if np.isnan(t):
            raise ValueError("threshold must not be NaN")
        j = int(np.count_nonzero(curve.thresholds >= t)) - 1
    return OperatingPoint(
        float(curve.sensitivity[j]),
        float(curve.fp_avg[j]),
        int(curve.tp[j]),
        int(curve.fp[j]),
        float(curve.thresholds[j]),
    )
