"""Two-way bootstrap: resample images *and* the objects their targets show.

When the same object appears in several test images (MNIST grids built from a pool of a
few hundred digits: 500 test grids show only 195 distinct "4"s), resampling images alone
treats repeated targets as independent and underestimates the spread of every metric. The
two-way ("pigeonhole") bootstrap of Owen (2007, *Ann. Appl. Stat.* 1(2), 386-411) draws two
independent sets of multiplicities per replicate: ``W`` over images (``N`` draws from ``N``)
and ``V`` over clusters (``D`` draws from the ``D`` distinct objects). A target of image
``g`` showing object ``c`` weighs ``W[g] * V[c]``; a false positive of image ``g`` weighs
``W[g]``. The replicate FROC curve is then

- sensitivity(t) = sum of the weights of the targets found at threshold ``t`` / sum of the
  weights of all counted targets;
- FP per image(t) = sum of the weights of the false positives at ``t`` / ``sum(W)``.

With ``V = 1`` this is exactly the image bootstrap of :func:`~wsdet.metrics.bootstrap`.
The two-way bootstrap is conservative (its variance estimate includes both sources and
slightly more), which is the safe side for a claim. Micro sensitivity only, no
compatibility modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_bool, check_int
from wsdet.metrics._checks import check_ci
from wsdet.metrics.bootstrap import (
    BootstrapResult,
    MetricFn,
    PairedBootstrapResult,
    Seed,
    bootstrap_weights,
    metric_values,
    sign_test,
    summarize_replicates,
)
from wsdet.metrics.curve import FROC
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult

__all__ = ["two_way_bootstrap", "two_way_paired_bootstrap", "two_way_weights"]

#: Elements per ``(replicates x thresholds)`` array in one block (memory bound).
_BLOCK_ELEMENTS = 4_000_000


def two_way_weights(
    n_images: int, n_clusters: int, B: int = 1000, seed: Seed = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Image multiplicities ``W`` ``(B, n_images)`` and cluster multiplicities ``V``
    ``(B, n_clusters)`` of ``B`` two-way replicates (each row a multinomial draw summing
    to its size). ``W`` equals :func:`~wsdet.metrics.bootstrap_weights` with the same seed.

    >>> w, v = two_way_weights(3, 2, B=4, seed=0)
    >>> w.sum(axis=1).tolist(), v.sum(axis=1).tolist()
    ([3, 3, 3, 3], [2, 2, 2, 2])
    """
    n_clusters = check_int("n_clusters", n_clusters, minimum=1)
    w = bootstrap_weights(n_images, B, seed)
    if isinstance(seed, np.random.Generator) or seed is None:
        return w, bootstrap_weights(n_clusters, B, seed)
    # an independent stream for the clusters, derived from the same integer seed
    return w, bootstrap_weights(n_clusters, B, np.random.default_rng([int(seed), 1]))


@dataclass(frozen=True)
class _Events:
    """The counted events of one method, with the thresholds of the full-data curve."""

    thresholds: NDArray[np.float64]  # (G + 1,), +inf first
    target_img: NDArray[np.intp]  # (T,) every counted target's image
    target_cluster: NDArray[np.intp]  # (T,) and cluster (0..D-1)
    target_group: NDArray[np.intp]  # (T,) group at which it is found, G if never
    fp_img: NDArray[np.intp]  # (F,)
    fp_group: NDArray[np.intp]  # (F,)
    n_images: int


def _cluster_ids(
    results: Sequence[MatchResult], clusters: Sequence[ArrayLike]
) -> tuple[list[NDArray[Any]], NDArray[Any]]:
    """Per image, the cluster label of every target; and the sorted distinct labels."""
    if len(clusters) != len(results):
        raise ValueError(
            f"clusters must hold one array per image ({len(results)}); got {len(clusters)}"
        )
    labels = []
    for n, (r, c) in enumerate(zip(results, clusters, strict=True)):
        arr = np.asarray(c)
        if arr.ndim != 1 or arr.shape[0] != r.gt_hit.shape[0]:
            raise ValueError(
                f"clusters[{n}] must be a 1-D array with one label per target of image {n} "
                f"({r.gt_hit.shape[0]}); got shape {arr.shape}"
            )
        labels.append(arr)
    counted = [c[~r.gt_ignored] for r, c in zip(results, labels, strict=True)]
    flat = np.concatenate(counted) if counted else np.zeros(0)
    if flat.size == 0:
        raise ValueError("the results hold no counted targets: sensitivity is undefined")
    return labels, np.unique(flat)


