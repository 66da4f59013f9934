"""One-call evaluation of point detections: FAUC with bootstrap error, operating point, counts.

This module also holds wsdet's one top-n rule, :func:`round_half_up` (the number of
detections kept for a predicted count), which :mod:`wsdet.detection` re-exports: it is
torch-free so that the detection pipeline and the evaluation share it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet.metrics._checks import (
    Compat,
    as_int,
    as_points,
    as_positive_float,
    as_scores,
    as_sequence,
    check_choice,
    check_compat,
    to_numpy,
)
from wsdet.metrics.bootstrap import BootstrapResult, bootstrap
from wsdet.metrics.froc import (
    CAMELYON_FPS,
    FROC,
    LUNA16_FPS,
    Interpolation,
    SensitivityKind,
    fauc,
    froc_curve,
    froc_score,
    operating_point,
    sensitivity_at_fp,
)
from wsdet.metrics.matching import Duplicates, MatchKind, MatchResult, Tiebreak, match_images

__all__ = [
    "PAPER_MAX_FP",
    "EvaluationReport",
    "TruncatedDetectionsWarning",
    "evaluate",
    "round_half_up",
    "top_n",
]

#: The paper's FAUC ranges: 0-2 false positives per image on MNIST (box hits), 0-15 per
#: brain region (point hits within 6 voxels). ``evaluate(max_fp=None)`` picks by ``match``.
PAPER_MAX_FP: dict[str, float] = {"boxes": 2.0, "points": 15.0}


class TruncatedDetectionsWarning(UserWarning):
    """:func:`evaluate` was given only the top-n of some images' NMS candidates.

    The FROC curve then ends early (at the false-positive rate of the kept detections), and
    FAUC and sensitivities read beyond that point are flat extrapolations. Evaluate every
    candidate (``Detector.detect(x, n="all")``, ``wsdet.detect_maps(maps, n="all")``); the
    operating point is still taken from the predicted counts.
    """


def round_half_up(n: float, *, name: str = "n") -> int:
    """``max(0, floor(n + 0.5))``: round half up, never negative. wsdet's one top-n rule.

    The number of detections kept for a predicted count ``n``. Python's ``round`` and
    NumPy round half to even (``round(2.5) == 2``); detection counts should not depend on
    the parity of the integer part.

    Parameters
    ----------
    n : float
        A finite real number.
    name : str
        The argument's name in the error message.

    Returns
    -------
    int
        ``max(0, floor(n + 0.5))``.

    Raises
    ------
    ValueError
        If ``n`` is NaN or infinite.

    Examples
    --------
    >>> round_half_up(2.5), round_half_up(0.49), round_half_up(-1.2)
    (3, 0, 0)
    """
    x = float(n)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite to round, got {n!r}")
    return max(0, math.floor(x + 0.5))


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Summary of an evaluation (see :func:`evaluate`). Print it, or export it.

    Attributes
    ----------
    fauc : BootstrapResult
        Normalised area under the FROC curve from 0 to ``max_fp`` FP per image.
    froc_score : BootstrapResult
        Mean sensitivity at ``fps``.
    sensitivity_at : dict
        ``{fp: sensitivity}`` at each of ``fps``.
    op_sensitivity, op_fp_avg : BootstrapResult or None
        The operating point of the top ``round-half-up(count)`` detections per image; None
        when the detections carry no predicted counts.
    op_tp, op_fp : int or None
        Its true- and false-positive counts.
    n_images, n_targets, n_detections, n_tp, n_fp, n_not_counted, n_ignored_targets : int
        Counts over all detections (the curve's end-point): images, counted targets,
        detections, targets found, false positives, detections not counted (label -1),
        ignored targets.
    max_fp : float
        The FAUC range.
    fps : tuple of float
        Budgets of the FROC score.
    settings : dict
        The evaluation options, for the record.
    curve : FROC
        The full FROC curve, for plotting.
    n_truncated : int
        Images whose detections were only the top-n of their NMS candidates (see
        :class:`TruncatedDetectionsWarning`).

    The curve ends at :attr:`end_fp_avg` false positives per image; readings beyond it (the
    FAUC range, FROC-score budgets, sensitivities) hold its last sensitivity flat and are
    marked ``*`` (extrapolated) in the printed report.
    """

    fauc: BootstrapResult
    froc_score: BootstrapResult
    sensitivity_at: dict[float, float]
    op_sensitivity: BootstrapResult | None
    op_fp_avg: BootstrapResult | None
    op_tp: int | None
    op_fp: int | None
    n_images: int
    n_targets: int
    n_detections: int
    n_tp: int
    n_fp: int
    n_not_counted: int
    n_ignored_targets: int
    max_fp: float
    fps: tuple[float, ...]
    settings: dict[str, Any]
    curve: FROC[float] = field(repr=False)
    n_truncated: int = 0

    @property
    def end_fp_avg(self) -> float:
        """False positives per image at the FROC curve's last point (where it ends)."""
        return float(self.curve.fp_avg[-1])

    def extrapolated(self, fp: float) -> bool:
        """Whether a reading at ``fp`` FP per image lies beyond the curve's last point."""
        return float(fp) > self.end_fp_avg

    def _mark(self, fp: float) -> str:
        return "*" if self.extrapolated(fp) else ""

    def _footnote(self) -> str:
        """The note explaining ``*`` (empty when nothing is extrapolated)."""
        if not (self.extrapolated(self.max_fp) or any(self.extrapolated(f) for f in self.fps)):
            return ""
        end_s = float(self.curve.sensitivity[-1])
        sens = "nan" if not math.isfinite(end_s) else f"{end_s:.4f}"
        note = (
            f"* extrapolated: the FROC curve ends at {self.end_fp_avg:.4g} FP/image "
            f"(sensitivity {sens}); beyond it the sensitivity is held flat."
        )
        if self.n_truncated:
            note += (
                f" {self.n_truncated} of {self.n_images} images were cut to their top-n "
                'detections: evaluate every candidate (detect(x, n="all")) for the full curve.'
            )
        return note

    def _rows(self) -> list[tuple[str, str, str, str]]:
        def fmt(x: float) -> str:
            return "nan" if not math.isfinite(x) else f"{x:.4f}"

        def ci(b: BootstrapResult) -> str:
            if b.ci is None:
                return ""
            return f"[{fmt(b.ci[0])}, {fmt(b.ci[1])}]"

        def row(name: str, b: BootstrapResult) -> tuple[str, str, str, str]:
            return (name, fmt(b.estimate), fmt(b.sd), ci(b))

        budgets = ", ".join(f"{f:g}{self._mark(f)}" for f in self.fps)
        rows = [
            row(f"FAUC (0-{self.max_fp:g} FP/image){self._mark(self.max_fp)}", self.fauc),
            row(f"FROC score ({budgets})", self.froc_score),
        ]
        rows += [
            (f"Sensitivity @ {f:g} FP/image{self._mark(f)}", fmt(s), "", "")
            for f, s in self.sensitivity_at.items()
        ]
        rows.append(("FROC curve ends at (FP/image)", fmt(self.end_fp_avg), "", ""))
        if self.op_sensitivity is not None and self.op_fp_avg is not None:
            rows.append(row("Operating point: sensitivity", self.op_sensitivity))
            rows.append(row("Operating point: FP/image", self.op_fp_avg))
            rows.append(("Operating point: TP / FP", f"{self.op_tp} / {self.op_fp}", "", ""))
        if self.fauc.n_nan:
            rows.append(
                ("Replicates without targets (excluded)", str(self.fauc.n_without_targets), "", "")
            )
        rows += [
            ("Images", str(self.n_images), "", ""),
            ("Targets (counted / ignored)", f"{self.n_targets} / {self.n_ignored_targets}", "", ""),
            (
                "Detections (TP / FP / not counted)",
                f"{self.n_detections} ({self.n_tp} / {self.n_fp} / {self.n_not_counted})",
                "",
                "",
            ),
        ]
        if self.n_truncated:
            rows.append(("Images cut to top-n detections", str(self.n_truncated), "", ""))
        return rows

    def _header(self) -> tuple[str, str, str, str]:
        level = self.fauc.ci_level
        return ("metric", "value", "sd", f"{100 * level:g}% CI" if level is not None else "")

    def _title(self) -> str:
        s = self.settings
        unit = s.get("radius_unit", "voxels")
        rule = f"within {s['radius']:g} {unit}" if s["match"] == "points" else "inside box"
        extra = f", compat={s['compat']}" if s["compat"] else ""
        return (
            f"wsdet evaluation: {s['match']} ({rule}), {s['interpolation']} FROC, "
            f"bootstrap B={s['n_bootstrap']} seed={s['seed']}{extra}"
        )

    def __str__(self) -> str:
        rows = [self._header(), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [self._title()]
        for n, r in enumerate(rows):
            lines.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                ).rstrip()
            )
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        note = self._footnote()
        if note:
            lines.append(note)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a Markdown table (with the settings as a caption line)."""
        head = self._header()
        lines = [
            f"*{self._title()}*",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---", "---:", "---:", "---:"]) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        note = self._footnote()
        if note:
            lines += ["", note.replace("*", "\\*", 1)]
        return "\n".join(lines)

    def to_dict(self, include_curve: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary; ``include_curve`` adds the curve's arrays as lists."""

        def bs(b: BootstrapResult | None) -> dict[str, Any] | None:
            if b is None:
                return None
            return {
                "estimate": b.estimate,
                "sd": b.sd,
                "ci": list(b.ci) if b.ci is not None else None,
                "ci_level": b.ci_level,
                "n_nan": b.n_nan,
            }

        out: dict[str, Any] = {
            "fauc": bs(self.fauc),
            "max_fp": self.max_fp,
            "froc_score": bs(self.froc_score),
            "fps": list(self.fps),
            "sensitivity_at": {str(k): v for k, v in self.sensitivity_at.items()},
            "operating_point": None
            if self.op_sensitivity is None
            else {
                "sensitivity": bs(self.op_sensitivity),
                "fp_avg": bs(self.op_fp_avg),
                "tp": self.op_tp,
                "fp": self.op_fp,
            },
            "n_images": self.n_images,
            "n_targets": self.n_targets,
            "n_ignored_targets": self.n_ignored_targets,
            "n_detections": self.n_detections,
            "n_tp": self.n_tp,
            "n_fp": self.n_fp,
            "n_not_counted": self.n_not_counted,
            "n_truncated": self.n_truncated,
            "end_fp_avg": self.end_fp_avg,
            "extrapolated": {
                "fauc": self.extrapolated(self.max_fp),
                "fps": [f for f in self.fps if self.extrapolated(f)],
            },
            "settings": dict(self.settings),
        }
        if include_curve:
            c = self.curve
            out["curve"] = {
                "thresholds": [None if math.isinf(t) else float(t) for t in c.thresholds],
                "fp_avg": c.fp_avg.tolist(),
                "sensitivity": c.sensitivity.tolist(),
                "tp": c.tp.tolist(),
                "fp": c.fp.tolist(),
            }
        return out


