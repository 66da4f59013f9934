"""Target and distractor shapes: Gaussian targets, blobs, tubes and smooth fields.

Physical quantities are in mm; ``spacing`` (mm per voxel along each axis) converts them
to index coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__: list[str] = []

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]

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


@dataclass
class _Target:
    kind: str
    amplitude: float
    precision: FloatArray  # inverse covariance in mm^-2, (d, d)
    half: IntArray  # half window size in voxels per axis


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