def _events(
    results: Sequence[MatchResult], labels: list[NDArray[Any]], distinct: NDArray[Any]
) -> _Events:
    table = EventTable(list(results))  # validates the results; gives the thresholds
    thresholds = table.thresholds
    uniq = thresholds[1:][::-1]  # ascending unique event scores

    def group_of(scores: NDArray[np.float64]) -> NDArray[np.intp]:
        # group 0 = highest score; the score is one of the thresholds
        return (uniq.size - 1 - np.searchsorted(uniq, scores)).astype(np.intp)

    t_img, t_clu, t_grp, f_img, f_grp = [], [], [], [], []
    for n, (r, lab) in enumerate(zip(results, labels, strict=True)):
        keep = ~r.gt_ignored
        found = r.gt_hit[keep]
        group = np.full(int(keep.sum()), uniq.size, dtype=np.intp)
        group[found] = group_of(r.gt_score[keep][found])
        t_img.append(np.full(group.size, n, dtype=np.intp))
        t_clu.append(np.searchsorted(distinct, lab[keep]).astype(np.intp))
        t_grp.append(group)
        fp_scores = r.scores[r.det_label == 0]
        f_img.append(np.full(fp_scores.size, n, dtype=np.intp))
        f_grp.append(group_of(fp_scores))
    cat = np.concatenate
    return _Events(
        thresholds, cat(t_img), cat(t_clu), cat(t_grp), cat(f_img), cat(f_grp), len(results)
    )


def _cumulative(weights: NDArray[np.int64], groups: NDArray[np.intp], g: int) -> NDArray[np.int64]:
    """``(B, g + 1)``: per row, the cumulative sum over groups of the event ``weights``
    ``(B, E)`` (events in group ``>= g``, i.e. never counted, are dropped); 0 at the origin."""
    b = weights.shape[0]
    keep = groups < g
    flat = (np.arange(b, dtype=np.int64)[:, None] * g + groups[keep][None, :]).ravel()
    per_group = np.bincount(flat, weights=weights[:, keep].ravel(), minlength=b * g)
    out = np.zeros((b, g + 1), dtype=np.int64)
    out[:, 1:] = np.cumsum(np.rint(per_group).astype(np.int64).reshape(b, g), axis=1)
    return out


def _curves(ev: _Events, w: NDArray[np.int64], v: NDArray[np.int64]) -> FROC[NDArray[np.float64]]:
    """The replicate curves of image weights ``w`` ``(B, N)`` and cluster weights ``v``
    ``(B, D)``."""
    g = ev.thresholds.size - 1
    target_w = w[:, ev.target_img] * v[:, ev.target_cluster]  # (B, T)
    tp = _cumulative(target_w, ev.target_group, g)
    fp = _cumulative(w[:, ev.fp_img], ev.fp_group, g)
    den = target_w.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / den[:, None]
        fp_avg = fp / w.sum(axis=1).astype(np.float64)[:, None]
    sens[den == 0] = np.nan
    return FROC(ev.thresholds, fp_avg, sens, tp, fp, ev.n_images, int(ev.target_img.size))


