"""The printable summary of an evaluation: :class:`EvaluationReport` (text, Markdown, JSON)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from wsdet.metrics.bootstrap import BootstrapResult
from wsdet.metrics.curve import FROC
from wsdet.metrics.matchers import MatchResult

__all__ = ["EvaluationReport"]


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Summary of an evaluation (see :func:`~wsdet.metrics.evaluate`). Print it, or export it.

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
        :class:`~wsdet.metrics.TruncatedDetectionsWarning`).
    matches : tuple of MatchResult
        Per image, the match result of every candidate (what
        :func:`~wsdet.metrics.match_images` returns for the same options): pass the report
        to :func:`~wsdet.metrics.paired_bootstrap`, or read the matches, instead of matching
        again.
    op_matches : tuple of MatchResult or None
        Per image, the match result of the top ``round-half-up(count)`` detections (the
        operating point); None without predicted counts.

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
    matches: tuple[MatchResult, ...] = field(default=(), repr=False)
    op_matches: tuple[MatchResult, ...] | None = field(default=None, repr=False)

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
