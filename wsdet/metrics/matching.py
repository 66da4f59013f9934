"""One-to-one matching of scored detections to targets (points within a radius, or boxes).

The matching is a maximum-weight bipartite matching restricted to feasible pairs (a
detection within ``radius`` of a target point, or inside a target box), solved with
:func:`scipy.optimize.linear_sum_assignment` on small connected sub-problems. The weight of
a detection is a strictly increasing function of its score (its dense rank), equal for tied
scores. This makes the static labels *score-monotone*: for every threshold ``t`` the number
of true positives among detections with ``score >= t`` equals the maximum one-to-one
matching that could be found among those detections alone. A FROC curve built from one
matching is therefore the curve one would get by re-matching at every threshold.

Why not 0/1 costs? A maximum-cardinality matching that ignores scores may give the target to
a low-scoring detection and leave a high-scoring one unmatched: the curve is then too low at
high thresholds. Why not raw distances? A minimum-total-distance assignment may prefer an
infeasible pair, losing a true positive that a feasible assignment would have kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from wsdet.metrics._checks import (
    Compat,
    as_mask,
    as_points,
    as_radius,
    as_scores,
    as_sequence,
    as_spacing,
    check_choice,
    check_compat,
    to_numpy,
)

__all__ = [
    "AnnotationAgreement",
    "MatchResult",
    "compare_annotations",
    "match_boxes",
    "match_images",
    "match_points",
]

Duplicates = Literal["fp", "ignore"]
Tiebreak = Literal["distance", "none"]
MatchKind = Literal["points", "boxes"]

#: Relative slack of the inclusive radius test ``d <= r * (1 + INCLUSIVE_SLACK)``, so that
#: exact boundary cases such as the offset (3.6, 4.8) at radius 6 survive rounding.
INCLUSIVE_SLACK = 1e-9
#: Detections kept per image by ``compat="luna16"`` (strictly-greater cut, as LUNA16 does).
LUNA16_MAX_CANDIDATES = 100

_EMPTY_I = np.zeros(0, dtype=np.intp)
_EMPTY_F = np.zeros(0, dtype=np.float64)


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


@dataclass(frozen=True)
class AnnotationAgreement:
    """Agreement of one annotation set with a reference set (see :func:`compare_annotations`).

    Attributes
    ----------
    sensitivity : float
        Fraction of reference points matched (``nan`` when the reference is empty).
    fp_avg : float
        Unmatched test points per image.
    n_tp, n_fp, n_reference, n_images : int
        Matched test points, unmatched test points, reference points, images.
    """

    sensitivity: float
    fp_avg: float
    n_tp: int
    n_fp: int
    n_reference: int
    n_images: int


# --------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class _Options:
    inclusive: bool
    duplicates: Duplicates
    one_to_one: bool
    max_candidates: int | None
    tiebreak: Tiebreak
    positive_scores: bool


def _options(inclusive: bool, duplicates: str, tiebreak: str, compat: Compat | None) -> _Options:
    if not isinstance(inclusive, (bool, np.bool_)):
        raise TypeError(f"inclusive must be a bool; got {inclusive!r}")
    check_choice(duplicates, "duplicates", ("fp", "ignore"))
    check_choice(tiebreak, "tiebreak", ("distance", "none"))
    check_compat(compat)
    tb: Tiebreak = "distance" if tiebreak == "distance" else "none"
    if compat == "monai":
        # region hits: each target credits its best detection, other hits are ignored
        return _Options(True, "ignore", False, None, tb, True)
    if compat == "luna16":
        return _Options(False, "ignore", False, LUNA16_MAX_CANDIDATES, tb, False)
    dup: Duplicates = "ignore" if duplicates == "ignore" else "fp"
    return _Options(bool(inclusive), dup, True, None, tb, False)


# --------------------------------------------------------------------------------------
# candidate pairs


def _flatten(lists: Any, n: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Flatten an object array of index lists into (owner, index) pairs."""
    lens = np.fromiter(map(len, lists), dtype=np.intp, count=n)
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.intp, count=total)
    owner = np.repeat(np.arange(n, dtype=np.intp), lens)
    return owner, flat


