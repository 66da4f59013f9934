"""Matching scored detections to targets: :func:`match_points`, :func:`match_boxes`, and
:func:`match_images` for many images at once, each giving a :class:`MatchResult` per image.

The rules (score-monotone one-to-one matching) are explained in :mod:`wsdet.metrics.matching`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_choice
from wsdet.metrics._assignment import Options, cap_mask, match_batch, options
from wsdet.metrics._checks import (
    Compat,
    Duplicates,
    MatchKind,
    Tiebreak,
    as_mask,
    as_points,
    as_radius,
    as_scores,
    as_sequence,
    as_spacing,
    to_numpy,
)
from wsdet.metrics._pairs import Located, Pairs, as_box_target, as_boxes, box_pairs, point_pairs

__all__ = ["MatchResult", "match_boxes", "match_images", "match_points"]


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Outcome of matching one image's detections to its targets.

    Attributes
    ----------
    det_label : numpy.ndarray
        ``(k,)`` int8 per detection: ``1`` true positive, ``0`` false positive, ``-1`` not
        counted (an extra hit on a target under ``duplicates="ignore"``, a hit on an ignored
        target, or cut by a compatibility cap).
    det_to_gt : numpy.ndarray
        ``(k,)`` index of the target credited to each true positive, ``-1`` otherwise.
    gt_hit : numpy.ndarray
        ``(m,)`` bool, whether each target was found (always False for ignored targets).
    scores : numpy.ndarray
        ``(k,)`` float64 detection scores (kept so that the result feeds
        :func:`~wsdet.metrics.froc_curve` directly).
    n_targets : int
        Number of targets that count (``m`` minus ignored targets).
    gt_score : numpy.ndarray
        ``(m,)`` score at which each target is found (``nan`` if never). With one-to-one
        matching this is the score of the detection matched to it.
    gt_ignored : numpy.ndarray
        ``(m,)`` bool, the ``ignore_gt`` mask.
    """

    det_label: NDArray[np.int8]
    det_to_gt: NDArray[np.intp]
    gt_hit: NDArray[np.bool_]
    scores: NDArray[np.float64]
    n_targets: int
    gt_score: NDArray[np.float64]
    gt_ignored: NDArray[np.bool_]

    @property
    def n_tp(self) -> int:
        """Number of targets found."""
        return int(np.count_nonzero(self.gt_hit))

    @property
    def n_fp(self) -> int:
        """Number of false-positive detections."""
        return int(np.count_nonzero(self.det_label == 0))

    @property
    def n_ignored(self) -> int:
        """Number of detections that are not counted (label ``-1``)."""
        return int(np.count_nonzero(self.det_label == -1))

    def __repr__(self) -> str:
        return (
            f"MatchResult(detections={self.det_label.shape[0]}, targets={self.n_targets}, "
            f"tp={self.n_tp}, fp={self.n_fp}, ignored={self.n_ignored})"
        )


def split(
    det_label: NDArray[np.int8],
    det_to_gt: NDArray[np.intp],
    gt_hit: NDArray[np.bool_],
    gt_score: NDArray[np.float64],
    scores: NDArray[np.float64],
    gt_ignored: NDArray[np.bool_],
    det_counts: NDArray[np.intp],
    gt_counts: NDArray[np.intp],
) -> list[MatchResult]:
    """Cut batch-level arrays into per-image results (targets re-indexed per image)."""
    det_start = np.concatenate([[0], np.cumsum(det_counts)]).astype(np.intp)
    gt_start = np.concatenate([[0], np.cumsum(gt_counts)]).astype(np.intp)
    # per-image target indices: subtract the image's first target index
    img_of_det = np.repeat(np.arange(det_counts.size), det_counts)
    local = np.where(det_to_gt >= 0, det_to_gt - gt_start[img_of_det], -1).astype(np.intp)
    out = []
    for n in range(det_counts.size):
        a, b = det_start[n], det_start[n + 1]
        c, d = gt_start[n], gt_start[n + 1]
        ignored = gt_ignored[c:d]
        out.append(
            MatchResult(
                det_label=det_label[a:b],
                det_to_gt=local[a:b],
                gt_hit=gt_hit[c:d],
                scores=scores[a:b],
                n_targets=int(ignored.size - np.count_nonzero(ignored)),
                gt_score=gt_score[c:d],
                gt_ignored=ignored,
            )
        )
    return out


_POSITIVE = "scores must be positive with compat='monai' (MONAI uses 0 for misses)"


def _scores(scores: ArrayLike, name: str, n: int, opts: Options) -> NDArray[np.float64]:
    """Validated scores of ``n`` detections (positive where ``compat="monai"`` needs it)."""
    s = as_scores(scores, name, n)
    if opts.positive_scores and (s <= 0).any():
        raise ValueError(_POSITIVE)
    return s


