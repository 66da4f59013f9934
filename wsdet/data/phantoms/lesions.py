"""3D lesion volumes, stand-ins for perivascular spaces in MRI: :func:`make_lesion_volumes`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from wsdet._checks import check_choice, check_float, check_int
from wsdet.data.phantoms._args import _check_range
from wsdet.data.phantoms._placement import (
    _child_rngs,
    _place_targets,
    _Placed,
    _with_redraws,
)
from wsdet.data.phantoms._regions import _draw_lesion, _Geometry, _lesion_geometry
from wsdet.data.phantoms._shapes import FloatArray, IntArray, _coords_mm, _Target
from wsdet.data.phantoms.dataset import PhantomSet

__all__ = ["CountDistribution", "Distractors3D", "TargetKind", "make_lesion_volumes"]

CountDistribution: TypeAlias = Literal["poisson", "uniform"] | Callable[[np.random.Generator], int]
Distractors3D: TypeAlias = Literal["none", "csf", "blobs", "csf+blobs"]
TargetKind: TypeAlias = Literal["ellipsoid", "tube", "mixed"]


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
    n = check_int("n", n, minimum=0)
    settings = _LesionSettings.checked(
        shape=shape,
        spacing=spacing,
        count_distribution=count_distribution,
        mean_count=mean_count,
        target_kind=target_kind,
        target_radius=target_radius,
        target_amplitude=target_amplitude,
        tube_elongation=tube_elongation,
        min_distance=min_distance,
        distractors=distractors,
        region=region,
        tissue=tissue,
        noise=noise,
        slice_axis=slice_axis,
    )
    check_choice("annotation", annotation, ("volume", "slice"))
    frame = _Frame.of(settings.shape, settings.spacing)
    images = np.empty((n, 1, *settings.shape), dtype=np.float32)
    masks = np.empty((n, *settings.shape), dtype=bool)
    target_masks = np.empty((n, *settings.shape), dtype=bool)
    slices = np.empty(n, dtype=np.int64)
    all_points: list[FloatArray] = []
    kinds: list[npt.NDArray[np.str_]] = []
    for i, (rng, noise_rng) in enumerate(_child_rngs(seed, n)):
        volume = _draw_volume(f"volume {i}", rng, noise_rng, settings, frame)
        images[i, 0] = volume.image
        masks[i] = volume.inside
        target_masks[i] = volume.footprint
        slices[i] = volume.slice_index
        all_points.append(volume.points.astype(np.float64))
        kinds.append(volume.kinds)
    axis = settings.slice_axis
    in_slice = [p[p[:, axis] == s] for p, s in zip(all_points, slices.tolist(), strict=True)]
    return PhantomSet(
        images=torch.from_numpy(images),
        points=all_points if annotation == "volume" else in_slice,
        spacing=tuple(float(v) for v in settings.spacing),
        mask=torch.from_numpy(masks),
        target_mask=torch.from_numpy(target_masks),
        target_points=all_points,
        target_kinds=kinds,
        slice_axis=axis,
        annotated_slice=slices,
        slice_points=[np.delete(p, axis, axis=1) for p in in_slice],
    )


@dataclass(frozen=True)
class _LesionSettings:
    """The checked settings of a :func:`make_lesion_volumes` call (see its parameters)."""

    shape: tuple[int, int, int]
    spacing: FloatArray  # mm per voxel
    count_distribution: CountDistribution
    mean_count: float
    target_kind: str
    radius: tuple[float, float]
    amplitude: tuple[float, float]
    elongation: tuple[float, float]
    min_distance: float
    distractors: str
    region: str
    tissue: float
    noise: float
    slice_axis: int

    @classmethod
    def checked(
        cls,
        *,
        shape: Sequence[int],
        spacing: Sequence[float],
        count_distribution: CountDistribution,
        mean_count: float,
        target_kind: str,
        target_radius: float | tuple[float, float],
        target_amplitude: float | tuple[float, float],
        tube_elongation: float | tuple[float, float],
        min_distance: float,
        distractors: str,
        region: str,
        tissue: float,
        noise: float,
        slice_axis: int,
    ) -> _LesionSettings:
        """The settings, each argument checked (``ValueError`` / ``TypeError`` naming it)."""
        if len(shape) != 3:
            raise ValueError(f"shape must be (z, y, x); got {shape!r}")
        if len(spacing) != 3:
            raise ValueError(
                f"spacing must be three positive numbers (mm per voxel); got {spacing!r}"
            )
        if not callable(count_distribution) and count_distribution not in ("poisson", "uniform"):
            raise ValueError(
                "count_distribution must be 'poisson', 'uniform' or a callable rng -> int; got "
                f"{count_distribution!r}"
            )
        check_choice("target_kind", target_kind, ("ellipsoid", "tube", "mixed"))
        check_choice("distractors", distractors, ("none", "csf", "blobs", "csf+blobs"))
        check_choice("region", region, ("smooth", "full"))
        z, y, x = (check_int("shape", s, minimum=8) for s in shape)
        return cls(
            shape=(z, y, x),
            spacing=np.array([check_float("spacing", s, positive=True) for s in spacing]),
            count_distribution=count_distribution,
            mean_count=check_float("mean_count", mean_count, nonnegative=True),
            target_kind=target_kind,
            radius=_check_range("target_radius", target_radius, lo=1e-3),
            amplitude=_check_range("target_amplitude", target_amplitude, lo=1e-6),
            elongation=_check_range("tube_elongation", tube_elongation, lo=1.0),
            min_distance=check_float("min_distance", min_distance, nonnegative=True),
            distractors=distractors,
            region=region,
            tissue=check_float("tissue", tissue),
            noise=check_float("noise", noise, nonnegative=True),
            slice_axis=check_int("slice_axis", slice_axis, minimum=0, maximum=2),
        )


@dataclass(frozen=True)
class _Frame:
    """Coordinate grids shared by every volume of a call."""

    coords: list[FloatArray]  # open physical (mm) grids, one per axis
    voxels: IntArray  # (*shape, 3) index of every voxel
    edge: npt.NDArray[np.bool_]  # voxels at least 2 from every face (admissible centres)

    @classmethod
    def of(cls, shape: tuple[int, int, int], spacing: FloatArray) -> _Frame:
        voxels = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1)
        edge = np.zeros(shape, dtype=bool)
        edge[2:-2, 2:-2, 2:-2] = True
        return cls(_coords_mm(shape, spacing), voxels, edge)


class _Volume(NamedTuple):
    """One generated volume and its truth."""

    image: FloatArray  # clipped to [0, 1]
    inside: npt.NDArray[np.bool_]  # region mask
    footprint: npt.NDArray[np.bool_]  # target half-maximum footprints
    slice_index: int  # annotated slice
    points: IntArray  # (k, 3) annotated target points
    kinds: npt.NDArray[np.str_]  # kind of each target


def _draw_count(rng: np.random.Generator, settings: _LesionSettings) -> int:
    """The number of targets of one volume, from ``count_distribution``."""
    dist = settings.count_distribution
    if callable(dist):
        k = dist(rng)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"count_distribution returned {k!r}, expected an int >= 0")
        return int(k)
    if dist == "poisson":
        return int(rng.poisson(settings.mean_count))
    return int(rng.integers(0, round(2 * settings.mean_count) + 1))


def _draw_scene(
    rng: np.random.Generator, specs: list[_Target], settings: _LesionSettings, frame: _Frame
) -> tuple[_Geometry, _Placed]:
    """One attempt at a volume: draw the region and distractors, place ``specs``."""
    s = settings
    geo = _lesion_geometry(
        rng, s.shape, s.spacing, frame.coords, frame.edge, s.region, s.distractors, s.slice_axis
    )

    def compose(targets: FloatArray) -> FloatArray:
        return np.asarray(geo.soft * (s.tissue + geo.distractor + targets), dtype=np.float64)

    candidates = frame.voxels[geo.eligible].astype(np.int64)
    placed = _place_targets(
        rng, specs, candidates, geo.distractor, s.spacing, s.min_distance, compose
    )
    return geo, placed


def _draw_volume(
    name: str,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    settings: _LesionSettings,
    frame: _Frame,
) -> _Volume:
    """A whole volume: its targets, the scene they fit in (redrawn until they do), noise."""
    s = settings
    k = _draw_count(rng, s)
    specs = [
        _draw_lesion(rng, s.target_kind, s.radius, s.amplitude, s.elongation, s.spacing)
        for _ in range(k)
    ]
    geo, placed = _with_redraws(
        functools.partial(_draw_scene, rng, specs, s, frame),
        name,
        "region/distractor draws",
        "lower mean_count, min_distance or target_radius, or enlarge shape",
    )
    if s.noise > 0:
        noise = s.noise * noise_rng.standard_normal(s.shape)
        volume = geo.soft * (s.tissue + geo.distractor + placed.field + noise)
    else:
        volume = placed.clean
    return _Volume(
        np.clip(volume, 0.0, 1.0),
        geo.inside,
        placed.footprint,
        geo.slice_index,
        placed.points,
        np.array([t.kind for t in specs], dtype=np.str_),
    )
