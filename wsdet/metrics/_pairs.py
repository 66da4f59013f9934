"""Feasible (detection, target) pairs: within a radius of a target point, or inside a box.

One k-d tree serves all images of a batch (see :func:`candidate_pairs`); the exact hit test
is then applied to the candidates. Package-internal: used by :mod:`wsdet.metrics.matchers`.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from wsdet.metrics._checks import as_points, to_numpy

#: Relative slack of the inclusive radius test ``d <= r * (1 + INCLUSIVE_SLACK)``, so that
#: exact boundary cases such as the offset (3.6, 4.8) at radius 6 survive rounding.
INCLUSIVE_SLACK = 1e-9

EMPTY_I = np.zeros(0, dtype=np.intp)
EMPTY_F = np.zeros(0, dtype=np.float64)


class Located(NamedTuple):
    """Points of a batch of images: ``(n, ndim)`` coordinates and the image of each."""

    coords: NDArray[np.float64]
    img: NDArray[np.intp]


class Pairs(NamedTuple):
    """Feasible pairs: detection and target indices, and the distance relative to the reach
    (the tie-break among equal scores)."""

    det: NDArray[np.intp]
    gt: NDArray[np.intp]
    ratio: NDArray[np.float64]


NO_PAIRS = Pairs(EMPTY_I, EMPTY_I, EMPTY_F)


def flatten(lists: Any, n: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Flatten an object array of index lists into (owner, index) pairs."""
    lens = np.fromiter(map(len, lists), dtype=np.intp, count=n)
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.intp, count=total)
    owner = np.repeat(np.arange(n, dtype=np.intp), lens)
    return owner, flat


def candidate_pairs(
    dets: Located, gts: Located, reach: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """A superset of the pairs ``(i, j)`` in the same image with ``|det_i - gt_j| <= reach_j``.

    A k-d tree is built on the larger set and queried with the smaller one. Images are laid
    side by side along the first axis, each shifted past the previous one by more than any
    query radius, so that one tree serves all images; the caller filters the candidates
    with the exact test on the original coordinates.
    """
    (det, det_img), (gt, gt_img) = dets, gts
    if det.shape[0] == 0 or gt.shape[0] == 0:
        return EMPTY_I, EMPTY_I
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
        pj, pi = flatten(lists, gt.shape[0])
    else:
        tree = cKDTree(gt, balanced_tree=False, compact_nodes=False)
        lists = tree.query_ball_point(det, rmax, return_sorted=False)
        pi, pj = flatten(lists, det.shape[0])
    return pi, pj


def point_pairs(
    dets: Located,
    gts: Located,
    radius: NDArray[np.float64],
    spacing: NDArray[np.float64],
    inclusive: bool,
) -> Pairs:
    """Feasible (detection, target) pairs and their distance relative to the radius."""
    det, gt = dets.coords, gts.coords
    pi, pj = candidate_pairs(
        Located(det * spacing, dets.img), Located(gt * spacing, gts.img), radius
    )
    if pi.size == 0:
        return NO_PAIRS
    diff = (det[pi] - gt[pj]) * spacing
    d2 = np.einsum("ij,ij->i", diff, diff)
    r = radius[pj]
    if inclusive:
        keep = d2 <= (r * (1.0 + INCLUSIVE_SLACK)) ** 2
    else:
        keep = d2 < r * r
    pi, pj, d2, r = pi[keep], pj[keep], d2[keep], r[keep]
    ratio = np.divide(np.sqrt(d2), r, out=np.zeros_like(d2), where=r > 0)
    return Pairs(pi, pj, ratio)


def box_pairs(dets: Located, lows: Located, hi: NDArray[np.float64]) -> Pairs:
    """Pairs with the detection inside the half-open box ``[lo, hi)``; ratio to the centre."""
    det, lo = dets.coords, lows.coords
    centre = (lo + hi) / 2.0
    half_diag = np.sqrt(np.sum(((hi - lo) / 2.0) ** 2, axis=1))
    pi, pj = candidate_pairs(dets, Located(centre, lows.img), half_diag)
    if pi.size == 0:
        return NO_PAIRS
    p = det[pi]
    keep = np.all((lo[pj] <= p) & (p < hi[pj]), axis=1)
    pi, pj = pi[keep], pj[keep]
    dist = np.sqrt(np.sum((det[pi] - centre[pj]) ** 2, axis=1))
    hd = half_diag[pj]
    ratio = np.divide(dist, hd, out=np.zeros_like(dist), where=hd > 0)
    return Pairs(pi, pj, ratio)


def as_boxes(
    boxes_lo: Any, boxes_hi: Any, name: str = "boxes"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate the ``(m, ndim)`` lower and upper corners of non-empty boxes."""
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


def as_box_target(t: Any, n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One image's boxes: a ``(lo, hi)`` pair or an ``(m, 2, ndim)`` array."""
    t = to_numpy(t)
    if isinstance(t, tuple) and len(t) == 2:
        return as_boxes(t[0], t[1], f"targets[{n}]")
    arr = np.asarray(t, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 0)), np.zeros((0, 0))
    if arr.ndim != 3 or arr.shape[1] != 2:
        raise ValueError(
            f"targets[{n}] must be a (lo, hi) pair of (m, ndim) arrays or an (m, 2, ndim) array "
            f"when match='boxes'; got shape {arr.shape}"
        )
    return as_boxes(arr[:, 0], arr[:, 1], f"targets[{n}]")