def _label(
    scores: NDArray[np.float64],
    det: NDArray[np.float64],
    det_counts: Sequence[int],
    gt_img: NDArray[np.intp],
    gt_ignored: NDArray[np.bool_],
    opts: Options,
    find_pairs: Callable[[Located], Pairs],
) -> list[MatchResult]:
    """Match a batch: cap each image's candidates, find the feasible pairs of the active
    detections, assign, and cut the result into one :class:`MatchResult` per image."""
    det_img = np.repeat(np.arange(len(det_counts), dtype=np.intp), det_counts)
    active = cap_mask(scores, det_img, len(det_counts), opts.max_candidates)
    ia = np.flatnonzero(active)
    found = find_pairs(Located(det[ia], det_img[ia]))
    pairs = Pairs(ia[found.det], found.gt, found.ratio)
    label, to_gt, hit, gscore = match_batch(
        scores, pairs, gt_img.shape[0], gt_ignored, active, opts
    )
    gt_counts = np.bincount(gt_img, minlength=len(det_counts)).astype(np.intp)
    return split(
        label, to_gt, hit, gscore, scores, gt_ignored, np.asarray(det_counts, np.intp), gt_counts
    )


def _match_one(
    scores: NDArray[np.float64],
    det: NDArray[np.float64],
    gt_ignored: NDArray[np.bool_],
    opts: Options,
    find_pairs: Callable[[Located], Pairs],
) -> MatchResult:
    """:func:`_label` for one image."""
    gt_img = np.zeros(gt_ignored.shape[0], dtype=np.intp)
    return _label(scores, det, [det.shape[0]], gt_img, gt_ignored, opts, find_pairs)[0]


def match_points(
    det: ArrayLike,
    scores: ArrayLike,
    gt: ArrayLike,
    radius: ArrayLike = 6.0,
    *,
    spacing: ArrayLike | None = None,
    inclusive: bool = True,
    duplicates: Duplicates = "fp",
    ignore_gt: ArrayLike | None = None,
    tiebreak: Tiebreak = "distance",
    compat: Compat | None = None,
) -> MatchResult:
    """Match scored point detections one-to-one to target points within a radius.

    Parameters
    ----------
    det : array_like
        ``(k, ndim)`` detection coordinates (array index order, e.g. ``(z, y, x)``).
    scores : array_like
        ``(k,)`` finite detection scores; only their order matters.
    gt : array_like
        ``(m, ndim)`` target points.
    radius : float or array_like
        Hit radius (default 6, the paper's value), in voxels or in the units of ``spacing``;
        a ``(m,)`` array gives one radius per target.
    spacing : float or array_like, optional
        Voxel size per axis; distances are computed on ``(det - gt) * spacing``.
    inclusive : bool
        ``True`` (default): a hit is ``d <= radius`` (with a relative slack of 1e-9 so that
        exact boundary cases survive rounding). ``False``: ``d < radius`` (LUNA16 style).
    duplicates : {"fp", "ignore"}
        What an unmatched detection within reach of a target is: a false positive (default)
        or not counted (``-1``), as MONAI/CAMELYON16/LUNA16 do.
    ignore_gt : array_like of bool, optional
        ``(m,)`` mask of targets that do not count: they are never matched, excluded from the
        number of targets, and unmatched detections within their reach get label ``-1``.
    tiebreak : {"distance", "none"}
        Among tied scores, prefer closer pairs (default). Never changes the counts.
    compat : {"monai", "luna16"}, optional
        Reproduce another evaluator (overrides ``inclusive`` and ``duplicates``):
        ``"monai"``: each target credits its best-scoring detection in reach (a detection may
        credit several targets), other hits ignored; scores must be positive.
        ``"luna16"``: the same with a strict radius and at most 100 detections per image.

    Returns
    -------
    MatchResult
        Per-detection labels, matched target indices, per-target hits and scores.

    Examples
    --------
    >>> r = match_points([[0, 1], [6, 0], [30, 30]], [0.9, 0.8, 0.7], [[0, 7], [0, 0]])
    >>> r.det_label.tolist(), r.det_to_gt.tolist(), r.gt_hit.tolist()
    ([1, 1, 0], [0, 1, -1], [True, True])
    """
    opts = options(inclusive, duplicates, tiebreak, compat)
    gt_arr = as_points(gt, "gt")
    det_arr = as_points(det, "det", gt_arr.shape[1] if gt_arr.shape[0] else None)
    if gt_arr.shape[0] == 0 and det_arr.shape[1] != gt_arr.shape[1]:
        gt_arr = np.zeros((0, det_arr.shape[1]))
    s = _scores(scores, "scores", det_arr.shape[0], opts)
    r = as_radius(radius, gt_arr.shape[0])
    sp = as_spacing(spacing, max(det_arr.shape[1], 1))
    ignored = as_mask(ignore_gt, "ignore_gt", gt_arr.shape[0])
    gts = Located(gt_arr, np.zeros(gt_arr.shape[0], dtype=np.intp))
    inclusive = opts.inclusive
    return _match_one(s, det_arr, ignored, opts, lambda d: point_pairs(d, gts, r, sp, inclusive))


