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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet.metrics._checks import (
    Compat,
    as_int,
    as_positive_float,
    check_choice,
    check_compat,
    to_numpy,
)
from wsdet.metrics.matching import MatchResult

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

Interpolation = Literal["linear", "step"]
Extrapolate = Literal["flat", "nan"]
SensitivityKind = Literal["micro", "macro"]

#: False positives per image read by the CAMELYON16 / MONAI FROC score.
CAMELYON_FPS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: False positives per scan read by the LUNA16 CPM (2^k, k = -3..3).
LUNA16_FPS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

R = TypeVar("R", float, NDArray[np.float64])


@dataclass(frozen=True, eq=False)
class FROC(Generic[R]):
    """A FROC curve (or a stack of curves sharing their thresholds).

    Attributes
    ----------
    thresholds : numpy.ndarray
        ``(G,)`` descending thresholds; ``thresholds[0] = +inf`` is the origin, then every
        unique score. Point ``g`` counts the events with ``score >= thresholds[g]``.
    fp_avg : numpy.ndarray
        ``(..., G)`` false positives per image.
    sensitivity : numpy.ndarray
        ``(..., G)`` sensitivity (``nan`` when there are no targets).
    tp, fp : numpy.ndarray
        ``(..., G)`` cumulative true-positive and false-positive counts (integers).
    n_images : int
        ``N``, the false-positive denominator (all images). For a stack of reweighted curves,
        the number of original images (each row's denominator is the sum of its weights).
    n_targets : int
        ``L``, the number of counted targets (of the original data, for a stack).

    The type parameter records what the readings return: ``FROC[float]`` for a single curve,
    ``FROC[numpy.ndarray]`` for a stack (bootstrap replicates).
    """

    thresholds: NDArray[np.float64]
    fp_avg: NDArray[np.float64]
    sensitivity: NDArray[np.float64]
    tp: NDArray[np.integer[Any]]
    fp: NDArray[np.integer[Any]]
    n_images: int
    n_targets: int

    @property
    def batched(self) -> bool:
        """Whether this is a stack of curves."""
        return self.fp_avg.ndim > 1

    def __len__(self) -> int:
        return int(self.thresholds.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.fp_avg.shape)
        return f"FROC(points={shape}, n_images={self.n_images}, n_targets={self.n_targets})"


class OperatingPoint(NamedTuple):
    """Sensitivity and false positives per image at one threshold (or the end-point)."""

    sensitivity: float
    fp_avg: float
    tp: int
    fp: int
    threshold: float


# --------------------------------------------------------------------------------------
# events


