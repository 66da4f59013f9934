"""One-to-one (or many-to-one) assignment of detections to targets from their feasible pairs.

The weights are score-monotone (see :mod:`wsdet.metrics.matching`); each connected
component of the pair graph is solved on its own. Package-internal: used by
:mod:`wsdet.metrics.matchers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from wsdet._checks import check_bool, check_choice
from wsdet.metrics._checks import Compat, Duplicates, Tiebreak, check_compat
from wsdet.metrics._pairs import EMPTY_I, Pairs

#: Detections kept per image by ``compat="luna16"`` (strictly-greater cut, as LUNA16 does).
LUNA16_MAX_CANDIDATES = 100


@dataclass(frozen=True)
class Options:
    """The matching rule, after a ``compat`` setting has overridden the user's options."""

    inclusive: bool
    duplicates: Duplicates
    one_to_one: bool
    max_candidates: int | None
    tiebreak: Tiebreak
    positive_scores: bool


def options(inclusive: bool, duplicates: str, tiebreak: str, compat: Compat | None) -> Options:
    """Validate the matching options and resolve ``compat``."""
    check_bool("inclusive", inclusive)
    check_choice("duplicates", duplicates, ("fp", "ignore"))
    check_choice("tiebreak", tiebreak, ("distance", "none"))
    check_compat(compat)
    tb: Tiebreak = "distance" if tiebreak == "distance" else "none"
    if compat == "monai":
        # region hits: each target credits its best detection, other hits are ignored
        return Options(True, "ignore", False, None, tb, True)
    if compat == "luna16":
        return Options(False, "ignore", False, LUNA16_MAX_CANDIDATES, tb, False)
    dup: Duplicates = "ignore" if duplicates == "ignore" else "fp"
    return Options(bool(inclusive), dup, True, None, tb, False)


def first_per_group(keys: tuple[NDArray[Any], ...], group: NDArray[np.intp]) -> NDArray[np.intp]:
    """Index of the first element of each group under ``np.lexsort((*keys, group))``."""
    order = np.lexsort((*keys, group))
    g = group[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]


def local_index(
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


def solve_components(
    pairs: Pairs, comp: NDArray[np.intp], scores: NDArray[np.float64], tiebreak: Tiebreak
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Maximum-weight matching of each connected component with score-monotone weights.

    The pairs must be sorted by component. The weight of a detection is the dense rank of
    its score within the component plus one: integers >= 1, strictly increasing with the
    score, equal for ties, exact in float64 (the solver cannot confuse two score levels).
    """
    pi, pj, ratio = pairs
    ri, rows, row_starts = local_index(comp, pi)
    ci, cols, col_starts = local_index(comp, pj)
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


def one_to_one(
    pairs: Pairs, scores: NDArray[np.float64], n_gt: int, tiebreak: Tiebreak
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """One-to-one matching over all feasible pairs, solved per connected component.

    Components where every detection touches a single target (a target with its hits) are
    resolved by taking the best detection; components where every target touches a single
    detection by taking the closest target; the rest go to the assignment solver.
    """
    pi, pj, ratio = pairs
    n_det = scores.shape[0]
    if pi.size == 0:
        return EMPTY_I, EMPTY_I
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
        best = sel[first_per_group((pi[sel], tie[sel], -scores[pi[sel]]), comp[sel])]
        out_i.append(pi[best])
        out_j.append(pj[best])
    star_det = ~star_gt & (max_gt[comp] == 1)  # one detection touching several targets
    if star_det.any():
        sel = np.flatnonzero(star_det)
        best = sel[first_per_group((pj[sel], tie[sel]), comp[sel])]
        out_i.append(pi[best])
        out_j.append(pj[best])
    hard = np.flatnonzero(~star_gt & ~star_det)
    if hard.size:
        hard = hard[np.argsort(comp[hard], kind="stable")]
        i, j = solve_components(
            Pairs(pi[hard], pj[hard], ratio[hard]), comp[hard], scores, tiebreak
        )
        out_i.append(i)
        out_j.append(j)
    return np.concatenate(out_i), np.concatenate(out_j)


def many_to_one(
    pairs: Pairs, scores: NDArray[np.float64], tiebreak: Tiebreak
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Each target credits its best detection; a detection may credit several targets."""
    pi, pj, ratio = pairs
    if pi.size == 0:
        return EMPTY_I, EMPTY_I
    tie = ratio if tiebreak == "distance" else np.zeros_like(ratio)
    best = first_per_group((pi, tie, -scores[pi]), pj)
    return pi[best], pj[best]


def cap_mask(
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


def match_batch(
    scores: NDArray[np.float64],
    pairs: Pairs,
    n_gt: int,
    gt_ignored: NDArray[np.bool_],
    active: NDArray[np.bool_],
    opts: Options,
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
    counted = Pairs(pi[~ign], pj[~ign], ratio[~ign])
    near_target = np.zeros(n_det, dtype=bool)
    near_target[counted.det] = True

    if opts.one_to_one:
        mi, mj = one_to_one(counted, scores, n_gt, opts.tiebreak)
    else:
        mi, mj = many_to_one(counted, scores, opts.tiebreak)
    gt_hit[mj] = True
    gt_score[mj] = scores[mi]
    matched = np.zeros(n_det, dtype=bool)
    matched[mi] = True
    if mi.size:
        # a detection credited to several targets (many-to-one) points to the first of them
        first = first_per_group((mj,), mi)
        det_to_gt[mi[first]] = mj[first]
    det_label[matched] = 1
    not_counted = ~matched & near_ignored
    if opts.duplicates == "ignore":
        not_counted |= ~matched & near_target
    not_counted |= ~active
    det_label[not_counted] = -1
    return det_label, det_to_gt, gt_hit, gt_score