def match_boxes(
    det: ArrayLike,
    scores: ArrayLike,
    boxes_lo: ArrayLike,
    boxes_hi: ArrayLike,
    *,
    duplicates: Duplicates = "fp",
    ignore_gt: ArrayLike | None = None,
    tiebreak: Tiebreak = "distance",
    compat: Compat | None = None,
) -> MatchResult:
    """Match scored point detections one-to-one to target boxes (hit = inside the box).

    A detection ``p`` hits box ``j`` when ``boxes_lo[j] <= p < boxes_hi[j]`` on every axis
    (half-open). For the paper's MNIST grids the box of a digit whose 28x28 cell starts at
    ``(r0, c0)`` is ``lo = (r0, c0)``, ``hi = (r0 + 28, c0 + 28)``.

    Parameters
    ----------
    det : array_like
        ``(k, ndim)`` detection coordinates.
    scores : array_like
        ``(k,)`` finite detection scores.
    boxes_lo, boxes_hi : array_like
        ``(m, ndim)`` inclusive lower and exclusive upper corners, ``hi > lo``.
    duplicates, ignore_gt, tiebreak, compat
        As in :func:`match_points` (``tiebreak="distance"`` uses the distance to the box
        centre; ``compat`` only changes duplicates and one-to-one here).

    Returns
    -------
    MatchResult

    Examples
    --------
    >>> r = match_boxes([[5, 5], [10, 40], [3, 3]], [0.9, 0.8, 0.7], [[0, 0], [0, 28]],
    ...                 [[28, 28], [28, 56]])
    >>> r.det_label.tolist(), r.det_to_gt.tolist()
    ([1, 1, 0], [0, 1, -1])
    """
    opts = options(True, duplicates, tiebreak, compat)
    lo, hi = as_boxes(boxes_lo, boxes_hi)
    det_arr = as_points(det, "det", lo.shape[1] if lo.shape[0] else None)
    if lo.shape[0] == 0 and det_arr.shape[1] != lo.shape[1]:
        lo = hi = np.zeros((0, det_arr.shape[1]))
    s = _scores(scores, "scores", det_arr.shape[0], opts)
    ignored = as_mask(ignore_gt, "ignore_gt", lo.shape[0])
    lows = Located(lo, np.zeros(lo.shape[0], dtype=np.intp))
    return _match_one(s, det_arr, ignored, opts, lambda d: box_pairs(d, lows, hi))


