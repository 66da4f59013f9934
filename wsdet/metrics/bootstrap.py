"""Bootstrap over images: standard deviations, confidence intervals, paired comparisons.

Images are resampled with replacement (the paper's "drawing with replacement subsets of the
size of the full test set"). Matching is within an image, so the per-detection labels do not
change between replicates: a replicate is the FROC curve of the same events with image
multiplicities ``w`` (a multinomial draw, ``sum(w) = N``). All replicates are computed as
sparse-times-dense products over one global sort, in blocks, and a metric that only reads
the curve up to ``max_fp`` false positives per image only needs the sorted prefix that can
reach that budget (checked per replicate, extended when a replicate falls short, so the
result is exactly that of the full curves).

The point estimate is the metric of the full data, never the bootstrap mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeGuard

import numpy as np
from numpy.typing import NDArray

from wsdet._checks import check_float, check_int
from wsdet.metrics._checks import Compat, SensitivityKind, check_ci, to_numpy
from wsdet.metrics.curve import FROC
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult
from wsdet.metrics.readings import fauc

__all__ = [
    "BootstrapResult",
    "Evaluated",
    "PairedBootstrapResult",
    "bootstrap",
    "bootstrap_table",
    "bootstrap_weights",
    "paired_bootstrap",
]

MetricFn = Callable[[FROC[Any]], Any]
Seed = int | np.random.Generator | None


class Evaluated(Protocol):
    """What :func:`paired_bootstrap` reads from an evaluation: an
    :class:`~wsdet.metrics.EvaluationReport` or an :class:`~wsdet.metrics.Evaluation`."""

    @property
    def matches(self) -> Sequence[MatchResult]:
        """Per-image match results of every candidate."""

    @property
    def max_fp(self) -> float:
        """The FAUC range."""

    @property
    def settings(self) -> Mapping[str, Any]:
        """The evaluation options (``compat``, ``sensitivity``, ``interpolation``, ...)."""


#: Elements per ``(replicates x thresholds)`` array in one block (memory bound).
_BLOCK_ELEMENTS = 2_000_000
#: Candidate truncation points, as multiples of the FP budget in the unweighted data.
_PREFIX_FACTORS = (1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 5.0, 10.0)


def _interval(ci: tuple[float, float] | None, level: float | None, fmt: str) -> str:
    """`` (95% CI lo to hi)`` with the bounds in format ``fmt``, or nothing."""
    if ci is None or level is None:
        return ""
    return f" ({100 * level:g}% CI {ci[0]:{fmt}} to {ci[1]:{fmt}})"


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A bootstrapped metric.

    Attributes
    ----------
    estimate : float
        The metric of the full data.
    sd : float
        Standard deviation (``ddof=1``) of the finite replicates.
    ci : tuple of float or None
        Percentile confidence interval (``np.percentile``, linear), if requested.
    ci_level : float or None
        Its level, e.g. 0.95.
    n_nan : int
        Replicates whose metric is not finite (excluded from ``sd`` and ``ci``).
    n_without_targets : int
        Replicates that drew no image with a target (sensitivity undefined).
    replicates : numpy.ndarray
        ``(B,)`` metric of every replicate.
    """

    estimate: float
    sd: float
    ci: tuple[float, float] | None
    ci_level: float | None
    n_nan: int
    n_without_targets: int
    replicates: NDArray[np.float64] = field(repr=False)

    def __str__(self) -> str:
        return f"{self.estimate:.4f} ± {self.sd:.4f}" + _interval(self.ci, self.ci_level, ".4f")


@dataclass(frozen=True, eq=False)
class PairedBootstrapResult:
    """A bootstrapped difference ``metric(a) - metric(b)`` on shared resamples.

    Attributes
    ----------
    difference : float
        ``estimate_a - estimate_b`` on the full data.
    sd : float
        Standard deviation (``ddof=1``) of the replicate differences.
    ci : tuple of float or None
        Percentile confidence interval of the difference, if requested.
    ci_level : float or None
        Its level.
    p_value : float
        Two-sided bootstrap p-value for "no difference":
        ``min(1, 2 * (1 + min(#{d_b <= 0}, #{d_b >= 0})) / (B' + 1))`` over the ``B'``
        finite replicates.
    frac_opposite : float
        Fraction of replicates whose difference has the sign opposite to ``difference``
        (or is zero).
    n_nan : int
        Replicates with a non-finite difference.
    estimate_a, estimate_b : float
        The two metrics on the full data.
    replicates : numpy.ndarray
        ``(B,)`` replicate differences.
    """

    difference: float
    sd: float
    ci: tuple[float, float] | None
    ci_level: float | None
    p_value: float
    frac_opposite: float
    n_nan: int
    estimate_a: float
    estimate_b: float
    replicates: NDArray[np.float64] = field(repr=False)

    def __str__(self) -> str:
        interval = _interval(self.ci, self.ci_level, "+.4f")
        return f"{self.difference:+.4f} ± {self.sd:.4f}{interval}, p = {self.p_value:.4g}"


