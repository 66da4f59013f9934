"""Evaluation of point detections: matching, FROC, FAUC, bootstrap (NumPy in, NumPy out).

The pipeline, per the paper (Section 3.7) and ``docs/metrics.md``:

1. match each image's scored detections to its targets one-to-one
   (:func:`match_points`: within a radius, default 6 voxels, inclusive;
   :func:`match_boxes`: inside a half-open box, the MNIST rule);
2. build one FROC curve over all images (:func:`froc_curve`);
3. read it: :func:`fauc` (area up to ``max_fp`` FP per image, normalised),
   :func:`sensitivity_at_fp`, :func:`froc_score`, :func:`operating_point`;
4. bootstrap images for standard deviations and comparisons (:func:`bootstrap`,
   :func:`paired_bootstrap`), or images and the objects their targets show when objects
   repeat across images (:func:`two_way_bootstrap`, :func:`two_way_paired_bootstrap`);
   compare methods across training seeds (:func:`compare_seeds`).

:func:`evaluate` does all of it in one call and returns a printable report that keeps the
per-image matches (``report.matches``); :class:`Evaluation` is the same fed batch by batch,
with its options grouped in :class:`MatchSpec` and :class:`FROCSpec`. Both warn
(:class:`TruncatedDetectionsWarning`) when given only the top-n of some images' candidates.
:func:`round_half_up` is wsdet's one top-n rule (also used by :mod:`wsdet.detection`).
No torch import anywhere in this package.
"""

from wsdet.metrics.bootstrap import (
    BootstrapResult,
    PairedBootstrapResult,
    bootstrap,
    bootstrap_weights,
    paired_bootstrap,
)
from wsdet.metrics.evaluation import Evaluation
from wsdet.metrics.froc import (
    CAMELYON_FPS,
    FROC,
    LUNA16_FPS,
    OperatingPoint,
    fauc,
    froc_curve,
    froc_score,
    operating_point,
    sensitivity_at_fp,
    weighted_froc_curves,
)
from wsdet.metrics.matching import (
    AnnotationAgreement,
    MatchResult,
    compare_annotations,
    match_boxes,
    match_images,
    match_points,
)
from wsdet.metrics.report import (
    PAPER_MAX_FP,
    EvaluationReport,
    TruncatedDetectionsWarning,
    evaluate,
    round_half_up,
    top_n,
)
from wsdet.metrics.seeds import SeedComparison, compare_seeds
from wsdet.metrics.slices import SliceDetections, detect_on_slice, middle_slice
from wsdet.metrics.specs import FROCSpec, MatchSpec
from wsdet.metrics.two_way import two_way_bootstrap, two_way_paired_bootstrap, two_way_weights

__all__ = [
    "CAMELYON_FPS",
    "FROC",
    "LUNA16_FPS",
    "PAPER_MAX_FP",
    "AnnotationAgreement",
    "BootstrapResult",
    "Evaluation",
    "EvaluationReport",
    "FROCSpec",
    "MatchResult",
    "MatchSpec",
    "OperatingPoint",
    "PairedBootstrapResult",
    "SeedComparison",
    "SliceDetections",
    "TruncatedDetectionsWarning",
    "bootstrap",
    "bootstrap_weights",
    "compare_annotations",
    "compare_seeds",
    "detect_on_slice",
    "evaluate",
    "fauc",
    "froc_curve",
    "froc_score",
    "match_boxes",
    "match_images",
    "match_points",
    "middle_slice",
    "operating_point",
    "paired_bootstrap",
    "round_half_up",
    "sensitivity_at_fp",
    "top_n",
    "two_way_bootstrap",
    "two_way_paired_bootstrap",
    "two_way_weights",
    "weighted_froc_curves",
]
