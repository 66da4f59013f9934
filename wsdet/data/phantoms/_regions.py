"""The random parts of a lesion volume: its region, distractors and target shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from wsdet.data.phantoms._shapes import (
    _HWHM_TO_SIGMA,
    _RENDER,
    FloatArray,
    _blob_field,
    _gaussian_precision,
    _random_rotation,
    _segment_field,
    _smooth_field,
    _smoothstep,
    _Target,
)

__all__: list[str] = []


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
