"""The FROC curve type (one curve, or a stack sharing its thresholds) and its operating point.

How a curve is built and read is explained in :mod:`wsdet.metrics.froc`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["CAMELYON_FPS", "FROC", "LUNA16_FPS", "OperatingPoint"]

#: False positives per image read by the CAMELYON16 / MONAI FROC score.
CAMELYON_FPS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: False positives per scan read by the LUNA16 CPM (2^k, k = -3..3).
LUNA16_FPS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

R = TypeVar("R", float, NDArray[np.float64])


@dataclass(frozen=True, eq=False)
class FROC(Generic[R]):
    """A FROC curve (or a stack of curves sharing their thresholds).

    Attributes
    ----------
    thresholds : numpy.ndarray
        ``(G,)`` descending thresholds; ``thresholds[0] = +inf`` is the origin, then every
        unique score. Point ``g`` counts the events with ``score >= thresholds[g]``.
    fp_avg : numpy.ndarray
        ``(..., G)`` false positives per image.
    sensitivity : numpy.ndarray
        ``(..., G)`` sensitivity (``nan`` when there are no targets).
    tp, fp : numpy.ndarray
        ``(..., G)`` cumulative true-positive and false-positive counts (integers).
    n_images : int
        ``N``, the false-positive denominator (all images). For a stack of reweighted curves,
        the number of original images (each row's denominator is the sum of its weights).
    n_targets : int
        ``L``, the number of counted targets (of the original data, for a stack).

    The type parameter records what the readings return: ``FROC[float]`` for a single curve,
    ``FROC[numpy.ndarray]`` for a stack (bootstrap replicates).
    """

    thresholds: NDArray[np.float64]
    fp_avg: NDArray[np.float64]
    sensitivity: NDArray[np.float64]
    tp: NDArray[np.integer[Any]]
    fp: NDArray[np.integer[Any]]
    n_images: int
    n_targets: int

    @property
    def batched(self) -> bool:
        """Whether this is a stack of curves."""
        return self.fp_avg.ndim > 1

    def __len__(self) -> int:
        return int(self.thresholds.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.fp_avg.shape)
        return f"FROC(points={shape}, n_images={self.n_images}, n_targets={self.n_targets})"


class OperatingPoint(NamedTuple):
    """Sensitivity and false positives per image at one threshold (or the end-point)."""

    sensitivity: float
    fp_avg: float
    tp: int
    fp: int
    threshold: float
