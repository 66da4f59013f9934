"""Evaluation of point detections: :class:`Evaluation` (streaming, cached) and :func:`evaluate`.

An :class:`Evaluation` matches each batch of images once (:meth:`Evaluation.update`), keeps
the per-image match results, and builds one event table of them; the curve, the FAUC, the
FROC score and the operating point are computed from it when first read, and every
bootstrapped statistic uses the same replicate images (one draw of
:func:`~wsdet.metrics.bootstrap_weights`). :func:`evaluate` is the one-call form.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_int
from wsdet.metrics._checks import (
    Compat,
    Duplicates,
    Interpolation,
    MatchKind,
    SensitivityKind,
    Tiebreak,
    as_sequence,
    check_ci,
    to_numpy,
)
from wsdet.metrics.bootstrap import (
    BootstrapResult,
    MetricFn,
    Seed,
    bootstrap_table,
    bootstrap_weights,
)
from wsdet.metrics.curve import FROC
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult, match_images
from wsdet.metrics.readings import fauc, froc_score, sensitivity_at_fp
from wsdet.metrics.specs import FROCSpec, MatchSpec
from wsdet.metrics.summary import EvaluationReport
from wsdet.metrics.topn import top_n

__all__ = ["BootstrappedOperatingPoint", "Evaluation", "TruncatedDetectionsWarning", "evaluate"]


class TruncatedDetectionsWarning(UserWarning):
    """:func:`evaluate` was given only the top-n of some images' NMS candidates.

    The FROC curve then ends early (at the false-positive rate of the kept detections), and
    FAUC and sensitivities read beyond that point are flat extrapolations. Evaluate every
    candidate (``Detector.detect(x, n="all")``, ``wsdet.detect_maps(maps, n="all")``); the
    operating point is still taken from the predicted counts.
    """


_COUNTS_MISSING = (
    "detections[{}] has no predicted count while others do; give counts for all images (or "
    "none) to compute the operating point"
)


def _parse_detections(
    detections: Sequence[Any],
) -> tuple[list[Any], list[Any], list[float], list[int]]:
    """Per image: points, scores, predicted count (nan if none), NMS candidates (-1 if
    unknown)."""
    items = as_sequence(detections, "detections")
    points: list[Any] = []
    scores: list[Any] = []
    counts: list[float] = []
    candidates: list[int] = []
    for n, d in enumerate(items):
        k = -1
        if hasattr(d, "points") and hasattr(d, "scores"):
            p, s = d.points, d.scores
            c = getattr(d, "count", None)
            nc = getattr(d, "n_candidates", None)
            if isinstance(nc, (int, np.integer)) and not isinstance(nc, bool):
                k = int(nc)
        elif isinstance(d, (tuple, list)) and len(d) in (2, 3):
            p, s = d[0], d[1]
            c = d[2] if len(d) == 3 else None
        else:
            raise TypeError(
                f"detections[{n}] must have .points and .scores attributes or be a "
                f"(points, scores[, count]) tuple; got {type(d).__name__}"
            )
        if c is not None:
            c = float(np.asarray(to_numpy(c)))
        points.append(p)
        scores.append(s)
        counts.append(float("nan") if c is None else c)
        candidates.append(k)
    return points, scores, counts, candidates


def _warn_truncated(cut: list[tuple[int, int, int]], n_images: int, end_fp: float) -> None:
    """Warn that ``cut`` images (index, kept, candidates) hold only their top-n detections.

    Called from ``Evaluation._report``: the warning points to the caller of
    :meth:`Evaluation.report` or :func:`evaluate`.
    """
    i, kept, total = cut[0]
    warnings.warn(
        f"{len(cut)} of {n_images} images hold fewer detections than their NMS candidates "
        f"(e.g. detections[{i}]: {kept} of {total}): the FROC curve ends early, at "
        f"{end_fp:.4g} FP/image, and FAUC and sensitivities beyond it are flat "
        'extrapolations. Evaluate every candidate with detect(x, n="all") or '
        'detect_maps(maps, n="all"); the operating point still uses the predicted counts.',
        TruncatedDetectionsWarning,
        stacklevel=4,
    )


class BootstrappedOperatingPoint(NamedTuple):
    """The operating point of the top ``round-half-up(count)`` detections per image."""

    #: Targets found and false positives (counts over all images).
    tp: int
    fp: int
    #: Sensitivity and false positives per image, bootstrapped over images.
    sensitivity: BootstrapResult
    fp_avg: BootstrapResult


def _endpoint_sensitivity(curve: FROC[Any]) -> Any:
    return curve.sensitivity[..., -1]


def _endpoint_fp_avg(curve: FROC[Any]) -> Any:
    return curve.fp_avg[..., -1]


class Evaluation:
    """FROC evaluation of point detections, fed image by image and read lazily.

    Feed it with :meth:`update` (any number of batches; matching is per image, so the
    batching never changes a number), then read :attr:`curve`, :attr:`fauc`,
    :attr:`froc_score`, :attr:`sensitivity_at`, :attr:`operating_point`, or the whole
    :meth:`report`. A statistic is computed when first read and kept until the next
    :meth:`update`.

    Parameters
    ----------
    match_spec : MatchSpec, optional
        How detections are matched (default ``MatchSpec()``: points within 6 voxels).
    froc_spec : FROCSpec, optional
        How the curve is built and read (default ``FROCSpec()``).
    n_bootstrap : int
        Bootstrap replicates over images for the standard deviations (0 to skip).
    seed : int or numpy.random.Generator or None
        Seed of the one set of bootstrap weights shared by every statistic.
    ci : float or None
        Level of the percentile confidence intervals (default 0.95), None for none.

    Examples
    --------
    >>> ev = Evaluation(MatchSpec(radius=6), FROCSpec(max_fp=1.0), n_bootstrap=50)
    >>> ev = ev.update([([[10, 10], [40, 40]], [0.9, 0.3], 1.0)], [[[12, 11]]])
    >>> ev = ev.update([([[5, 5]], [0.5], 0.2)], [[]])
    >>> op = ev.operating_point
    >>> ev.n_images, round(ev.fauc.estimate, 3), op.tp, op.fp, op.sensitivity.estimate
    (2, 1.0, 1, 0, 1.0)
    """

    def __init__(
        self,
        match_spec: MatchSpec | None = None,
        froc_spec: FROCSpec | None = None,
        *,
        n_bootstrap: int = 1000,
        seed: Seed = 0,
        ci: float | None = 0.95,
    ) -> None:
        self.match_spec = MatchSpec() if match_spec is None else match_spec
        self.froc_spec = FROCSpec() if froc_spec is None else froc_spec
        for name, spec, kind in (
            ("match_spec", self.match_spec, MatchSpec),
            ("froc_spec", self.froc_spec, FROCSpec),
        ):
            if not isinstance(spec, kind):
                raise TypeError(f"{name} must be a {kind.__name__}; got {type(spec).__name__}")
        self.n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=0)
        self.seed = seed
        self.ci = check_ci(ci)
        self._matches: list[MatchResult] = []
        self._op_matches: list[MatchResult | None] = []
        self._counts: list[float] = []
        self._candidates: list[int] = []
        self._cache: dict[str, Any] = {}

    # -- feeding -----------------------------------------------------------------------

    def update(
        self,
        detections: Sequence[Any],
        targets: Sequence[Any],
        *,
        ignore: Sequence[ArrayLike | None] | None = None,
        spacing: ArrayLike | None = None,
    ) -> Evaluation:
        """Match one batch of images and add them.

        Parameters
        ----------
        detections, targets, ignore
            As in :func:`evaluate`, for the images of this batch.
        spacing : array_like, optional
            ``(n_batch, ndim)`` voxel sizes of this batch's images. Without it, a per-image
            ``spacing`` of the :class:`MatchSpec` is read row by row, in the order the
            images arrive.

        Returns
        -------
        Evaluation
            ``self``, so that calls chain.
        """
        points, scores, counts, candidates = _parse_detections(detections)
        tg = as_sequence(targets, "targets")
        if len(tg) != len(points):
            raise ValueError(
                f"detections and targets must have one entry per image; got {len(points)} and "
                f"{len(tg)}"
            )
        start = len(self._matches)
        finite = [math.isfinite(c) for c in counts]
        if any(finite) and not all(finite):
            raise ValueError(_COUNTS_MISSING.format(start + finite.index(False)))
        options = {
            **self.match_spec.match_kwargs(self._batch_spacing(spacing, start, len(points))),
            "compat": self.froc_spec.compat,
        }
        matches = match_images(points, scores, tg, ignore=ignore, **options)
        op: list[MatchResult | None] = [None] * len(points)
        if points and all(finite):
            chosen = [top_n(p, s, c) for p, s, c in zip(points, scores, counts, strict=True)]
            op = list(
                match_images(
                    [c[0] for c in chosen], [c[1] for c in chosen], tg, ignore=ignore, **options
                )
            )
        self._matches += matches
        self._op_matches += op
        self._counts += counts
        self._candidates += candidates
        self._cache.clear()
        return self

    def _batch_spacing(self, spacing: ArrayLike | None, start: int, n: int) -> ArrayLike | None:
        """The per-image spacing rows of images ``start .. start + n`` (None: the spec's)."""
        if spacing is not None or not self.match_spec.per_image_spacing:
            return spacing
        rows = np.asarray(self.match_spec.spacing)
        if start + n > rows.shape[0]:
            raise ValueError(
                f"spacing has one row per image for {rows.shape[0]} images, but image "
                f"{start + n - 1} was given; pass spacing= to update for further images"
            )
        return rows[start : start + n]

    # -- what it holds -----------------------------------------------------------------

    @property
    def n_images(self) -> int:
        """Number of images added so far."""
        return len(self._matches)

    @property
    def matches(self) -> tuple[MatchResult, ...]:
        """Per image, the match result of every candidate."""
        return tuple(self._matches)

    @property
    def op_matches(self) -> tuple[MatchResult, ...] | None:
        """Per image, the match result of the top-n detections (None without counts)."""
        ops = self._op_matches
        if not ops or any(r is None for r in ops):
            return None
        return tuple(r for r in ops if r is not None)

    @property
    def max_fp(self) -> float:
        """The FAUC range."""
        return self.froc_spec.fauc_range(self.match_spec.match)

    @property
    def settings(self) -> dict[str, Any]:
        """The evaluation options, as recorded in the report."""
        m, f = self.match_spec, self.froc_spec
        return {
            "match": m.match,
            "radius": m.radius,
            "spacing": None if m.spacing is None else np.asarray(m.spacing).tolist(),
            "inclusive": m.inclusive,
            "duplicates": m.duplicates,
            "tiebreak": m.tiebreak,
            "compat": f.compat,
            "radius_unit": "voxels" if m.spacing is None else "mm",
            "interpolation": f.interpolation,
            "sensitivity": f.sensitivity,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }

    def _cached(self, key: str, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _table(self, key: str, matches: Sequence[MatchResult], compat: Compat | None) -> Any:
        if not self._matches:
            raise ValueError(
                "the evaluation holds no images yet: call update(detections, targets) first"
            )
        return self._cached(
            key, lambda: EventTable(matches, None, compat, self.froc_spec.sensitivity)
        )

    @property
    def table(self) -> EventTable:
        """The events of all images (built once)."""
        table: EventTable = self._table("table", self._matches, self.froc_spec.compat)
        return table

    @property
    def weights(self) -> NDArray[np.int64]:
        """``(n_bootstrap, n_images)`` image multiplicities shared by every statistic."""
        if self.n_bootstrap == 0:
            raise ValueError("n_bootstrap is 0: there are no bootstrap weights")
        return self._cached(  # type: ignore[no-any-return]
            "weights", lambda: bootstrap_weights(self.n_images, self.n_bootstrap, self.seed)
        )

    @property
    def curve(self) -> FROC[float]:
        """The FROC curve of every candidate."""
        return self.table.curve()

    # -- statistics --------------------------------------------------------------------

    def _boot(
        self, table: EventTable, fns: Sequence[MetricFn], horizon: float | None
    ) -> list[BootstrapResult]:
        if self.n_bootstrap == 0:
            empty = np.zeros(0)
            nan = float("nan")
            curve = table.curve()
            return [BootstrapResult(float(fn(curve)), nan, None, None, 0, 0, empty) for fn in fns]
        return bootstrap_table(table, fns, self.weights, ci=self.ci, max_fp=horizon)

    @property
    def fauc(self) -> BootstrapResult:
        """Normalised area under the curve up to :attr:`max_fp`, bootstrapped."""
        f = self.max_fp
        fn = partial(fauc, max_fp=f, interpolation=self.froc_spec.interpolation)
        result: BootstrapResult = self._cached("fauc", lambda: self._boot(self.table, [fn], f)[0])
        return result

    @property
    def froc_score(self) -> BootstrapResult:
        """Mean sensitivity at the budgets of the :class:`FROCSpec`, bootstrapped."""
        budgets = self.froc_spec.budgets()
        fn = partial(froc_score, fps=budgets, interpolation=self.froc_spec.interpolation)
        result: BootstrapResult = self._cached(
            "froc_score", lambda: self._boot(self.table, [fn], max(budgets))[0]
        )
        return result

    @property
    def sensitivity_at(self) -> dict[float, float]:
        """``{fp: sensitivity}`` at each FROC-score budget."""
        how = self.froc_spec.interpolation
        return {f: float(sensitivity_at_fp(self.curve, f, how)) for f in self.froc_spec.budgets()}

    @property
    def operating_point(self) -> BootstrappedOperatingPoint | None:
        """``(tp, fp, sensitivity, fp_avg)`` of the top ``round-half-up(count)`` detections
        per image (sensitivity and FP per image bootstrapped); None without counts."""
        return self._cached("op", self._operating_point)  # type: ignore[no-any-return]

    def _operating_point(self) -> BootstrappedOperatingPoint | None:
        finite = [math.isfinite(c) for c in self._counts]
        if not any(finite):
            return None
        if not all(finite):
            raise ValueError(_COUNTS_MISSING.format(finite.index(False)))
        ops = self.op_matches
        assert ops is not None
        table = self._table("op_table", ops, None)
        sens, fp_avg = self._boot(table, [_endpoint_sensitivity, _endpoint_fp_avg], None)
        curve = table.curve()
        return BootstrappedOperatingPoint(int(curve.tp[-1]), int(curve.fp[-1]), sens, fp_avg)

    # -- report ------------------------------------------------------------------------

    def report(self) -> EvaluationReport:
        """Every statistic, as a printable :class:`~wsdet.metrics.EvaluationReport`.

        Warns (:class:`TruncatedDetectionsWarning`) when some images carry only the top-n
        of their NMS candidates.
        """
        return self._report()

    def _report(self) -> EvaluationReport:
        results = self._matches
        curve = self.curve
        cut = [
            (i, r.det_label.size, k)
            for i, (r, k) in enumerate(zip(results, self._candidates, strict=True))
            if k > r.det_label.size
        ]
        if cut:
            _warn_truncated(cut, len(results), float(curve.fp_avg[-1]))
        op = self.operating_point
        return EvaluationReport(
            fauc=self.fauc,
            froc_score=self.froc_score,
            sensitivity_at=self.sensitivity_at,
            op_sensitivity=None if op is None else op.sensitivity,
            op_fp_avg=None if op is None else op.fp_avg,
            op_tp=None if op is None else op.tp,
            op_fp=None if op is None else op.fp,
            n_images=len(results),
            n_targets=curve.n_targets,
            n_detections=sum(r.det_label.size for r in results),
            n_tp=sum(r.n_tp for r in results),
            n_fp=sum(r.n_fp for r in results),
            n_not_counted=sum(r.n_ignored for r in results),
            n_ignored_targets=int(sum(int(r.gt_ignored.sum()) for r in results)),
            max_fp=self.max_fp,
            fps=self.froc_spec.budgets(),
            settings=self.settings,
            curve=curve,
            n_truncated=len(cut),
            matches=self.matches,
            op_matches=self.op_matches,
        )


def evaluate(
    detections: Sequence[Any],
    targets: Sequence[Any],
    *,
    match: MatchKind = "points",
    radius: float = 6.0,
    spacing: ArrayLike | None = None,
    radius_mm: float | None = None,
    inclusive: bool = True,
    duplicates: Duplicates = "fp",
    ignore: Sequence[ArrayLike | None] | None = None,
    max_fp: float | None = None,
    interpolation: Interpolation = "linear",
    fps: Sequence[float] | None = None,
    n_bootstrap: int = 1000,
    seed: Seed = 0,
    ci: float | None = 0.95,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
    tiebreak: Tiebreak = "distance",
    match_spec: MatchSpec | None = None,
    froc_spec: FROCSpec | None = None,
) -> EvaluationReport:
    """Evaluate per-image point detections against targets: FROC, FAUC, operating point.

    One call of ``Evaluation(match_spec, froc_spec, ...).update(detections, targets,
    ignore=ignore).report()``.

    Parameters
    ----------
    detections : sequence
        One entry per image: an object with ``points`` ``(k, ndim)``, ``scores`` ``(k,)``
        and optionally ``count`` (the predicted count; ``nan`` or absent when unknown), such
        as :class:`wsdet.Detections`; or a ``(points, scores)`` / ``(points, scores, count)``
        tuple. Pass all candidates (not only the top-n) for a full FROC curve: entries whose
        ``n_candidates`` attribute (when present and ``>= 0``) exceeds their number of
        points raise a :class:`TruncatedDetectionsWarning`.
    targets : sequence
        One entry per image: ``(m, ndim)`` target points (``match="points"``), or boxes as
        a ``(lo, hi)`` pair of ``(m, ndim)`` arrays or an ``(m, 2, ndim)`` array
        (``match="boxes"``, hit = inside ``[lo, hi)``).
    match : {"points", "boxes"}
        Hit rule.
    radius, inclusive, duplicates, tiebreak
        Matching options, see :func:`~wsdet.metrics.match_points` (radius default 6
        voxels; in the units of ``spacing`` when it is given).
    spacing : float or array_like, optional
        Voxel size per axis in mm, one for all images ``(ndim,)`` or one row per image
        ``(n_images, ndim)`` (volumes of different voxel sizes): distances are then in mm.
    radius_mm : float, optional
        The hit radius in millimetres (instead of ``radius``); needs ``spacing`` (for points
        already in mm, e.g. world coordinates, pass ``spacing=1``). The report says "mm"
        whenever ``spacing`` is given.
    ignore : sequence of array_like of bool, optional
        Per image, targets that do not count.
    max_fp : float, optional
        FAUC range. Default: the paper's, 15 for ``match="points"`` (brain lesions) and 2
        for ``match="boxes"`` (MNIST); see :data:`~wsdet.metrics.PAPER_MAX_FP`.
    interpolation : {"linear", "step"}
        How the curve is read and integrated.
    fps : sequence of float, optional
        Budgets of the FROC score; default ``(1/4, ..., 8)`` (``(1/8, ..., 8)`` with
        ``compat="luna16"``).
    n_bootstrap : int
        Bootstrap replicates over images for the standard deviations (0 to skip).
    seed : int or numpy.random.Generator or None
        Bootstrap seed: one set of weights serves every statistic.
    ci : float or None
        Level of the percentile confidence intervals (default 0.95), None for none.
    compat : {"monai", "luna16"}, optional
        Reproduce another evaluator's conventions (see the metrics guide).
    sensitivity : {"micro", "macro"}
        Pooled (default) or mean per-image sensitivity.
    match_spec : MatchSpec, optional
        The matching options as one object; it replaces ``match``, ``radius``,
        ``spacing``, ``radius_mm``, ``inclusive``, ``duplicates`` and ``tiebreak``: a
        value other than the default beside the spec raises ``TypeError``.
    froc_spec : FROCSpec, optional
        The curve options as one object; it replaces ``max_fp``, ``interpolation``,
        ``fps``, ``compat`` and ``sensitivity``, likewise.

    Returns
    -------
    EvaluationReport
        Printable (``str``), with ``to_dict()`` and ``to_markdown()``; ``report.matches``
        holds the per-image matches (for :func:`~wsdet.metrics.paired_bootstrap`).
        Readings beyond the curve's last point are marked ``*`` (extrapolated, flat).

    Warns
    -----
    TruncatedDetectionsWarning
        When some images carry only the top-n of their NMS candidates.

    Examples
    --------
    >>> dets = [([[10, 10], [40, 40]], [0.9, 0.3], 1.0), ([[5, 5]], [0.5], 0.2)]
    >>> gts = [[[12, 11]], []]
    >>> rep = evaluate(dets, gts, max_fp=1.0, n_bootstrap=50)
    >>> round(rep.fauc.estimate, 3), rep.op_sensitivity.estimate, rep.op_fp_avg.estimate
    (1.0, 1.0, 0.0)
    >>> rep.matches[0].det_label.tolist()
    [1, 0]
    """
    loose_match = {
        "match": (match, "points"),
        "radius": (radius, 6.0),
        "spacing": (spacing, None),
        "radius_mm": (radius_mm, None),
        "inclusive": (inclusive, True),
        "duplicates": (duplicates, "fp"),
        "tiebreak": (tiebreak, "distance"),
    }
    loose_froc = {
        "max_fp": (max_fp, None),
        "interpolation": (interpolation, "linear"),
        "fps": (fps, None),
        "compat": (compat, None),
        "sensitivity": (sensitivity, "micro"),
    }
    for spec, name, loose in (
        (match_spec, "match_spec", loose_match),
        (froc_spec, "froc_spec", loose_froc),
    ):
        given = [k for k, (value, default) in loose.items() if not _same(value, default)]
        if spec is not None and given:
            raise TypeError(
                f"{name} replaces {', '.join(given)}: pass them in the spec, not beside it"
            )
    if match_spec is None:
        match_spec = MatchSpec(match, radius, spacing, radius_mm, inclusive, duplicates, tiebreak)
    if froc_spec is None:
        froc_spec = FROCSpec(max_fp, interpolation, fps, compat, sensitivity)
    ev = Evaluation(match_spec, froc_spec, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    # per-image spacing rows go with the images, so that match_images checks their number
    rows = match_spec.spacing if match_spec.per_image_spacing else None
    ev.update(detections, targets, ignore=ignore, spacing=rows)
    if not ev.n_images:
        raise ValueError("detections is empty: there is nothing to evaluate")
    return ev._report()


def _same(value: object, default: object) -> bool:
    """Whether a keyword was left at its default (``6`` equals ``6.0``; arrays never do)."""
    if value is None or default is None:
        return value is default
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False
