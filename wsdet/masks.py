"""Masks to points: one FROC target per connected component of a segmentation mask.

Re-exported by :mod:`wsdet.io` (``wsdet.io.points_from_mask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_float, check_int

if TYPE_CHECKING:
    from wsdet.io import Volume

__all__ = ["points_from_mask"]


def points_from_mask(
    mask: ArrayLike | Volume,
    spacing: float | Sequence[float] | None = None,
    *,
    connectivity: int | None = None,
    min_size: float = 0.0,
) -> NDArray[np.float64]:
    """One target point per connected component of a binary or label mask (its centroid).

    Components are found with :func:`skimage.measure.label`: voxels connect when they are
    neighbours and hold the same non-zero value, so two touching regions of a label mask
    with different labels stay two targets, while touching regions of a binary mask merge.

    Parameters
    ----------
    mask : array_like or Volume
        2D or 3D; 0 (or False) is background.
    spacing : float or sequence of float, optional
        Voxel size per axis (mm); it gives ``min_size`` in mm³ (mm² in 2D). Taken from the
        volume when ``mask`` is a :class:`Volume`.
    connectivity : int, optional
        Neighbourhood of :func:`skimage.measure.label`: 1 (faces) to ``ndim`` (full, the
        default: 8 neighbours in 2D, 26 in 3D).
    min_size : float
        Drop components smaller than this (voxels, or mm³ with ``spacing``).

    Returns
    -------
    numpy.ndarray
        ``(k, ndim)`` float64 centroids in voxel indices (array axis order), ordered by the
        raster index of each component's first voxel. Map them to mm with
        :meth:`Volume.to_world`.

    Examples
    --------
    >>> m = np.zeros((5, 6), dtype=np.uint8)
    >>> m[0:2, 0:2] = 1; m[3, 3:6] = 1
    >>> points_from_mask(m).tolist()
    [[0.5, 0.5], [3.0, 4.0]]
    """
    from skimage import measure

    from wsdet.io import Volume, _as_spacing  # io re-exports this function

    sp_given = spacing
    if isinstance(mask, Volume):
        arr = mask.array
        sp_given = mask.spacing if spacing is None else spacing
    else:
        arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError("mask must hold integer labels (or booleans), got fractional values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "biu":
        raise TypeError(f"mask must be a binary or integer label array, got dtype {arr.dtype}")
    if connectivity is not None:
        check_int("connectivity", connectivity, minimum=1, maximum=arr.ndim)
    voxel = 1.0 if sp_given is None else float(np.prod(_as_spacing(sp_given, arr.ndim)))
    check_float("min_size", min_size, nonnegative=True)
    labels = measure.label(  # type: ignore[no-untyped-call]
        arr, background=0, connectivity=connectivity or arr.ndim
    )
    props = measure.regionprops(labels)  # type: ignore[no-untyped-call]
    pts = [
        (np.ravel_multi_index(tuple(r.coords[0]), arr.shape), r.centroid)
        for r in props
        if r.area * voxel >= min_size
    ]
    pts.sort(key=lambda t: t[0])
    if not pts:
        return np.zeros((0, arr.ndim))
    return np.asarray([c for _, c in pts], dtype=np.float64)
