"""Drawing the lesions and look-alikes of a v2 phantom volume (:mod:`~wsdet.data.phantoms.v2`).

Every object is a sum of Gaussians (one for a lesion, a chain of beads for a tube) whose
covariance includes the partial-volume blur, sampled at the voxel centres over a window
and scaled so that its own sampled peak equals its drawn contrast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from wsdet.data.phantoms._shapes import (
    _HWHM_TO_SIGMA,
    FloatArray,
    IntArray,
    _gaussian_precision,
    _random_rotation,
)

if TYPE_CHECKING:
    from wsdet.data.phantoms.v2 import PhantomSettingV2

__all__: list[str] = []

BoolArray = npt.NDArray[np.bool_]
# Tries to place one lesion or one look-alike before the volume gives up on it.
_TRIES = 200
# A non-touching look-alike keeps this many voxels (chessboard distance) between its
# half-maximum footprint and every lesion's.
_GAP = 2
# Lesions at least this elongated are of kind "tube", the others "ellipsoid".
_TUBE = 1.5


class _Grid(NamedTuple):
    shape: tuple[int, int, int]
    spacing: FloatArray
    coords: list[FloatArray]  # open mm grids


def _box(grid: _Grid, lo_mm: FloatArray, hi_mm: FloatArray) -> tuple[slice, ...]:
    """The voxels between ``lo_mm`` and ``hi_mm`` (inclusive), clipped to the grid."""
    lo = np.maximum(np.floor(lo_mm / grid.spacing).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / grid.spacing).astype(int) + 1, grid.shape)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi, strict=True))


def _gaussian(
    grid: _Grid, centers: FloatArray, cov: FloatArray
) -> tuple[tuple[slice, ...], FloatArray]:
    """Sum of Gaussians of covariance ``cov`` (mm^2) at ``centers`` (mm), unit peak each,
    each evaluated to 4 sd; returns the bounding window and the values there."""
    reach = 4.0 * math.sqrt(float(np.linalg.eigvalsh(cov).max()))
    window = _box(grid, centers.min(axis=0) - reach, centers.max(axis=0) + reach)
    values: FloatArray = np.zeros(tuple(sl.stop - sl.start for sl in window))
    prec = np.linalg.inv(cov)
    for center in centers:
        own = _box(grid, center - reach, center + reach)
        rel = [  # open mm offsets from the centre over its own box
            (np.arange(sl.start, sl.stop) * s - m).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (sl, s, m) in enumerate(zip(own, grid.spacing, center, strict=True))
        ]
        quad = sum(
            (1.0 if i == j else 2.0) * prec[i, j] * rel[i] * rel[j]
            for i in range(3)
            for j in range(i, 3)
        )
        local = tuple(
            slice(o.start - w.start, o.stop - w.start) for o, w in zip(own, window, strict=True)
        )
        values[local] += np.exp(-0.5 * np.asarray(quad))
    return window, values


class _Object(NamedTuple):
    window: tuple[slice, ...]
    values: FloatArray  # scaled: its sampled peak equals its contrast
    peak: IntArray  # voxel of its peak
    center: FloatArray  # mm (the first bead of a tube)
    radius: float  # half-width at half maximum across, mm, before the blur


def _render(
    grid: _Grid, centers: FloatArray, cov: FloatArray, contrast: float, radius: float
) -> _Object | None:
    """An object (lesion: one centre; tube: a chain of beads) scaled to peak ``contrast``;
    ``None`` when its window is empty (outside the volume)."""
    window, values = _gaussian(grid, centers, cov)
    if values.size == 0 or values.max() <= 0:
        return None
    arg = np.array(np.unravel_index(int(np.argmax(values)), values.shape))
    peak = arg + np.array([sl.start for sl in window])
    scaled = values * (contrast / values.max())
    return _Object(window, scaled, peak.astype(np.int64), centers[0], radius)


def _footprint(obj: _Object, shape: tuple[int, ...]) -> BoolArray:
    """The object's half-maximum footprint as a full-volume mask."""
    out = np.zeros(shape, dtype=bool)
    out[obj.window] = obj.values >= 0.5 * obj.values.max()
    return out


