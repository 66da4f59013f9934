"""Volumes with geometry: NIfTI (through nibabel, the ``nifti`` extra), NumPy and 2D images.

Voxel order and world coordinates (one rule, held everywhere in wsdet)
----------------------------------------------------------------------
**Arrays keep the file's voxel order.** A NIfTI volume loads exactly as nibabel gives it,
``array[i, j, k]`` with ``(i, j, k)`` the voxel indices of the file (NIfTI's first, second
and third dimension), with no transpose and no reorientation. Detections, targets and
masks use these indices in this order, as every array in wsdet does ("points are index
coordinates in the array's own axis order").

**World coordinates are millimetres in the RAS+ frame of NIfTI** (+x towards the subject's
Right, +y Anterior, +z Superior), given by the volume's 4 x 4 ``affine``::

    world = affine @ (i, j, k, 1)  ==  nibabel.affines.apply_affine(affine, (i, j, k))

3D Slicer and DICOM use LPS (``(-x, -y, z)`` of RAS); :mod:`wsdet.export` writes Slicer
markups in either frame and states it in the file.

- World coordinates are always 3D: a 2D image lies in the plane ``k = 0``.
- NumPy arrays (``.npy``), PNG and TIFF images carry no geometry: their affine is
  ``diag(spacing)`` (spacing default 1 mm) with the origin at voxel 0. ``.npz`` files
  written by :func:`save_volume` keep ``affine`` (and the array) exactly.
- ``spacing`` is the voxel size per array axis, the column norms of the affine's 3 x 3
  block (:func:`nibabel.affines.voxel_sizes`). With a sheared affine, distances in
  ``spacing``-scaled voxels are approximate; world coordinates stay exact.

Examples
--------
>>> import numpy as np
>>> vol = Volume(np.zeros((4, 5, 6), np.float32), spacing=(0.5, 0.5, 2.0))
>>> vol.to_world([[2, 2, 3]]).tolist()
[[1.0, 1.0, 6.0]]
>>> vol.to_voxel([[1.0, 1.0, 6.0]]).tolist()
[[2.0, 2.0, 3.0]]
"""

from __future__ import annotations

import gzip
import io as _stdio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_int
from wsdet._normalize import normalize_intensity
from wsdet.detection import Detections

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NUMPY_SUFFIXES",
    "SUFFIXES",
    "Volume",
    "WorldDetections",
    "image_id",
    "load_volume",
    "normalize_intensity",
    "points_from_mask",
    "require_nibabel",
    "save_volume",
    "size_in_voxels",
    "voxel_to_world",
    "world_to_voxel",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NUMPY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Every file suffix :func:`load_volume` reads.
SUFFIXES = NIFTI_SUFFIXES + NUMPY_SUFFIXES + IMAGE_SUFFIXES

_INSTALL = "pip install 'wsdet[nifti]'"


def require_nibabel() -> Any:
    """Import nibabel, or raise an ImportError with the install command.

    Examples
    --------
    >>> require_nibabel().__name__
    'nibabel'
    """
    try:
        import nibabel
    except ImportError:
        raise ImportError(f"reading and writing NIfTI needs nibabel: {_INSTALL}") from None
    return nibabel


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def image_id(path: str | os.PathLike[str]) -> str:
    """The file name without its volume suffix (``.nii.gz`` counts as one).

    Examples
    --------
    >>> image_id("data/case01.nii.gz"), image_id("x/scan.v2.npy")
    ('case01', 'scan.v2')
    """
    p = Path(path)
    s = _suffix(p)
    return p.name[: len(p.name) - len(s)] if s and p.name.lower().endswith(s) else p.stem