def _candidate_pairs(
    det: NDArray[np.float64],
    det_img: NDArray[np.intp],
    gt: NDArray[np.float64],
    gt_img: NDArray[np.intp],
    reach: NDArray[np.float64],
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """A superset of the pairs ``(i, j)`` in the same image with ``|det_i - gt_j| <= reach_j``.

    A k-d tree is built on the larger set and queried with the smaller one. Images are laid
    side by side along the first axis, each shifted past the previous one by more than any
    query radius, so that one tree serves all images; the caller filters the candidates
    with the exact test on the original coordinates.
    """
    if det.shape[0] == 0 or gt.shape[0] == 0:
        return _EMPTY_I, _EMPTY_I
    reach = reach * (1.0 + 1e-6) + 1e-12
    rmax = float(reach.max())
    uniform = bool((reach == rmax).all())
    if det_img[0] != det_img[-1] or gt_img[0] != gt_img[-1] or det_img[0] != gt_img[0]:
        lo = min(float(det[:, 0].min()), float(gt[:, 0].min()))
        hi = max(float(det[:, 0].max()), float(gt[:, 0].max()))
        step = (hi - lo) + 2.0 * rmax + 1.0
        det = det.copy()
        gt = gt.copy()
        det[:, 0] += det_img * step
        gt[:, 0] += gt_img * step
    if gt.shape[0] <= det.shape[0]:
        tree = cKDTree(det, balanced_tree=False, compact_nodes=False)
        lists = tree.query_ball_point(gt, rmax if uniform else reach, return_sorted=False)
        pj, pi = _flatten(lists, gt.shape[0])
    else:
        tree = cKDTree(gt, balanced_tree=False, compact_nodes=False)
        lists = tree.query_ball_point(det, rmax, return_sorted=False)
        pi, pj = _flatten(lists, det.shape[0])
    return pi, pj


def _point_pairs(
    det: NDArray[np.float64],
    det_img: NDArray[np.intp],
    gt: NDArray[np.float64],
    gt_img: NDArray[np.intp],
    radius: NDArray[np.float64],
    spacing: NDArray[np.float64],
    inclusive: bool,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Feasible (detection, target) pairs and their distance relative to the radius."""
    pi, pj = _candidate_pairs(det * spacing, det_img, gt * spacing, gt_img, radius)
    if pi.size == 0:
        return _EMPTY_I, _EMPTY_I, _EMPTY_F
    diff = (det[pi] - gt[pj]) * spacing
    d2 = np.einsum("ij,ij->i", diff, diff)
    r = radius[pj]
    if inclusive:
        keep = d2 <= (r * (1.0 + INCLUSIVE_SLACK)) ** 2
    else:
        keep = d2 < r * r
    pi, pj, d2, r = pi[keep], pj[keep], d2[keep], r[keep]
    ratio = np.divide(np.sqrt(d2), r, out=np.zeros_like(d2), where=r > 0)
    return pi, pj, ratio


def _box_pairs(
    det: NDArray[np.float64],
    det_img: NDArray[np.intp],
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    gt_img: NDArray[np.intp],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Pairs with the detection inside the half-open box ``[lo, hi)``; ratio to the centre."""
    centre = (lo + hi) / 2.0
    half_diag = np.sqrt(np.sum(((hi - lo) / 2.0) ** 2, axis=1))
    pi, pj = _candidate_pairs(det, det_img, centre, gt_img, half_diag)
    if pi.size == 0:
        return _EMPTY_I, _EMPTY_I, _EMPTY_F
    p = det[pi]
    keep = np.all((lo[pj] <= p) & (p < hi[pj]), axis=1)
    pi, pj = pi[keep], pj[keep]
    dist = np.sqrt(np.sum((det[pi] - centre[pj]) ** 2, axis=1))
    hd = half_diag[pj]
    ratio = np.divide(dist, hd, out=np.zeros_like(dist), where=hd > 0)
    return pi, pj, ratio


# --------------------------------------------------------------------------------------
# assignment


def _first_per_group(keys: tuple[NDArray[Any], ...], group: NDArray[np.intp]) -> NDArray[np.intp]:
    """Index of the first element of each group under ``np.lexsort((*keys, group))``."""
    order = np.lexsort((*keys, group))
    g = group[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def _local_index(
    comp: NDArray[np.intp], node: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Number the distinct nodes of each component 0, 1, ... (pairs sorted by component).

    Returns the local index of each pair's node, the distinct (component-sorted) nodes, and
    the start of each component's block in that list.
    """
    key = np.stack([comp, node])
    uniq, inverse = np.unique(key, axis=1, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.ones(uniq.shape[1], dtype=bool)
    first[1:] = uniq[0, 1:] != uniq[0, :-1]
    starts = np.flatnonzero(first)
    block_of = np.cumsum(first) - 1
    return inverse - starts[block_of[inverse]], uniq[1], starts


def _solve_components(
    pi: NDArray[np.intp],
    pj: NDArray[np.intp],
    ratio: NDArray[np.float64],
    comp: NDArray[np.intp],
    scores: NDArray[np.float64],
    tiebreak: Tiebreak,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Maximum-weight matching of each connected component with score-monotone weights.

    The pairs must be sorted by component. The weight of a detection is the dense rank of
    its score within the component plus one: integers >= 1, strictly increasing with the
    score, equal for ties, exact in float64 (the solver cannot confuse two score levels).
    """
    ri, rows, row_starts = _local_index(comp, pi)
    ci, cols, col_starts = _local_index(comp, pj)
    n_comp = row_starts.size
    n_rows = np.diff(np.append(row_starts, rows.size))
    n_cols = np.diff(np.append(col_starts, cols.size))
    new_comp = np.ones(comp.size, dtype=bool)
    new_comp[1:] = comp[1:] != comp[:-1]
    pair_starts = np.append(np.flatnonzero(new_comp), comp.size)
    pair_comp = np.cumsum(new_comp) - 1

    row_comp = np.repeat(np.arange(n_comp), n_rows)
    row_score = scores[rows]
    order = np.lexsort((row_score, row_comp))
    new_level = np.ones(rows.size, dtype=bool)
    new_level[1:] = (row_comp[order][1:] != row_comp[order][:-1]) | (
        row_score[order][1:] != row_score[order][:-1]
    )
    level = np.cumsum(new_level)  # global dense rank, restarted below per component
    rank = np.empty(rows.size, dtype=np.float64)
    rank[order] = level - level[row_starts[row_comp[order]]] + 1
    value = rank[row_starts[pair_comp] + ri]
    if tiebreak == "distance":
        # prefer closer pairs among equal scores; the total perturbation is < 1/2, less than
        # one score level, so it can never trade a higher-scoring match for a lower one
        smaller = np.minimum(n_rows, n_cols)[pair_comp]
        value = value - (0.25 / smaller) * np.minimum(ratio, 1.0)

    out_i: list[NDArray[np.intp]] = []
    out_j: list[NDArray[np.intp]] = []
    for c in range(n_comp):
        a, b = pair_starts[c], pair_starts[c + 1]
        w = np.zeros((n_rows[c], n_cols[c]))
        feasible = np.zeros((n_rows[c], n_cols[c]), dtype=bool)
        w[ri[a:b], ci[a:b]] = value[a:b]
        feasible[ri[a:b], ci[a:b]] = True
        r, k = linear_sum_assignment(w, maximize=True)
        ok = feasible[r, k]
        out_i.append(rows[row_starts[c] + r[ok]])
        out_j.append(cols[col_starts[c] + k[ok]])
    return np.concatenate(out_i), np.concatenate(out_j)


def _one_to_one(
    pi: NDArray[np.intp],
    pj: NDArray[np.intp],
    ratio: NDArray[np.float64],
    scores: NDArray[np.float64],
    n_gt: int,
    tiebreak: Tiebreak,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """One-to-one matching over all feasible pairs, solved per connected component.

    Components where every detection touches a single target (a target with its hits) are
    resolved by taking the best detection; components where every target touches a single
    detection by taking the closest target; the rest go to the assignment solver.
    """
    n_det = scores.shape[0]
    if pi.size == 0:
        return _EMPTY_I, _EMPTY_I
    graph = coo_matrix(
        (np.ones(pi.size, dtype=np.int8), (pi, n_det + pj)), shape=(n_det + n_gt, n_det + n_gt)
    )
    _, labels = connected_components(graph, directed=False)
    comp = labels[pi].astype(np.intp)
    deg_det = np.bincount(pi, minlength=n_det)[pi]
    deg_gt = np.bincount(pj, minlength=n_gt)[pj]
    n_comp = int(comp.max()) + 1
    max_det = np.zeros(n_comp, dtype=np.intp)
    max_gt = np.zeros(n_comp, dtype=np.intp)
    np.maximum.at(max_det, comp, deg_det)
    np.maximum.at(max_gt, comp, deg_gt)
    tie = ratio if tiebreak == "distance" else np.zeros_like(ratio)
    out_i: list[NDArray[np.intp]] = []
    out_j: list[NDArray[np.intp]] = []

    star_gt = max_det[comp] == 1  # one target and the detections that hit it
    if star_gt.any():
        sel = np.flatnonzero(star_gt)
        best = sel[_first_per_group((pi[sel], tie[sel], -scores[pi[sel]]), comp[sel])]
        out_i.append(pi[best])
        out_j.append(pj[best])
    star_det = ~star_gt & (max_gt[comp] == 1)  # one detection touching several targets
    if star_det.any():
        sel = np.flatnonzero(star_det)
        best = sel[_first_per_group((pj[sel], tie[sel]), comp[sel])]
        out_i.append(pi[best])
        out_j.append(pj[best])
    hard = np.flatnonzero(~star_gt & ~star_det)
    if hard.size:
        hard = hard[np.argsort(comp[hard], kind="stable")]
        i, j = _solve_components(pi[hard], pj[hard], ratio[hard], comp[hard], scores, tiebreak)
        out_i.append(i)
        out_j.append(j)
    return np.concatenate(out_i), np.concatenate(out_j)


def _many_to_one(
    pi: NDArray[np.intp],
    pj: NDArray[np.intp],
    ratio: NDArray[np.float64],
    scores: NDArray[np.float64],
    tiebreak: Tiebreak,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Each target credits its best detection; a detection may credit several targets."""
    if pi.size == 0:
        return _EMPTY_I, _EMPTY_I
    tie = ratio if tiebreak == "distance" else np.zeros_like(ratio)
    best = _first_per_group((pi, tie, -scores[pi]), pj)
    return pi[best], pj[best]


def _cap_mask(
    scores: NDArray[np.float64], det_img: NDArray[np.intp], n_images: int, cap: int | None
) -> NDArray[np.bool_]:
    """Detections kept by a per-image cap: LUNA16 keeps scores strictly above the
    ``(cap + 1)``-th largest when an image has more than ``cap`` detections."""
    keep = np.ones(scores.shape[0], dtype=bool)
    if cap is None:
        return keep
    counts = np.bincount(det_img, minlength=n_images)
    for img in np.flatnonzero(counts > cap):
        idx = np.flatnonzero(det_img == img)
        cut = np.sort(scores[idx])[::-1][cap]
        keep[idx] = scores[idx] > cut
    return keep


def _match_batch(
    scores: NDArray[np.float64],
    pairs: tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]],
    n_gt: int,
    gt_ignored: NDArray[np.bool_],
    active: NDArray[np.bool_],
    opts: _Options,
) -> tuple[NDArray[np.int8], NDArray[np.intp], NDArray[np.bool_], NDArray[np.float64]]:
    """Label all detections of a batch given their feasible pairs (global indices)."""
    n_det = scores.shape[0]
    pi, pj, ratio = pairs
    det_label = np.zeros(n_det, dtype=np.int8)
    det_to_gt = np.full(n_det, -1, dtype=np.intp)
    gt_hit = np.zeros(n_gt, dtype=bool)
    gt_score = np.full(n_gt, np.nan)

    ign = gt_ignored[pj]
    near_ignored = np.zeros(n_det, dtype=bool)
    near_ignored[pi[ign]] = True
    pi, pj, ratio = pi[~ign], pj[~ign], ratio[~ign]
    near_target = np.zeros(n_det, dtype=bool)
    near_target[pi] = True

    if opts.one_to_one:
        mi, mj = _one_to_one(pi, pj, ratio, scores, n_gt, opts.tiebreak)
    else:
        mi, mj = _many_to_one(pi, pj, ratio, scores, opts.tiebreak)
    gt_hit[mj] = True
    gt_score[mj] = scores[mi]
    matched = np.zeros(n_det, dtype=bool)
    matched[mi] = True
    if mi.size:
        # a detection credited to several targets (many-to-one) points to the first of them
        first = _first_per_group((mj,), mi)
        det_to_gt[mi[first]] = mj[first]
    det_label[matched] = 1
    not_counted = ~matched & near_ignored
    if opts.duplicates == "ignore":
        not_counted |= ~matched & near_target
    not_counted |= ~active
    det_label[not_counted] = -1
    return det_label, det_to_gt, gt_hit, gt_score


def _split(
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


# --------------------------------------------------------------------------------------
# public API


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
    opts = _options(inclusive, duplicates, tiebreak, compat)
    gt_arr = as_points(gt, "gt")
    det_arr = as_points(det, "det", gt_arr.shape[1] if gt_arr.shape[0] else None)
    if gt_arr.shape[0] == 0 and det_arr.shape[1] != gt_arr.shape[1]:
        gt_arr = np.zeros((0, det_arr.shape[1]))
    s = as_scores(scores, "scores", det_arr.shape[0])
    if opts.positive_scores and (s <= 0).any():
        raise ValueError("scores must be positive with compat='monai' (MONAI uses 0 for misses)")
    r = as_radius(radius, gt_arr.shape[0])
    sp = as_spacing(spacing, max(det_arr.shape[1], 1))
    ignored = as_mask(ignore_gt, "ignore_gt", gt_arr.shape[0])
    det_img = np.zeros(det_arr.shape[0], dtype=np.intp)
    gt_img = np.zeros(gt_arr.shape[0], dtype=np.intp)
    active = _cap_mask(s, det_img, 1, opts.max_candidates)
    ia = np.flatnonzero(active)
    pi, pj, ratio = _point_pairs(det_arr[ia], det_img[ia], gt_arr, gt_img, r, sp, opts.inclusive)
    pairs = (ia[pi], pj, ratio)
    label, to_gt, hit, gscore = _match_batch(s, pairs, gt_arr.shape[0], ignored, active, opts)
    return MatchResult(label, to_gt, hit, s, int(ignored.size - ignored.sum()), gscore, ignored)


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
    opts = _options(True, duplicates, tiebreak, compat)
    lo, hi = _as_boxes(boxes_lo, boxes_hi)
    det_arr = as_points(det, "det", lo.shape[1] if lo.shape[0] else None)
    if lo.shape[0] == 0 and det_arr.shape[1] != lo.shape[1]:
        lo = hi = np.zeros((0, det_arr.shape[1]))
    s = as_scores(scores, "scores", det_arr.shape[0])
    if opts.positive_scores and (s <= 0).any():
        raise ValueError("scores must be positive with compat='monai' (MONAI uses 0 for misses)")
    ignored = as_mask(ignore_gt, "ignore_gt", lo.shape[0])
    det_img = np.zeros(det_arr.shape[0], dtype=np.intp)
    gt_img = np.zeros(lo.shape[0], dtype=np.intp)
    active = _cap_mask(s, det_img, 1, opts.max_candidates)
    ia = np.flatnonzero(active)
    pi, pj, ratio = _box_pairs(det_arr[ia], det_img[ia], lo, hi, gt_img)
    label, to_gt, hit, gscore = _match_batch(
        s, (ia[pi], pj, ratio), lo.shape[0], ignored, active, opts
    )
    return MatchResult(label, to_gt, hit, s, int(ignored.size - ignored.sum()), gscore, ignored)


def _as_boxes(
    boxes_lo: Any, boxes_hi: Any, name: str = "boxes"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    lo = as_points(boxes_lo, f"{name}_lo")
    hi = as_points(boxes_hi, f"{name}_hi", lo.shape[1] if lo.shape[0] else None)
    if lo.shape != hi.shape:
        raise ValueError(
            f"{name}_lo and {name}_hi must have the same shape; got {lo.shape} and {hi.shape}"
        )
    if lo.shape[0] and not (hi > lo).all():
        raise ValueError(
            f"{name}_hi must be greater than {name}_lo on every axis (non-empty boxes)"
        )
    return lo, hi


def _as_box_target(t: Any, n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One image's boxes: a ``(lo, hi)`` pair or an ``(m, 2, ndim)`` array."""
    t = to_numpy(t)
    if isinstance(t, tuple) and len(t) == 2:
        return _as_boxes(t[0], t[1], f"targets[{n}]")
    arr = np.asarray(t, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 0)), np.zeros((0, 0))
    if arr.ndim != 3 or arr.shape[1] != 2:
        raise ValueError(
            f"targets[{n}] must be a (lo, hi) pair of (m, ndim) arrays or an (m, 2, ndim) array "
            f"when match='boxes'; got shape {arr.shape}"
        )
    return _as_boxes(arr[:, 0], arr[:, 1], f"targets[{n}]")


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
    check_choice(match, "match", ("points", "boxes"))
    opts = _options(inclusive, duplicates, tiebreak, compat)
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
            lo, hi = _as_box_target(t, n)
            gts.append(lo)
            his.append(hi)
    dets = [as_points(p, f"points[{n}]") for n, p in enumerate(pts_list)]
    ndims = {a.shape[1] for a in gts + dets if a.shape[0] > 0}
    if len(ndims) > 1:
        raise ValueError(
            f"all points and targets must have the same number of dimensions; got {sorted(ndims)}"
        )
    ndim = ndims.pop() if ndims else 2
    dets = [a if a.shape[0] else np.zeros((0, ndim)) for a in dets]
    gts = [a if a.shape[0] else np.zeros((0, ndim)) for a in gts]
    his = [a if a.shape[0] else np.zeros((0, ndim)) for a in his]
    scs = [as_scores(s, f"scores[{n}]", dets[n].shape[0]) for n, s in enumerate(sc_list)]
    ign = [as_mask(m, f"ignore[{n}]", gts[n].shape[0]) for n, m in enumerate(ign_list)]

    det_counts = np.array([a.shape[0] for a in dets], dtype=np.intp)
    gt_counts = np.array([a.shape[0] for a in gts], dtype=np.intp)
    det_all = np.concatenate(dets) if dets else np.zeros((0, ndim))
    gt_all = np.concatenate(gts) if gts else np.zeros((0, ndim))
    s_all = np.concatenate(scs) if scs else np.zeros(0)
    ign_all = np.concatenate(ign) if ign else np.zeros(0, dtype=bool)
    if opts.positive_scores and (s_all <= 0).any():
        raise ValueError("scores must be positive with compat='monai' (MONAI uses 0 for misses)")
    det_img = np.repeat(np.arange(n_images, dtype=np.intp), det_counts)
    gt_img = np.repeat(np.arange(n_images, dtype=np.intp), gt_counts)
    active = _cap_mask(s_all, det_img, n_images, opts.max_candidates)
    ia = np.flatnonzero(active)
    if match == "points":
        if np.ndim(to_numpy(radius)) != 0:
            raise ValueError("radius must be a single number in match_images (one for all targets)")
        r_all = as_radius(radius, gt_all.shape[0])
        if spacing is not None and np.ndim(to_numpy(spacing)) == 2:
            per_image = _spacing_per_image(spacing, n_images, ndim)
            det_all = det_all * per_image[det_img]  # distances in mm, image by image
            gt_all = gt_all * per_image[gt_img]
            sp = np.ones(ndim)
        else:
            sp = as_spacing(spacing, ndim)
        pi, pj, ratio = _point_pairs(
            det_all[ia], det_img[ia], gt_all, gt_img, r_all, sp, opts.inclusive
        )
    else:
        hi_all = np.concatenate(his) if his else np.zeros((0, ndim))
        pi, pj, ratio = _box_pairs(det_all[ia], det_img[ia], gt_all, hi_all, gt_img)
    label, to_gt, hit, gscore = _match_batch(
        s_all, (ia[pi], pj, ratio), gt_all.shape[0], ign_all, active, opts
    )
    return _split(label, to_gt, hit, gscore, s_all, ign_all, det_counts, gt_counts)


def _spacing_per_image(spacing: ArrayLike, n_images: int, ndim: int) -> NDArray[np.float64]:
    arr = np.asarray(to_numpy(spacing), dtype=np.float64)
    if arr.shape != (n_images, ndim):
        raise ValueError(
            f"spacing must be one voxel size per axis ({ndim},) or one row per image "
            f"({n_images}, {ndim}); got shape {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError("spacing must be finite and positive")
    return arr


def compare_annotations(
    a: Sequence[ArrayLike],
    b: Sequence[ArrayLike],
    radius: float = 6.0,
    *,
    spacing: ArrayLike | None = None,
    inclusive: bool = True,
) -> AnnotationAgreement:
    """Sensitivity and false positives per image of annotation ``a`` against reference ``b``.

    This is the paper's intra-rater figure (Section 3.8): one series of point annotations is
    taken as the reference, the other is matched one-to-one to it (maximum matching within
    ``radius``); unmatched points of ``a`` are false positives. Swap the arguments for the
    other direction.

    Parameters
    ----------
    a, b : sequence of array_like
        Per image, ``(m_i, ndim)`` points of the evaluated and of the reference annotation.
    radius, spacing, inclusive
        As in :func:`match_points`.

    Returns
    -------
    AnnotationAgreement

    Examples
    --------
    >>> agr = compare_annotations([[[0, 0], [20, 20]]], [[[0, 2]]], radius=6)
    >>> agr.sensitivity, agr.fp_avg
    (1.0, 1.0)
    """
    a_list = as_sequence(a, "a")
    b_list = as_sequence(b, "b")
    if len(a_list) != len(b_list):
        raise ValueError(
            f"a and b must have one entry per image; got {len(a_list)} and {len(b_list)}"
        )
    pts = [as_points(p, f"a[{n}]") for n, p in enumerate(a_list)]
    res = match_images(
        pts,
        [np.zeros(p.shape[0]) for p in pts],
        b_list,
        radius=radius,
        spacing=spacing,
        inclusive=inclusive,
    )
    n_tp = sum(r.n_tp for r in res)
    n_fp = sum(r.n_fp for r in res)
    n_ref = sum(r.n_targets for r in res)
    n_img = len(res)
    return AnnotationAgreement(
        sensitivity=n_tp / n_ref if n_ref else float("nan"),
        fp_avg=n_fp / n_img if n_img else float("nan"),
        n_tp=n_tp,
        n_fp=n_fp,
        n_reference=n_ref,
        n_images=n_img,
    )
