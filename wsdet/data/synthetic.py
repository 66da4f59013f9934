"""Synthetic phantoms with point ground truth: 2D blobs and 3D lesion volumes.

Two generators, pure numpy (the result is handed over as torch tensors):

* :func:`make_phantoms_2d` — small bright Gaussian blobs (the targets, counted) among
  larger blobs and elongated tubes (distractors, not counted). Quick to learn; the data
  of ``make demo`` and of the test-suite.
* :func:`make_lesion_volumes` — a stand-in for the paper's private brain MRI data
  (enlarged perivascular spaces, PVS): small hyperintense ellipsoids or short tubes inside
  a smooth region mask, with optional CSF-like distractors that make raw intensity a poor
  detector (like the hippocampi), or none (like the midbrain, where intensity works).
  Each volume also carries a single annotated slice, as in the basal-ganglia protocol.

Conventions: points are index coordinates in array axis order — ``(row, col)`` in 2D,
``(z, y, x)`` in 3D — with voxel centres at integer positions; target centres are
integer voxels and are local maxima of the noise-free image. Physical sizes (radii,
distances) of the 3D generator are in millimetres and converted with ``spacing``
(mm per voxel along each axis), so targets are round in mm on anisotropic grids.

Every sample is generated from its own child of ``numpy.random.SeedSequence(seed)``
(geometry and noise from separate streams), so the first ``m`` samples of a set of
``n`` equal a set of ``m`` with the same seed, and changing ``noise`` leaves the
geometry unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["PhantomSet", "make_lesion_volumes", "make_phantoms_2d"]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
CountDistribution: TypeAlias = Literal["poisson", "uniform"] | Callable[[np.random.Generator], int]
Distractors3D: TypeAlias = Literal["none", "csf", "blobs", "csf+blobs"]
TargetKind: TypeAlias = Literal["ellipsoid", "tube", "mixed"]

# Where one target exceeds this intensity (absolute, image units), no other target does.
_ISOLATION = 0.03
# Where a target exceeds this intensity, no distractor does.
_CLEARANCE = 0.05
# Targets are rendered in a window reaching down to this intensity.
_RENDER = 1e-3
# Geometry redraws per sample before giving up on placing the drawn number of targets.
_MAX_ATTEMPTS = 20
# Half-width at half-maximum to Gaussian sigma.
_HWHM_TO_SIGMA = 1.0 / math.sqrt(2.0 * math.log(2.0))


class PhantomSet(Dataset[dict[str, Any]]):
    """A set of synthetic images with counts and point ground truth.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 1, *S)`` float32 in ``[0, 1]``.
    counts : torch.Tensor
        ``(N,)`` float32, the count label: the number of rows of ``points[i]``.
    points : list of numpy.ndarray
        Per image, ``(k, ndim)`` float64 annotated target centres (index coordinates).
    spacing : tuple of float
        Voxel size per axis (mm for the 3D lesion volumes, 1.0 for the 2D phantoms).
    mask : torch.Tensor or None
        ``(N, *S)`` bool region mask (3D lesion volumes): the support of the smooth
        mask, outside which the image is exactly zero; ``None`` when there is none.
    target_mask : torch.Tensor
        ``(N, *S)`` bool, voxels inside any target's half-maximum footprint (all targets,
        annotated or not).
    target_points : list of numpy.ndarray
        Per image, ``(k, ndim)`` centres of *all* placed targets. Equal to ``points``
        unless only one slice is annotated (``annotation="slice"``).
    target_kinds : list of numpy.ndarray
        Per image, the kind of each target of ``target_points`` (``"blob"``,
        ``"ellipsoid"`` or ``"tube"``).
    slice_axis : int or None
        Axis of the annotated slice (3D only).
    annotated_slice : numpy.ndarray or None
        ``(N,)`` int64 index of the annotated slice along ``slice_axis`` (3D only).
    slice_points : list of numpy.ndarray or None
        Per image, ``(k, 2)`` in-slice coordinates (the remaining axes, in order) of the
        targets whose centre lies in the annotated slice (3D only).
    slice_counts : torch.Tensor or None
        ``(N,)`` float32 number of ``slice_points`` (3D only).

    Items (``ds[i]``) are dicts with ``"image"`` ``(1, *S)``, ``"count"`` (0-d float32)
    and ``"points"`` ``(k, ndim)``, plus ``"mask"``, ``"annotated_slice"`` and
    ``"slice_points"`` when present; batch them with :func:`wsdet.data.collate_points`.
    """

    def __init__(
        self,
        *,
        images: torch.Tensor,
        points: list[FloatArray],
        spacing: tuple[float, ...],
        target_mask: torch.Tensor,
        target_points: list[FloatArray],
        target_kinds: list[npt.NDArray[np.str_]],
        mask: torch.Tensor | None = None,
        slice_axis: int | None = None,
        annotated_slice: IntArray | None = None,
        slice_points: list[FloatArray] | None = None,
    ) -> None:
        n = images.shape[0]
        if images.ndim not in (4, 5) or images.shape[1] != 1:
            raise ValueError(f"images must have shape (N, 1, *S), got {tuple(images.shape)}")
        if len(points) != n or len(target_points) != n or len(target_kinds) != n:
            raise ValueError("points, target_points and target_kinds need one entry per image")
        self.images = images
        self.points = points
        self.counts = torch.tensor([len(p) for p in points], dtype=torch.float32)
        self.spacing = spacing
        self.mask = mask
        self.target_mask = target_mask
        self.target_points = target_points
        self.target_kinds = target_kinds
        self.slice_axis = slice_axis
        self.annotated_slice = annotated_slice
        self.slice_points = slice_points
        self.slice_counts = (
            None
            if slice_points is None
            else torch.tensor([len(p) for p in slice_points], dtype=torch.float32)
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.images.ndim - 2

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        i %= n
        item: dict[str, Any] = {
            "image": self.images[i],
            "count": self.counts[i],
            "points": self.points[i],
        }
        if self.mask is not None:
            item["mask"] = self.mask[i]
        if self.annotated_slice is not None and self.slice_points is not None:
            item["annotated_slice"] = int(self.annotated_slice[i])
            item["slice_points"] = self.slice_points[i]
        return item

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[2:])
        return (
            f"PhantomSet(n={len(self)}, shape={shape}, spacing={self.spacing}, "
            f"mean_count={float(self.counts.mean()) if len(self) else 0.0:.2f})"
        )


# ----------------------------------------------------------------------- helpers


class _PlacementError(ValueError):
    """The drawn targets do not fit; the caller redraws the geometry."""


@dataclass
class _Target:
    kind: str
    amplitude: float
    precision: FloatArray  # inverse covariance in mm^-2, (d, d)
    half: IntArray  # half window size in voxels per axis


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_range(name: str, value: float | Sequence[float], lo: float = 0.0) -> tuple[float, float]:
    """A scalar ``v`` means ``(v, v)``; checks ``lo <= a <= b`` and finiteness."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        pair = (float(value), float(value))
    else:
        seq = tuple(value)  # type: ignore[arg-type]
        if len(seq) != 2:
            raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
        pair = (float(seq[0]), float(seq[1]))
    if not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and lo <= pair[0] <= pair[1]):
        raise ValueError(f"{name} must satisfy {lo} <= min <= max (finite), got {value!r}")
    return pair


