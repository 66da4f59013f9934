"""2D counting phantoms: small bright blobs among larger distractors (:func:`make_phantoms_2d`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from wsdet._checks import check_float, check_int
from wsdet.data.phantoms._args import _check_count_range, _check_range
from wsdet.data.phantoms._placement import (
    _child_rngs,
    _place_targets,
    _Placed,
    _with_redraws,
)
from wsdet.data.phantoms._shapes import (
    FloatArray,
    IntArray,
    _blob_field,
    _coords_mm,
    _segment_field,
    _Target,
)
from wsdet.data.phantoms.dataset import PhantomSet

__all__ = ["make_phantoms_2d"]

_SPACING = np.ones(2)  # pixel units


@dataclass(frozen=True)
class _Scene:
    """The settings every image of a :func:`make_phantoms_2d` call shares."""

    shape: tuple[int, int]
    coords: list[FloatArray]
    inner: IntArray  # admissible target centres
    target_sigma: float
    distractor_kinds: tuple[str, ...]
    distractor_amplitude: tuple[float, float]
    min_distance: float
    background: float


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
    n = check_int("n", n, minimum=0)
    margin = check_int("margin", margin, minimum=0)
    if len(shape) != 2:
        raise ValueError(f"shape must be (rows, cols); got {shape!r}")
    rows, cols = (check_int("shape", s, minimum=2 * margin + 1) for s in shape)
    max_targets = check_int("max_targets", max_targets, minimum=0)
    min_targets = check_int("min_targets", min_targets, minimum=0)
    if min_targets > max_targets:
        raise ValueError(f"min_targets ({min_targets}) must be <= max_targets ({max_targets})")
    amp_range = _check_range("target_amplitude", target_amplitude, lo=1e-6)
    n_distractors = _check_count_range("distractors", distractors)
    kinds = tuple(distractor_kinds)
    if n_distractors[1] > 0 and (not kinds or any(k not in ("blob", "tube") for k in kinds)):
        raise ValueError(f"distractor_kinds must hold 'blob' and/or 'tube'; got {kinds!r}")
    scene = _Scene(
        shape=(rows, cols),
        coords=_coords_mm((rows, cols), _SPACING),
        inner=_inner_pixels(rows, cols, margin),
        target_sigma=check_float("target_sigma", target_sigma, positive=True),
        distractor_kinds=kinds,
        distractor_amplitude=_check_range("distractor_amplitude", distractor_amplitude),
        min_distance=check_float("min_distance", min_distance, nonnegative=True),
        background=check_float("background", background),
    )
    noise = check_float("noise", noise, nonnegative=True)
    half = np.full(2, math.ceil(4.0 * scene.target_sigma), dtype=np.int64)
    precision = np.eye(2) / scene.target_sigma**2

    images = np.empty((n, 1, rows, cols), dtype=np.float32)
    target_masks = np.empty((n, rows, cols), dtype=bool)
    points: list[FloatArray] = []
    kinds_out: list[npt.NDArray[np.str_]] = []
    for i, (rng, noise_rng) in enumerate(_child_rngs(seed, n)):
        k = int(rng.integers(min_targets, max_targets + 1))
        n_d = int(rng.integers(n_distractors[0], n_distractors[1] + 1))
        specs = [_Target("blob", float(rng.uniform(*amp_range)), precision, half) for _ in range(k)]
        placed = _with_redraws(
            functools.partial(_draw_image, rng, specs, n_d, scene),
            f"image {i}",
            "distractor draws",
            "lower max_targets, min_distance, margin or distractors, or enlarge shape",
        )
        clean = placed.clean
        image = clean + noise * noise_rng.standard_normal(scene.shape) if noise > 0 else clean
        images[i, 0] = np.clip(image, 0.0, 1.0)
        target_masks[i] = placed.footprint
        points.append(placed.points.astype(np.float64))
        kinds_out.append(np.array([s.kind for s in specs], dtype=np.str_))
    return PhantomSet(
        images=torch.from_numpy(images),
        points=points,
        spacing=(1.0, 1.0),
        target_mask=torch.from_numpy(target_masks),
        target_points=points,
        target_kinds=kinds_out,
    )


def _inner_pixels(rows: int, cols: int, margin: int) -> IntArray:
    """``(m, 2)`` the pixels at least ``margin`` from the border, row-major."""
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1)
    return grid[margin : rows - margin, margin : cols - margin].reshape(-1, 2).astype(np.int64)


def _draw_distractors(rng: np.random.Generator, n_d: int, scene: _Scene) -> FloatArray:
    """The distractor intensity: ``n_d`` large blobs or tubes (maximum where they meet)."""
    shape = np.array(scene.shape)
    distractor = np.zeros(scene.shape)
    kinds = scene.distractor_kinds
    for _ in range(n_d):
        kind = kinds[int(rng.integers(len(kinds)))]
        amp = float(rng.uniform(*scene.distractor_amplitude))
        center = rng.uniform(0, 1, 2) * (shape - 1)
        if kind == "blob":
            sigma = float(rng.uniform(2.5, 3.5)) * scene.target_sigma
            field = _blob_field(scene.coords, center, sigma, amp)
        else:
            angle = float(rng.uniform(0, math.pi))
            step = float(rng.uniform(5.0, 10.0)) * np.array([math.cos(angle), math.sin(angle)])
            field = _segment_field(
                scene.coords, center - step, center + step, scene.target_sigma, amp
            )
        np.maximum(distractor, field, out=distractor)
    return distractor


def _draw_image(rng: np.random.Generator, specs: list[_Target], n_d: int, scene: _Scene) -> _Placed:
    """One attempt at an image: draw the distractors, then place and annotate ``specs``."""
    distractor = _draw_distractors(rng, n_d, scene)

    def compose(targets: FloatArray) -> FloatArray:
        return np.asarray(scene.background + distractor + targets, dtype=np.float64)

    return _place_targets(
        rng, specs, scene.inner, distractor, _SPACING, scene.min_distance, compose
    )
