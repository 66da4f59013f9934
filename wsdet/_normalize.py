"""Per-volume intensity normalisation (re-exported by :mod:`wsdet.io`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["METHODS", "normalize_intensity"]

METHODS = ("zscore", "robust", "minmax", "none")
MAD_TO_SD = 1.482602218505602  # 1 / Phi^-1(3/4): the MAD of Gaussian noise times it is its sd


def normalize_intensity(
    array: ArrayLike, method: str = "zscore", *, mask: ArrayLike | None = None
) -> NDArray[np.float32]:
    """Per-volume intensity normalisation, as float32 (what ``wsdet train`` records).

    Parameters
    ----------
    array : array_like
        The image.
    method : {"zscore", "robust", "minmax", "none"}
        ``"zscore"``: ``(a - mean) / std`` (``std`` 0 gives zeros); ``"robust"``:
        ``(a - median) / (1.4826 * MAD)``, MAD the median absolute deviation from the
        median (the factor makes it the standard deviation for Gaussian noise), which a
        few outlying voxels barely move (a constant image gives zeros); ``"minmax"``: to
        ``[0, 1]``; ``"none"``: unchanged (but 0 outside ``mask``).
    mask : array_like of bool, optional
        A region mask of the image's shape (e.g. a brain or structure mask): the
        statistics come from the voxels inside it, and the voxels outside are set to 0
        (with ``"zscore"`` the region's mean). Without it, the whole image. The
        statistics include whatever the region holds: bright lesions raise its mean, so
        the z-scored tissue lies lower the more lesions there are, and the border to the
        0 outside becomes an edge whose height tracks the lesion load, which a counting
        network can learn to read instead of the lesions (``docs/phantoms_v2.md``,
        "Normalisation"). ``"robust"`` resists sparse outliers, not objects that fill a
        sizable share of the region: on those phantoms it keeps most of the link (-0.069
        z per 10 lesions against -0.090 with ``"zscore"``). Where intensities are
        comparable between images, one ``(mean, std)`` for the whole data set avoids it
        (:meth:`wsdet.data.phantoms.PhantomSet.zscored` with ``stats``).

    Raises
    ------
    ValueError
        On an unknown ``method``, a ``mask`` of another shape, an empty ``mask``, or
        ``"robust"`` on values more than half of which are equal but not all (MAD 0: no
        scale to divide by).

    Examples
    --------
    >>> normalize_intensity([0.0, 5.0, 10.0], "minmax").tolist()
    [0.0, 0.5, 1.0]
    >>> normalize_intensity([0.0, 5.0, 7.0], mask=[False, True, True]).tolist()
    [0.0, -1.0, 1.0]
    >>> [round(v, 3) for v in normalize_intensity([1.0, 2.0, 3.0, 100.0], "robust").tolist()]
    [-1.012, -0.337, 0.337, 65.763]
    """
    a = np.asarray(array, dtype=np.float32)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    inside: NDArray[np.bool_] | None = None
    values = a
    if mask is not None:
        inside = np.asarray(mask)
        if inside.shape != a.shape or inside.dtype != np.bool_:
            raise ValueError(
                f"mask must be a bool array of the image's shape {a.shape}; "
                f"got {inside.dtype} {inside.shape}"
            )
        if not inside.any():
            raise ValueError("mask is empty: no voxel to take the statistics from")
        values = a[inside]
    if method == "none":
        return a if inside is None else np.where(inside, a, np.float32(0.0))
    if method == "zscore":
        mean = float(values.mean(dtype=np.float64))
        std = float(values.std(dtype=np.float64))
        out = (a - mean) / std if std > 0 else np.zeros_like(a)
    elif method == "robust":
        v64 = values.astype(np.float64)
        median = float(np.median(v64))
        scale = MAD_TO_SD * float(np.median(np.abs(v64 - median)))
        if scale > 0:
            out = (a - median) / scale
        elif float(v64.max()) == float(v64.min()):
            out = np.zeros_like(a)
        else:
            raise ValueError(
                "method='robust': more than half of the "
                + ("voxels inside mask" if inside is not None else "values")
                + f" equal {median:g}, so their median absolute deviation is 0 and there is "
                "no scale to divide by; pass a mask of the tissue, or use method='zscore'"
            )
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if inside is not None:
        out = np.where(inside, out, 0.0)
    return np.asarray(out, dtype=np.float32)