def _check_count_range(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        seq = tuple(value)  # type: ignore[arg-type]
        if len(seq) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int | np.integer) for v in seq
        ):
            raise ValueError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
        pair = (int(seq[0]), int(seq[1]))
    if not 0 <= pair[0] <= pair[1]:
        raise ValueError(f"{name} must satisfy 0 <= min <= max, got {value!r}")
    return pair


def _random_rotation(rng: np.random.Generator, d: int) -> FloatArray:
    """A uniformly distributed rotation matrix (Haar measure on SO(d))."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q, dtype=np.float64)


def _gaussian_precision(sigmas_mm: FloatArray, rotation: FloatArray) -> FloatArray:
    return np.asarray(rotation @ np.diag(1.0 / sigmas_mm**2) @ rotation.T, dtype=np.float64)


def _bounds(target: _Target, center: IntArray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The target's window around ``center``, clipped to the image."""
    lo = np.maximum(center - target.half, 0)
    hi = np.minimum(center + target.half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _window(
    target: _Target, center: IntArray, window: tuple[slice, ...], spacing: FloatArray
) -> FloatArray:
    """The target's intensity over ``window``."""
    d = len(window)
    axes = []  # open (broadcastable) offset grids in mm
    for ax, (sl, c, s) in enumerate(zip(window, center, spacing, strict=True)):
        view = [1] * d
        view[ax] = sl.stop - sl.start
        axes.append(((np.arange(sl.start, sl.stop) - c) * s).reshape(view))
    prec = target.precision
    quad: FloatArray = np.zeros(tuple(sl.stop - sl.start for sl in window))
    for r in range(d):
        quad = quad + prec[r, r] * axes[r] ** 2
        for c2 in range(r + 1, d):
            quad = quad + 2.0 * prec[r, c2] * axes[r] * axes[c2]
    return np.asarray(target.amplitude * np.exp(-0.5 * quad), dtype=np.float64)


def _overlaps(
    target: _Target,
    center: IntArray,
    window: tuple[slice, ...],
    other: FloatArray,
    level: float,
    spacing: FloatArray,
) -> bool:
    """Whether ``other`` and the target both exceed ``level`` somewhere in ``window``;
    the target is evaluated only where ``other`` does."""
    idx = np.argwhere(other[window] > level)
    if len(idx) == 0:
        return False
    lo = np.array([sl.start for sl in window])
    offsets = (idx + lo - center) * spacing
    quad = np.einsum("mi,ij,mj->m", offsets, target.precision, offsets)
    return bool(np.any(target.amplitude * np.exp(-0.5 * quad) > level))


def _coords_mm(shape: tuple[int, ...], spacing: FloatArray) -> list[FloatArray]:
    """Open (broadcastable) physical coordinate grids, one per axis."""
    return [
        np.asarray(g, dtype=np.float64) * s
        for g, s in zip(np.ogrid[tuple(slice(0, n) for n in shape)], spacing, strict=True)
    ]


def _segment_field(
    coords: list[FloatArray], p0: FloatArray, p1: FloatArray, sigma: float, amplitude: float
) -> FloatArray:
    """Gaussian profile of the distance (mm) to the segment ``p0``–``p1`` (a tube)."""
    direction = p1 - p0
    length2 = float(direction @ direction)
    rel = [c - a for c, a in zip(coords, p0, strict=True)]
    t = sum(r * d for r, d in zip(rel, direction, strict=True)) / max(length2, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    dist2 = sum((r - t * d) ** 2 for r, d in zip(rel, direction, strict=True))
    return np.asarray(amplitude * np.exp(-0.5 * np.asarray(dist2) / sigma**2), dtype=np.float64)


def _blob_field(
    coords: list[FloatArray], center: FloatArray, sigma: float, amplitude: float
) -> FloatArray:
    dist2 = sum((c - m) ** 2 for c, m in zip(coords, center, strict=True))
    return np.asarray(amplitude * np.exp(-0.5 * np.asarray(dist2) / sigma**2), dtype=np.float64)


def _hill_climb(volume: FloatArray, start: IntArray, max_steps: int = 20) -> IntArray:
    """Follow the steepest ascent over the 3^d neighbourhood to a local maximum."""
    p = start.copy()
    shape = np.array(volume.shape)
    for _ in range(max_steps):
        lo = np.maximum(p - 1, 0)
        hi = np.minimum(p + 2, shape)
        patch = volume[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
        best = np.array(np.unravel_index(int(np.argmax(patch)), patch.shape)) + lo
        if patch.max() <= volume[tuple(p)]:
            return p
        p = best.astype(np.int64)
    return p


def _blocked(
    occupied: FloatArray, specs: list[_Target], spacing: FloatArray
) -> npt.NDArray[np.bool_]:
    """Voxels within the smallest significant radius of every target from a distractor.

    Every target exceeds ``_CLEARANCE`` in a ball of radius ``sigma_min * sqrt(2 ln(A /
    _CLEARANCE))`` around its centre, so a centre with a distractor voxel (above the
    clearance) inside the box inscribed in that ball is rejected anyway; this dilation
    rejects such candidates in bulk.
    """
    reach = min(
        float(np.sqrt(2.0 * np.log(max(s.amplitude / _CLEARANCE, 1.0))))
        / float(np.sqrt(np.linalg.eigvalsh(s.precision).max()))
        for s in specs
    )
    ndim = occupied.ndim
    half = np.floor(reach / math.sqrt(ndim) / spacing).astype(int)
    hot = torch.from_numpy(occupied > _CLEARANCE).to(torch.float32)[None, None]
    pool = F.max_pool2d if ndim == 2 else F.max_pool3d
    kernel = tuple(int(2 * h + 1) for h in half)
    dilated = pool(hot, kernel_size=kernel, stride=1, padding=tuple(int(h) for h in half))
    return np.asarray(dilated[0, 0].numpy() > 0)


def _place_targets(
    rng: np.random.Generator,
    specs: list[_Target],
    candidates: IntArray,
    occupied: FloatArray,
    spacing: FloatArray,
    min_distance: float,
) -> tuple[IntArray, FloatArray, npt.NDArray[np.bool_], list[tuple[slice, ...]], list[FloatArray]]:
    """Greedily place targets at shuffled candidate voxels.

    A candidate is accepted when it lies at least ``min_distance`` (mm) from the placed
    centres and the significant part of the new target overlaps neither a distractor
    (``occupied``) nor a placed target. Returns the centres, the summed target field,
    the half-maximum footprints, and each target's window and values.
    """
    shape = occupied.shape
    field = np.zeros(shape, dtype=np.float64)
    footprint = np.zeros(shape, dtype=bool)
    centers: list[IntArray] = []
    windows: list[tuple[slice, ...]] = []
    own: list[FloatArray] = []
    if specs:  # drop candidates whose neighbourhood surely overlaps a distractor
        candidates = candidates[~_blocked(occupied, specs, spacing)[tuple(candidates.T)]]
    order = rng.permutation(len(candidates))
    pos = 0
    for j, spec in enumerate(specs):
        while True:
            if pos >= len(order):
                raise _PlacementError(f"could not place {len(specs)} targets (placed {j})")
            c = candidates[order[pos]]
            pos += 1
            if field[tuple(c)] > _ISOLATION or occupied[tuple(c)] > _CLEARANCE:
                continue
            if centers:
                d = (np.asarray(centers) - c) * spacing
                if np.min(np.sqrt((d**2).sum(axis=1))) < min_distance:
                    continue
            sl = _bounds(spec, c, shape)
            if _overlaps(spec, c, sl, occupied, _CLEARANCE, spacing):
                continue
            if _overlaps(spec, c, sl, field, _ISOLATION, spacing):
                continue
            values = _window(spec, c, sl, spacing)
            field[sl] += values
            footprint[sl] |= values >= 0.5 * spec.amplitude
            centers.append(c)
            windows.append(sl)
            own.append(values)
            break
    ndim = len(shape)
    out = np.asarray(centers, dtype=np.int64).reshape(-1, ndim)
    return out, field, footprint, windows, own


def _annotate(
    clean: FloatArray,
    centers: IntArray,
    specs: list[_Target],
    windows: list[tuple[slice, ...]],
    own: list[FloatArray],
) -> IntArray:
    """The annotated point of each target: the local maximum of ``clean`` reached by
    steepest ascent from its centre (the centre itself unless a faint tail of a
    neighbour tilts a flat tube ridge), checked to stay in the target's footprint."""
    points = np.array([_hill_climb(clean, c) for c in centers], dtype=np.int64)
    points = points.reshape(centers.shape)
    for p, spec, sl, values in zip(points, specs, windows, own, strict=True):
        local = tuple(int(x) - s.start for x, s in zip(p, sl, strict=True))
        inside = all(0 <= v < n for v, n in zip(local, values.shape, strict=True))
        if not inside or values[local] < 0.5 * spec.amplitude:
            raise _PlacementError(f"the intensity maximum near target centre {p} is off target")
    return points


def _child_rngs(seed: int, n: int) -> list[tuple[np.random.Generator, np.random.Generator]]:
    """Per-sample (geometry, noise) generators."""
    out = []
    for child in np.random.SeedSequence(seed).spawn(n):
        geometry, noise = child.spawn(2)
        out.append((np.random.default_rng(geometry), np.random.default_rng(noise)))
    return out


# ------------------------------------------------------------------- 2D phantoms


def make_phantoms_2d(
    n: int,
    shape: tuple[int, int] = (64, 64),
    *,
    max_targets: int = 5,
    min_targets: int = 0,
    target_sigma: float = 1.2,
    target_amplitude: float | tuple[float, float] = 0.8,
    distractors: int | tuple[int, int] = (0, 3),
    distractor_kinds: Sequence[Literal["blob", "tube"]] = ("blob", "tube"),
    distractor_amplitude: float | tuple[float, float] = (0.4, 0.9),
    min_distance: float = 5.0,
    margin: int = 4,
    background: float = 0.1,
    noise: float = 0.05,
    seed: int = 0,
) -> PhantomSet:
    """Generate 2D counting phantoms: small bright blobs among larger distractors.

    Image ``i`` is ``clip(background + distractors + targets + noise, 0, 1)``. Targets
    (counted) are isotropic Gaussian blobs of standard deviation ``target_sigma`` centred
    on integer pixels, at least ``min_distance`` pixels apart and ``margin`` pixels from
    the border, and never overlapping a distractor. Distractors (not counted) are large
    blobs (sigma 2.5–3.5 × ``target_sigma``) or elongated tubes (the target's width,
    half-length 5–10 px); they may be brighter than targets, so intensity alone does not
    count them.

    Parameters
    ----------
    n : int
        Number of images.
    shape : (int, int)
        Image size ``(rows, cols)``.
    max_targets, min_targets : int
        The number of targets is uniform on ``min_targets..max_targets``.
    target_sigma : float
        Target Gaussian standard deviation, pixels.
    target_amplitude : float or (float, float)
        Target peak height above background, fixed or uniform in a range.
    distractors : int or (int, int)
        Number of distractors per image, fixed or uniform on an inclusive range.
    distractor_kinds : sequence of {"blob", "tube"}
        Kinds drawn uniformly for each distractor.
    distractor_amplitude : float or (float, float)
        Distractor peak height, fixed or uniform in a range.
    min_distance : float
        Minimum distance between target centres, pixels.
    margin : int
        Minimum distance from target centres to the image border, pixels.
    background : float
        Background level.
    noise : float
        Standard deviation of additive Gaussian noise (0 gives the noise-free images).
    seed : int
        Seed; see the module notes on reproducibility.

    Returns
    -------
    PhantomSet
        ``images`` ``(n, 1, rows, cols)``, ``counts``, ``points`` ``(k, 2)``,
        ``target_mask`` and ``target_kinds``; ``mask`` is ``None``.

    Examples
    --------
    >>> ds = make_phantoms_2d(8, seed=0)
    >>> ds.images.shape, ds.images.dtype
    (torch.Size([8, 1, 64, 64]), torch.float32)
    >>> [len(p) for p in ds.points] == ds.counts.int().tolist()
    True
    """
    n = _check_int("n", n, 0)
    if len(shape) != 2:
        raise ValueError(f"shape must be (rows, cols), got {shape!r}")
    rows, cols = (_check_int("shape", s, 2 * margin + 1) for s in shape)
    max_targets = _check_int("max_targets", max_targets, 0)
    min_targets = _check_int("min_targets", min_targets, 0)
    if min_targets > max_targets:
        raise ValueError(f"min_targets ({min_targets}) must be <= max_targets ({max_targets})")
    if not target_sigma > 0:
        raise ValueError(f"target_sigma must be positive, got {target_sigma}")
    amp_range = _check_range("target_amplitude", target_amplitude, lo=1e-6)
    n_distractors = _check_count_range("distractors", distractors)
    kinds = tuple(distractor_kinds)
    if n_distractors[1] > 0 and (not kinds or any(k not in ("blob", "tube") for k in kinds)):
        raise ValueError(f"distractor_kinds must hold 'blob' and/or 'tube', got {kinds!r}")
    dist_amp = _check_range("distractor_amplitude", distractor_amplitude)
    if not min_distance >= 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    margin = _check_int("margin", margin, 0)
    if not 0 <= noise:
        raise ValueError(f"noise must be >= 0, got {noise}")

    shape2 = (rows, cols)
    spacing = np.ones(2)
    coords = _coords_mm(shape2, spacing)
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1)
    inner = grid[margin : rows - margin, margin : cols - margin].reshape(-1, 2).astype(np.int64)
    half = np.full(2, math.ceil(4.0 * target_sigma), dtype=np.int64)
    precision = np.eye(2) / target_sigma**2

    images = np.empty((n, 1, rows, cols), dtype=np.float32)
    target_masks = np.empty((n, rows, cols), dtype=bool)
    points: list[FloatArray] = []
    kinds_out: list[npt.NDArray[np.str_]] = []
    for i, (rng, noise_rng) in enumerate(_child_rngs(seed, n)):
        k = int(rng.integers(min_targets, max_targets + 1))
        n_d = int(rng.integers(n_distractors[0], n_distractors[1] + 1))
        specs = [_Target("blob", float(rng.uniform(*amp_range)), precision, half) for _ in range(k)]
        for attempt in range(_MAX_ATTEMPTS):
            distractor = np.zeros(shape2)
            for _ in range(n_d):
                kind = kinds[int(rng.integers(len(kinds)))]
                amp = float(rng.uniform(*dist_amp))
                center = rng.uniform(0, 1, 2) * (np.array(shape2) - 1)
                if kind == "blob":
                    sigma = float(rng.uniform(2.5, 3.5)) * target_sigma
                    field = _blob_field(coords, center, sigma, amp)
                else:
                    angle = float(rng.uniform(0, math.pi))
                    step = float(rng.uniform(5.0, 10.0)) * np.array(
                        [math.cos(angle), math.sin(angle)]
                    )
                    field = _segment_field(coords, center - step, center + step, target_sigma, amp)
                np.maximum(distractor, field, out=distractor)
            try:
                centers, targets, footprint, windows, own = _place_targets(
                    rng, specs, inner, distractor, spacing, min_distance
                )
                clean = background + distractor + targets
                centers = _annotate(clean, centers, specs, windows, own)
            except _PlacementError as exc:
                if attempt == _MAX_ATTEMPTS - 1:
                    raise ValueError(
                        f"image {i}: {exc} in {_MAX_ATTEMPTS} distractor draws; lower "
                        "max_targets, min_distance, margin or distractors, or enlarge shape"
                    ) from None
                continue
            break
        image = clean + noise * noise_rng.standard_normal(shape2) if noise > 0 else clean
        images[i, 0] = np.clip(image, 0.0, 1.0)
        target_masks[i] = footprint
        points.append(centers.astype(np.float64))
        kinds_out.append(np.array([s.kind for s in specs], dtype=np.str_))
    return PhantomSet(
        images=torch.from_numpy(images),
        points=points,
        spacing=(1.0, 1.0),
        target_mask=torch.from_numpy(target_masks),
        target_points=points,
        target_kinds=kinds_out,
    )


# ------------------------------------------------------------ 3D lesion volumes


def _smoothstep(x: FloatArray, edge0: float, edge1: float) -> FloatArray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float64)


def _smooth_field(
    rng: np.random.Generator, coords: list[FloatArray], scale: FloatArray, n_waves: int = 6
) -> FloatArray:
    """A smooth random field in about [-1, 1]: a few low-frequency cosines."""
    field: FloatArray = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)))
    for _ in range(n_waves):
        freq = rng.normal(0.0, 1.0, len(coords)) / scale
        phase = rng.uniform(0, 2 * math.pi)
        field = field + np.cos(sum(f * c for f, c in zip(freq, coords, strict=True)) + phase)
    return field / math.sqrt(n_waves / 2.0)


