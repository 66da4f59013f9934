"""From attention maps to point detections: negatives policy, N-D NMS, top-n.

Non-maximum suppression follows ``scipy.ndimage.maximum_filter`` exactly: a voxel is a
candidate when it equals the maximum of the window around it and exceeds the map's
minimum (or ``min_value``). The window of size ``s`` along an axis is ``[i - s//2,
i + (s-1)//2]`` — centred for odd sizes; for the paper's even default ``s = 6`` it is
``[i-3, i+2]``, as scipy does. Odd sizes (``2r + 1``) are recommended for new work.
Outside the array the window is truncated (equivalent to scipy's ``mode="nearest"``).
Connected plateaus of equal maxima (full connectivity) are reduced to their lowest raster
index. Candidates are ordered by value (descending), then raster index (ascending).

Everything runs with torch on the map's device; coordinates come back as numpy arrays in
array axis order ((row, col) in 2D, (z, y, x) in 3D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Detections",
    "apply_negatives",
    "find_peaks",
    "find_peaks_batch",
    "round_half_up",
    "select_top_n",
]

Negatives = Literal["clip", "abs", "keep"]
SizeArg = Union[int, Sequence[int]]


@dataclass
class Detections:
    """Point detections of one image.

    Attributes
    ----------
    points : numpy.ndarray
        ``(k, ndim)`` int64 index coordinates in array axis order.
    scores : numpy.ndarray
        ``(k,)`` attention-map values at the points, in descending order.
    count : float
        The model's predicted count for the image (``nan`` when unknown).
    """

    points: np.ndarray
    scores: np.ndarray
    count: float = float("nan")
    n_candidates: int = field(default=-1)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __repr__(self) -> str:
        return (
            f"Detections(k={len(self)}, "
            f"ndim={self.points.shape[1] if self.points.ndim == 2 else 0}, "
            f"count={self.count:.3f})"
        )


def round_half_up(n: float) -> int:
    """``max(0, floor(n + 0.5))``: round half up, never negative.

    Python's ``round`` and NumPy round half to even (``round(2.5) == 2``); detection counts
    should not depend on the parity of the integer part.

    >>> round_half_up(2.5), round_half_up(0.49), round_half_up(-1.2)
    (3, 0, 0)
    """
    if not math.isfinite(n):
        raise ValueError(f"n must be finite to round, got {n}")
    return max(0, math.floor(n + 0.5))


def apply_negatives(maps: Tensor, negatives: Negatives) -> Tensor:
    """Apply the negatives policy: ``"clip"`` (to 0), ``"abs"``, or ``"keep"``."""
    if negatives == "clip":
        return maps.clamp_min(0)
    if negatives == "abs":
        return maps.abs()
    if negatives == "keep":
        return maps
    raise ValueError(f"negatives must be 'clip', 'abs' or 'keep', got {negatives!r}")


def _sizes(size: SizeArg, ndim: int) -> tuple[int, ...]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        sizes = (int(size),) * ndim
    elif isinstance(size, Sequence) and len(size) == ndim:
        sizes = tuple(int(s) for s in size)
    else:
        raise ValueError(f"size must be an int or a sequence of {ndim} ints, got {size!r}")
    if any(s < 1 for s in sizes):
        raise ValueError(f"size must be >= 1 along every axis, got {size!r}")
    return sizes


def _max_filter(maps: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """``maximum_filter`` of ``(B, *S)`` maps with scipy's window placement."""
    nd = len(sizes)
    pads: list[int] = []
    for s in reversed(sizes):
        pads += [s // 2, (s - 1) // 2]
    x = F.pad(maps.unsqueeze(1), pads, value=-math.inf)
    pool = F.max_pool2d if nd == 2 else F.max_pool3d if nd == 3 else F.max_pool1d
    return pool(x, kernel_size=sizes, stride=1).squeeze(1)  # type: ignore[operator]


def _plateau_first(peak: Tensor) -> Tensor:
    """Keep the lowest raster index of each fully connected component of ``peak``."""
    b = peak.shape[0]
    spatial = peak.shape[1:]
    n = int(np.prod(spatial))
    dtype = torch.float64 if n > 2**24 else torch.float32
    idx = torch.arange(n, device=peak.device, dtype=dtype).reshape(spatial).expand(b, *spatial)
    big = float(n)
    lab = torch.where(peak, idx, torch.full_like(idx, big))
    ones = (3,) * len(spatial)
    while True:
        nb = -_max_filter(-lab, ones)
        new = torch.where(peak, torch.minimum(lab, nb), lab)
        if torch.equal(new, lab):
            break
        lab = new
    return peak & (lab == idx)


def find_peaks_batch(
    maps: Tensor,
    *,
    size: SizeArg = 6,
    min_value: float | None = None,
    exclude_border: int | Sequence[int] = 0,
) -> list[tuple[Tensor, Tensor]]:
    """Local maxima of each map of a batch ``(B, *S)``, on the maps' device.

    Returns one ``(coords (K, ndim) int64, scores (K,))`` pair of tensors per map, ordered
    by score descending then raster index ascending. See the module docstring for the exact
    semantics (they equal ``scipy.ndimage.maximum_filter``'s).
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim not in (2, 3, 4):
        raise ValueError(
            f"maps must have shape (B, *S) with 1-3 spatial dims, got {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or infinite values")
    nd = maps.ndim - 1
    sizes = _sizes(size, nd)
    if isinstance(exclude_border, int):
        borders = (exclude_border,) * nd
    else:
        borders = tuple(int(v) for v in exclude_border)
        if len(borders) != nd:
            raise ValueError(f"exclude_border must be an int or {nd} ints, got {exclude_border!r}")
    if any(v < 0 for v in borders):
        raise ValueError(f"exclude_border must be >= 0, got {exclude_border!r}")
    b = maps.shape[0]
    if b == 0 or maps[0].numel() == 0:
        return [
            (torch.zeros(0, nd, dtype=torch.long, device=maps.device), maps.new_zeros(0))
            for _ in range(b)
        ]
    mx = _max_filter(maps, sizes)
    if min_value is None:
        thr = maps.flatten(1).min(1).values.view(b, *([1] * nd))
    else:
        thr = torch.full((b, *([1] * nd)), float(min_value), dtype=maps.dtype, device=maps.device)
    peak = (maps == mx) & (maps > thr)
    for ax, w in enumerate(borders):
        if w:
            sl: list[slice] = [slice(None)] * (nd + 1)
            sl[ax + 1] = slice(0, w)
            peak[tuple(sl)] = False
            sl[ax + 1] = slice(max(maps.shape[ax + 1] - w, 0), None)
            peak[tuple(sl)] = False
    if bool(peak.any()):
        peak = _plateau_first(peak)
    out = []
    for i in range(b):
        coords = torch.nonzero(peak[i])  # raster order
        scores = maps[i][peak[i]]
        order = torch.sort(scores, descending=True, stable=True).indices
        out.append((coords[order], scores[order]))
    return out


def find_peaks(
    amap: Tensor | np.ndarray,
    *,
    size: SizeArg = 6,
    min_value: float | None = None,
    exclude_border: int | Sequence[int] = 0,
    max_peaks: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of one map (torch tensor or numpy array) as numpy arrays.

    Parameters
    ----------
    amap : Tensor or numpy.ndarray
        A 1D, 2D or 3D map.
    size : int or sequence of int
        Maximum-filter window (default 6, the paper's). See the module docstring.
    min_value : float, optional
        Candidates must exceed it (default: the map's minimum).
    exclude_border : int or sequence of int
        Drop candidates within this many voxels of the border (default 0).
    max_peaks : int, optional
        Keep at most this many (the highest).

    Returns
    -------
    coords : numpy.ndarray
        ``(K, ndim)`` int64.
    scores : numpy.ndarray
        ``(K,)``, descending.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((5, 5)); a[1, 1] = 2; a[3, 4] = 1
    >>> find_peaks(a, size=3)
    (array([[1, 1],
           [3, 4]]), array([2., 1.]))
    """
    t = torch.as_tensor(amap) if isinstance(amap, np.ndarray) else amap
    if not isinstance(t, Tensor):
        raise TypeError(f"amap must be a torch.Tensor or numpy array, got {type(amap).__name__}")
    if t.ndim not in (1, 2, 3):
        raise ValueError(f"amap must have 1, 2 or 3 dimensions, got shape {tuple(t.shape)}")
    ((coords, scores),) = find_peaks_batch(
        t.unsqueeze(0), size=size, min_value=min_value, exclude_border=exclude_border
    )
    if max_peaks is not None:
        if max_peaks < 0:
            raise ValueError(f"max_peaks must be >= 0, got {max_peaks}")
        coords, scores = coords[:max_peaks], scores[:max_peaks]
    return coords.cpu().numpy(), scores.detach().cpu().numpy()


def select_top_n(
    coords: np.ndarray, scores: np.ndarray, n: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``round_half_up(n)`` candidates (all when ``n`` is ``None``)."""
    if n is None:
        return coords, scores
    k = round_half_up(float(n))
    return coords[:k], scores[:k]
