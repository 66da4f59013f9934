"""The event table: every counted event of a set of images, sorted once by score.

A FROC curve, and every bootstrap replicate of it, is a cumulative count over one global
sort of these events (see :mod:`wsdet.metrics.froc` for the conventions). An
:class:`EventTable` is built once from per-image match results and then gives the full
curve (:meth:`EventTable.curve`) and reweighted curves (:meth:`EventTable.weighted`) for
any number of image multiplicities, which is what :mod:`wsdet.metrics.bootstrap` and
:class:`wsdet.metrics.Evaluation` share.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsdet._checks import check_choice, check_int
from wsdet.metrics._checks import Compat, SensitivityKind, check_compat
from wsdet.metrics.curve import FROC
from wsdet.metrics.matchers import MatchResult

__all__ = ["EventTable"]


class EventTable:
    """All counted events of a set of images, grouped by unique score (descending).

    Parameters
    ----------
    results : sequence of MatchResult
        One per image (at least one), including images without targets or detections.
    n_images : int, optional
        The false-positive denominator ``N`` when larger than ``len(results)``.
    compat : {"monai", "luna16"}, optional
        As in :func:`~wsdet.metrics.froc_curve`.
    sensitivity : {"micro", "macro"}
        As in :func:`~wsdet.metrics.froc_curve`.

    Attributes
    ----------
    n_images, n_targets : int
        ``N`` and ``L`` of the curve.
    n_groups : int
        Number of unique event scores (the curve has ``n_groups + 1`` points).
    thresholds : numpy.ndarray
        ``(n_groups + 1,)`` descending thresholds, ``+inf`` first.
    img, group : numpy.ndarray
        Per event, its image and its score group (0 = highest score).
    is_tp : numpy.ndarray
        Per event, whether it is a true-positive event.
    per_image_targets, zero_count : numpy.ndarray
        Per image, its counted targets and its targets never found.

    Examples
    --------
    >>> from wsdet.metrics import match_points
    >>> table = EventTable([match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])])
    >>> table.n_groups, table.curve().tp.tolist()
    (2, [0, 1, 1])
    >>> table.weighted(np.array([[2], [0]]), table.n_groups).fp.tolist()
    [[0, 0, 2], [0, 0, 0]]
    """

    def __init__(
        self,
        results: Sequence[MatchResult],
        n_images: int | None = None,
        compat: Compat | None = None,
        sensitivity: SensitivityKind = "micro",
    ) -> None:
        check_compat(compat)
        check_choice("sensitivity", sensitivity, ("micro", "macro"))
        if isinstance(results, MatchResult) or not isinstance(results, Sequence):
            raise TypeError(
                "results must be a sequence of MatchResult (one per image), e.g. a list"
            )
        n_res = len(results)
        for n, r in enumerate(results):
            if not isinstance(r, MatchResult):
                raise TypeError(f"results[{n}] must be a MatchResult; got {type(r).__name__}")
        if n_images is None:
            if n_res == 0:
                raise ValueError(
                    "results is empty: a FROC curve needs at least one image (one MatchResult "
                    "per image, including images without targets or detections)"
                )
            n_images = n_res
        n_images = check_int("n_images", n_images, minimum=max(n_res, 1))
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
        self._curve: FROC[float] | None = None
        self._fp_cum: NDArray[np.int64] | None = None
        self._sorted: (
            tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]] | None
        ) = None

    # -- full-data curve ---------------------------------------------------------------

    def curve(self) -> FROC[float]:
        """The FROC curve of the data (computed once); warns when there are no targets."""
        if self._curve is None:
            self._curve = self._full_curve()
        return self._curve

    def _full_curve(self) -> FROC[float]:
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
                "there are no targets: sensitivity is undefined (nan)", RuntimeWarning, stacklevel=4
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