@dataclass
class _Geometry:
    soft: FloatArray  # smooth region mask in [0, 1]
    inside: npt.NDArray[np.bool_]  # its support
    eligible: npt.NDArray[np.bool_]  # admissible target centres
    distractor: FloatArray  # distractor intensity (before masking)
    slice_index: int  # annotated slice: through the region centre


def _draw_lesion(
    rng: np.random.Generator,
    target_kind: str,
    radius: tuple[float, float],
    amp_range: tuple[float, float],
    elong: tuple[float, float],
    spacing: FloatArray,
) -> _Target:
    kind = target_kind
    if kind == "mixed":
        kind = "ellipsoid" if rng.random() < 0.5 else "tube"
    r = float(rng.uniform(*radius))
    amp = float(rng.uniform(*amp_range))
    ratio = float(rng.uniform(1.0, 1.5) if kind == "ellipsoid" else rng.uniform(*elong))
    sigmas = r * _HWHM_TO_SIGMA * np.array([1.0, 1.0, ratio])
    precision = _gaussian_precision(sigmas, _random_rotation(rng, 3))
    reach = sigmas.max() * math.sqrt(2.0 * math.log(max(amp / _RENDER, 1.0)))
    half = np.ceil(reach / spacing).astype(np.int64) + 1
    return _Target(kind, amp, precision, half)