def match_images(
    points: Sequence[ArrayLike],
    scores: Sequence[ArrayLike],
    targets: Sequence[Any],
    *,
    match: MatchKind = "points",
    radius: float = 6.0,
    spacing: ArrayLike | None = None,
    inclusive: bool = True,
    duplicates: Duplicates = "fp",
    ignore: Sequence[ArrayLike | None] | None = None,
    tiebreak: Tiebreak = "distance",
    compat: Compat | None = None,
) -> list[MatchResult]:
    """Match many images at once (vectorised; the same result as a loop over images).

    Parameters
    ----------
    points : sequence of array_like
        Per image, ``(k_i, ndim)`` detection coordinates.
    scores : sequence of array_like
        Per image, ``(k_i,)`` scores.
    targets : sequence
        Per image, ``(m_i, ndim)`` target points (``match="points"``) or boxes as a
        ``(lo, hi)`` pair / ``(m_i, 2, ndim)`` array (``match="boxes"``).
    match : {"points", "boxes"}
        Hit rule: within ``radius`` of a point, or inside a half-open box.
    radius, inclusive, duplicates, tiebreak, compat
        As in :func:`match_points` (``radius`` is one value for all targets here).
    spacing : float or array_like, optional
        Voxel size per axis, as in :func:`match_points` (one for all images), or one row
        per image, ``(n_images, ndim)``, for images of different voxel sizes.
    ignore : sequence of array_like of bool, optional
        Per image, a mask of targets that do not count (or ``None``).

    Returns
    -------
    list of MatchResult
        One per image, in order.

    Examples
    --------
    >>> res = match_images([[[0, 0]], []], [[1.0], []], [[[0, 3]], [[5, 5]]], radius=6)
    >>> [(r.n_tp, r.n_fp, r.n_targets) for r in res]
    [(1, 0, 1), (0, 0, 1)]
    """
    check_choice("match", match, ("points", "boxes"))
    opts = options(inclusive, duplicates, tiebreak, compat)
    pts_list = as_sequence(points, "points")
    sc_list = as_sequence(scores, "scores")
    tg_list = as_sequence(targets, "targets")
    n_images = len(pts_list)
    if len(sc_list) != n_images or len(tg_list) != n_images:
        raise ValueError(
            f"points, scores and targets must have one entry per image; got lengths "
            f"{n_images}, {len(sc_list)} and {len(tg_list)}"
        )
    ign_list = as_sequence(ignore, "ignore") if ignore is not None else [None] * n_images
    if len(ign_list) != n_images:
        raise ValueError(f"ignore must have one entry per image ({n_images}); got {len(ign_list)}")

    # targets first, to learn the dimensionality
    gts: list[NDArray[np.float64]] = []
    his: list[NDArray[np.float64]] = []
    for n, t in enumerate(tg_list):
        if match == "points":
            gts.append(as_points(t, f"targets[{n}]"))
        else:
            lo, hi = as_box_target(t, n)
            gts.append(lo)
            his.append(hi)
    dets = [as_points(p, f"points[{n}]") for n, p in enumerate(pts_list)]
    ndims = {a.shape[1] for a in gts + dets if a.shape[0] > 0}
    if len(ndims) > 1:
        raise ValueError(
            f"all points and targets must have the same number of dimensions; got {sorted(ndims)}"
        )
    if ndims:
        ndim = ndims.pop()
    elif spacing is not None and np.ndim(to_numpy(spacing)) >= 1:
        ndim = int(np.shape(to_numpy(spacing))[-1])  # no points at all: the spacing's axes
    else:
        ndim = 2
    dets = [a if a.shape[0] else np.zeros((0, ndim)) for a in dets]
    gts = [a if a.shape[0] else np.zeros((0, ndim)) for a in gts]
    his = [a if a.shape[0] else np.zeros((0, ndim)) for a in his]
    scs = [as_scores(s, f"scores[{n}]", dets[n].shape[0]) for n, s in enumerate(sc_list)]
    ign = [as_mask(m, f"ignore[{n}]", gts[n].shape[0]) for n, m in enumerate(ign_list)]

    det_counts = [a.shape[0] for a in dets]
    det_all = np.concatenate(dets) if dets else np.zeros((0, ndim))
    gt_all = np.concatenate(gts) if gts else np.zeros((0, ndim))
    s_all = np.concatenate(scs) if scs else np.zeros(0)
    ign_all = np.concatenate(ign) if ign else np.zeros(0, dtype=bool)
    if opts.positive_scores and (s_all <= 0).any():
        raise ValueError(_POSITIVE)
    det_img = np.repeat(np.arange(n_images, dtype=np.intp), det_counts)
    gt_img = np.repeat(np.arange(n_images, dtype=np.intp), [a.shape[0] for a in gts])
    find_pairs: Callable[[Located], Pairs]
    if match == "boxes":
        hi_all = np.concatenate(his) if his else np.zeros((0, ndim))
        find_pairs = partial(box_pairs, lows=Located(gt_all, gt_img), hi=hi_all)
    else:
        if np.ndim(to_numpy(radius)) != 0:
            raise ValueError("radius must be a single number in match_images (one for all targets)")
        r_all = as_radius(radius, gt_all.shape[0])
        if spacing is not None and np.ndim(to_numpy(spacing)) == 2:
            per_image = spacing_per_image(spacing, n_images, ndim)
            det_all = det_all * per_image[det_img]  # distances in mm, image by image
            gt_all = gt_all * per_image[gt_img]
            sp = np.ones(ndim)
        else:
            sp = as_spacing(spacing, ndim)
        find_pairs = partial(
            point_pairs,
            gts=Located(gt_all, gt_img),
            radius=r_all,
            spacing=sp,
            inclusive=opts.inclusive,
        )
    return _label(s_all, det_all, det_counts, gt_img, ign_all, opts, find_pairs)


def spacing_per_image(spacing: ArrayLike, n_images: int, ndim: int) -> NDArray[np.float64]:
    arr = np.asarray(to_numpy(spacing), dtype=np.float64)
    if arr.shape != (n_images, ndim):
        raise ValueError(
            f"spacing must be one voxel size per axis ({ndim},) or one row per image "
            f"({n_images}, {ndim}); got shape {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError("spacing must be finite and positive")
    return arr