class _EventTable:
    """All counted events of a set of images, grouped by unique score (descending)."""

    def __init__(
        self,
        results: Sequence[MatchResult],
        n_images: int | None,
        compat: Compat | None,
        sensitivity: SensitivityKind,
    ) -> None:
        check_compat(compat)
        check_choice(sensitivity, "sensitivity", ("micro", "macro"))
        if isinstance(results, MatchResult) or not isinstance(results, Sequence):
            raise TypeError(
                "results must be a sequence of MatchResult (one per image), e.g. a list"
            )
        n_res = len(results)
        for n, r in enumerate(results):
            if not isinstance(r, MatchResult):
                raise TypeError(f"results[{n}] must be a MatchResult; got {type(r).__name__}")
        if n_images is None:
            n_images = n_res
        n_images = as_int(n_images, "n_images", max(n_res, 1))
        self.n_images = n_images
        self.compat = compat
        self.sensitivity_kind: SensitivityKind = sensitivity

        per_image_targets = np.zeros(n_images, dtype=np.int64)
        zero_count = np.zeros(n_images, dtype=np.int64)  # MONAI's 0-probability entries
        scores: list[NDArray[np.float64]] = []
        imgs: list[NDArray[np.intp]] = []
        tps: list[NDArray[np.bool_]] = []
        for n, r in enumerate(results):
            tp_scores = r.gt_score[r.gt_hit]
            if compat == "monai":
                # MONAI stores the probability of each hit target as float32
                tp_scores = tp_scores.astype(np.float32).astype(np.float64)
            fp_scores = r.scores[r.det_label == 0]
            scores += [tp_scores, fp_scores]
            imgs.append(np.full(tp_scores.size + fp_scores.size, n, dtype=np.intp))
            tps += [np.ones(tp_scores.size, dtype=bool), np.zeros(fp_scores.size, dtype=bool)]
            per_image_targets[n] = r.n_targets
            zero_count[n] = r.gt_hit.size - tp_scores.size
        s = np.concatenate(scores) if scores else np.zeros(0)
        if compat == "monai" and (s <= 0).any():
            raise ValueError("compat='monai' requires positive scores (MONAI uses 0 for misses)")
        self.img = np.concatenate(imgs) if imgs else np.zeros(0, dtype=np.intp)
        self.is_tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
        uniq, inverse = np.unique(s, return_inverse=True)
        self.thresholds = np.concatenate([[np.inf], uniq[::-1]])
        self.group = (uniq.size - 1 - inverse.reshape(-1)).astype(np.intp)
        self.n_groups = int(uniq.size)
        self.per_image_targets = per_image_targets
        self.zero_count = zero_count
        self.n_targets = int(per_image_targets.sum())
        self._fp_cum: NDArray[np.int64] | None = None
        self._sorted: (
            tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]] | None
        ) = None

    # -- full-data curve ---------------------------------------------------------------

    def curve(self) -> FROC[float]:
        g = self.n_groups
        tp = np.zeros(g + 1, dtype=np.int64)
        fp = np.zeros(g + 1, dtype=np.int64)
        tp[1:] = np.cumsum(np.bincount(self.group[self.is_tp], minlength=g))
        fp[1:] = np.cumsum(np.bincount(self.group[~self.is_tp], minlength=g))
        thresholds = self.thresholds
        if self.sensitivity_kind == "macro":
            weight = self._macro_weight()[self.img[self.is_tp]]
            n_pos = int(np.count_nonzero(self.per_image_targets))
            num = np.zeros(g + 1)
            num[1:] = np.cumsum(np.bincount(self.group[self.is_tp], weights=weight, minlength=g))
            denominator = float(n_pos)
        else:
            num = tp.astype(np.float64)
            denominator = float(self.n_targets)
        if denominator == 0:
            warnings.warn(
                "there are no targets: sensitivity is undefined (nan)", RuntimeWarning, stacklevel=3
            )
            sens = np.full(g + 1, np.nan)
        else:
            sens = num / denominator
        fp_avg = fp / float(self.n_images)
        if self.compat == "monai" and g > 0 and self.zero_count.sum() == 0:
            # MONAI drops the lowest unique probability; when every target is found there is
            # no 0 entry, so a real threshold (the end-point) is lost
            thresholds, fp_avg, sens = thresholds[:-1], fp_avg[:-1], sens[:-1]
            tp, fp = tp[:-1], fp[:-1]
        return FROC(thresholds, fp_avg, sens, tp, fp, self.n_images, self.n_targets)

    def _macro_weight(self) -> NDArray[np.float64]:
        t = self.per_image_targets.astype(np.float64)
        return np.divide(1.0, t, out=np.zeros_like(t), where=t > 0)

    # -- weighted curves (bootstrap) ---------------------------------------------------

    def _sorted_events(self) -> None:
        """TP and FP event images in group order, and per group the number of TP / FP
        events up to and including it (computed once)."""
        if self._sorted is None:
            order = np.argsort(self.group, kind="stable")
            img, tp, group = self.img[order], self.is_tp[order], self.group[order]
            g = self.n_groups
            self._sorted = (
                img[tp],
                img[~tp],
                np.cumsum(np.bincount(group[tp], minlength=g)),
                np.cumsum(np.bincount(group[~tp], minlength=g)),
            )

    def fp_cumulative(self) -> NDArray[np.int64]:
        """Unweighted cumulative FP count at each group (without the origin)."""
        if self._fp_cum is None:
            self._fp_cum = np.cumsum(np.bincount(self.group[~self.is_tp], minlength=self.n_groups))
        return self._fp_cum

    def prefix_groups(self, fp_per_image: float) -> int:
        """Smallest number of groups whose unweighted FP count exceeds ``fp_per_image * N``."""
        g = int(np.searchsorted(self.fp_cumulative(), fp_per_image * self.n_images, "right"))
        return min(self.n_groups, g + 1)

    def fp_counts(self, prefixes: NDArray[np.intp]) -> NDArray[np.int64]:
        """``(N, len(prefixes))``: each image's FP events among the first ``prefixes[c]`` groups
        (``prefixes`` ascending)."""
        fp = ~self.is_tp
        bucket = np.searchsorted(prefixes, self.group[fp], side="right")
        n_c = prefixes.size
        counts = np.bincount(
            self.img[fp] * (n_c + 1) + bucket, minlength=self.n_images * (n_c + 1)
        ).reshape(self.n_images, n_c + 1)
        return np.cumsum(counts, axis=1)[:, :n_c]

    def _run_ends(self, n_groups: int) -> NDArray[np.intp]:
        """Groups among the first ``n_groups`` that end a run of TP-only or FP-only groups
        (or hold both kinds), plus the last one. The points dropped lie on horizontal
        (FP-only) or vertical (TP-only) runs of every weighted curve, so no reading as a
        function of FP per image can see them."""
        self._sorted_events()
        assert self._sorted is not None
        _, _, tp_upto, fp_upto = self._sorted
        has_tp = np.diff(tp_upto[:n_groups], prepend=0) > 0
        has_fp = np.diff(fp_upto[:n_groups], prepend=0) > 0
        kind = has_tp.astype(np.int8) + 2 * has_fp.astype(np.int8)
        keep = np.ones(n_groups, dtype=bool)
        keep[:-1] = (kind[:-1] == 3) | (kind[:-1] != kind[1:])
        return np.flatnonzero(keep)

    def weighted(
        self, weights: NDArray[np.int64], n_groups: int, *, compact: bool = False
    ) -> FROC[NDArray[np.float64]]:
        """Curves of the first ``n_groups`` thresholds for each row of image ``weights``;
        ``compact`` keeps only the points of :meth:`_run_ends`."""
        self._sorted_events()
        assert self._sorted is not None
        tp_img, fp_img, tp_upto, fp_upto = self._sorted
        idx = self._run_ends(n_groups) if compact and n_groups else np.arange(n_groups)
        # counts in int32 when no weighted cumulative count can overflow it (twice as fast)
        per_image = np.bincount(self.img, minlength=self.n_images)
        bound = int(weights.sum(axis=1).max(initial=0)) * int(per_image.max(initial=0))
        counts = weights.astype(np.int32 if bound < 2**31 - 1 else np.int64)
        tp = _weighted_cumulative(counts, tp_img, tp_upto[idx])
        fp = _weighted_cumulative(counts, fp_img, fp_upto[idx])
        if self.sensitivity_kind == "macro":
            scaled = weights * self._macro_weight()[None, :]
            num = _weighted_cumulative(scaled, tp_img, tp_upto[idx])
            den = (weights @ (self.per_image_targets > 0).astype(np.int64)).astype(np.float64)
        else:
            num = tp
            den = (weights @ self.per_image_targets).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = num / den[:, None]
        sens[den == 0] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            fp_avg = fp / weights.sum(axis=1).astype(np.float64)[:, None]
        thresholds = np.concatenate([self.thresholds[:1], self.thresholds[1:][idx]])
        if self.compat == "monai" and n_groups == self.n_groups and n_groups > 0:
            if compact:
                raise ValueError("compact curves cannot reproduce MONAI's dropped threshold")
            no_zero = (weights @ self.zero_count) == 0
            if no_zero.any():
                tp, fp, sens, fp_avg = _drop_last_change(no_zero, tp, fp, sens, fp_avg)
        return FROC(thresholds, fp_avg, sens, tp, fp, self.n_images, self.n_targets)


