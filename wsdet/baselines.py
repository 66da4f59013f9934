"""Training-free baselines: a Laplacian-of-Gaussian (LoG) blob filter.

A bright blob of Gaussian sigma ``s`` in ``D`` dimensions gives the strongest response of
the scale-normalised negative LoG ``-sigma^2 * laplacian(G_sigma * image)`` at its centre,
for ``sigma = s * sqrt(2 / D)`` (``s`` in 2D, ``0.82 s`` in 3D). :func:`log_maps` computes
that map with the sigma in mm converted to voxels per axis (anisotropic voxels), and
:func:`log_detections` feeds it through :func:`wsdet.detect_maps` — the same
non-maximum suppression (NMS) as the learned methods — keeping every candidate, so
:func:`wsdet.metrics.evaluate` gets the whole FROC curve. :func:`choose_sigma` picks the
sigma that maximises the FAUC on validation volumes.

Volumes annotated on a single slice (``PhantomSet.slice_points``, the basal-ganglia
protocol) are evaluated as the learned methods are: the 3D map's annotated slice is
taken before the NMS, and the NMS, matching and FAUC run in 2D.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from wsdet._checks import check_float
from wsdet.data.phantoms.dataset import PhantomSet
from wsdet.detection import Detections, detect_maps
from wsdet.metrics import EvaluationReport, evaluate, fauc

__all__ = [
    "SigmaChoice",
    "choose_sigma",
    "log_detections",
    "log_maps",
    "set_detections",
    "set_fauc",
    "set_report",
    "smooth_maps",
]

FloatArray = npt.NDArray[np.float64]
Sigma = float | Sequence[float]
Images = torch.Tensor | npt.ArrayLike
Maps = npt.NDArray[np.float32]
MapFunction = Callable[..., Maps]
# The second derivative on the smoothed image: a central second difference (unlike a
# sampled second-derivative-of-Gaussian kernel, it sums to 0 even for sigma < 1 voxel,
# as along the thick slices of anisotropic volumes).
_SECOND_DIFFERENCE = np.array([1.0, -2.0, 1.0])


def _per_axis(name: str, value: Sigma, ndim: int, *, positive: bool) -> FloatArray:
    """A number or one number per axis, as an ``(ndim,)`` array."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(f"{name} must be a number or {ndim} numbers; got {value!r}")
        items = list(value)
    else:
        items = [value] * ndim
    if positive:
        return np.array([check_float(name, v, positive=True) for v in items])
    return np.array([check_float(name, v, nonnegative=True) for v in items])