def bootstrap_weights(n_images: int, B: int = 1000, seed: Seed = 0) -> NDArray[np.int64]:
    """Multinomial image multiplicities of ``B`` bootstrap samples of ``n_images`` images.

    Row ``b`` counts how often each image was drawn when drawing ``n_images`` images with
    replacement; every row sums to ``n_images``.

    Parameters
    ----------
    n_images : int
        ``N >= 1``.
    B : int
        Number of replicates ``>= 1``.
    seed : int or numpy.random.Generator or None
        Seed (default 0: reproducible) or generator.

    Returns
    -------
    numpy.ndarray
        ``(B, N)`` int64.

    Examples
    --------
    >>> w = bootstrap_weights(4, B=3, seed=1)
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 4), [4, 4, 4])
    """
    n = check_int("n_images", n_images, minimum=1)
    b = check_int("B", B, minimum=1)
    if not (
        seed is None
        or isinstance(seed, np.random.Generator)
        or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0)
    ):
        raise TypeError(f"seed must be a non-negative int, a numpy Generator or None; got {seed!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(b, n))
    flat = (draws + (np.arange(b, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.int64)


def metric_values(metric_fn: MetricFn, curve: FROC[Any], vectorized: bool) -> NDArray[np.float64]:
    rows = curve.fp_avg.shape[0]
    if vectorized:
        out = np.asarray(to_numpy(metric_fn(curve)), dtype=np.float64)
        if out.shape != (rows,):
            raise ValueError(
                f"metric_fn must return one value per curve of a stack (shape ({rows},)); got "
                f"shape {out.shape}. Write it with NumPy operations on the last axis, or pass "
                "vectorized=False"
            )
        return out
    vals = np.empty(rows)
    for b in range(rows):
        row = FROC(
            curve.thresholds,
            curve.fp_avg[b],
            curve.sensitivity[b],
            curve.tp[b],
            curve.fp[b],
            curve.n_images,
            curve.n_targets,
        )
        vals[b] = float(metric_fn(row))
    return vals


def _needed_prefixes(
    table: EventTable, weights: NDArray[np.int64], max_fp: float | None
) -> NDArray[np.intp]:
    """Per replicate, a number of threshold groups after which its curve is past ``max_fp``
    FP per image (so the metric cannot see the rest), chosen among a few candidate cuts."""
    total = table.n_groups
    if max_fp is None or total == 0:
        return np.full(weights.shape[0], total, dtype=np.intp)
    cuts = np.unique([table.prefix_groups(max_fp * m) for m in _PREFIX_FACTORS] + [total])
    weighted_fp = weights @ table.fp_counts(cuts)  # (B, len(cuts))
    past = weighted_fp / weights.sum(axis=1).astype(np.float64)[:, None] > max_fp
    past[:, -1] = True  # the whole curve always suffices
    need: NDArray[np.intp] = cuts[np.argmax(past, axis=1)].astype(np.intp)
    return need


def _replicates(
    metric_fns: Sequence[MetricFn],
    table: EventTable,
    weights: NDArray[np.int64],
    max_fp: float | None,
    vectorized: bool,
) -> NDArray[np.float64]:
    """``(len(metric_fns), B)``: every metric of every weighted replicate, using only the
    prefix of thresholds the replicate needs (the same curves feed every metric)."""
    n_rep = weights.shape[0]
    total = table.n_groups
    need = _needed_prefixes(table, weights, max_fp)
    # a metric bounded by max_fp reads the curve as a function of FP per image: the points
    # inside horizontal / vertical runs are invisible to it and can be left out
    compact = max_fp is not None and table.compat != "monai"
    order = np.argsort(need, kind="stable")
    out = np.empty((len(metric_fns), n_rep))
    start = 0
    while start < n_rep:
        # replicates sorted by the prefix they need; a block shares the largest of them
        block = max(1, _BLOCK_ELEMENTS // (int(need[order[start]]) + 1))
        rows = order[start : start + block]
        prefix = int(need[rows].max())
        block = max(1, _BLOCK_ELEMENTS // (prefix + 1))
        rows = order[start : start + block]
        prefix = int(need[rows].max())
        start += rows.size
        while rows.size:
            curves = table.weighted(weights[rows], prefix, compact=compact)
            if prefix >= total or max_fp is None:
                ok = np.ones(rows.size, dtype=bool)
            else:  # exactness check: the truncated curve went past the budget
                ok = curves.fp_avg[:, -1] > max_fp
            for k, fn in enumerate(metric_fns):
                out[k, rows[ok]] = metric_values(fn, curves, vectorized)[ok]
            rows = rows[~ok]
            prefix = min(total, 2 * prefix)
    return out


def summarize_replicates(
    values: NDArray[np.float64], ci: float | None
) -> tuple[float, tuple[float, float] | None, int]:
    """Standard deviation (``ddof=1``), percentile interval at level ``ci`` (or None) and
    number of non-finite values of bootstrap replicates."""
    finite = values[np.isfinite(values)]
    sd = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    interval: tuple[float, float] | None = None
    if ci is not None:
        if finite.size:
            alpha = 100.0 * (1.0 - ci) / 2.0
            lo, hi = np.percentile(finite, [alpha, 100.0 - alpha])
            interval = (float(lo), float(hi))
        else:
            interval = (float("nan"), float("nan"))
    return sd, interval, int(values.size - finite.size)


def _check_metric(metric_fn: object) -> None:
    if not callable(metric_fn):
        raise TypeError(
            "metric_fn must be a callable taking a FROC curve, e.g. "
            "functools.partial(fauc, max_fp=2.0)"
        )


def _horizon(max_fp: float | None) -> float | None:
    return None if max_fp is None else check_float("max_fp", max_fp, positive=True)


def bootstrap_table(
    table: EventTable,
    metric_fns: Sequence[MetricFn],
    weights: NDArray[np.int64],
    *,
    ci: float | None = None,
    max_fp: float | None = None,
    vectorized: bool = True,
) -> list[BootstrapResult]:
    """Bootstrap several metrics of one event table on the same replicates.

    The building block of :func:`bootstrap` and :class:`~wsdet.metrics.Evaluation`: every
    metric reads the same weighted curves (built once per block of replicates), so the
    replicate images are the same for all of them.

    Parameters
    ----------
    table : EventTable
        The events of all images.
    metric_fns : sequence of callable
        As ``metric_fn`` of :func:`bootstrap`; all of them must honour ``max_fp``.
    weights : numpy.ndarray
        ``(B, N)`` image multiplicities, from :func:`bootstrap_weights`.
    ci, max_fp, vectorized
        As in :func:`bootstrap`.

    Returns
    -------
    list of BootstrapResult
        One per metric, in order.

    Examples
    --------
    >>> from functools import partial
    >>> from wsdet.metrics import fauc, froc_score, match_points
    >>> from wsdet.metrics.events import EventTable
    >>> table = EventTable([match_points([[0, 0], [9, 9]], [0.9, 0.4], [[0, 1]]),
    ...                     match_points([[5, 5]], [0.7], [[30, 30]])])
    >>> a, s = bootstrap_table(table, [partial(fauc, max_fp=1.0), froc_score],
    ...                        bootstrap_weights(2, B=100, seed=0))
    >>> round(a.estimate, 3), round(s.estimate, 3)
    (0.5, 0.5)
    """
    for fn in metric_fns:
        _check_metric(fn)
    level = check_ci(ci)
    curve = table.curve()
    values = _replicates(metric_fns, table, weights, _horizon(max_fp), vectorized)
    without = int(np.count_nonzero((weights @ table.per_image_targets) == 0))
    out = []
    for fn, v in zip(metric_fns, values, strict=True):
        sd, interval, n_nan = summarize_replicates(v, level)
        out.append(BootstrapResult(float(fn(curve)), sd, interval, level, n_nan, without, v))
    return out


def bootstrap(
    metric_fn: MetricFn,
    results: Sequence[MatchResult],
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    max_fp: float | None = None,
    n_images: int | None = None,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
    vectorized: bool = True,
) -> BootstrapResult:
    """Bootstrap a FROC metric by resampling images with replacement.

    Parameters
    ----------
    metric_fn : callable
        ``FROC -> float``; it is called on the full curve for the estimate and, when
        ``vectorized``, on stacks of replicate curves, returning one value per curve. The
        readings of this module (:func:`~wsdet.metrics.fauc`,
        :func:`~wsdet.metrics.sensitivity_at_fp`, :func:`~wsdet.metrics.froc_score`) all
        work on stacks, e.g. ``functools.partial(fauc, max_fp=15)``.
    results : sequence of MatchResult
        One per image (all images, including those without targets or detections).
    B : int
        Number of replicates (default 1000).
    seed : int or numpy.random.Generator or None
        Seed of :func:`bootstrap_weights` (default 0). Equal seeds give equal resamples,
        also across methods evaluated on the same images.
    ci : float, optional
        Level of a percentile confidence interval, e.g. 0.95.
    max_fp : float, optional
        Promise that ``metric_fn`` only reads the curve up to ``max_fp`` false positives per
        image (true of ``fauc(.., max_fp)`` and of readings at ``fp <= max_fp``); enables
        the prefix speed-up. Leave it out for metrics that read the end-point.
    n_images, compat, sensitivity
        As in :func:`~wsdet.metrics.froc_curve`. ``n_images`` larger than ``len(results)``
        is not supported here (resampling needs every image): pass all images instead.
    vectorized : bool
        Whether ``metric_fn`` accepts stacks of curves (default True); otherwise it is called
        once per replicate.

    Returns
    -------
    BootstrapResult
        Estimate, standard deviation, optional CI, counts of undefined replicates.

    Examples
    --------
    >>> from functools import partial
    >>> from wsdet.metrics import fauc, match_points
    >>> res = [match_points([[0, 0], [9, 9]], [0.9, 0.4], [[0, 1]]),
    ...        match_points([[5, 5]], [0.7], [[30, 30]])]
    >>> bs = bootstrap(partial(fauc, max_fp=1.0), res, B=200, seed=0)
    >>> round(bs.estimate, 3), bs.sd > 0
    (0.5, True)
    """
    _check_metric(metric_fn)
    check_ci(ci)
    if n_images is not None and n_images != len(results):
        raise ValueError("bootstrap needs every image in results; n_images must equal len(results)")
    table = EventTable(results, n_images, compat, sensitivity)
    horizon = _horizon(max_fp)
    weights = bootstrap_weights(table.n_images, B, seed)
    (result,) = bootstrap_table(
        table, [metric_fn], weights, ci=ci, max_fp=horizon, vectorized=vectorized
    )
    return result


def _is_evaluated(x: object) -> TypeGuard[Evaluated]:
    return all(hasattr(x, a) for a in ("matches", "max_fp", "settings"))


def _from_reports(
    report_a: Evaluated, report_b: object, metric_fn: object, max_fp: float | None
) -> tuple[MetricFn, float | None, Compat | None, SensitivityKind, Evaluated]:
    """The metric, horizon, compat and sensitivity of a paired test of two evaluations, and
    the second evaluation."""
    if not _is_evaluated(report_b):
        raise TypeError(
            "paired_bootstrap(report_a, report_b): report_b must be an EvaluationReport or an "
            f"Evaluation too; got {type(report_b).__name__}"
        )
    if metric_fn is not None and not callable(metric_fn):
        raise TypeError("the third argument after two reports must be a metric_fn or None")
    sa, sb = report_a.settings, report_b.settings
    keys = ("compat", "sensitivity") + (("interpolation",) if metric_fn is None else ())
    for key in keys:
        if sa.get(key) != sb.get(key):
            raise ValueError(
                f"the two evaluations differ in {key} ({sa.get(key)!r} and {sb.get(key)!r}): "
                "a paired comparison needs the same evaluation rules"
            )
    if metric_fn is None:
        if report_a.max_fp != report_b.max_fp:
            raise ValueError(
                f"the two evaluations have different FAUC ranges ({report_a.max_fp:g} and "
                f"{report_b.max_fp:g}); pass a metric_fn to compare them on another metric"
            )
        f = report_a.max_fp
        metric_fn = partial(fauc, max_fp=f, interpolation=sa.get("interpolation", "linear"))
        max_fp = f if max_fp is None else max_fp
    return metric_fn, max_fp, sa.get("compat"), sa.get("sensitivity", "micro"), report_b


def paired_bootstrap(
    metric_fn: MetricFn | Evaluated,
    results_a: Sequence[MatchResult] | Evaluated,
    results_b: Sequence[MatchResult] | MetricFn | None = None,
    B: int = 1000,
    seed: Seed = 0,
    ci: float | None = None,
    *,
    max_fp: float | None = None,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
    vectorized: bool = True,
) -> PairedBootstrapResult:
    """Bootstrap the difference of a metric between two methods on the same images.

    Both methods are evaluated on the same resamples (shared image weights), so the spread
    of the difference reflects the methods, not the luck of the draw. Two forms:

    - ``paired_bootstrap(metric_fn, results_a, results_b, ...)``: per-image match results
      (from :func:`~wsdet.metrics.match_images`);
    - ``paired_bootstrap(report_a, report_b[, metric_fn], ...)``: two evaluations
      (:class:`~wsdet.metrics.EvaluationReport` from :func:`~wsdet.metrics.evaluate`, or
      :class:`~wsdet.metrics.Evaluation`), whose kept matches are used (``report.matches``)
      with their ``compat`` and ``sensitivity``; the metric defaults to their FAUC
      (``fauc(curve, report.max_fp, report's interpolation)``, bootstrapped with
      ``max_fp=report.max_fp``). Both forms give the same numbers for the same metric.

    Parameters
    ----------
    metric_fn : callable
        As in :func:`bootstrap`.
    results_a, results_b : sequence of MatchResult
        Per-image results of the two methods, for the same images in the same order.
    B, seed, ci, max_fp, compat, sensitivity, vectorized
        As in :func:`bootstrap` (``compat`` and ``sensitivity`` come from the reports in the
        second form).

    Returns
    -------
    PairedBootstrapResult
        Difference ``a - b``, its SD, optional CI, two-sided p-value, fraction of replicates
        with the opposite sign.

    Examples
    --------
    >>> from functools import partial
    >>> from wsdet.metrics import fauc, match_points
    >>> a = [match_points([[0, 0]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.8], [[5, 6]])]
    >>> b = [match_points([[9, 9]], [0.9], [[0, 1]]), match_points([[5, 5]], [0.8], [[5, 6]])]
    >>> d = paired_bootstrap(partial(fauc, max_fp=1.0), a, b, B=200)
    >>> d.difference, d.frac_opposite < 0.5
    (0.75, True)
    """
    fn: Any = metric_fn
    res_a: Any = results_a
    res_b: Any = results_b
    if _is_evaluated(metric_fn):
        if compat is not None or sensitivity != "micro":
            raise TypeError(
                "paired_bootstrap(report_a, report_b): compat and sensitivity come from the "
                "reports; do not pass them"
            )
        fn, max_fp, compat, sensitivity, report_b = _from_reports(
            metric_fn, results_a, results_b, max_fp
        )
        res_a, res_b = metric_fn.matches, report_b.matches
    elif results_b is None:
        raise TypeError("paired_bootstrap needs results_b (the second method's matches)")
    _check_metric(fn)
    level = check_ci(ci)
    if len(res_a) != len(res_b):
        raise ValueError(
            f"results_a and results_b must cover the same images; got {len(res_a)} and "
            f"{len(res_b)} results"
        )
    table_a = EventTable(res_a, None, compat, sensitivity)
    table_b = EventTable(res_b, None, compat, sensitivity)
    if not np.array_equal(table_a.per_image_targets, table_b.per_image_targets):
        raise ValueError(
            "results_a and results_b must describe the same images: their numbers of targets "
            "per image differ"
        )
    horizon = _horizon(max_fp)
    est_a = float(fn(table_a.curve()))
    est_b = float(fn(table_b.curve()))
    weights = bootstrap_weights(table_a.n_images, B, seed)
    reps = [_replicates([fn], t, weights, horizon, vectorized)[0] for t in (table_a, table_b)]
    diff = reps[0] - reps[1]
    sd, interval, n_nan = summarize_replicates(diff, level)
    p_value, frac = sign_test(diff, est_a - est_b)
    return PairedBootstrapResult(
        est_a - est_b, sd, interval, level, p_value, frac, n_nan, est_a, est_b, diff
    )


def sign_test(diff: NDArray[np.float64], difference: float) -> tuple[float, float]:
    """Two-sided bootstrap p-value and fraction of replicates of the opposite sign."""
    finite = diff[np.isfinite(diff)]
    if not finite.size:
        return float("nan"), float("nan")
    low = int(np.count_nonzero(finite <= 0))
    high = int(np.count_nonzero(finite >= 0))
    p_value = min(1.0, 2.0 * (1 + min(low, high)) / (finite.size + 1))
    if difference > 0:
        opposite = low
    elif difference < 0:
        opposite = high
    else:
        opposite = int(np.count_nonzero(finite != 0))
    return p_value, opposite / finite.size