def _lesion_geometry(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: FloatArray,
    coords: list[FloatArray],
    edge: npt.NDArray[np.bool_],
    region: str,
    distractors: str,
    slice_axis: int,
) -> _Geometry:
    extent = np.array(shape, dtype=np.float64) * spacing  # mm
    center = (extent - spacing) / 2.0 + rng.uniform(-0.05, 0.05, 3) * extent
    semi = extent / 2.0 * rng.uniform(0.70, 0.85, 3)
    size = float(np.mean(semi))  # distractor sizes scale with the region (mm)
    rel = [(c - m) / s for c, m, s in zip(coords, center, semi, strict=True)]
    rho2 = np.broadcast_to(sum(r**2 for r in rel), shape)
    if region == "smooth":
        q = rho2 + 0.15 * _smooth_field(rng, coords, semi)
        soft = _smoothstep(-q, -1.1, -0.9)  # 1 for q <= 0.9, 0 for q >= 1.1
        inside = soft > 0.0  # the support of the smooth mask
        eligible = (q < 0.75) & edge
    else:
        soft = np.ones(shape)
        inside = np.ones(shape, dtype=bool)
        eligible = edge.copy()
    slice_index = int(
        np.clip(np.rint(center[slice_axis] / spacing[slice_axis]), 0, shape[slice_axis] - 1)
    )

    distractor = np.zeros(shape)
    if distractors in ("csf", "csf+blobs"):
        # a thick curved sheet along part of the region border ...
        normal = rng.standard_normal(3)
        normal /= np.linalg.norm(normal)
        rho = np.sqrt(rho2)
        cos_angle = sum(r * v for r, v in zip(rel, normal, strict=True)) / np.maximum(rho, 1e-9)
        sheet = np.exp(-0.5 * ((rho - 0.8) / 0.085) ** 2) * _smoothstep(cos_angle, 0.2, 0.5)
        np.maximum(distractor, float(rng.uniform(0.6, 0.75)) * sheet, out=distractor)
        # ... and thick tubes (ventricle-like)
        for _ in range(int(rng.integers(1, 3))):
            mid = center + rng.uniform(-0.5, 0.5, 3) * semi
            direction = rng.standard_normal(3)
            direction *= float(rng.uniform(0.3, 0.5)) * size / np.linalg.norm(direction)
            tube = _segment_field(
                coords,
                mid - direction,
                mid + direction,
                float(rng.uniform(0.075, 0.11)) * size,
                float(rng.uniform(0.6, 0.75)),
            )
            np.maximum(distractor, tube, out=distractor)
    if distractors in ("blobs", "csf+blobs"):
        for _ in range(int(rng.integers(1, 4))):
            mid = center + rng.uniform(-0.6, 0.6, 3) * semi
            blob = _blob_field(
                coords, mid, float(rng.uniform(0.125, 0.19)) * size, float(rng.uniform(0.6, 0.75))
            )
            np.maximum(distractor, blob, out=distractor)
    return _Geometry(soft, inside, eligible, distractor, slice_index)


