"""Evaluating a 3D attention map on the one 2D slice that was annotated (paper Section 3.7).

For regions annotated on a single slice per scan, the paper extracts that slice from the 3D
attention map *before* post-processing (non-maximum suppression), finds peaks in 2D, and
matches them in 2D. When no lesion was annotated in a scan, the middle slice stands in for
the rated one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_int
from wsdet.metrics._checks import as_points, as_scores, to_numpy

__all__ = ["SliceDetections", "detect_on_slice", "middle_slice"]

PeakFinder = Callable[[NDArray[Any]], tuple[ArrayLike, ArrayLike]]


@dataclass(frozen=True, eq=False)
class SliceDetections:
    """2D detections and targets of one annotated slice.

    It has the ``points`` / ``scores`` / ``count`` attributes that
    :func:`~wsdet.metrics.evaluate` reads, so a list of these can be evaluated directly with
    ``targets=[s.targets for s in slices]``.

    Attributes
    ----------
    points : numpy.ndarray
        ``(k, 2)`` in-plane coordinates of the peaks (the slice axis removed).
    scores : numpy.ndarray
        ``(k,)`` peak values.
    targets : numpy.ndarray
        ``(m, 2)`` in-plane target points.
    index : int
        The slice index along ``axis``.
    axis : int
        The axis that was sliced.
    count : float
        Predicted count passed through (``nan`` when not given).
    """

    points: NDArray[np.float64]
    scores: NDArray[np.float64]
    targets: NDArray[np.float64] = field(repr=False)
    index: int
    axis: int
    count: float = float("nan")


def middle_slice(size: int) -> int:
    """Index of the middle slice of an axis of ``size`` slices: ``size // 2``.

    For an even size this is the upper of the two central slices.

    >>> middle_slice(5), middle_slice(6)
    (2, 3)
    """
    return check_int("size", size, minimum=1) // 2


def detect_on_slice(
    amap: ArrayLike,
    targets: ArrayLike,
    peak_finder: PeakFinder,
    *,
    axis: int = 0,
    slice_index: int | None = None,
    count: float | None = None,
) -> SliceDetections:
    """Take the annotated slice of a 3D map, find its 2D peaks, and express the targets in 2D.

    The slice is chosen as: ``slice_index`` if given; otherwise the slice on which the
    targets lie (they must share their coordinate along ``axis``); otherwise, when there are
    no targets, the middle slice ``shape[axis] // 2`` (the paper's rule).

    Parameters
    ----------
    amap : array_like
        The 3D attention map, before non-maximum suppression.
    targets : array_like
        ``(m, 3)`` target points on the annotated slice, or ``(m, 2)`` in-plane points when
        ``slice_index`` is given; may be empty.
    peak_finder : callable
        ``(map2d) -> (coords, scores)``: the 2D detection step, e.g. non-maximum suppression
        followed by ranking (``wsdet.detection`` provides one).
    axis : int
        The slicing axis of ``amap`` (default 0, e.g. axial slices of a ``(z, y, x)`` map).
    slice_index : int, optional
        The annotated slice, when known independently of the targets.
    count : float, optional
        A predicted count to attach to the result.

    Returns
    -------
    SliceDetections

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((5, 8, 8)); vol[2, 3, 4] = 1.0
    >>> def finder(m):
    ...     idx = np.argwhere(m > 0)
    ...     return idx, m[tuple(idx.T)]
    >>> s = detect_on_slice(vol, np.array([[2, 3, 5]]), finder)
    >>> s.index, s.points.tolist(), s.targets.tolist()
    (2, [[3.0, 4.0]], [[3.0, 5.0]])
    >>> detect_on_slice(vol, np.zeros((0, 3)), finder).index  # no targets: middle slice
    2
    """
    vol = np.asarray(to_numpy(amap))
    if vol.ndim != 3:
        raise ValueError(f"amap must be a 3-D map; got shape {vol.shape}")
    if not callable(peak_finder):
        raise TypeError("peak_finder must be a callable (map2d) -> (coords, scores)")
    ax = check_int("axis", axis, minimum=-3, maximum=2) % 3
    size = vol.shape[ax]
    tg = np.asarray(to_numpy(targets), dtype=np.float64)
    if tg.size == 0:
        tg = np.zeros((0, 3))
    if tg.ndim != 2 or tg.shape[1] not in (2, 3):
        raise ValueError(
            f"targets must be an (m, 3) or (m, 2) array of points; got shape {tg.shape}"
        )
    tg = as_points(tg, "targets")
    if slice_index is not None:
        index = check_int("slice_index", slice_index, minimum=-size)
        if index >= size:
            raise ValueError(f"slice_index {index} is out of range for axis {ax} of size {size}")
        index %= size
    elif tg.shape[0] and tg.shape[1] == 3:
        values = np.unique(tg[:, ax])
        if values.size != 1:
            raise ValueError(
                f"targets lie on several slices along axis {ax} ({values.tolist()}); annotate one "
                "slice per scan or pass slice_index"
            )
        if values[0] != np.round(values[0]) or not 0 <= values[0] < size:
            raise ValueError(
                f"the targets' slice coordinate {values[0]} is not a slice of axis {ax}"
            )
        index = int(values[0])
    elif tg.shape[0]:
        raise ValueError("in-plane (m, 2) targets need slice_index")
    else:
        index = middle_slice(size)
    if tg.shape[1] == 3:
        if tg.shape[0] and not np.all(tg[:, ax] == index):
            raise ValueError(f"targets do not lie on slice {index} of axis {ax}")
        tg = np.delete(tg, ax, axis=1)
    plane = np.take(vol, index, axis=ax)
    found = peak_finder(plane)
    if not (isinstance(found, tuple) and len(found) == 2):
        raise TypeError("peak_finder must return a (coords, scores) pair")
    coords = as_points(found[0], "peak_finder coords", 2)
    scores = as_scores(found[1], "peak_finder scores", coords.shape[0])
    c = float("nan") if count is None else float(count)
    return SliceDetections(coords, scores, tg, index, ax, c)
