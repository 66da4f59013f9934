"""Placing targets: isolated from each other and from distractors, then annotated.

Both generators draw the geometry of a sample, place its targets greedily at shuffled
candidate voxels and annotate each at the local maximum of the noise-free image
(:func:`_place_targets`); when the targets do not fit, the geometry is redrawn
(:func:`_with_redraws`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from wsdet.data.phantoms._shapes import (
    _CLEARANCE,
    _ISOLATION,
    _MAX_ATTEMPTS,
    FloatArray,
    IntArray,
    _bounds,
    _overlaps,
    _Target,
    _window,
)

__all__: list[str] = []

T = TypeVar("T")


class _PlacementError(ValueError):
    """The drawn targets do not fit; the caller redraws the geometry."""


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


class _Placed(NamedTuple):
    """Targets placed in one sample."""

    points: IntArray  # (k, d) annotated points (local maxima of ``clean``)
    field: FloatArray  # the summed target intensity
    footprint: npt.NDArray[np.bool_]  # voxels inside any target's half-maximum footprint
    clean: FloatArray  # the noise-free image


def _place_targets(
    rng: np.random.Generator,
    specs: list[_Target],
    candidates: IntArray,
    occupied: FloatArray,
    spacing: FloatArray,
    min_distance: float,
    compose: Callable[[FloatArray], FloatArray],
) -> _Placed:
    """Greedily place targets at shuffled candidate voxels, then annotate them.

    A candidate is accepted when it lies at least ``min_distance`` (mm) from the placed
    centres and the significant part of the new target overlaps neither a distractor
    (``occupied``) nor a placed target. The noise-free image is ``compose(field)`` (the
    summed target field), on which :func:`_annotate` finds the annotated points. Raises
    :class:`_PlacementError` when the targets do not fit.
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
    placed = np.asarray(centers, dtype=np.int64).reshape(-1, len(shape))
    clean = compose(field)
    return _Placed(_annotate(clean, placed, specs, windows, own), field, footprint, clean)


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


def _with_redraws(attempt: Callable[[], T], sample: str, draws: str, advice: str) -> T:
    """``attempt()``, called again (a fresh geometry draw) while it raises
    :class:`_PlacementError`, at most ``_MAX_ATTEMPTS`` times; then ``ValueError``.

    >>> def never() -> None:
    ...     raise _PlacementError("could not place 9 targets (placed 2)")
    >>> _with_redraws(never, "image 0", "draws", "lower max_targets")
    Traceback (most recent call last):
    ...
    ValueError: image 0: could not place 9 targets (placed 2) in 20 draws; lower max_targets
    """
    for i in range(_MAX_ATTEMPTS):
        try:
            return attempt()
        except _PlacementError as exc:
            if i == _MAX_ATTEMPTS - 1:
                raise ValueError(f"{sample}: {exc} in {_MAX_ATTEMPTS} {draws}; {advice}") from None
    raise AssertionError("unreachable")  # pragma: no cover