def top_n(
    points: ArrayLike, scores: ArrayLike, count: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The :func:`round_half_up` ``(count)`` highest-scoring detections.

    Ties at the cut keep the input order (a stable sort), so detections already ordered by
    score then raster index keep that order.

    Examples
    --------
    >>> p, s = top_n([[0, 0], [1, 1], [2, 2]], [0.2, 0.9, 0.5], 1.5)
    >>> p.tolist(), s.tolist()
    ([[1.0, 1.0], [2.0, 2.0]], [0.9, 0.5])
    """
    n = round_half_up(count, name="count")
    pts = as_points(points, "points")
    sc = as_scores(scores, "scores", pts.shape[0])
    order = np.argsort(-sc, kind="stable")[:n]
    return pts[order], sc[order]


def _parse_detections(
    detections: Sequence[Any],
) -> tuple[list[Any], list[Any], list[float], list[int]]:
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
    """Warn that ``cut`` images (index, kept, candidates) hold only their top-n detections."""
    i, kept, total = cut[0]
    warnings.warn(
        f"{len(cut)} of {n_images} images hold fewer detections than their NMS candidates "
        f"(e.g. detections[{i}]: {kept} of {total}): the FROC curve ends early, at "
        f"{end_fp:.4g} FP/image, and FAUC and sensitivities beyond it are flat "
        'extrapolations. Evaluate every candidate with detect(x, n="all") or '
        'detect_maps(maps, n="all"); the operating point still uses the predicted counts.',
        TruncatedDetectionsWarning,
        stacklevel=3,
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
    seed: int = 0,
    ci: float | None = 0.95,
    compat: Compat | None = None,
    sensitivity: SensitivityKind = "micro",
    tiebreak: Tiebreak = "distance",
) -> EvaluationReport:
    """Evaluate per-image point detections against targets: FROC, FAUC, operating point.

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
        for ``match="boxes"`` (MNIST); see :data:`PAPER_MAX_FP`.
    interpolation : {"linear", "step"}
        How the curve is read and integrated.
    fps : sequence of float, optional
        Budgets of the FROC score; default ``(1/4, ..., 8)`` (``(1/8, ..., 8)`` with
        ``compat="luna16"``).
    n_bootstrap : int
        Bootstrap replicates over images for the standard deviations (0 to skip).
    seed : int
        Bootstrap seed.
    ci : float or None
        Level of the percentile confidence intervals (default 0.95), None for none.
    compat : {"monai", "luna16"}, optional
        Reproduce another evaluator's conventions (see the metrics guide).
    sensitivity : {"micro", "macro"}
        Pooled (default) or mean per-image sensitivity.

    Returns
    -------
    EvaluationReport
        Printable (``str``), with ``to_dict()`` and ``to_markdown()``. Readings beyond the
        curve's last point are marked ``*`` (extrapolated, flat).

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
    """
    check_choice(match, "match", ("points", "boxes"))
    check_choice(interpolation, "interpolation", ("linear", "step"))
    check_compat(compat)
    n_boot = as_int(n_bootstrap, "n_bootstrap", 0)
    f_max = PAPER_MAX_FP[match] if max_fp is None else as_positive_float(max_fp, "max_fp")
    budgets = tuple(
        float(f)
        for f in (fps if fps is not None else (LUNA16_FPS if compat == "luna16" else CAMELYON_FPS))
    )
    if not budgets:
        raise ValueError("fps must contain at least one false-positive budget")
    for f in budgets:
        as_positive_float(f, "fps", allow_zero=True)
    if radius_mm is not None:
        if radius != 6.0:
            raise ValueError("give the hit radius as radius or radius_mm, not both")
        if spacing is None:
            raise ValueError(
                "radius_mm needs spacing= (the voxel size in mm: one per axis, or one row per "
                "image); for points already in mm (world coordinates) pass spacing=1"
            )
        radius = as_positive_float(radius_mm, "radius_mm", allow_zero=True)
    points, scores, counts, candidates = _parse_detections(detections)
    tg = as_sequence(targets, "targets")
    if len(tg) != len(points):
        raise ValueError(
            f"detections and targets must have one entry per image; got {len(points)} and {len(tg)}"
        )
    if not points:
        raise ValueError("detections is empty: there is nothing to evaluate")
    options: dict[str, Any] = {
        "match": match,
        "radius": radius,
        "spacing": spacing,
        "inclusive": inclusive,
        "duplicates": duplicates,
        "tiebreak": tiebreak,
        "compat": compat,
    }
    results = match_images(points, scores, tg, ignore=ignore, **options)
    curve = froc_curve(results, compat=compat, sensitivity=sensitivity)
    cut = [
        (i, r.det_label.size, k)
        for i, (r, k) in enumerate(zip(results, candidates, strict=True))
        if k > r.det_label.size
    ]
    if cut:
        _warn_truncated(cut, len(results), float(curve.fp_avg[-1]))

    def boot(
        metric: Any, res: Sequence[MatchResult], horizon: float | None, cmp: Compat | None
    ) -> BootstrapResult:
        if n_boot == 0:
            table_curve = froc_curve(res, compat=cmp, sensitivity=sensitivity)
            est = float(metric(table_curve))
            return BootstrapResult(est, float("nan"), None, None, 0, 0, np.zeros(0))
        return bootstrap(
            metric,
            res,
            B=n_boot,
            seed=seed,
            ci=ci,
            max_fp=horizon,
            compat=cmp,
            sensitivity=sensitivity,
        )

    fauc_bs = boot(partial(fauc, max_fp=f_max, interpolation=interpolation), results, f_max, compat)
    score_bs = boot(
        partial(froc_score, fps=budgets, interpolation=interpolation), results, max(budgets), compat
    )
    sens_at = {f: float(sensitivity_at_fp(curve, f, interpolation)) for f in budgets}

    finite = [math.isfinite(c) for c in counts]
    op_sens = op_fpa = None
    op_tp = op_fp = None
    if any(finite):
        if not all(finite):
            missing = finite.index(False)
            raise ValueError(
                f"detections[{missing}] has no predicted count while others do; give counts for "
                "all images (or none) to compute the operating point"
            )
        chosen = [top_n(p, s, c) for p, s, c in zip(points, scores, counts, strict=True)]
        op_results = match_images(
            [c[0] for c in chosen], [c[1] for c in chosen], tg, ignore=ignore, **options
        )
        op_sens = boot(_endpoint_sensitivity, op_results, None, None)
        op_fpa = boot(_endpoint_fp_avg, op_results, None, None)
        point = operating_point(op_results)
        op_tp, op_fp = point.tp, point.fp

    n_det = sum(r.det_label.size for r in results)
    return EvaluationReport(
        fauc=fauc_bs,
        froc_score=score_bs,
        sensitivity_at=sens_at,
        op_sensitivity=op_sens,
        op_fp_avg=op_fpa,
        op_tp=op_tp,
        op_fp=op_fp,
        n_images=len(results),
        n_targets=curve.n_targets,
        n_detections=n_det,
        n_tp=sum(r.n_tp for r in results),
        n_fp=sum(r.n_fp for r in results),
        n_not_counted=sum(r.n_ignored for r in results),
        n_ignored_targets=int(sum(int(r.gt_ignored.sum()) for r in results)),
        max_fp=f_max,
        fps=budgets,
        settings={
            **{
                k: (np.asarray(v).tolist() if k == "spacing" and v is not None else v)
                for k, v in options.items()
            },
            "radius_unit": "voxels" if spacing is None else "mm",
            "interpolation": interpolation,
            "sensitivity": sensitivity,
            "n_bootstrap": n_boot,
            "seed": seed,
        },
        curve=curve,
        n_truncated=len(cut),
    )


def _endpoint_sensitivity(curve: FROC[Any]) -> Any:
    return curve.sensitivity[..., -1]


def _endpoint_fp_avg(curve: FROC[Any]) -> Any:
    return curve.fp_avg[..., -1]