def make_lesion_volumes(
    n: int,
    shape: tuple[int, int, int] = (32, 64, 64),
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    count_distribution: CountDistribution = "poisson",
    mean_count: float = 4.0,
    target_kind: TargetKind = "mixed",
    target_radius: float | tuple[float, float] = (1.0, 2.0),
    target_amplitude: float | tuple[float, float] = (0.45, 0.65),
    tube_elongation: float | tuple[float, float] = (2.0, 3.5),
    min_distance: float = 3.0,
    distractors: Distractors3D = "none",
    region: Literal["smooth", "full"] = "smooth",
    tissue: float = 0.3,
    noise: float = 0.03,
    annotation: Literal["volume", "slice"] = "volume",
    slice_axis: int = 0,
    seed: int = 0,
) -> PhantomSet:
    """Generate 3D lesion phantoms (a stand-in for perivascular spaces in brain MRI).

    Volume ``i`` is ``clip(soft_mask * (tissue + distractors + targets + noise), 0, 1)``:
    zero outside a smooth region (as after the paper's region masking, §3.4).

    * **Region** (``region="smooth"``): an ellipsoid (semi-axes 70–85 % of the half
      extent in mm, centre jittered by up to 5 %) with a smoothly perturbed surface; the
      smooth mask is 1 well inside and falls to 0 across the surface (``mask`` is its
      support). ``"full"``: the whole volume, no masking.
    * **Targets** (counted, hyperintense): anisotropic Gaussians centred on integer voxels
      well inside the region, with a random orientation. ``target_radius`` is the
      half-width at half maximum across the target, in mm (so targets are round in mm for
      any ``spacing``). ``"ellipsoid"`` targets are 1–1.5 times longer along one axis,
      ``"tube"`` targets ``tube_elongation`` times (short vessels); ``"mixed"`` draws
      either with probability 1/2. Targets are isolated: centres at least
      ``min_distance`` mm apart, no voxel above 0.03 for two targets, none above 0.05 for
      a target and a distractor. The annotated point of a target is the local maximum
      of the noise-free volume reached by steepest ascent from its centre: the centre
      itself, or a voxel along the flat ridge of a tube that a faint neighbouring tail
      tilts (always inside the target's half-maximum footprint).
    * **Distractors** (not counted; sizes relative to the region, given here for the
      default shape): ``"none"`` (midbrain-like: targets are the brightest structures,
      raw intensity detects them); ``"csf"``: a thick curved CSF-like sheet along part of
      the region border and 1–2 thick tubes (ventricle-like, radius ~2 mm, 15–25 mm
      long), brighter than the targets; ``"blobs"``: 1–3 large bright blobs (sigma
      3–4.5 mm); ``"csf+blobs"``: both (hippocampus-like: the brightest voxels are
      mostly not targets).
    * The drawn number of targets is kept: when it does not fit, the region and
      distractors of that sample are redrawn (up to 20 times, then ``ValueError``).

    Parameters
    ----------
    n : int
        Number of volumes.
    shape : (int, int, int)
        Volume size in voxels, in array axis order ``(z, y, x)``; axis 0 is the slice axis
        by default (the axis along which spacing is typically coarsest).
    spacing : (float, float, float)
        Voxel size in mm along each axis, e.g. ``(3.0, 1.0, 1.0)`` for thick slices.
    count_distribution : {"poisson", "uniform"} or callable
        Number of targets per volume: Poisson with mean ``mean_count``; uniform on
        ``0..round(2 * mean_count)``; or ``f(rng) -> int`` given a numpy Generator.
    mean_count : float
        Mean number of targets (for the built-in distributions).
    target_kind : {"ellipsoid", "tube", "mixed"}
        Target shape, see above.
    target_radius : float or (float, float)
        Target radius (half-width at half maximum), mm, fixed or uniform in a range.
    target_amplitude : float or (float, float)
        Target peak height above the tissue level.
    tube_elongation : float or (float, float)
        Length-to-width ratio of tube targets.
    min_distance : float
        Minimum distance between target centres, mm.
    distractors : {"none", "csf", "blobs", "csf+blobs"}
        Distractor setting, see above.
    region : {"smooth", "full"}
        Region mask, see above.
    tissue : float
        Intensity of the tissue inside the region.
    noise : float
        Standard deviation of additive Gaussian noise (inside the region).
    annotation : {"volume", "slice"}
        ``"volume"``: every target is annotated (``points``, ``counts``: all targets).
        ``"slice"``: only the targets whose centre lies in the annotated slice are
        (``points``: their 3D centres; ``counts``: the in-slice count, the label of the
        basal-ganglia protocol); ``target_points`` always holds all targets.
    slice_axis : int
        Axis of the annotated slice (0, 1 or 2). The annotated slice is the one through
        the region's centre (a landmark visible in the image, like the anterior
        commissure in the basal-ganglia protocol).
    seed : int
        Seed; see the module notes on reproducibility.

    Returns
    -------
    PhantomSet
        ``images`` ``(n, 1, *shape)``, ``counts``, ``points`` ``(k, 3)``, ``spacing``,
        ``mask`` (bool region), ``target_mask``, ``target_points``, ``target_kinds``,
        ``slice_axis``, ``annotated_slice``, ``slice_points`` ``(k, 2)`` and
        ``slice_counts``.

    Raises
    ------
    ValueError
        On invalid arguments, or when the drawn number of targets does not fit in the
        region under the separation constraints.

    Examples
    --------
    >>> ds = make_lesion_volumes(2, shape=(16, 32, 32), mean_count=3, seed=0)
    >>> ds.images.shape
    torch.Size([2, 1, 16, 32, 32])
    >>> ds.points[0].shape[1], ds.spacing
    (3, (1.0, 1.0, 1.0))
    >>> bool((ds.images[:, 0][~ds.mask] == 0).all())
    True
    """
    n = _check_int("n", n, 0)
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), got {shape!r}")
    shape3 = tuple(_check_int("shape", s, 8) for s in shape)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm per voxel), got {spacing!r}")
    sp = np.asarray(spacing, dtype=np.float64)
    if not callable(count_distribution) and count_distribution not in ("poisson", "uniform"):
        raise ValueError(
            "count_distribution must be 'poisson', 'uniform' or a callable rng -> int, got "
            f"{count_distribution!r}"
        )
    if not (math.isfinite(mean_count) and mean_count >= 0):
        raise ValueError(f"mean_count must be a finite number >= 0, got {mean_count}")
    if target_kind not in ("ellipsoid", "tube", "mixed"):
        raise ValueError(f"target_kind must be 'ellipsoid', 'tube' or 'mixed', got {target_kind!r}")
    radius = _check_range("target_radius", target_radius, lo=1e-3)
    amp_range = _check_range("target_amplitude", target_amplitude, lo=1e-6)
    elong = _check_range("tube_elongation", tube_elongation, lo=1.0)
    if not min_distance >= 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    if distractors not in ("none", "csf", "blobs", "csf+blobs"):
        raise ValueError(
            f"distractors must be 'none', 'csf', 'blobs' or 'csf+blobs', got {distractors!r}"
        )
    if region not in ("smooth", "full"):
        raise ValueError(f"region must be 'smooth' or 'full', got {region!r}")
    if not 0 <= noise:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if annotation not in ("volume", "slice"):
        raise ValueError(f"annotation must be 'volume' or 'slice', got {annotation!r}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")

    coords = _coords_mm(shape3, sp)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape3), indexing="ij"), axis=-1)
    edge = np.ones(shape3, dtype=bool)  # keep centres 2 voxels off the faces
    edge[(slice(0, 2),)] = edge[(slice(-2, None),)] = False
    edge[:, :2] = edge[:, -2:] = False
    edge[:, :, :2] = edge[:, :, -2:] = False

    images = np.empty((n, 1, *shape3), dtype=np.float32)
    masks = np.empty((n, *shape3), dtype=bool)
    target_masks = np.empty((n, *shape3), dtype=bool)
    all_points: list[FloatArray] = []
    kinds_out: list[npt.NDArray[np.str_]] = []
    slices = np.empty(n, dtype=np.int64)
    slice_points: list[FloatArray] = []
    for i, (rng, noise_rng) in enumerate(_child_rngs(seed, n)):
        if callable(count_distribution):
            k = count_distribution(rng)
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
                raise ValueError(f"count_distribution returned {k!r}, expected an int >= 0")
            k = int(k)
        elif count_distribution == "poisson":
            k = int(rng.poisson(mean_count))
        else:
            k = int(rng.integers(0, round(2 * mean_count) + 1))
        specs = [_draw_lesion(rng, target_kind, radius, amp_range, elong, sp) for _ in range(k)]
        for attempt in range(_MAX_ATTEMPTS):
            geo = _lesion_geometry(rng, shape3, sp, coords, edge, region, distractors, slice_axis)
            try:
                centers, targets, footprint, windows, own = _place_targets(
                    rng,
                    specs,
                    grid[geo.eligible].astype(np.int64),
                    geo.distractor,
                    sp,
                    min_distance,
                )
                clean = geo.soft * (tissue + geo.distractor + targets)
                centers = _annotate(clean, centers, specs, windows, own)
            except _PlacementError as exc:
                if attempt == _MAX_ATTEMPTS - 1:
                    raise ValueError(
                        f"volume {i}: {exc} in {_MAX_ATTEMPTS} region/distractor draws; lower "
                        "mean_count, min_distance or target_radius, or enlarge shape"
                    ) from None
                continue
            break
        if noise > 0:
            volume = geo.soft * (
                tissue + geo.distractor + targets + noise * noise_rng.standard_normal(shape3)
            )
        else:
            volume = clean
        images[i, 0] = np.clip(volume, 0.0, 1.0)
        masks[i] = geo.inside
        target_masks[i] = footprint
        slices[i] = geo.slice_index
        pts = centers.astype(np.float64)
        all_points.append(pts)
        kinds_out.append(np.array([s.kind for s in specs], dtype=np.str_))
        in_slice = centers[:, slice_axis] == slices[i]
        slice_points.append(np.delete(pts[in_slice], slice_axis, axis=1))

    if annotation == "volume":
        points = all_points
    else:
        points = [
            p[p[:, slice_axis] == s] for p, s in zip(all_points, slices.tolist(), strict=True)
        ]
    return PhantomSet(
        images=torch.from_numpy(images),
        points=points,
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        mask=torch.from_numpy(masks),
        target_mask=torch.from_numpy(target_masks),
        target_points=all_points,
        target_kinds=kinds_out,
        slice_axis=slice_axis,
        annotated_slice=slices,
        slice_points=slice_points,
    )
