"""On-the-fly random affine augmentation for 2D and 3D batches, in torch (paper §3.5).

Each sample of a batch gets its own random combination of a translation of up to
``max_shift`` voxels along every axis, a rotation of up to ``max_rotation`` radians in
every plane (in 3D the product of rotations about the three axes), and a random flip
along every axis; the whole batch is resampled with one ``affine_grid`` /
``grid_sample`` call (bilinear in 2D, trilinear in 3D, zero padding). Count labels are
unchanged; point targets are mapped with the same transform.

The transform acts in index coordinates (array axis order, voxel centres at integer
positions, the convention of ``align_corners=True``) about the image centre
``c = (S - 1) / 2``. A point ``p`` of the input lands at

    ``p' = c + F R (p - c) + s``

in the output, with ``F`` the diagonal flip matrix (entries ±1), ``R`` the rotation and
``s`` the shift; a flip therefore maps index ``i`` to ``S - 1 - i`` exactly like
``torch.flip``. With ``spacing`` given, the rotation is a rotation in millimetres
(``R = D^-1 R_mm D``, ``D = diag(spacing)``), so anisotropic volumes are not sheared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict, TypeVar, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from wsdet._checks import check_float, check_int

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

__all__ = ["RandomAffine", "apply_affine", "augment", "random_affine", "transform_points"]

PointsT = TypeVar("PointsT", torch.Tensor, npt.NDArray[np.floating])
Flip: TypeAlias = bool | Sequence[int]


def _check_images(images: torch.Tensor) -> int:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in (4, 5):
        raise ValueError(
            f"images must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if any(s < 2 for s in images.shape[2:]):
        raise ValueError(f"every spatial size must be >= 2, got {tuple(images.shape[2:])}")
    return images.ndim - 2


def _flip_axes(flip: Flip, ndim: int) -> list[int]:
    if isinstance(flip, bool):
        return list(range(ndim)) if flip else []
    axes = list(flip)
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < ndim:
            raise ValueError(
                f"flip must be a bool or a sequence of spatial axes in [0, {ndim}), got {flip!r}"
            )
    return sorted(set(axes))


def _plane_rotation(ndim: int, i: int, j: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotations by ``angle`` (B,) in the plane of index axes ``(i, j)``: (B, ndim, ndim)."""
    rot = torch.eye(ndim, dtype=torch.float64).repeat(angle.shape[0], 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot[:, i, i] = cos
    rot[:, i, j] = -sin
    rot[:, j, i] = sin
    rot[:, j, j] = cos
    return rot


def random_affine(
    batch: int,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    max_shift: float = 2.0,
    max_rotation: float = 0.2,
    flip: Flip = True,
    spacing: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one random affine transform per sample, in index coordinates.

    Parameters
    ----------
    batch : int
        Number of transforms.
    shape : sequence of int
        Spatial size ``S`` (2 or 3 entries); the rotation is about ``(S - 1) / 2``.
    generator : torch.Generator, optional
        Source of randomness (the global torch generator if ``None``).
    max_shift : float
        Shifts are uniform in ``[-max_shift, max_shift]`` voxels along every axis.
    max_rotation : float
        Angles are uniform in ``[-max_rotation, max_rotation]`` radians: one in 2D, one
        per plane in 3D, composed as ``R_yx R_zx R_zy`` (planes of axes (1, 2), (0, 2),
        (0, 1)).
    flip : bool or sequence of int
        ``True``: each axis is flipped with probability 1/2; a sequence: only those
        spatial axes; ``False``: no flips.
    spacing : sequence of float, optional
        Voxel size per axis; rotations are then rigid in physical units.

    Returns
    -------
    matrix : torch.Tensor
        ``(batch, d, d)`` float64 ``A``.
    offset : torch.Tensor
        ``(batch, d)`` float64 ``t``, such that an input point ``p`` maps to
        ``A @ p + t`` in the output.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> A, t = random_affine(4, (32, 32), generator=g, max_rotation=0.0, flip=False)
    >>> torch.equal(A, torch.eye(2, dtype=torch.float64).expand(4, 2, 2))
    True
    >>> bool((t.abs() <= 2).all())
    True
    """
    batch = check_int("batch", batch, minimum=0)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 spatial sizes, got {tuple(shape)}")
    max_shift = check_float("max_shift", max_shift, nonnegative=True)
    max_rotation = check_float("max_rotation", max_rotation, nonnegative=True)
    axes = _flip_axes(flip, ndim)
    if spacing is not None and (
        len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing)
    ):
        raise ValueError(f"spacing must hold {ndim} positive numbers, got {spacing!r}")

    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(*size: int) -> torch.Tensor:
        u = torch.rand(*size, generator=generator, device=device, dtype=torch.float64)
        return u.cpu()

    shift = (uniform(batch, ndim) * 2.0 - 1.0) * max_shift
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    angles = (uniform(batch, len(planes)) * 2.0 - 1.0) * max_rotation
    rot = torch.eye(ndim, dtype=torch.float64).repeat(batch, 1, 1)
    for k, (i, j) in enumerate(planes):
        rot = rot @ _plane_rotation(ndim, i, j, angles[:, k])
    if spacing is not None:
        scale = torch.tensor(list(spacing), dtype=torch.float64)
        rot = rot * scale[None, None, :] / scale[None, :, None]  # D^-1 R D
    signs = torch.ones(batch, ndim, dtype=torch.float64)
    if axes:
        flips = uniform(batch, len(axes)) < 0.5
        signs[:, axes] = torch.where(flips, -1.0, 1.0).to(torch.float64)
    matrix = signs[:, :, None] * rot
    center = (torch.tensor([float(s) for s in shape], dtype=torch.float64) - 1.0) / 2.0
    offset = center + shift - matrix @ center
    return matrix, offset


def _check_affine(matrix: torch.Tensor, offset: torch.Tensor, batch: int, ndim: int) -> None:
    if matrix.shape != (batch, ndim, ndim) or offset.shape != (batch, ndim):
        raise ValueError(
            f"matrix and offset must have shapes ({batch}, {ndim}, {ndim}) and ({batch}, "
            f"{ndim}), got {tuple(matrix.shape)} and {tuple(offset.shape)}"
        )


def _sampling_grid(
    theta: torch.Tensor,
    shift: torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``grid_sample`` grid ``(B, *S, d)`` for ``u_in = theta @ u_out + shift``.

    Equivalent to ``F.affine_grid(..., align_corners=True)`` but built by broadcasting
    one coordinate at a time, several times faster on CPU. ``theta`` / ``shift`` are in
    array axis order; the grid's last dimension is in ``(x, y[, z])`` order.
    """
    batch, ndim = shift.shape
    # Reverse the rows to the (x, y[, z]) order of the grid's last dimension.
    th = theta.flip(1).to(device, dtype)
    acc = shift.flip(1).to(device, dtype).view(batch, *([1] * ndim), ndim)
    for j, size in enumerate(shape):  # one broadcast add per axis; the last one is full-size
        view = [1] * ndim
        view[j] = size
        base = torch.linspace(-1.0, 1.0, size, dtype=dtype, device=device)
        acc = acc + th[:, :, j].reshape(batch, *([1] * ndim), ndim) * base.view(1, *view, 1)
    return acc.expand(batch, *shape, ndim)


def apply_affine(
    images: torch.Tensor,
    matrix: torch.Tensor,
    offset: torch.Tensor,
    *,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    padding_mode: Literal["zeros", "border", "reflection"] = "zeros",
) -> torch.Tensor:
    """Resample a batch so that input point ``p`` moves to ``matrix @ p + offset``.

    One sampling grid and one ``grid_sample`` call (``align_corners=True``) for the
    batch; an all-identity transform returns a copy without resampling.
    ``bfloat16`` / ``float16`` inputs are resampled in float32 and cast back.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, *S)`` floating point, 2 or 3 spatial dimensions.
    matrix, offset : torch.Tensor
        ``(B, d, d)`` and ``(B, d)`` forward transforms in index coordinates, as returned
        by :func:`random_affine`.
    mode : {"bilinear", "nearest"}
        Interpolation (``"bilinear"`` is trilinear for volumes; ``"nearest"`` for masks).
    padding_mode : {"zeros", "border", "reflection"}
        Value outside the input.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``images``.

    Examples
    --------
    >>> x = torch.arange(12.0).reshape(1, 1, 3, 4)
    >>> flip_cols = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    >>> y = apply_affine(x, flip_cols, torch.tensor([[0.0, 3.0]], dtype=torch.float64))
    >>> torch.allclose(y, x.flip(-1), atol=1e-5)
    True
    """
    ndim = _check_images(images)
    batch = images.shape[0]
    _check_affine(matrix, offset, batch, ndim)
    shape = images.shape[2:]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    a = matrix.detach().to("cpu", torch.float64)
    t = offset.detach().to("cpu", torch.float64)
    # Sampling: p_in = M p_out + b with M = A^-1, b = -A^-1 t; then to normalised
    # coordinates u = N p - 1 (N = diag(2 / (S - 1)), align_corners=True).
    m = torch.from_numpy(np.linalg.inv(a.numpy()))  # numpy: far cheaper for tiny matrices
    b = -(m @ t[:, :, None])[:, :, 0]
    norm = 2.0 / (torch.tensor([float(s) for s in shape], dtype=torch.float64) - 1.0)
    theta = norm[None, :, None] * m / norm[None, None, :]
    shift = theta.sum(dim=2) + norm[None, :] * b - 1.0
    if torch.equal(m, torch.eye(ndim, dtype=torch.float64).expand_as(m)) and not b.any():
        return images.clone()  # identity: no resampling (and no interpolation rounding)
    grid = _sampling_grid(theta, shift, tuple(shape), work.dtype, images.device)
    out = F.grid_sample(work, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(images.dtype)


def transform_points(
    points: Sequence[PointsT], matrix: torch.Tensor, offset: torch.Tensor
) -> list[PointsT]:
    """Map per-sample points with ``p -> matrix @ p + offset``.

    Parameters
    ----------
    points : sequence of (k, d) arrays or tensors
        One entry per sample, index coordinates. Points that land outside the image are
        kept (the caller decides what to do with them).
    matrix, offset : torch.Tensor
        ``(B, d, d)`` and ``(B, d)``, as returned by :func:`random_affine`.

    Returns
    -------
    list
        Transformed points, each of the input's type (numpy array or tensor, on the
        input's device); floating inputs keep their dtype, integer ones become float64.

    Examples
    --------
    >>> A = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    >>> t = torch.tensor([[9.0, 0.0]], dtype=torch.float64)
    >>> transform_points([np.array([[1.0, 2.0]])], A, t)
    [array([[7., 1.]])]
    """
    if isinstance(points, torch.Tensor | np.ndarray) or len(points) != matrix.shape[0]:
        raise ValueError(
            f"points must be a sequence of {matrix.shape[0]} (k, d) arrays, one per sample"
        )
    ndim = matrix.shape[-1]
    a = matrix.detach().to("cpu", torch.float64)
    t = offset.detach().to("cpu", torch.float64)
    out: list[Any] = []
    for i, p in enumerate(points):
        if isinstance(p, torch.Tensor):
            q = p.detach().to("cpu", torch.float64)
        else:
            q = torch.from_numpy(np.asarray(p, dtype=np.float64))
        if q.ndim != 2 or q.shape[1] != ndim:
            raise ValueError(f"points[{i}] must have shape (k, {ndim}), got {tuple(q.shape)}")
        moved = q @ a[i].T + t[i]
        if isinstance(p, torch.Tensor):
            dtype = p.dtype if p.is_floating_point() else torch.float64
            out.append(moved.to(p.device, dtype))
        else:
            arr = np.asarray(p)
            dt = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            out.append(moved.numpy().astype(dt, copy=False))
    return out


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return torch.Generator().manual_seed(check_int("seed", seed))
    return generator


class AugmentOptions(TypedDict, total=False):
    """The keyword arguments of :func:`augment` other than ``points``."""

    generator: torch.Generator | None
    seed: int | None
    max_shift: float
    max_rotation: float
    flip: Flip
    spacing: Sequence[float] | None
    mode: Literal["bilinear", "nearest"]


@overload
def augment(
    images: torch.Tensor, *, points: None = ..., **options: Unpack[AugmentOptions]
) -> torch.Tensor: ...


@overload
def augment(
    images: torch.Tensor, *, points: Sequence[PointsT], **options: Unpack[AugmentOptions]
) -> tuple[torch.Tensor, list[PointsT]]: ...


def augment(
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    max_shift: float = 2.0,
    max_rotation: float = 0.2,
    flip: Flip = True,
    spacing: Sequence[float] | None = None,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    points: Sequence[PointsT] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[PointsT]]:
    """Randomly shift, rotate and flip every sample of a 2D or 3D batch.

    The paper's augmentation (§3.5): translations up to 2 voxels, rotations up to 0.2
    rad in every plane and flips along every axis, drawn independently per sample. The
    count label of a sample is unchanged.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` or ``(B, C, D, H, W)`` floating point (float32, float64,
        bfloat16, float16), any device.
    generator : torch.Generator, optional
        Randomness source; equal generator states give equal transforms.
    seed : int, optional
        Shortcut for ``generator=torch.Generator().manual_seed(seed)``.
    max_shift, max_rotation, flip, spacing
        See :func:`random_affine`.
    mode : {"bilinear", "nearest"}
        Interpolation.
    points : sequence of (k, d) arrays or tensors, optional
        Per-sample point targets (index coordinates), transformed consistently.

    Returns
    -------
    torch.Tensor or (torch.Tensor, list)
        The augmented batch (same shape, dtype, device), and the transformed points when
        ``points`` is given.

    Examples
    --------
    >>> x = torch.zeros(2, 1, 32, 32)
    >>> x[:, :, 10, 20] = 1.0
    >>> y, pts = augment(x, seed=0, points=[np.array([[10.0, 20.0]])] * 2)
    >>> y.shape, pts[0].shape
    (torch.Size([2, 1, 32, 32]), (1, 2))
    """
    ndim = _check_images(images)
    gen = _generator(generator, seed)
    if points is not None and len(points) != images.shape[0]:
        raise ValueError(
            f"points must hold one (k, {ndim}) array per sample ({images.shape[0]}), "
            f"got {len(points)}"
        )
    matrix, offset = random_affine(
        images.shape[0],
        tuple(images.shape[2:]),
        generator=gen,
        max_shift=max_shift,
        max_rotation=max_rotation,
        flip=flip,
        spacing=spacing,
    )
    out = apply_affine(images, matrix, offset, mode=mode)
    if points is None:
        return out
    return out, transform_points(points, matrix, offset)


class RandomAffine:
    """The augmentation of :func:`augment` with its settings bound, for training loops.

    Parameters
    ----------
    max_shift, max_rotation, flip, spacing, mode
        See :func:`augment`.
    seed : int, optional
        Seeds a private generator, so a sequence of calls is reproducible.

    Examples
    --------
    >>> aug = RandomAffine(max_shift=2, max_rotation=0.2, seed=0)
    >>> aug(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 1, 28, 28])
    """

    def __init__(
        self,
        max_shift: float = 2.0,
        max_rotation: float = 0.2,
        flip: Flip = True,
        *,
        spacing: Sequence[float] | None = None,
        mode: Literal["bilinear", "nearest"] = "bilinear",
        seed: int | None = None,
    ) -> None:
        self.max_shift = max_shift
        self.max_rotation = max_rotation
        self.flip = flip
        self.spacing = spacing
        self.mode: Literal["bilinear", "nearest"] = mode
        self.generator = _generator(None, seed)

    @overload
    def __call__(self, images: torch.Tensor, *, points: None = ...) -> torch.Tensor: ...

    @overload
    def __call__(
        self, images: torch.Tensor, *, points: Sequence[PointsT]
    ) -> tuple[torch.Tensor, list[PointsT]]: ...

    def __call__(
        self, images: torch.Tensor, *, points: Sequence[PointsT] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[PointsT]]:
        _check_images(images)
        matrix, offset = random_affine(
            images.shape[0],
            tuple(images.shape[2:]),
            generator=self.generator,
            max_shift=self.max_shift,
            max_rotation=self.max_rotation,
            flip=self.flip,
            spacing=self.spacing,
        )
        out = apply_affine(images, matrix, offset, mode=self.mode)
        if points is None:
            return out
        return out, transform_points(points, matrix, offset)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(max_shift={self.max_shift}, max_rotation={self.max_rotation}, "
            f"flip={self.flip}, spacing={self.spacing}, mode={self.mode!r})"
        )
