"""Phantom settings v2: anisotropic, low-contrast lesion volumes with look-alikes.

The v1 lesion phantoms (:func:`~wsdet.data.phantoms.make_lesion_volumes`) are too easy: a
training-free blob filter scores near 100 on two of the three settings. The v2 settings
(:data:`SETTINGS_V2`, each a :class:`PhantomSettingV2`) are closer to clinical T2 scans:

* **Anisotropic voxels**: 0.5 mm in-plane, 3 mm through-plane (axis 0, ``z``); the
  midbrain-like crop has the paper's geometry, 11 × 88 × 88 voxels.
* **Partial-volume blur**: every lesion and look-alike is a Gaussian (a chain of Gaussian
  beads for a tube) convolved, in closed form, with a Gaussian slice profile (full width
  at half maximum: ``slice_fwhm``, 3 mm, the slice thickness) and an in-plane
  point-spread function (``psf_fwhm``) before it is sampled at the voxel centres. Lesion
  centres lie anywhere between two slice centres, so the same lesion is sampled at
  different heights of its profile. The CSF-like distractors are blurred along ``z``
  after sampling (a Gaussian filter of the same slice profile).
* **Contrast-to-noise ratio** (``cnr``: 3.5 in the three settings, instead of about 18
  in v1; tuned on validation volumes so that a GP-Unet leaves the constant-output
  plateau within the 3D study's budget, see ``docs/phantoms_v2.md``)::

      CNR = mean(lesion peak - tissue) / noise sd

  with the lesion peak the noise-free intensity at the lesion's annotated voxel, the
  tissue the noise-free intensity there without lesions and look-alikes (the
  ``background`` of :class:`PhantomVolumeV2`: ``tissue`` plus the smooth
  ``inhomogeneity``), and the noise sd that of the additive Gaussian noise:
  ``noise_sd = mean(contrast) / cnr``. Each lesion's own sampled peak (after the blur)
  equals its drawn contrast, uniform in ``contrast``, so an isolated lesion has exactly
  the drawn contrast; neighbouring structures can only add.
* **Over-dispersed counts**: negative binomial with mean ``mean_count`` and dispersion
  (size) ``dispersion``: variance ``mean + mean**2 / dispersion``
  (:func:`negative_binomial_counts`).
* **Look-alikes** (not counted): elongated hyperintensities of lesion width and contrast
  (tubes ``lookalike_length`` mm long), a fraction ``touching_fraction`` of them placed
  touching a lesion (their half-maximum footprints meet), the others kept apart from
  every lesion; and optionally CSF-like sheets and thick tubes (``csf``), brighter than
  the lesions.
* **Tissue**: a constant level, optionally plus a smooth random field
  (``inhomogeneity``: tissue heterogeneity and residual bias field; 0 in the built-in
  settings, which stand for bias-corrected scans), inside a hard region mask (the image is 0
  outside, as after masking a crop).

The hit radius of the evaluation stays the paper's 6 voxels in-plane, i.e. 3 mm
(:func:`hit_radius_mm`), applied in mm over all three axes.

Every volume is drawn from its own child of ``numpy.random.SeedSequence(seed)``
(geometry and noise from separate streams), so volume ``i`` does not depend on ``n`` and
``noise=False`` gives the same volumes without noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from wsdet._checks import check_bool, check_choice, check_float, check_int
from wsdet.data.phantoms._args import _check_count_range, _check_range
from wsdet.data.phantoms._objects_v2 import BoolArray, _Drawer, _footprint, _Grid
from wsdet.data.phantoms._placement import _child_rngs
from wsdet.data.phantoms._regions import _lesion_geometry
from wsdet.data.phantoms._shapes import (
    FloatArray,
    IntArray,
    _coords_mm,
    _smooth_field,
)
from wsdet.data.phantoms.dataset import PhantomSet

__all__ = [
    "SETTINGS_V2",
    "PhantomSettingV2",
    "PhantomVolumeV2",
    "hit_radius_mm",
    "make_phantoms_v2",
    "negative_binomial_counts",
    "nms_size",
    "render_phantoms_v2",
]
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class PhantomSettingV2:
    """One v2 phantom setting (every field checked on construction).

    Attributes
    ----------
    name : str
        Its name (``"midbrain"``, ``"hippocampi"``, ``"basal_ganglia"`` for the built-in).
    shape : (int, int, int)
        Volume size in voxels ``(z, y, x)``; ``z`` is the slice axis.
    spacing : (float, float, float)
        Voxel size in mm, e.g. ``(3.0, 0.5, 0.5)``.
    cnr : float
        Contrast-to-noise ratio, see the module notes; sets ``noise_sd``.
    contrast : (float, float)
        Range of the lesion peaks above the tissue (uniform), image units.
    mean_count, dispersion : float
        Negative-binomial number of lesions per volume: mean and size ``r`` (variance
        ``mean + mean**2 / r``).
    lesion_radius : (float, float)
        Half-width at half maximum of a lesion across (its width), mm, before the blur
        (look-alikes are as wide).
    lesion_elongation : (float, float)
        Ratio of its long axis to its width (random orientation); kind ``"tube"`` from
        1.5 on, ``"ellipsoid"`` below.
    min_distance : float
        Minimum distance between lesion centres, mm.
    lookalikes : (int, int)
        Range of the number of look-alike tubes drawn per volume (uniform); ``(0, 0)``:
        none. A look-alike that finds no room (after a few tries) is left out, so a crowded
        volume may hold fewer.
    lookalike_length : (float, float)
        Their length, mm (their width and contrast are drawn like a lesion's).
    touching_fraction : float
        Probability that a look-alike touches a lesion (when the volume has a lesion).
    csf : bool
        Add a CSF-like sheet along the region border and 1–2 thick ventricle-like tubes.
    csf_contrast : (float, float)
        Range of the peak of those CSF-like structures above the tissue (uniform).
    slice_fwhm, psf_fwhm : float
        Slice profile (through-plane) and in-plane point-spread function, FWHM in mm.
    annotation : {"volume", "slice"}
        Every lesion annotated, or only those of one slice (basal-ganglia protocol).
    tissue : float
        Mean tissue intensity inside the region.
    inhomogeneity : float
        Standard deviation (image units) of a smooth random field added to ``tissue``
        (tissue heterogeneity and residual bias field; wavelengths of the region's size):
        it defeats raw intensity, not a local contrast filter. Default 0: at 0.05 a
        GP-Unet trained on counts stayed on the constant-output plateau for the whole
        budget of the 3D study (``docs/phantoms_v2.md``).
    """

    name: str
    shape: tuple[int, int, int]
    cnr: float
    mean_count: float
    dispersion: float
    spacing: tuple[float, float, float] = (3.0, 0.5, 0.5)
    contrast: tuple[float, float] = (0.10, 0.20)
    lesion_radius: tuple[float, float] = (0.75, 1.5)
    lesion_elongation: tuple[float, float] = (1.0, 3.0)
    min_distance: float = 3.0
    lookalikes: tuple[int, int] = (0, 0)
    lookalike_length: tuple[float, float] = (4.0, 8.0)
    touching_fraction: float = 0.0
    csf: bool = False
    csf_contrast: tuple[float, float] = (0.3, 0.45)
    slice_fwhm: float = 3.0
    psf_fwhm: float = 0.5
    annotation: Literal["volume", "slice"] = "volume"
    tissue: float = 0.3
    inhomogeneity: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str; got {self.name!r}")
        if not isinstance(self.shape, Sequence) or len(self.shape) != 3:
            raise ValueError(f"shape must be three ints (z, y, x); got {self.shape!r}")
        if not isinstance(self.spacing, Sequence) or len(self.spacing) != 3:
            raise ValueError(f"spacing must be three positive numbers (mm); got {self.spacing!r}")
        z, y, x = (check_int("shape", s, minimum=8) for s in self.shape)
        sz, sy, sx = (check_float("spacing", s, positive=True) for s in self.spacing)
        check_choice("annotation", self.annotation, ("volume", "slice"))
        fields = {
            "shape": (z, y, x),
            "spacing": (sz, sy, sx),
            "cnr": check_float("cnr", self.cnr, positive=True),
            "mean_count": check_float("mean_count", self.mean_count, nonnegative=True),
            "dispersion": check_float("dispersion", self.dispersion, positive=True),
            "contrast": _check_range("contrast", self.contrast, lo=1e-6),
            "lesion_radius": _check_range("lesion_radius", self.lesion_radius, lo=1e-3),
            "lesion_elongation": _check_range("lesion_elongation", self.lesion_elongation, 1.0),
            "min_distance": check_float("min_distance", self.min_distance, nonnegative=True),
            "lookalikes": _check_count_range("lookalikes", self.lookalikes),
            "lookalike_length": _check_range("lookalike_length", self.lookalike_length, 1e-3),
            "touching_fraction": check_float(
                "touching_fraction", self.touching_fraction, probability=True
            ),
            "csf": check_bool("csf", self.csf),
            "csf_contrast": _check_range("csf_contrast", self.csf_contrast, lo=1e-6),
            "slice_fwhm": check_float("slice_fwhm", self.slice_fwhm, nonnegative=True),
            "psf_fwhm": check_float("psf_fwhm", self.psf_fwhm, nonnegative=True),
            "tissue": check_float("tissue", self.tissue),
            "inhomogeneity": check_float("inhomogeneity", self.inhomogeneity, nonnegative=True),
        }
        for key, value in fields.items():  # normalised values (tuples of float, ...)
            object.__setattr__(self, key, value)

    @property
    def noise_sd(self) -> float:
        """Standard deviation of the noise: ``mean(contrast) / cnr``."""
        return 0.5 * (self.contrast[0] + self.contrast[1]) / self.cnr

    @property
    def count_variance(self) -> float:
        """Variance of the number of lesions: ``mean + mean**2 / dispersion``."""
        return self.mean_count + self.mean_count**2 / self.dispersion

    @property
    def blur_sigma(self) -> FloatArray:
        """Gaussian sigma (mm) of the partial-volume blur along ``(z, y, x)``."""
        s = _FWHM_TO_SIGMA
        return np.array([self.slice_fwhm * s, self.psf_fwhm * s, self.psf_fwhm * s])


#: The three v2 settings (see ``docs/phantoms_v2.md`` for the table).
SETTINGS_V2: dict[str, PhantomSettingV2] = {
    "midbrain": PhantomSettingV2(
        "midbrain", shape=(11, 88, 88), cnr=3.5, mean_count=5.0, dispersion=2.0
    ),
    "hippocampi": PhantomSettingV2(
        "hippocampi",
        shape=(12, 96, 96),
        cnr=3.5,
        mean_count=6.0,
        dispersion=2.0,
        lookalikes=(4, 8),
        touching_fraction=0.3,
        csf=True,
        csf_contrast=(0.15, 0.3),
    ),
    "basal_ganglia": PhantomSettingV2(
        "basal_ganglia",
        shape=(10, 96, 96),
        cnr=3.5,
        mean_count=15.0,
        dispersion=3.0,
        lookalikes=(4, 8),
        touching_fraction=0.5,
        annotation="slice",
    ),
}


def hit_radius_mm(spacing: Sequence[float]) -> float:
    """The hit radius in mm: the paper's 6 voxels at the finest (in-plane) spacing.

    >>> hit_radius_mm((3.0, 0.5, 0.5))
    3.0
    """
    return 6.0 * min(check_float("spacing", s, positive=True) for s in spacing)


def nms_size(spacing: Sequence[float]) -> tuple[int, ...]:
    """The NMS size per axis: the paper's 6 voxels at the finest spacing, the same extent
    in mm along coarser axes but at least 3 voxels (one neighbour on each side).

    >>> nms_size((3.0, 0.5, 0.5)), nms_size((1.0, 1.0, 1.0))
    ((3, 6, 6), (6, 6, 6))
    """
    finest = hit_radius_mm(spacing) / 6.0
    return tuple(max(3, round(6.0 * finest / float(s))) for s in spacing)


def negative_binomial_counts(
    rng: np.random.Generator, mean: float, dispersion: float, size: int | None = None
) -> IntArray:
    """Negative-binomial counts with mean ``mean`` and variance ``mean + mean**2 / dispersion``.

    The number of failures before ``dispersion`` successes of probability
    ``dispersion / (dispersion + mean)`` (numpy's parametrisation).

    >>> rng = np.random.default_rng(0)
    >>> negative_binomial_counts(rng, 5.0, 2.0, 4).shape
    (4,)
    """
    m = check_float("mean", mean, nonnegative=True)
    r = check_float("dispersion", dispersion, positive=True)
    return np.asarray(rng.negative_binomial(r, r / (r + m), size), dtype=np.int64)


class PhantomVolumeV2(NamedTuple):
    """One v2 volume with its full truth (what :func:`render_phantoms_v2` returns).

    ``image`` is what :func:`make_phantoms_v2` stores; ``clean`` is the same without noise.
    """

    image: FloatArray  # (z, y, x), clipped to [0, 1]
    clean: FloatArray  # noise-free, before clipping
    background: FloatArray  # noise-free without lesions and look-alikes (tissue, CSF)
    inside: BoolArray  # region mask
    points: IntArray  # (k, 3) annotated voxel of each lesion
    kinds: npt.NDArray[np.str_]  # "ellipsoid" or "tube" per lesion
    footprint: BoolArray  # lesions' half-maximum footprints
    lookalike_labels: IntArray  # 0, or j + 1 in look-alike j's half-maximum footprint
    lookalike_touching: BoolArray  # (m,) whether look-alike j was placed touching a lesion
    slice_index: int  # annotated slice (axis 0)


def render_phantoms_v2(
    n: int, setting: str | PhantomSettingV2, seed: int, *, noise: bool = True
) -> list[PhantomVolumeV2]:
    """Generate ``n`` v2 volumes with their full truth (noise-free image, look-alikes).

    Parameters
    ----------
    n : int
        Number of volumes.
    setting : str or PhantomSettingV2
        A name of :data:`SETTINGS_V2` or a setting.
    seed : int
        The data seed (the only source of randomness).
    noise : bool
        Add the noise (``False``: the same volumes without it).

    Returns
    -------
    list of PhantomVolumeV2
    """
    n = check_int("n", n, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    noise = check_bool("noise", noise)
    s = _setting(setting)
    return [_volume(rng, noise_rng, s, noise) for rng, noise_rng in _child_rngs(seed, n)]


def _setting(setting: str | PhantomSettingV2) -> PhantomSettingV2:
    if isinstance(setting, PhantomSettingV2):
        return setting
    check_choice("setting", setting, tuple(SETTINGS_V2))
    return SETTINGS_V2[str(setting)]


def _volume(
    rng: np.random.Generator, noise_rng: np.random.Generator, s: PhantomSettingV2, noise: bool
) -> PhantomVolumeV2:
    """One volume: region, CSF, lesions, look-alikes, blur, noise."""
    spacing = np.array(s.spacing)
    grid = _Grid(s.shape, spacing, _coords_mm(s.shape, spacing))
    edge = np.zeros(s.shape, dtype=bool)
    edge[1:-1, 2:-2, 2:-2] = True
    geo = _lesion_geometry(
        rng, s.shape, spacing, grid.coords, edge, "smooth", "csf" if s.csf else "none", 0
    )
    csf = geo.distractor
    if s.csf:  # scaled to its drawn peak; partial volume of the sheets (after sampling)
        csf = csf * (float(rng.uniform(*s.csf_contrast)) / max(float(csf.max()), 1e-12))
        if s.slice_fwhm > 0:
            csf = ndimage.gaussian_filter1d(csf, s.blur_sigma[0] / spacing[0], axis=0)
    inside = geo.soft >= 0.5  # a hard region mask, as after masking a crop
    drawer = _Drawer(rng, s, grid)
    k = int(negative_binomial_counts(rng, s.mean_count, s.dispersion))
    lesions = drawer.lesions(k, geo.eligible, geo.distractor)
    footprint = np.zeros(s.shape, dtype=bool)
    objects = np.zeros(s.shape)
    for obj in lesions:
        footprint |= _footprint(obj, s.shape)
        objects[obj.window] += obj.values
    labels = np.zeros(s.shape, dtype=np.int64)
    touching: list[bool] = []
    n_looks = int(rng.integers(s.lookalikes[0], s.lookalikes[1] + 1))
    region = np.argwhere(geo.eligible)
    for _ in range(n_looks):
        touch = bool(lesions) and bool(rng.random() < s.touching_fraction)
        look = drawer.lookalike(lesions, touch, region, footprint, (labels > 0) | ~inside)
        if look is None:
            continue
        objects[look.window] += look.values
        labels[_footprint(look, s.shape)] = len(touching) + 1
        touching.append(touch)
    tissue = s.tissue + s.inhomogeneity * _smooth_field(rng, grid.coords, spacing * s.shape / 2)
    background = inside * (tissue + csf)
    clean = background + inside * objects
    image = clean
    if noise:
        image = clean + inside * s.noise_sd * noise_rng.standard_normal(s.shape)
    points = np.array([o.peak for o in lesions], dtype=np.int64).reshape(-1, 3)
    return PhantomVolumeV2(
        image=np.clip(image, 0.0, 1.0),
        clean=clean,
        background=background,
        inside=inside,
        points=points,
        kinds=np.array(drawer.kinds, dtype=np.str_),
        footprint=footprint,
        lookalike_labels=labels,
        lookalike_touching=np.array(touching, dtype=bool),
        slice_index=geo.slice_index,
    )


def make_phantoms_v2(
    n: int, setting: str | PhantomSettingV2, seed: int, *, noise: bool = True
) -> PhantomSet:
    """Generate ``n`` volumes of a v2 setting as a :class:`PhantomSet`.

    Parameters
    ----------
    n : int
        Number of volumes.
    setting : str or PhantomSettingV2
        ``"midbrain"``, ``"hippocampi"``, ``"basal_ganglia"`` (:data:`SETTINGS_V2`) or
        a setting of your own.
    seed : int
        The data seed; volume ``i`` is the same for every ``n > i``.
    noise : bool
        Add the noise (``False``: the noise-free volumes, same geometry).

    Returns
    -------
    PhantomSet
        ``images`` ``(n, 1, z, y, x)`` float32 in ``[0, 1]``, ``points`` (every lesion,
        or those of the annotated slice with ``annotation="slice"``), ``spacing``,
        ``mask``, ``target_mask`` (lesion footprints), ``target_points``,
        ``target_kinds``, ``slice_axis`` 0, ``annotated_slice``, ``slice_points``.

    Raises
    ------
    ValueError, TypeError
        On a bad argument (naming it), or when the lesions do not fit.

    Examples
    --------
    >>> ds = make_phantoms_v2(2, "midbrain", seed=0)
    >>> tuple(ds.images.shape), ds.spacing
    ((2, 1, 11, 88, 88), (3.0, 0.5, 0.5))
    """
    s = _setting(setting)
    volumes = render_phantoms_v2(n, s, seed, noise=noise)
    shape = (len(volumes), *s.shape)

    def stacked(field: str, dtype: type) -> torch.Tensor:
        out: npt.NDArray[Any] = np.zeros(shape, dtype=dtype)
        for i, v in enumerate(volumes):
            out[i] = getattr(v, field)
        return torch.from_numpy(out)

    points = [v.points.astype(np.float64) for v in volumes]
    slices = np.array([v.slice_index for v in volumes], dtype=np.int64)
    in_slice = [p[p[:, 0] == z] for p, z in zip(points, slices.tolist(), strict=True)]
    return PhantomSet(
        images=stacked("image", np.float32)[:, None],
        points=points if s.annotation == "volume" else in_slice,
        spacing=s.spacing,
        mask=stacked("inside", np.bool_),
        target_mask=stacked("footprint", np.bool_),
        target_points=points,
        target_kinds=[v.kinds for v in volumes],
        slice_axis=0,
        annotated_slice=slices,
        slice_points=[p[:, 1:] for p in in_slice],
    )