def _replicates(
    fn: MetricFn, ev: _Events, w: NDArray[np.int64], v: NDArray[np.int64], vectorized: bool
) -> NDArray[np.float64]:
    block = max(1, _BLOCK_ELEMENTS // max(ev.thresholds.size, ev.target_img.size, 1))
    out = np.empty(w.shape[0])
    for start in range(0, w.shape[0], block):
        rows = slice(start, start + block)
        out[rows] = metric_values(fn, _curves(ev, w[rows], v[rows]), vectorized)
    return out


def _prepare(
    metric_fn: MetricFn, results: Sequence[MatchResult], clusters: Sequence[ArrayLike]
) -> tuple[_Events, int]:
    if not callable(metric_fn):
        raise TypeError("metric_fn must be a callable taking a FROC curve")
    if isinstance(results, MatchResult) or not isinstance(results, Sequence) or not results:
        raise TypeError("results must be a non-empty sequence of MatchResult (one per image)")
    labels, distinct = _cluster_ids(results, clusters)
    return _events(results, labels, distinct), int(distinct.size)


def two_way_bootstrap(
    metric_fn: MetricFn,
    results: Sequence[MatchResult],
    clusters: Sequence[ArrayLike],
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    vectorized: bool = True,
) -> BootstrapResult:
    """Bootstrap a FROC metric resampling images and, independently, the objects
    (clusters) their targets show; see the module text.

    Parameters
    ----------
    metric_fn : callable
        ``FROC -> float``, as in :func:`~wsdet.metrics.bootstrap` (e.g.
        ``functools.partial(fauc, max_fp=2)``).
    results : sequence of MatchResult
        One per image, from :func:`~wsdet.metrics.match_images` (or ``report.matches``).
    clusters : sequence of array_like
        Per image, one label per target (in the order of that image's targets, ignored
        targets included): targets with equal labels show the same object (e.g. the index
        of an MNIST digit in its pool). Labels may be any sortable values.
    B, seed, ci, vectorized
        As in :func:`~wsdet.metrics.bootstrap`. The image weights equal
        :func:`~wsdet.metrics.bootstrap_weights` for the same seed.

    Returns
    -------
    BootstrapResult
        The full-data estimate (identical to the image bootstrap's) and the two-way SD/CI;
        ``n_without_targets`` counts replicates whose targets all weigh 0.

    Examples
    --------
    >>> from functools import partial
    >>> from wsdet.metrics import fauc, match_points
    >>> res = [match_points([[0, 0]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.8], [[30, 30]])]
    >>> bs = two_way_bootstrap(partial(fauc, max_fp=1.0), res, [[7], [7]], B=200)
    >>> bs.estimate, bs.sd > 0
    (0.5, True)
    """
    level = check_ci(ci)
    check_bool("vectorized", vectorized)
    ev, n_clusters = _prepare(metric_fn, results, clusters)
    w, v = two_way_weights(ev.n_images, n_clusters, B, seed)
    estimate = float(metric_fn(EventTable(list(results)).curve()))
    reps = _replicates(metric_fn, ev, w, v, vectorized)
    sd, interval, n_nan = summarize_replicates(reps, level)
    target_w = (w[:, ev.target_img] * v[:, ev.target_cluster]).sum(axis=1)
    return BootstrapResult(
        estimate, sd, interval, level, n_nan, int(np.count_nonzero(target_w == 0)), reps
    )


def two_way_paired_bootstrap(
    metric_fn: MetricFn,
    results_a: Sequence[MatchResult],
    results_b: Sequence[MatchResult],
    clusters: Sequence[ArrayLike],
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    vectorized: bool = True,
) -> PairedBootstrapResult:
    """The difference ``metric(a) - metric(b)`` of two methods on the same images and
    targets, on shared two-way replicates (the same ``W`` and ``V`` for both).

    Parameters are those of :func:`two_way_bootstrap`; ``results_a`` and ``results_b``
    must match the same targets per image (``clusters`` describes them).

    >>> from functools import partial
    >>> from wsdet.metrics import fauc, match_points
    >>> a = [match_points([[0, 0]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.8], [[5, 6]])]
    >>> b = [match_points([[9, 9]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.8], [[5, 6]])]
    >>> two_way_paired_bootstrap(partial(fauc, max_fp=1.0), a, b, [[3], [4]], B=200).difference
    0.75
    """
    level = check_ci(ci)
    check_bool("vectorized", vectorized)
    if len(results_a) != len(results_b):
        raise ValueError(
            f"results_a and results_b must cover the same images; got {len(results_a)} and "
            f"{len(results_b)} results"
        )
    for n, (ra, rb) in enumerate(zip(results_a, results_b, strict=True)):
        if not np.array_equal(ra.gt_ignored, rb.gt_ignored):
            raise ValueError(f"results_a and results_b differ in the targets of image {n}")
    ev_a, n_clusters = _prepare(metric_fn, results_a, clusters)
    ev_b, _ = _prepare(metric_fn, results_b, clusters)
    w, v = two_way_weights(ev_a.n_images, n_clusters, B, seed)
    est_a = float(metric_fn(EventTable(list(results_a)).curve()))
    est_b = float(metric_fn(EventTable(list(results_b)).curve()))
    diff = _replicates(metric_fn, ev_a, w, v, vectorized) - _replicates(
        metric_fn, ev_b, w, v, vectorized
    )
    sd, interval, n_nan = summarize_replicates(diff, level)
    p_value, frac = sign_test(diff, est_a - est_b)
    return PairedBootstrapResult(
        est_a - est_b, sd, interval, level, p_value, frac, n_nan, est_a, est_b, diff
    )