def _weighted_cumulative(
    weights: NDArray[Any], event_img: NDArray[np.intp], upto: NDArray[np.int64]
) -> NDArray[Any]:
    """``(B, len(upto) + 1)``: origin, then per group the weighted count of the events
    before it (``upto[g]`` events, in order), for each row of image ``weights``."""
    b = weights.shape[0]
    k = int(upto[-1]) if upto.size else 0
    cum = np.empty((b, k + 1), dtype=weights.dtype)
    cum[:, 0] = 0
    np.cumsum(np.take(weights, event_img[:k], axis=1, mode="clip"), axis=1, out=cum[:, 1:])
    out = np.empty((b, upto.size + 1), dtype=weights.dtype)
    out[:, 0] = 0
    np.take(cum, upto, axis=1, out=out[:, 1:], mode="clip")
    return out


def _drop_last_change(
    rows: NDArray[np.bool_],
    tp: NDArray[np.integer[Any]],
    fp: NDArray[np.integer[Any]],
    sens: NDArray[np.float64],
    fp_avg: NDArray[np.float64],
) -> tuple[
    NDArray[np.integer[Any]], NDArray[np.integer[Any]], NDArray[np.float64], NDArray[np.float64]
]:
    """In the given rows, remove the lowest threshold that is present (MONAI), by repeating
    the point before it up to the end."""
    change = (np.diff(tp, axis=1) > 0) | (np.diff(fp, axis=1) > 0)
    any_change = change.any(axis=1)
    last = change.shape[1] - np.argmax(change[:, ::-1], axis=1)  # curve index of the last change
    rows = rows & any_change
    cols = np.arange(tp.shape[1])
    mask = rows[:, None] & (cols[None, :] >= last[:, None])
    prev = np.maximum(last - 1, 0)[:, None]
    out = []
    for a in (tp, fp, sens, fp_avg):
        out.append(np.where(mask, np.take_along_axis(a, prev, axis=1), a))
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------------------
# curves


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
    return _EventTable(results, n_images, compat, sensitivity).curve()


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
    table = _EventTable(results, None, compat, sensitivity)
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


