"""From attention maps to point detections: negatives policy, N-D NMS, top-n.

:func:`detect_maps` is the one pipeline, for any precomputed maps ``(B, *S)`` (wsdet's,
Captum's, MONAI's; torch or numpy): negatives policy, then NMS (:func:`find_peaks_batch`),
then the top-n of each image's candidates.

Non-maximum suppression follows ``scipy.ndimage.maximum_filter`` exactly:

- A voxel is a candidate when it equals the maximum of the window around it and exceeds
  ``min_value`` (default: its map's minimum; strict ``>``, so a constant map has none).
- The window of size ``s`` along an axis is ``[i - s//2, i + (s-1)//2]``: centred for odd
  sizes; for the paper's even default ``s = 6`` it is ``[i-3, i+2]``, as scipy places it.
  Odd sizes (``2r + 1``) are recommended for new work. Sizes may differ per axis. A size
  above ``2L - 1`` on an axis of length ``L`` already covers the whole axis from every
  voxel: it is clamped to ``2L - 1`` (same result; the cost no longer grows with it).
- Outside the array the window is truncated (equivalent to scipy's ``mode="nearest"``).
- ``exclude_border`` drops candidates within that many voxels of the border (per axis).
- The remaining candidates are grouped into connected components (full connectivity: 8
  neighbours in 2D, 26 in 3D) and each component is reduced to its lowest raster index.
  For sizes ``>= 3`` on every axis these components are plateaus of equal maxima.
- Candidates are ordered by value (descending), then raster index (ascending).

Two implementations give identical candidates (property-tested): a SciPy one for maps in
host memory (CPU tensors and numpy arrays: ``maximum_filter`` and a sparse component
search over the candidates, equal to ``scipy.ndimage.label`` with a full structure), and a
torch one (``max_pool`` and iterative plateau labelling) for maps on a GPU, which stay on
their device. Coordinates come back in array axis order ((row, col) in 2D, (z, y, x) in
3D). The top-n rule, :func:`round_half_up`, is shared with :mod:`wsdet.metrics`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import Tensor

from wsdet._checks import check_choice, check_float, check_int
from wsdet._per_image import NArg as NArg
from wsdet._per_image import parse_counts, parse_n
from wsdet.metrics.report import round_half_up

__all__ = [
    "Detections",
    "apply_negatives",
    "detect_maps",
    "find_peaks",
    "find_peaks_batch",
    "parse_n",
    "round_half_up",
    "select_top_n",
]

Negatives = Literal["clip", "abs", "keep"]
SizeArg = Union[int, Sequence[int]]
Backend = Literal["auto", "scipy", "torch"]


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
    n_candidates : int
        NMS candidates before the top-n selection (``-1`` when unknown); ``k`` is smaller
        when only the top-n were kept.
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


_NEGATIVES = ("clip", "abs", "keep")


def apply_negatives(maps: Tensor, negatives: Negatives) -> Tensor:
    """Apply the negatives policy: ``"clip"`` (to 0), ``"abs"``, or ``"keep"``."""
    check_choice("negatives", negatives, _NEGATIVES)
    if negatives == "clip":
        return maps.clamp_min(0)
    return maps.abs() if negatives == "abs" else maps


def _per_axis(name: str, value: SizeArg, ndim: int | None, minimum: int) -> tuple[int, ...]:
    """``value`` (one int, or one int per spatial axis: a sequence or a 1-D array) as
    ``ndim`` checked ints (``ndim=None``: any number of axes, one for a single int).
    Integral floats (``3.0``) are taken as ints."""

    def one(label: str, v: object) -> int:
        if isinstance(v, float | np.floating) and float(v).is_integer():
            v = int(v)
        return check_int(label, v, minimum=minimum)

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        if ndim is not None and len(value) != ndim:
            raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
        return tuple(one(f"{name}[{i}]", v) for i, v in enumerate(value))
    return (one(name, value),) * (1 if ndim is None else ndim)


def _min_value(min_value: float | None) -> float | None:
    """``min_value`` checked: ``None`` or a number (``+-inf`` allowed, NaN refused)."""
    return None if min_value is None else check_float("min_value", min_value, finite=False)


def check_detect_options(
    ndim: int | None, *, size: SizeArg, negatives: Negatives, min_value: float | None
) -> None:
    """Validate the NMS options of maps with ``ndim`` spatial axes (before any work;
    ``ndim=None`` when unknown yet: then a per-axis ``size`` may have any length)."""
    _per_axis("size", size, ndim, 1)
    check_choice("negatives", negatives, _NEGATIVES)
    _min_value(min_value)


def _clamped(sizes: tuple[int, ...], shape: Sequence[int]) -> tuple[int, ...]:
    """Each window clamped to ``2L - 1`` on an axis of length ``L``: the window
    ``[i - s//2, i + (s-1)//2]`` covers the whole axis from every ``i`` once
    ``(s-1)//2 >= L-1`` (then ``s//2 >= L-1`` too), i.e. ``s >= 2L - 1``."""
    return tuple(min(s, 2 * n - 1) for s, n in zip(sizes, shape, strict=True))


# ------------------------------------------------------------------------ torch (GPU)
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


def _peaks_torch(
    maps: Tensor, sizes: tuple[int, ...], thr: float | None, borders: tuple[int, ...]
) -> list[tuple[Tensor, Tensor]]:
    b, nd = maps.shape[0], maps.ndim - 1
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or infinite values")
    mx = _max_filter(maps, sizes)
    if thr is None:
        t = maps.flatten(1).min(1).values.view(b, *([1] * nd))
    else:
        t = torch.full((b, *([1] * nd)), thr, dtype=maps.dtype, device=maps.device)
    peak = (maps == mx) & (maps > t)
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


# ------------------------------------------------------------------------ scipy (CPU)
def _first_of_components(idx: np.ndarray, coords: np.ndarray, shape: tuple[int, ...]) -> Any:
    """Mask of the candidates (sorted raster indices ``idx``) that come first in their
    fully connected component: ``scipy.ndimage.label`` semantics, in O(K) on the K
    candidates instead of O(N) on the map."""
    k, nd = coords.shape
    strides = [math.prod(shape[j + 1 :]) for j in range(nd)]
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for d in itertools.product((-1, 0, 1), repeat=nd):
        if d <= (0,) * nd:  # each neighbour pair once: raster-forward offsets only
            continue
        ok = np.ones(k, dtype=bool)
        for ax, step in enumerate(d):
            if step == 1:
                ok &= coords[:, ax] < shape[ax] - 1
            elif step == -1:
                ok &= coords[:, ax] > 0
        src_i = np.flatnonzero(ok)
        q = idx[src_i] + sum(step * st for step, st in zip(d, strides, strict=True))
        pos = np.minimum(np.searchsorted(idx, q), k - 1)
        hit = idx[pos] == q
        if hit.any():
            src.append(src_i[hit])
            dst.append(pos[hit])
    if not src:
        return np.ones(k, dtype=bool)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(k, k))
    n_comp, labels = connected_components(graph, directed=False)
    first = np.full(n_comp, k, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(k))
    return first[labels] == np.arange(k)


