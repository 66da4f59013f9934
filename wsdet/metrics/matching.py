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

The functions live in :mod:`wsdet.metrics.matchers` (:func:`match_points`,
:func:`match_boxes`, :func:`match_images`, :class:`MatchResult`) and
:mod:`wsdet.metrics.agreement` (:func:`compare_annotations`); pair finding and assignment
are package-internal. Every name is importable from here too.
"""

from __future__ import annotations

from wsdet.metrics._assignment import LUNA16_MAX_CANDIDATES as LUNA16_MAX_CANDIDATES
from wsdet.metrics._checks import Duplicates as Duplicates
from wsdet.metrics._checks import MatchKind as MatchKind
from wsdet.metrics._checks import Tiebreak as Tiebreak
from wsdet.metrics._pairs import INCLUSIVE_SLACK as INCLUSIVE_SLACK
from wsdet.metrics.agreement import AnnotationAgreement, compare_annotations
from wsdet.metrics.matchers import MatchResult, match_boxes, match_images, match_points

__all__ = [
    "AnnotationAgreement",
    "MatchResult",
    "compare_annotations",
    "match_boxes",
    "match_images",
    "match_points",
]
