"""The options of an evaluation, grouped: how to match (:class:`MatchSpec`) and how to read
the FROC curve (:class:`FROCSpec`).

Both are frozen and validated on construction, so a bad option fails before any matching.
:func:`~wsdet.metrics.evaluate` builds them from its keyword arguments;
:class:`~wsdet.metrics.Evaluation` takes them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from wsdet._checks import check_bool, check_choice, check_float
from wsdet.metrics._checks import (
    Compat,
    Duplicates,
    Interpolation,
    MatchKind,
    SensitivityKind,
    Tiebreak,
    check_compat,
    to_numpy,
)
from wsdet.metrics.curve import CAMELYON_FPS, LUNA16_FPS

__all__ = ["PAPER_MAX_FP", "FROCSpec", "MatchSpec"]

#: The paper's FAUC ranges: 0-2 false positives per image on MNIST (box hits), 0-15 per
#: brain region (point hits within 6 voxels). ``evaluate(max_fp=None)`` picks by ``match``.
PAPER_MAX_FP: dict[str, float] = {"boxes": 2.0, "points": 15.0}

_DEFAULT_RADIUS = 6.0


def _frozen(value: Any) -> Any:
    """Nested lists as nested tuples (hashable), numbers unchanged."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class MatchSpec:
    """How detections are matched to targets (see :func:`~wsdet.metrics.match_images`).

    Which targets are ignored is data, not an option: it goes with the targets
    (``ignore=`` of :func:`~wsdet.metrics.evaluate` and of
    :meth:`~wsdet.metrics.Evaluation.update`). ``compat`` is a :class:`FROCSpec` field, and
    also changes the matching rule.

    Parameters
    ----------
    match : {"points", "boxes"}
        Hit rule: within ``radius`` of a target point, or inside a half-open target box.
    radius : float
        Hit radius (default 6 voxels; in mm when ``spacing`` is given).
    spacing : float or array_like, optional
        Voxel size per axis in mm, one for all images ``(ndim,)`` or one row per image
        ``(n_images, ndim)``; kept as (nested) tuples.
    radius_mm : float, optional
        The hit radius in millimetres instead of ``radius`` (needs ``spacing``); after
        construction ``radius`` holds it too.
    inclusive : bool
        ``d <= radius`` (default) or ``d < radius``.
    duplicates : {"fp", "ignore"}
        What an unmatched detection within reach of a target is.
    tiebreak : {"distance", "none"}
        Among tied scores, prefer closer pairs (default).

    Examples
    --------
    >>> MatchSpec(radius_mm=3.0, spacing=(1.0, 0.5)).radius
    3.0
    >>> MatchSpec(radius=-1)
    Traceback (most recent call last):
    ...
    ValueError: radius must be a finite number >= 0; got -1
    """

    match: MatchKind = "points"
    radius: float = _DEFAULT_RADIUS
    spacing: Any = field(default=None)
    radius_mm: float | None = None
    inclusive: bool = True
    duplicates: Duplicates = "fp"
    tiebreak: Tiebreak = "distance"

    def __post_init__(self) -> None:
        check_choice("match", self.match, ("points", "boxes"))
        check_float("radius", self.radius, nonnegative=True)
        check_bool("inclusive", self.inclusive)
        check_choice("duplicates", self.duplicates, ("fp", "ignore"))
        check_choice("tiebreak", self.tiebreak, ("distance", "none"))
        if self.spacing is not None:
            object.__setattr__(
                self, "spacing", _frozen(np.asarray(to_numpy(self.spacing)).tolist())
            )
        if self.radius_mm is not None:
            mm = check_float("radius_mm", self.radius_mm, nonnegative=True)
            if self.radius not in (_DEFAULT_RADIUS, mm):
                raise ValueError("give the hit radius as radius or radius_mm, not both")
            if self.spacing is None:
                raise ValueError(
                    "radius_mm needs spacing= (the voxel size in mm: one per axis, or one row "
                    "per image); for points already in mm (world coordinates) pass spacing=1"
                )
            object.__setattr__(self, "radius", mm)

    @property
    def per_image_spacing(self) -> bool:
        """Whether ``spacing`` has one row per image."""
        return self.spacing is not None and np.ndim(self.spacing) == 2

    def match_kwargs(self, spacing: ArrayLike | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`~wsdet.metrics.match_images` (``compat`` apart);
        ``spacing`` replaces this spec's (per-image rows of one batch)."""
        return {
            "match": self.match,
            "radius": self.radius,
            "spacing": self.spacing if spacing is None else spacing,
            "inclusive": self.inclusive,
            "duplicates": self.duplicates,
            "tiebreak": self.tiebreak,
        }


@dataclass(frozen=True)
class FROCSpec:
    """How the FROC curve is built and read.

    Parameters
    ----------
    max_fp : float, optional
        FAUC range; default the paper's (:data:`PAPER_MAX_FP`, by the match kind).
    interpolation : {"linear", "step"}
        How the curve is read and integrated.
    fps : sequence of float, optional
        Budgets of the FROC score; default ``(1/4, ..., 8)`` (``(1/8, ..., 8)`` with
        ``compat="luna16"``). Kept as a tuple of floats.
    compat : {"monai", "luna16"}, optional
        Reproduce another evaluator's conventions (matching rule and curve).
    sensitivity : {"micro", "macro"}
        Pooled (default) or mean per-image sensitivity.

    Examples
    --------
    >>> FROCSpec(compat="luna16").budgets()
    (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    >>> FROCSpec().fauc_range("boxes")
    2.0
    """

    max_fp: float | None = None
    interpolation: Interpolation = "linear"
    fps: Sequence[float] | None = None
    compat: Compat | None = None
    sensitivity: SensitivityKind = "micro"

    def __post_init__(self) -> None:
        if self.max_fp is not None:
            object.__setattr__(self, "max_fp", check_float("max_fp", self.max_fp, positive=True))
        check_choice("interpolation", self.interpolation, ("linear", "step"))
        check_compat(self.compat)
        check_choice("sensitivity", self.sensitivity, ("micro", "macro"))
        if self.fps is not None:
            budgets = tuple(float(f) for f in self.fps)
            if not budgets:
                raise ValueError("fps must contain at least one false-positive budget")
            for f in budgets:
                check_float("fps", f, nonnegative=True)
            object.__setattr__(self, "fps", budgets)

    def fauc_range(self, match: str) -> float:
        """``max_fp``, or the paper's range for the match kind."""
        return PAPER_MAX_FP[match] if self.max_fp is None else float(self.max_fp)

    def budgets(self) -> tuple[float, ...]:
        """The FROC-score budgets: ``fps`` or the default of ``compat``."""
        if self.fps is not None:
            return tuple(self.fps)
        return LUNA16_FPS if self.compat == "luna16" else CAMELYON_FPS