def _peaks_scipy(
    a: np.ndarray, sizes: tuple[int, ...], thr: float | None, borders: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """NumPy/SciPy NMS of ``(B, *S)`` float32/float64 maps, same semantics as the torch one."""
    b, shape = a.shape[0], tuple(a.shape[1:])
    flat = a.reshape(b, -1)
    lo = flat.min(axis=1)  # NaN propagates through min and max
    if not (np.isfinite(lo).all() and np.isfinite(flat.max(axis=1)).all()):
        raise ValueError("maps contain NaN or infinite values")
    mx = ndi.maximum_filter(a, size=(1, *sizes), mode="nearest")
    eq = (a == mx).reshape(b, -1)
    out = []
    for i in range(b):
        idx = np.flatnonzero(eq[i])
        vals = flat[i, idx]
        keep = vals > (lo[i] if thr is None else a.dtype.type(thr))
        idx, vals = idx[keep], vals[keep]
        coords = np.stack(np.unravel_index(idx, shape), axis=1) if idx.size else None
        if coords is not None and any(borders):
            inside = np.ones(idx.size, dtype=bool)
            for ax, w in enumerate(borders):
                if w:
                    inside &= (coords[:, ax] >= w) & (coords[:, ax] < shape[ax] - w)
            idx, vals, coords = idx[inside], vals[inside], coords[inside]
        if coords is None or idx.size == 0:
            out.append((np.zeros((0, len(shape)), dtype=np.int64), vals[:0]))
            continue
        order = np.argsort(-vals, kind="stable")  # raster order within ties: idx ascends
        ranked = vals[order]
        # with windows covering +-1 on every axis (sizes >= 3) adjacent candidates are
        # equal, so components need a search only when candidate values repeat
        if min(sizes) < 3 or bool((ranked[1:] == ranked[:-1]).any()):
            order = order[_first_of_components(idx, coords, shape)[order]]
        out.append((coords[order].astype(np.int64, copy=False), vals[order]))
    return out


def find_peaks_batch(
    maps: Tensor,
    *,
    size: SizeArg = 6,
    min_value: float | None = None,
    exclude_border: int | Sequence[int] = 0,
    backend: Backend = "auto",
) -> list[tuple[Tensor, Tensor]]:
    """Local maxima of each map of a batch ``(B, *S)``.

    Parameters
    ----------
    maps : Tensor
        ``(B, *S)`` with 1 to 3 spatial dims. Integer maps are read as float32.
    size : int or sequence of int
        Maximum-filter window (default 6, the paper's). See the module docstring.
    min_value : float, optional
        Candidates must exceed it (default: each map's minimum); it is compared in the
        maps' dtype. ``-inf`` and ``inf`` are allowed, NaN raises ``ValueError``.
    exclude_border : int or sequence of int
        Drop candidates within this many voxels of the border (default 0).
    backend : {"auto", "scipy", "torch"}
        ``"auto"``: SciPy for maps in host memory, torch for maps on a GPU. Both return the
        same candidates (see the module docstring).

    Returns
    -------
    list of (Tensor, Tensor)
        One ``(coords (K, ndim) int64, scores (K,))`` pair per map on the maps' device,
        ordered by score descending then raster index ascending; scores are detached and
        keep the maps' dtype.

    Examples
    --------
    >>> import torch
    >>> maps = torch.zeros(2, 6); maps[0, 1] = 3.0; maps[1, 4] = 1.0
    >>> [(c.tolist(), s.tolist()) for c, s in find_peaks_batch(maps, size=3)]
    [([[1]], [3.0]), ([[4]], [1.0])]
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim not in (2, 3, 4):
        raise ValueError(
            f"maps must have shape (B, *S) with 1-3 spatial dims, got {tuple(maps.shape)}"
        )
    check_choice("backend", backend, ("auto", "scipy", "torch"))
    maps = maps.detach()
    if not maps.is_floating_point():
        maps = maps.float()
    nd = maps.ndim - 1
    sizes = _per_axis("size", size, nd, 1)
    borders = _per_axis("exclude_border", exclude_border, nd, 0)
    low = _min_value(min_value)
    b = maps.shape[0]
    if b == 0 or maps[0].numel() == 0:
        return [
            (torch.zeros(0, nd, dtype=torch.long, device=maps.device), maps.new_zeros(0))
            for _ in range(b)
        ]
    sizes = _clamped(sizes, maps.shape[1:])
    # the threshold as the maps' dtype holds it (as a comparison in that dtype would)
    thr = None if low is None else float(torch.tensor(low, dtype=maps.dtype))
    if backend == "torch" or (backend == "auto" and maps.device.type != "cpu"):
        return _peaks_torch(maps, sizes, thr, borders)
    host = maps.cpu()
    if host.dtype not in (torch.float32, torch.float64):
        host = host.float()  # float16/bfloat16: exact in float32
    found = _peaks_scipy(host.contiguous().numpy(), sizes, thr, borders)
    return [
        (
            torch.from_numpy(c).to(maps.device),
            torch.from_numpy(s).to(device=maps.device, dtype=maps.dtype),
        )
        for c, s in found
    ]


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
    t = _as_tensor(amap, "amap")
    if t.ndim not in (1, 2, 3):
        raise ValueError(f"amap must have 1, 2 or 3 dimensions, got shape {tuple(t.shape)}")
    ((coords, scores),) = find_peaks_batch(
        t.unsqueeze(0), size=size, min_value=min_value, exclude_border=exclude_border
    )
    if max_peaks is not None:
        k = check_int("max_peaks", max_peaks, minimum=0)
        coords, scores = coords[:k], scores[:k]
    return coords.cpu().numpy(), scores.cpu().numpy()


# ------------------------------------------------------------------------ maps -> detections
def _as_tensor(x: Any, name: str) -> Tensor:
    """A tensor view of a torch tensor or numpy array (no copy when contiguous)."""
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        try:
            t = torch.from_numpy(np.ascontiguousarray(x))
        except TypeError:
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t


def detect_maps(
    maps: Tensor | np.ndarray,
    *,
    n: NArg = None,
    counts: Any = None,
    size: SizeArg = 6,
    negatives: Negatives = "clip",
    min_value: float | None = None,
) -> list[Detections]:
    """Point detections from precomputed attention maps: negatives, NMS, top-n.

    The pipeline of :meth:`wsdet.Detector.detect`, for maps from anywhere (Captum, MONAI,
    your own): with ``maps, counts = det.attention_and_count(x)``,
    ``detect_maps(maps, n=n, counts=counts)`` equals ``det.detect(x, n)``.

    Parameters
    ----------
    maps : Tensor or numpy.ndarray
        ``(B, *S)`` maps, 1 to 3 spatial dims (a single map needs a batch axis:
        ``maps[None]``). GPU tensors stay on their device for the NMS.
    n : None, int, float, sequence of numbers, or "all"
        How many candidates to keep per image: ``None`` keeps ``round_half_up(count)``
        (then ``counts`` is required; an image whose count is not finite keeps none), a
        number or one number per image keeps that many (rounded half up), ``"all"`` keeps
        every candidate (what :func:`wsdet.metrics.evaluate` needs for a full FROC curve).
    counts : None, Tensor, numpy.ndarray or sequence of float
        ``B`` predicted counts (``(B,)`` or ``(B, 1)``), stored in ``Detections.count``
        (``nan`` when None). A tensor is read in float32, as ``Detector.detect`` does.
    size : int or sequence of int
        Maximum-filter size of the NMS (default 6, as in the paper); see :mod:`wsdet.detection`.
    negatives : {"clip", "abs", "keep"}
        What to do with negative map values before NMS (the paper clips).
    min_value : float, optional
        Candidates must exceed it (default: each map's minimum after ``negatives``).

    Returns
    -------
    list of Detections
        One per image: ``points`` ``(k, ndim)`` int64 index coordinates in array axis
        order, ``scores`` ``(k,)`` float32 descending, ``count``, and ``n_candidates`` (the
        NMS candidates before the top-n).

    Raises
    ------
    TypeError
        If ``maps`` is not a tensor or numpy array of real numbers.
    ValueError
        If ``maps`` is not ``(B, *S)`` with 1-3 spatial dims or holds NaN/inf, if ``n`` or
        ``counts`` do not match the batch, or if ``n=None`` comes without ``counts``.

    Examples
    --------
    >>> import numpy as np
    >>> from wsdet.detection import detect_maps
    >>> maps = np.zeros((2, 8, 8), dtype=np.float32)
    >>> maps[0, 2, 3], maps[0, 6, 6], maps[1, 4, 4] = 1.0, 0.5, 2.0
    >>> dets = detect_maps(maps, n="all", size=3)
    >>> dets[0].points.tolist(), dets[0].scores.tolist(), dets[0].n_candidates
    ([[2, 3], [6, 6]], [1.0, 0.5], 2)
    >>> [len(d) for d in detect_maps(maps, counts=[0.6, 0.2], size=3)]
    [1, 0]
    """
    t = _as_tensor(maps, "maps")
    if t.ndim not in (2, 3, 4):
        raise ValueError(
            "maps must have shape (B, *S) with 1-3 spatial dims (add a batch axis to a "
            f"single map: maps[None]), got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    check_detect_options(t.ndim - 1, size=size, negatives=negatives, min_value=min_value)
    b = t.shape[0]
    ns = parse_n(n, b)
    cs = parse_counts(counts, b)
    if cs is None and n is None:
        raise ValueError(
            "counts is required with n=None (the top-n is the rounded predicted count): pass "
            "counts=(one number per image), or n=an int, one number per image, or 'all'"
        )
    peaks = find_peaks_batch(apply_negatives(t.detach(), negatives), size=size, min_value=min_value)
    out = []
    for i, (coords, scores) in enumerate(peaks):
        c = float("nan") if cs is None else float(cs[i])
        if ns[i] == "all":
            k = coords.shape[0]
        elif ns[i] is None:
            k = round_half_up(c) if math.isfinite(c) else 0
        else:
            k = round_half_up(float(ns[i]))
        out.append(
            Detections(
                points=coords[:k].cpu().numpy(),
                scores=scores[:k].float().cpu().numpy(),
                count=c,
                n_candidates=int(coords.shape[0]),
            )
        )
    return out


def select_top_n(
    coords: np.ndarray, scores: np.ndarray, n: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``round_half_up(n)`` of candidates already ranked (all when ``n`` is ``None``).

    Kept for compatibility; :func:`detect_maps` and :func:`wsdet.metrics.top_n` apply the
    same rule (:func:`round_half_up`).
    """
    if n is None:
        return coords, scores
    k = round_half_up(float(n))
    return coords[:k], scores[:k]