def _numpy(a: torch.Tensor | npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    return np.asarray(arr, dtype=np.float64)


def _volumes(volumes: torch.Tensor | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``(B, *S)`` float64 images from ``(B, *S)`` or ``(B, 1, *S)``."""
    x = _numpy(volumes)
    if x.ndim in (4, 5) and x.shape[1] == 1:  # (B, 1, *S) with 2 or 3 spatial dims
        x = x[:, 0]
    if not 2 <= x.ndim <= 4:
        raise ValueError(
            f"volumes must be (B, *S) or (B, 1, *S) with 1-3 spatial dims; got {x.shape}"
        )
    return x


def _filtered(
    volumes: torch.Tensor | npt.ArrayLike,
    sigma_mm: Sigma,
    spacing: Sigma,
    masks: torch.Tensor | npt.ArrayLike | None,
    *,
    laplacian: bool,
) -> npt.NDArray[np.float32]:
    """The maps of :func:`log_maps` (``laplacian``) or :func:`smooth_maps`."""
    x = _volumes(volumes)
    ndim = x.ndim - 1
    sig = _per_axis("sigma_mm", sigma_mm, ndim, positive=False)
    if laplacian and not sig.any():
        raise ValueError(f"sigma_mm must be > 0 along some axis; got {sigma_mm!r}")
    sig_vox = sig / _per_axis("spacing", spacing, ndim, positive=True)
    inside = None if masks is None else _numpy(masks).reshape(x.shape) > 0
    out = np.zeros(x.shape, dtype=np.float32)
    for b in range(x.shape[0]):
        image = x[b]
        if inside is not None and inside[b].any():  # no step at the region's border
            image = np.where(inside[b], image, np.median(image[inside[b]]))
        acc = ndimage.gaussian_filter(image, sig_vox)
        if laplacian:
            acc = -sum(
                sig_vox[a] ** 2 * ndimage.correlate1d(acc, _SECOND_DIFFERENCE, axis=int(a))
                for a in np.flatnonzero(sig_vox > 0)
            )
        out[b] = acc if inside is None else np.where(inside[b], acc, 0.0)
    return out


def log_maps(
    volumes: Images, sigma_mm: Sigma, spacing: Sigma = 1.0, *, masks: Images | None = None
) -> Maps:
    """Scale-normalised negative Laplacian of Gaussian of each image.

    ``-sum_i sigma_i^2 * d^2/dx_i^2 (G_sigma * image)`` with ``sigma_i = sigma_mm[i] /
    spacing[i]`` voxels: with an isotropic ``sigma_mm`` this is ``-sigma^2`` times the
    Laplacian in mm, whatever the voxel size. The image is smoothed with
    :func:`scipy.ndimage.gaussian_filter` (mode ``"reflect"``) and each second derivative
    taken as a central second difference (``[1, -2, 1]``, in voxels). An axis with sigma
    0 is neither smoothed nor differentiated (e.g. ``(0, s, s)``: a 2D LoG per slice).
    Bright blobs give positive peaks.

    Parameters
    ----------
    volumes : Tensor or array_like
        ``(B, *S)`` images, 1 to 3 spatial dims, or ``(B, 1, *S)`` with 2 or 3.
    sigma_mm : float or sequence of float
        Gaussian sigma in mm, one for all axes or one per axis (``>= 0``, not all 0).
    spacing : float or sequence of float
        Voxel size in mm, one for all axes or one per axis.
    masks : Tensor or array_like, optional
        ``(B, *S)`` region masks (images that are zero outside a region, as after region
        masking): outside, the image is replaced by the median inside before filtering
        (so the region's border is no edge) and the map is 0.

    Returns
    -------
    numpy.ndarray
        ``(B, *S)`` float32 maps.

    Examples
    --------
    >>> x = np.zeros((1, 9, 9)); x[0, 4, 4] = 1.0
    >>> m = log_maps(x, 1.0)
    >>> m.shape, np.unravel_index(int(m[0].argmax()), m[0].shape)
    ((1, 9, 9), (np.int64(4), np.int64(4)))
    """
    return _filtered(volumes, sigma_mm, spacing, masks, laplacian=True)


def smooth_maps(
    volumes: Images, sigma_mm: Sigma, spacing: Sigma = 1.0, *, masks: Images | None = None
) -> Maps:
    """Gaussian-smoothed intensity (sigma 0: the raw intensity), the other training-free
    baseline; the arguments are those of :func:`log_maps`.

    >>> smooth_maps(np.ones((1, 4, 4)), 0.0).tolist() == np.ones((1, 4, 4)).tolist()
    True
    """
    return _filtered(volumes, sigma_mm, spacing, masks, laplacian=False)


def _slice_maps(maps: npt.NDArray[np.float32], ds: PhantomSet) -> npt.NDArray[np.float32]:
    """Each map's annotated slice (``ds.slice_axis``, ``ds.annotated_slice``)."""
    if ds.annotated_slice is None or ds.slice_axis is None:
        raise ValueError("a slice evaluation needs a set with annotated slices")
    return np.stack(
        [
            np.take(m, int(z), axis=ds.slice_axis)
            for m, z in zip(maps, ds.annotated_slice.tolist(), strict=True)
        ]
    )


def _is_slice_set(ds: PhantomSet) -> bool:
    """Whether only one slice per volume is annotated (``points`` is a subset)."""
    return ds.slice_points is not None and any(
        len(p) != len(t) for p, t in zip(ds.points, ds.target_points, strict=True)
    )


def set_detections(
    maps: npt.NDArray[np.float32],
    ds: PhantomSet,
    *,
    size: int | Sequence[int] = 6,
    slice_mode: bool | None = None,
) -> tuple[list[Detections], list[FloatArray], tuple[float, ...]]:
    """Every NMS candidate of ``maps`` (one per volume of ``ds``), the targets and spacing
    to evaluate them against: in 3D, or on the annotated slices (``slice_mode``; default:
    when ``ds`` annotates a single slice per volume). ``size``: the NMS size, one for all
    axes or one per axis of the volumes (the slice axis' is dropped on slices)."""
    if slice_mode is None:
        slice_mode = _is_slice_set(ds)
    if slice_mode:
        assert ds.slice_points is not None and ds.slice_axis is not None
        axis = ds.slice_axis
        spacing = tuple(s for a, s in enumerate(ds.spacing) if a != axis)
        if isinstance(size, Sequence) and len(size) == len(ds.spacing):
            size = [v for a, v in enumerate(size) if a != axis]  # the in-slice sizes
        dets = detect_maps(_slice_maps(maps, ds), n="all", size=size)
        return dets, [np.asarray(p, np.float64) for p in ds.slice_points], spacing
    dets = detect_maps(maps, n="all", size=size)
    return dets, [np.asarray(p, np.float64) for p in ds.points], tuple(ds.spacing)


def set_report(
    maps: npt.NDArray[np.float32],
    ds: PhantomSet,
    *,
    radius_mm: float,
    max_fp: float = 15.0,
    size: int | Sequence[int] = 6,
    slice_mode: bool | None = None,
    n_bootstrap: int = 0,
) -> EvaluationReport:
    """:func:`wsdet.metrics.evaluate` of the maps on ``ds``: every NMS candidate
    (:func:`set_detections`), one-to-one matching within ``radius_mm`` (mm, with the set's
    spacing), FAUC over 0–``max_fp`` FP per volume, ``n_bootstrap`` replicates."""
    dets, targets, spacing = set_detections(maps, ds, size=size, slice_mode=slice_mode)
    return evaluate(
        dets,
        targets,
        match="points",
        spacing=spacing,
        radius_mm=check_float("radius_mm", radius_mm, positive=True),
        max_fp=check_float("max_fp", max_fp, positive=True),
        n_bootstrap=n_bootstrap,
    )


def set_fauc(
    maps: npt.NDArray[np.float32],
    ds: PhantomSet,
    *,
    radius_mm: float,
    max_fps: Sequence[float] = (15.0,),
    size: int | Sequence[int] = 6,
    slice_mode: bool | None = None,
) -> list[float]:
    """FAUC (0 to each of ``max_fps`` FP per volume, in [0, 1]) of the maps on ``ds``,
    evaluated as by :func:`set_report`."""
    report = set_report(
        maps, ds, radius_mm=radius_mm, max_fp=max(max_fps), size=size, slice_mode=slice_mode
    )
    return [float(fauc(report.curve, check_float("max_fp", f, positive=True))) for f in max_fps]


@dataclass(frozen=True)
class SigmaChoice:
    """The outcome of :func:`choose_sigma`: the best sigma and every candidate's FAUC."""

    sigma_mm: float | tuple[float, ...]
    fauc: float
    scores: dict[float | tuple[float, ...], float]


def choose_sigma(
    val: PhantomSet,
    sigmas: Sequence[Sigma],
    *,
    radius_mm: float,
    max_fp: float = 15.0,
    size: int | Sequence[int] = 6,
    maps: MapFunction = log_maps,
) -> SigmaChoice:
    """The sigma (mm) of ``sigmas`` whose maps (default: LoG) score the highest
    FAUC(0–``max_fp``) on the validation set ``val`` (ties: the first). The maps are
    computed with the set's spacing and region masks; see :func:`set_fauc` for the rest."""
    if len(sigmas) == 0:
        raise ValueError("sigmas must hold at least one sigma")
    scores: dict[float | tuple[float, ...], float] = {}
    for sigma in sigmas:
        key = float(sigma) if isinstance(sigma, float | int) else tuple(float(v) for v in sigma)
        m = maps(val.images, sigma, val.spacing, masks=val.mask)
        scores[key] = set_fauc(m, val, radius_mm=radius_mm, max_fps=(max_fp,), size=size)[0]
    best = max(scores, key=lambda k: scores[k])
    return SigmaChoice(best, scores[best], scores)


def log_detections(
    images: torch.Tensor | npt.ArrayLike,
    sigma_mm: Sigma,
    spacing: Sigma = 1.0,
    *,
    masks: torch.Tensor | npt.ArrayLike | None = None,
    size: int | Sequence[int] = 6,
) -> list[Detections]:
    """Every NMS candidate (:func:`wsdet.detect_maps` with ``n="all"``) of the LoG map
    (:func:`log_maps`) of each image, in 2D or 3D (``spacing`` per axis).

    Examples
    --------
    >>> x = np.zeros((1, 9, 9), dtype=np.float32); x[0, 2, 2] = x[0, 6, 6] = 1.0
    >>> [d.points.tolist() for d in log_detections(x, 1.0, size=3)]
    [[[2, 2], [6, 6]]]
    """
    return detect_maps(log_maps(images, sigma_mm, spacing, masks=masks), n="all", size=size)
