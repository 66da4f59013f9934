"""One-call evaluation of point detections: FAUC with bootstrap error, operating point, counts.

The names live in :mod:`wsdet.metrics.evaluation` (:func:`evaluate`, :class:`Evaluation`),
:mod:`wsdet.metrics.summary` (:class:`EvaluationReport`), :mod:`wsdet.metrics.specs` and
:mod:`wsdet.metrics.topn` (wsdet's one top-n rule, :func:`round_half_up`, which
:mod:`wsdet.detection` re-exports); they are all importable from here too.
"""

from __future__ import annotations

from wsdet.metrics.evaluation import TruncatedDetectionsWarning, evaluate
from wsdet.metrics.specs import PAPER_MAX_FP
from wsdet.metrics.summary import EvaluationReport
from wsdet.metrics.topn import round_half_up, top_n

__all__ = [
    "PAPER_MAX_FP",
    "EvaluationReport",
    "TruncatedDetectionsWarning",
    "evaluate",
    "round_half_up",
    "top_n",
]