def _grown_window(
    window: tuple[slice, ...], margin: int, shape: tuple[int, ...]
) -> tuple[slice, ...]:
    """``window`` grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(
        slice(max(sl.start - margin, 0), min(sl.stop + margin, n))
        for sl, n in zip(window, shape, strict=True)
    )


class _Drawer:
    """Draws the lesions and look-alikes of one volume from one geometry generator."""

    def __init__(self, rng: np.random.Generator, setting: PhantomSettingV2, grid: _Grid) -> None:
        self.rng = rng
        self.s = setting
        self.grid = grid
        self.blur = np.diag(setting.blur_sigma**2)
        self.kinds: list[str] = []  # of the lesions drawn

    def lesion_shape(self) -> tuple[float, float, FloatArray]:
        """Radius (HWHM across, mm), elongation and blurred covariance of a lesion."""
        r = float(self.rng.uniform(*self.s.lesion_radius))
        ratio = float(self.rng.uniform(*self.s.lesion_elongation))
        sigmas = r * _HWHM_TO_SIGMA * np.array([1.0, 1.0, ratio])
        cov = np.linalg.inv(_gaussian_precision(sigmas, _random_rotation(self.rng, 3)))
        return r, ratio, np.asarray(cov + self.blur, dtype=np.float64)

    def lesions(self, k: int, eligible: BoolArray, csf: FloatArray) -> list[_Object]:
        """``k`` lesions at eligible voxels (``z`` jittered within the slice), at least
        ``min_distance`` apart and off the CSF distractors."""
        cand = np.argwhere(eligible & (csf < 0.05)).astype(np.float64)
        if k and len(cand) == 0:
            raise ValueError(f"setting {self.s.name!r}: no room for lesions in the region")
        out: list[_Object] = []
        centers: list[FloatArray] = []
        for _ in range(k):
            for _ in range(_TRIES):
                c = cand[int(self.rng.integers(len(cand)))].copy()
                c[0] += self.rng.uniform(-0.5, 0.5)
                c_mm = c * self.grid.spacing
                far = all(np.linalg.norm(c_mm - o) >= self.s.min_distance for o in centers)
                if far:
                    break
            else:
                raise ValueError(
                    f"setting {self.s.name!r}: could not place {k} lesions "
                    f"{self.s.min_distance} mm apart; lower mean_count or min_distance"
                )
            r, ratio, cov = self.lesion_shape()
            contrast = float(self.rng.uniform(*self.s.contrast))
            obj = _render(self.grid, c_mm[None], cov, contrast, r)
            assert obj is not None  # the centre lies inside the volume
            out.append(obj)
            self.kinds.append("tube" if ratio >= _TUBE else "ellipsoid")
            centers.append(c_mm)
        return out

    def lookalike(
        self,
        lesions: list[_Object],
        touching: bool,
        region: IntArray,
        lesion_fp: BoolArray,
        taken: BoolArray,
    ) -> _Object | None:
        """One look-alike tube starting at the edge of a random lesion, pointing outwards
        (``touching``), or at a voxel of ``region`` with its footprint ``_GAP`` voxels off
        every lesion's (``lesion_fp``); its footprint never meets ``taken`` (the other
        look-alikes and the outside of the region). ``None`` when no position was found."""
        s, grid = self.s, self.grid
        for _ in range(_TRIES):
            r = float(self.rng.uniform(*s.lesion_radius))
            sigma = r * _HWHM_TO_SIGMA
            direction = self.rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            length = float(self.rng.uniform(*s.lookalike_length))
            if touching:
                lesion = lesions[int(self.rng.integers(len(lesions)))]
                start = lesion.center + direction * (lesion.radius + r)
            else:
                start = region[int(self.rng.integers(len(region)))] * grid.spacing
            beads = (
                start + np.arange(0.0, length + 1e-9, min(0.5 * sigma, length))[:, None] * direction
            )
            axis_voxels = np.rint(beads / grid.spacing).astype(np.int64)
            if np.any(axis_voxels < 0) or np.any(axis_voxels >= grid.shape):
                continue  # (a cheap test before rendering)
            if taken[tuple(axis_voxels.T)].any():
                continue
            cov = sigma**2 * np.eye(3) + self.blur
            obj = _render(grid, beads, cov, float(self.rng.uniform(*s.contrast)), r)
            if obj is None:
                continue
            win = _grown_window(obj.window, _GAP + 1, grid.shape)
            grown = ndimage.binary_dilation(_footprint(obj, grid.shape)[win], iterations=1)
            if (grown & taken[win]).any():
                continue
            if touching:
                if (grown & _footprint(lesion, grid.shape)[win]).any():
                    return obj
            elif not (ndimage.binary_dilation(grown, iterations=_GAP - 1) & lesion_fp[win]).any():
                return obj
        return None