# --------------------------------------------------------------------------------------
# readings


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


def _check_curve(curve: object) -> None:
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
        From :func:`froc_curve`.
    fp : float
        False positives per image, ``>= 0``.
    interpolation : {"linear", "step"}
        How to read between points.

    Returns
    -------
    float
        (An array for a stack of curves.)

    Examples
    --------
    >>> from wsdet.metrics import match_points, froc_curve
    >>> c = froc_curve([match_points([[0, 0], [9, 9]], [0.5, 0.5], [[0, 1]])])
    >>> sensitivity_at_fp(c, 0.5), sensitivity_at_fp(c, 0.5, "step")
    (0.5, 0.0)
    """
    _check_curve(curve)
    check_choice(interpolation, "interpolation", ("linear", "step"))
    f = as_positive_float(fp, "fp", allow_zero=True)
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
        From :func:`froc_curve`.
    fps : sequence of float
        Budgets; default ``(1/4, 1/2, 1, 2, 4, 8)``; LUNA16's CPM uses
        :data:`LUNA16_FPS` ``(1/8, ..., 8)``.
    interpolation : {"linear", "step"}
        As in :func:`sensitivity_at_fp`.

    Returns
    -------
    float
        (An array for a stack of curves.)

    Examples
    --------
    >>> from wsdet.metrics import match_points, froc_curve
    >>> c = froc_curve([match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])])
    >>> froc_score(c)
    1.0
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
        From :func:`froc_curve`.
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
    float
        (An array for a stack of curves.)

    Examples
    --------
    >>> from wsdet.metrics import match_points, froc_curve
    >>> c = froc_curve([match_points([[0, 0], [9, 9]], [0.5, 0.5], [[0, 1]])])
    >>> fauc(c, 2.0), fauc(c, 2.0, "step")
    (0.75, 0.5)
    """
    _check_curve(curve)
    check_choice(interpolation, "interpolation", ("linear", "step"))
    check_choice(extrapolate, "extrapolate", ("flat", "nan"))
    f = as_positive_float(max_fp, "max_fp")
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
    curve = curve_or_results if isinstance(curve_or_results, FROC) else froc_curve(curve_or_results)
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