def _as_affine(affine: ArrayLike, name: str = "affine") -> NDArray[np.float64]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix (voxel index -> RAS mm), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise ValueError(f"{name}'s last row must be (0, 0, 0, 1), got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"{name} is singular: its 3x3 block has determinant 0")
    return a


def _as_points(points: ArrayLike, name: str, width: int, what: str) -> NDArray[np.float64]:
    """``points`` as a ``(k, width)`` float64 array (``(0, width)`` when empty); else a
    ``ValueError`` naming ``name`` and the expected shape of ``what``."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, width))
    if p.ndim != 2 or p.shape[1] != width:
        raise ValueError(f"{name} must have shape (k, {width}) ({what}), got {p.shape}")
    return p


def _as_spacing(spacing: ArrayLike, ndim: int) -> tuple[float, ...]:
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape != (ndim,) or not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(
            f"spacing must be one positive voxel size (mm) or {ndim} of them (one per array "
            f"axis), got {np.asarray(spacing).tolist()!r}"
        )
    return tuple(float(v) for v in arr)


@dataclass(frozen=True, eq=False, init=False)
class Volume:
    """An image array with its geometry.

    Parameters
    ----------
    array : array_like
        2D or 3D data in the file's voxel order (see the module docstring).
    spacing : float or sequence of float, optional
        Voxel size per array axis in mm. Derived from ``affine`` when omitted (1 mm when
        both are omitted); when both are given they must agree.
    affine : array_like, optional
        ``(4, 4)`` voxel index -> RAS+ mm. Default ``diag(spacing)`` (origin at voxel 0).
    path : path, optional
        The file the volume came from.
    header : object, optional
        The nibabel header of a NIfTI file (kept to write outputs with the same header).

    Attributes
    ----------
    array : numpy.ndarray
    spacing : tuple of float
        ``ndim`` voxel sizes in mm, per array axis.
    affine : numpy.ndarray
        ``(4, 4)`` float64.
    path : pathlib.Path or None
    header : object or None

    Examples
    --------
    >>> import numpy as np
    >>> aff = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3, 1], [0, 0, 0, 1]])
    >>> vol = Volume(np.zeros((4, 4, 4)), affine=aff)
    >>> vol.spacing, vol.shape
    ((1.5, 2.0, 3.0), (4, 4, 4))
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: NDArray[np.float64]
    path: Path | None = None
    header: Any = field(default=None, repr=False)

    def __init__(
        self,
        array: ArrayLike,
        spacing: float | Sequence[float] | None = None,
        affine: ArrayLike | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        header: Any = None,
    ) -> None:
        arr = np.asarray(array)
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"a volume must be a 2D image or a 3D volume, got an array of shape {arr.shape}"
            )
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"array must hold real numbers or booleans, got dtype {arr.dtype}")
        nd = arr.ndim
        if affine is None:
            sp = _as_spacing(1.0 if spacing is None else spacing, nd)
            aff = np.diag([*sp, *([1.0] * (3 - nd)), 1.0])
        else:
            aff = _as_affine(affine)
            derived = tuple(float(v) for v in np.sqrt((aff[:3, :nd] ** 2).sum(axis=0)))
            if spacing is not None:
                sp = _as_spacing(spacing, nd)
                if not np.allclose(sp, derived, rtol=1e-4, atol=1e-6):
                    raise ValueError(
                        f"spacing {sp} disagrees with the affine's voxel sizes {derived}; "
                        "give one of them"
                    )
            sp = derived
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "path", None if path is None else Path(path))
        object.__setattr__(self, "header", header)

    @property
    def ndim(self) -> int:
        """Number of array dimensions (2 or 3)."""
        return int(self.array.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def id(self) -> str:
        """The file name without suffix (``""`` without a path)."""
        return "" if self.path is None else image_id(self.path)

    def to_world(self, points: ArrayLike) -> NDArray[np.float64]:
        """Voxel indices ``(k, ndim)`` (array axis order) -> RAS+ mm ``(k, 3)``."""
        return voxel_to_world(points, self.affine, self.ndim)

    def to_voxel(self, points_mm: ArrayLike) -> NDArray[np.float64]:
        """RAS+ mm ``(k, 3)`` -> fractional voxel indices ``(k, ndim)``."""
        return world_to_voxel(points_mm, self.affine, self.ndim)

    def locate(self, detections: Detections) -> WorldDetections:
        """The detections with their world coordinates (``points_mm``) in this volume."""
        return WorldDetections.from_detections(detections, self)


def _mapping_args(
    points: ArrayLike, name: str, affine: ArrayLike, ndim: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """The checked points, affine and ``ndim`` of a voxel <-> world mapping: ``points_mm``
    are ``(k, 3)`` RAS mm, ``points`` ``(k, ndim)`` voxel indices."""
    nd = check_int("ndim", ndim, minimum=1, maximum=3)
    world = name == "points_mm"
    p = _as_points(points, name, 3 if world else nd, "RAS mm" if world else "voxel indices")
    return p, _as_affine(affine), nd


def voxel_to_world(points: ArrayLike, affine: ArrayLike, ndim: int = 3) -> NDArray[np.float64]:
    """Map voxel indices ``(k, ndim)`` to world mm ``(k, 3)`` with a 4x4 affine.

    2D indices are padded with ``k = 0``. Equals ``nibabel.affines.apply_affine``.

    Examples
    --------
    >>> voxel_to_world([[1, 2, 3]], np.diag([2.0, 3.0, 4.0, 1.0])).tolist()
    [[2.0, 6.0, 12.0]]
    """
    p, aff, nd = _mapping_args(points, "points", affine, ndim)
    p = np.concatenate([p, np.zeros((p.shape[0], 3 - nd))], axis=1)  # 2D: k = 0
    out: NDArray[np.float64] = p @ aff[:3, :3].T + aff[:3, 3]
    return out


def world_to_voxel(points_mm: ArrayLike, affine: ArrayLike, ndim: int = 3) -> NDArray[np.float64]:
    """Map world mm ``(k, 3)`` to fractional voxel indices ``(k, ndim)`` (the inverse).

    Examples
    --------
    >>> world_to_voxel([[2.0, 6.0, 12.0]], np.diag([2.0, 3.0, 4.0, 1.0])).tolist()
    [[1.0, 2.0, 3.0]]
    """
    p, aff, nd = _mapping_args(points_mm, "points_mm", affine, ndim)
    out: NDArray[np.float64] = (p - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    return out[:, :nd]


@dataclass(repr=False)
class WorldDetections(Detections):
    """:class:`wsdet.Detections` of one volume, with world coordinates.

    Attributes
    ----------
    points_mm : numpy.ndarray
        ``(k, 3)`` RAS+ millimetres of ``points`` (through the volume's affine).
    affine : numpy.ndarray
        The volume's ``(4, 4)`` affine.
    spacing : tuple of float
        The volume's voxel size per array axis (mm).
    image : str
        The volume's id (file name without suffix).
    """

    points_mm: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    affine: NDArray[np.float64] = field(default_factory=lambda: np.eye(4))
    spacing: tuple[float, ...] = ()
    image: str = ""

    @classmethod
    def from_detections(cls, detections: Detections, volume: Volume) -> WorldDetections:
        """Attach ``volume``'s geometry to ``detections`` (voxel indices unchanged)."""
        pts = np.asarray(detections.points)
        if len(pts) and pts.shape[1] != volume.ndim:
            raise ValueError(
                f"detections have {pts.shape[1]}-D points but the volume is {volume.ndim}-D"
            )
        return cls(
            points=pts,
            scores=np.asarray(detections.scores),
            count=detections.count,
            n_candidates=detections.n_candidates,
            points_mm=volume.to_world(pts.reshape(-1, volume.ndim)),
            affine=volume.affine,
            spacing=volume.spacing,
            image=volume.id,
        )

    def __repr__(self) -> str:
        return f"WorldDetections(image={self.image!r}, k={len(self)}, count={self.count:.3f})"


def size_in_voxels(size_mm: float | Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """An NMS window given in mm as a number of voxels per axis.

    ``max(1, floor(size_mm / spacing + 0.5))`` per axis (round half up, as wsdet's top-n):
    the window spans about ``size_mm`` along every axis. Odd sizes are centred; even ones
    follow ``scipy.ndimage.maximum_filter`` (see :mod:`wsdet.detection`).

    Examples
    --------
    >>> size_in_voxels(6.0, (1.0, 1.0, 3.0))
    (6, 6, 2)
    >>> size_in_voxels((5.0, 5.0), (0.5, 2.0))
    (10, 3)
    """
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim != 1 or not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ValueError(f"spacing must be positive voxel sizes per axis, got {spacing!r}")
    mm = np.asarray(size_mm, dtype=np.float64)
    if mm.ndim == 0:
        mm = np.full(sp.shape, float(mm))
    if mm.shape != sp.shape or not (np.isfinite(mm).all() and (mm > 0).all()):
        raise ValueError(
            f"size_mm must be one positive length (mm) or {sp.size} of them, got {size_mm!r}"
        )
    return tuple(max(1, int(np.floor(v + 0.5))) for v in mm / sp)


# ----------------------------------------------------------------------------- reading
def load_volume(
    path: str | os.PathLike[str], *, spacing: float | Sequence[float] | None = None
) -> Volume:
    """Read a NIfTI (``.nii``, ``.nii.gz``), NumPy (``.npy``, ``.npz``) or 2D image file.

    Parameters
    ----------
    path : str or os.PathLike
        The file. NIfTI needs nibabel (``pip install 'wsdet[nifti]'``).
    spacing : float or sequence of float, optional
        Voxel size (mm) of files without geometry (``.npy``, images, ``.npz`` without an
        affine). Refused for NIfTI, whose affine holds it.

    Returns
    -------
    Volume
        The array in the file's voxel order (NIfTI: scaled by its slope/intercept, else the
        stored dtype), its spacing and affine. RGB(A) images are converted to grey.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read (corrupt, truncated), is not 2D or 3D, or has an unknown
        suffix.
    ImportError
        For NIfTI without nibabel (the message gives the install command).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "v.npz"
    >>> _ = save_volume(p, Volume(np.ones((2, 3, 4)), spacing=(1.0, 2.0, 3.0)))
    >>> load_volume(p).spacing
    (1.0, 2.0, 3.0)
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    s = _suffix(p)
    if s in NIFTI_SUFFIXES:
        if spacing is not None:
            raise ValueError(f"spacing= is only for files without geometry; {p} has an affine")
        return _load_nifti(p)
    if s in NUMPY_SUFFIXES:
        return _load_numpy(p, s, spacing)
    if s in IMAGE_SUFFIXES:
        return _load_image(p, spacing)
    raise ValueError(f"{p}: unknown volume suffix {s!r}; wsdet reads {', '.join(SUFFIXES)}")


def _load_nifti(p: Path) -> Volume:
    nib = require_nibabel()
    try:
        img = nib.load(str(p))
        arr = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel, gzip and zlib raise many kinds on corrupt files
        raise ValueError(f"cannot read {p} as NIfTI ({type(err).__name__}: {err})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{p} holds an array of shape {arr.shape}; wsdet reads 2D images and 3D volumes "
            "(split 4D series into one file per volume)"
        )
    return Volume(np.asarray(arr), affine=affine, path=p, header=img.header)


def _load_numpy(p: Path, s: str, spacing: float | Sequence[float] | None) -> Volume:
    try:
        if s == ".npy":
            arr = np.load(p, allow_pickle=False)
            affine = None
        else:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "array" if "array" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise ValueError(f"expected a key 'array' (or a single array), found {keys}")
                arr = z[key]
                affine = z["affine"] if "affine" in keys else None
    except ValueError as err:
        raise ValueError(f"cannot read {p} as NumPy ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {p} as NumPy ({type(err).__name__}: {err})") from None
    if affine is not None and spacing is not None:
        raise ValueError(f"spacing= is only for files without geometry; {p} has an affine")
    if np.ndim(arr) not in (2, 3):
        raise ValueError(f"{p} holds an array of shape {np.shape(arr)}; expected 2D or 3D")
    return Volume(arr, spacing=spacing, affine=affine, path=p)


def _load_image(p: Path, spacing: float | Sequence[float] | None) -> Volume:
    from skimage import io as skio

    try:
        arr = np.asarray(skio.imread(str(p)))
    except Exception as err:  # imageio/PIL raise many kinds
        raise ValueError(f"cannot read {p} as an image ({type(err).__name__}: {err})") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and _suffix(p) not in (".tif", ".tiff"):
        from skimage.color import rgb2gray, rgba2rgb

        rgb = rgba2rgb(arr) if arr.shape[-1] == 4 else arr  # type: ignore[no-untyped-call]
        arr = rgb2gray(rgb).astype(np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{p} holds an image of shape {arr.shape}; expected 2D (or a 3D stack)")
    return Volume(arr, spacing=spacing, path=p)


# ----------------------------------------------------------------------------- writing
def save_volume(
    path: str | os.PathLike[str],
    data: Volume | ArrayLike,
    *,
    like: Volume | None = None,
    affine: ArrayLike | None = None,
) -> Path:
    """Write an array (or a :class:`Volume`) with its geometry, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii`` / ``.nii.gz`` (nibabel), ``.npz`` (array and affine) or ``.npy`` (the
        array only). Its folder must exist.
    data : Volume or array_like
        What to write. An array takes its geometry from ``like`` or ``affine``.
    like : Volume, optional
        A volume of the same shape whose geometry (and NIfTI header) the output keeps, e.g.
        the input of an attention map.
    affine : array_like, optional
        A 4x4 affine (instead of ``like``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> src = Volume(np.zeros((3, 4, 5)), spacing=(1.0, 1.0, 2.5))
    >>> out = save_volume(folder / "map.npz", np.ones((3, 4, 5)), like=src)
    >>> load_volume(out).spacing
    (1.0, 1.0, 2.5)
    """
    from wsdet._io import atomic_write

    p = Path(path)
    if isinstance(data, Volume):
        if like is not None or affine is not None:
            raise ValueError("a Volume carries its geometry: give like= or affine= with arrays")
        vol = data
    else:
        arr = np.asarray(data)
        if like is not None and affine is not None:
            raise ValueError("give like= or affine=, not both")
        if like is not None:
            if arr.shape != like.shape:
                raise ValueError(f"data has shape {arr.shape} but like has shape {like.shape}")
            vol = Volume(arr, affine=like.affine, header=like.header)
        else:
            vol = Volume(arr, affine=affine)
    s = _suffix(p)
    if s in NIFTI_SUFFIXES:
        raw = _nifti_bytes(vol)
        payload = gzip.compress(raw, compresslevel=6, mtime=0) if s == ".nii.gz" else raw
        return atomic_write(p, lambda f: f.write(payload))
    if s == ".npz":
        buf = _stdio.BytesIO()
        np.savez_compressed(buf, array=vol.array, affine=vol.affine)
        return atomic_write(p, lambda f: f.write(buf.getvalue()))
    if s == ".npy":
        return atomic_write(p, lambda f: np.save(f, vol.array, allow_pickle=False))
    raise ValueError(f"{p}: save_volume writes .nii, .nii.gz, .npz or .npy, not {s!r}")


def _nifti_bytes(vol: Volume) -> bytes:
    nib = require_nibabel()
    arr = vol.array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    header = None
    if vol.header is not None and isinstance(vol.header, nib.Nifti1Header):
        header = vol.header.copy()
    img = nib.Nifti1Image(arr, vol.affine, header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units(xyz="mm")
    if header is not None:  # keep the input's slope/intercept out of the new data
        img.header.set_slope_inter(1.0, 0.0)
    code = int(header["sform_code"]) if header is not None else 0
    img.set_sform(vol.affine, code=code or 1)
    img.set_qform(vol.affine, code=int(header["qform_code"]) if header is not None else 1)
    return bytes(img.to_bytes())


from wsdet.masks import points_from_mask  # noqa: E402  (re-export: masks -> points)
