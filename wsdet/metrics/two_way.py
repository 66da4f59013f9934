"""Two-way bootstrap: resample images *and* the objects they show.

When the same object appears in several test images (MNIST grids built from a pool of a
few hundred digits: 500 test grids show only 195 distinct "4"s), resampling images alone
treats repeated objects as independent and underestimates the spread of every metric. The
two-way ("pigeonhole") bootstrap of Owen (2007, *Ann. Appl. Stat.* 1(2), 386-411) draws two
independent sets of multiplicities per replicate: ``W`` over images (``N`` draws from ``N``)
and ``V`` over objects (``D`` draws from the ``D`` distinct objects). A target of image
``g`` showing object ``c`` weighs ``W[g] * V[c]``. A false positive weighs ``W[g] * V[c]``
when it lies on object ``c`` (``fp_clusters``: a look-alike digit that fools the method
in every grid it appears in), else ``W[g]``. The replicate FROC curve is then

- sensitivity(t) = sum of the weights of the targets found at threshold ``t`` / sum of the
  weights of all counted targets;
- FP per image(t) = sum of the weights of the false positives at ``t`` / ``sum(W)``.

With ``V = 1`` this is exactly the image bootstrap of :func:`~wsdet.metrics.bootstrap`.
The two-way bootstrap is conservative (its variance estimate includes both sources and
slightly more), which is the safe side for a claim. Object labels are non-negative
integers (e.g. an MNIST digit's index in its pool). Micro sensitivity only, no
compatibility modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """The counted events of one method, with the full-data event table."""

    table: EventTable  # the full-data curve and its thresholds
    target_img: NDArray[np.intp]  # (T,) every counted target's image
    target_cluster: NDArray[np.intp]  # (T,) and object (0..D-1)
    target_group: NDArray[np.intp]  # (T,) group at which it is found, G if never
    fp_img: NDArray[np.intp]  # (F,)
    fp_cluster: NDArray[np.intp]  # (F,) the object it lies on, -1 for none
    fp_group: NDArray[np.intp]  # (F,)

    @property
    def n_groups(self) -> int:
        return self.table.n_groups


def _labels(
    name: str, per_image: Sequence[ArrayLike], sizes: list[int], what: str
) -> list[NDArray[np.int64]]:
    """Per image, one integer label per item (``what``), checked."""
    if isinstance(per_image, np.ndarray) or not isinstance(per_image, Sequence):
        raise TypeError(f"{name} must be a sequence with one array per image")
    if len(per_image) != len(sizes):
        raise ValueError(
            f"{name} must hold one array per image ({len(sizes)}); got {len(per_image)}"
        )
    out = []
    for n, (c, k) in enumerate(zip(per_image, sizes, strict=True)):
        arr = np.asarray(c)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or arr.shape[0] != k or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{name}[{n}] must be a 1-D integer array with one label per {what} of image "
                f"{n} ({k}); got shape {arr.shape}, dtype {arr.dtype}"
            )
        out.append(arr.astype(np.int64))
    return out


def _checked(
    results: Sequence[MatchResult],
    clusters: Sequence[ArrayLike],
    fp_clusters: Sequence[ArrayLike] | None,
) -> tuple[list[NDArray[np.int64]], list[NDArray[np.int64]] | None]:
    """The target labels (``>= 0``) and detection labels (``-1``: on no object)."""
    if isinstance(results, MatchResult) or not isinstance(results, Sequence) or not results:
        raise TypeError("results must be a non-empty sequence of MatchResult (one per image)")
    targets = _labels("clusters", clusters, [r.gt_hit.shape[0] for r in results], "target")
    if any((t < 0).any() for t in targets):
        raise ValueError("clusters must hold non-negative object labels")
    if sum(int((~r.gt_ignored).sum()) for r in results) == 0:
        raise ValueError("the results hold no counted targets: sensitivity is undefined")
    if fp_clusters is None:
        return targets, None
    dets = _labels("fp_clusters", fp_clusters, [r.scores.shape[0] for r in results], "detection")
    if any((d < -1).any() for d in dets):
        raise ValueError("fp_clusters must hold object labels >= 0, or -1 for no object")
    return targets, dets


def _distinct(*label_sets: list[NDArray[np.int64]] | None) -> NDArray[np.int64]:
    """The sorted distinct object labels (``>= 0``) of all the label sets."""
    flat = [a for labels in label_sets if labels is not None for a in labels]
    every = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return np.unique(every[every >= 0])


def _events(
    results: Sequence[MatchResult],
    targets: list[NDArray[np.int64]],
    dets: list[NDArray[np.int64]] | None,
    distinct: NDArray[np.int64],
) -> _Events:
    table = EventTable(list(results))  # validates the results; gives the thresholds
    uniq = table.thresholds[1:][::-1]  # ascending unique event scores

    def group_of(scores: NDArray[np.float64]) -> NDArray[np.intp]:
        # group 0 = highest score; the score is one of the thresholds
        return (uniq.size - 1 - np.searchsorted(uniq, scores)).astype(np.intp)

    def index(labels: NDArray[np.int64]) -> NDArray[np.intp]:
        return np.where(labels >= 0, np.searchsorted(distinct, labels), -1).astype(np.intp)

    t_img, t_clu, t_grp, f_img, f_clu, f_grp = [], [], [], [], [], []
    for n, (r, lab) in enumerate(zip(results, targets, strict=True)):
        keep = ~r.gt_ignored
        found = r.gt_hit[keep]
        group = np.full(int(keep.sum()), uniq.size, dtype=np.intp)
        group[found] = group_of(r.gt_score[keep][found])
        t_img.append(np.full(group.size, n, dtype=np.intp))
        t_clu.append(index(lab[keep]))
        t_grp.append(group)
        is_fp = r.det_label == 0
        f_img.append(np.full(int(is_fp.sum()), n, dtype=np.intp))
        f_clu.append(index(dets[n][is_fp]) if dets is not None else np.full(int(is_fp.sum()), -1))
        f_grp.append(group_of(r.scores[is_fp]))
    cat = np.concatenate
    return _Events(
        table, cat(t_img), cat(t_clu), cat(t_grp), cat(f_img), cat(f_clu).astype(np.intp),
        cat(f_grp),
    )  # fmt: skip


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


def _object_weights(v: NDArray[np.int64], cluster: NDArray[np.intp]) -> NDArray[np.int64]:
    """``(B, E)``: ``v[:, c]`` per event on object ``c``, 1 for events on none (``-1``)."""
    out = np.ones((v.shape[0], cluster.size), dtype=np.int64)
    on = cluster >= 0
    out[:, on] = v[:, cluster[on]]
    return out


def _curves(ev: _Events, w: NDArray[np.int64], v: NDArray[np.int64]) -> FROC[NDArray[np.float64]]:
    """The replicate curves of image weights ``w`` ``(B, N)`` and object weights ``v``
    ``(B, D)``."""
    g = ev.n_groups
    target_w = w[:, ev.target_img] * v[:, ev.target_cluster]  # (B, T)
    fp_w = w[:, ev.fp_img] * _object_weights(v, ev.fp_cluster)  # (B, F)
    tp = _cumulative(target_w, ev.target_group, g)
    fp = _cumulative(fp_w, ev.fp_group, g)
    den = target_w.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / den[:, None]
        fp_avg = fp / w.sum(axis=1).astype(np.float64)[:, None]
    sens[den == 0] = np.nan
    n_images = ev.table.n_images
    return FROC(ev.table.thresholds, fp_avg, sens, tp, fp, n_images, int(ev.target_img.size))


def _replicates(
    fn: MetricFn, ev: _Events, w: NDArray[np.int64], v: NDArray[np.int64], vectorized: bool
) -> tuple[NDArray[np.float64], int]:
    """Every replicate's metric, and the number of replicates whose targets all weigh 0."""
    widest = max(ev.n_groups + 1, ev.target_img.size, ev.fp_img.size, 1)
    block = max(1, _BLOCK_ELEMENTS // widest)
    out = np.empty(w.shape[0])
    without = 0
    for start in range(0, w.shape[0], block):
        rows = slice(start, start + block)
        curves = _curves(ev, w[rows], v[rows])
        out[rows] = metric_values(fn, curves, vectorized)
        without += int(np.isnan(curves.sensitivity[:, 0]).sum())
    return out, without


def _check_metric(metric_fn: object) -> None:
    if not callable(metric_fn):
        raise TypeError("metric_fn must be a callable taking a FROC curve")


def two_way_bootstrap(
    metric_fn: MetricFn,
    results: Sequence[MatchResult],
    clusters: Sequence[ArrayLike],
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    fp_clusters: Sequence[ArrayLike] | None = None,
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
        Per image, one non-negative integer label per target (in the order of that image's
        targets, ignored targets included): targets with equal labels show the same object
        (e.g. the index of an MNIST digit in its pool).
    fp_clusters : sequence of array_like, optional
        Per image, one label per detection (in the order of ``results[i].scores``): the
        object it lies on, ``-1`` for none. Only false positives use it: a false positive
        on an object weighs ``W[g] * V[c]``. Default: false positives weigh ``W[g]``.
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
    _check_metric(metric_fn)
    targets, dets = _checked(results, clusters, fp_clusters)
    distinct = _distinct(targets, dets)
    ev = _events(results, targets, dets, distinct)
    w, v = two_way_weights(ev.table.n_images, distinct.size, B, seed)
    estimate = float(metric_fn(ev.table.curve()))
    reps, without = _replicates(metric_fn, ev, w, v, vectorized)
    sd, interval, n_nan = summarize_replicates(reps, level)
    return BootstrapResult(estimate, sd, interval, level, n_nan, without, reps)


def two_way_paired_bootstrap(
    metric_fn: MetricFn,
    results_a: Sequence[MatchResult],
    results_b: Sequence[MatchResult],
    clusters: Sequence[ArrayLike],
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    fp_clusters_a: Sequence[ArrayLike] | None = None,
    fp_clusters_b: Sequence[ArrayLike] | None = None,
    vectorized: bool = True,
) -> PairedBootstrapResult:
    """The difference ``metric(a) - metric(b)`` of two methods on the same images and
    targets, on shared two-way replicates (the same ``W`` and ``V`` for both).

    Parameters are those of :func:`two_way_bootstrap`; ``results_a`` and ``results_b``
    must match the same targets per image (``clusters`` describes them), and
    ``fp_clusters_a`` / ``fp_clusters_b`` label each method's own detections.

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
    _check_metric(metric_fn)
    targets, dets_a = _checked(results_a, clusters, fp_clusters_a)
    _, dets_b = _checked(results_b, clusters, fp_clusters_b)
    distinct = _distinct(targets, dets_a, dets_b)  # one V for both methods
    ev_a = _events(results_a, targets, dets_a, distinct)
    ev_b = _events(results_b, targets, dets_b, distinct)
    w, v = two_way_weights(ev_a.table.n_images, distinct.size, B, seed)
    est_a = float(metric_fn(ev_a.table.curve()))
    est_b = float(metric_fn(ev_b.table.curve()))
    diff = _replicates(metric_fn, ev_a, w, v, vectorized)[0]
    diff = diff - _replicates(metric_fn, ev_b, w, v, vectorized)[0]
    sd, interval, n_nan = summarize_replicates(diff, level)
    p_value, frac = sign_test(diff, est_a - est_b)
    return PairedBootstrapResult(
        est_a - est_b, sd, interval, level, p_value, frac, n_nan, est_a, est_b, diff
    )
