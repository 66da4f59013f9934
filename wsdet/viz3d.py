"""3D views: orthogonal slices and maximum-intensity projections with detections marked.

Planes are named (axial, coronal, sagittal) from the affine; the aspect comes from the voxel
sizes. matplotlib is imported lazily. Re-exported by :mod:`wsdet.viz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from wsdet._checks import check_float
from wsdet.viz import (
    _DETECTION_MARKS,
    _TARGET_MARKS,
    _image_and_map,
    _mark,
    _opacity,
    _optional_str,
    _plt,
    _pts,
    map_style,
)

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

__all__ = ["ViewOptions", "mip", "orthogonal_slices"]

_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # named by the world axis held fixed


class ViewOptions(TypedDict, total=False):
    """The keyword arguments that :func:`orthogonal_slices` and :func:`mip` share."""

    points: Any
    targets: Any
    spacing: Sequence[float] | None
    affine: Any
    alpha: float
    cmap: str | None
    title: str | None
    panel_size: float


def _pts3(p: Any, name: str) -> np.ndarray:
    return _pts(p, name, 3)


def _geometry(spacing: Any, affine: Any) -> tuple[np.ndarray, list[str]]:
    """Voxel sizes per array axis and the name of the plane that holds each axis fixed."""
    if affine is not None:
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {a.shape}")
        sp = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
        world = np.abs(a[:3, :3]).argmax(axis=0)  # the world axis each array axis runs along
    else:
        sp = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
        world = np.arange(3)  # no affine: array axes taken as x, y, z
    if sp.shape != (3,) or not (sp > 0).all():
        raise ValueError(f"spacing must be 3 positive voxel sizes, got {spacing!r}")
    if sorted(world.tolist()) == [0, 1, 2]:
        names = [_PLANES[int(w)] for w in world]
    else:  # oblique: no axis is clearly one of the patient's
        names = [f"axis {a}" for a in range(3)]
    return sp, names


def _cut(v: np.ndarray, mode: str, a: int, index: int, signed: bool) -> np.ndarray:
    """The plane of ``v`` holding axis ``a`` fixed (slice or projection), transposed."""
    if mode == "slice":
        out = np.take(v, index, axis=a)
    elif signed:  # the value of largest magnitude along the ray, sign kept
        idx = np.expand_dims(np.abs(v).argmax(axis=a), a)
        out = np.take_along_axis(v, idx, axis=a).squeeze(a)
    else:
        out = v.max(axis=a)
    return np.asarray(out).T


def _views(
    mode: str,
    image: Any,
    amap: Any,
    *,
    point: Any = None,
    slab: float = 1.0,
    points: Any = None,
    targets: Any = None,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    alpha: float = 0.5,
    cmap: str | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
) -> Any:
    """The three panels of :func:`orthogonal_slices` (``mode="slice"``) or :func:`mip`."""
    alpha = _opacity(alpha)
    slab = check_float("slab", slab, nonnegative=True)
    panel_size = check_float("panel_size", panel_size, positive=True)
    _optional_str("title", title)
    img, m = _image_and_map(image, amap, 3)
    det, tgt = _pts3(points, "points"), _pts3(targets, "targets")
    sp, names = _geometry(spacing, affine)
    if point is None:
        centre = det[0] if len(det) else tgt[0] if len(tgt) else (np.asarray(img.shape) - 1) / 2
    else:
        centre = np.asarray(point, dtype=float)
        if centre.shape != (3,):
            raise ValueError(f"point must be 3 voxel indices, got {np.shape(point)}")
    c = np.clip(np.floor(centre + 0.5).astype(int), 0, np.asarray(img.shape) - 1)
    order = sorted(
        range(3),
        key=lambda a: (
            ["axial", "coronal", "sagittal"].index(names[a])
            if names[a] in ("axial", "coronal", "sagittal")
            else 3 + a
        ),
    )
    style = None if m is None else {"alpha": alpha, **map_style(m, cmap)}
    plt = _plt()
    fig, axes = plt.subplots(
        1, 3, figsize=(3 * panel_size + (1.0 if m is not None else 0), panel_size)
    )
    for ax, a in zip(axes, order, strict=True):
        p, q = [b for b in range(3) if b != a]  # horizontal, vertical array axes
        shown = {"origin": "lower", "interpolation": "nearest", "aspect": float(sp[q] / sp[p])}
        ax.imshow(_cut(img, mode, a, int(c[a]), False), cmap="gray", **shown)
        if m is not None and style is not None:
            im = ax.imshow(_cut(m, mode, a, int(c[a]), True), **shown, **style)
        for pts, marks, label in (
            (tgt, _TARGET_MARKS, "targets"),
            (det, _DETECTION_MARKS, "detections"),
        ):
            near = pts if mode == "mip" else pts[np.abs(pts[:, a] - c[a]) <= slab]
            _mark(ax, (near[:, p], near[:, q]), marks, label=label)
        if mode == "slice":
            ax.axhline(c[q], color="yellow", lw=0.5, alpha=0.6)
            ax.axvline(c[p], color="yellow", lw=0.5, alpha=0.6)
        where = f"index {c[a]}" if mode == "slice" else "MIP"
        ax.set_title(f"{names[a]} ({where} on axis {a})", fontsize=9)
        ax.set_xlabel(f"axis {p}", fontsize=8)
        ax.set_ylabel(f"axis {q}", fontsize=8)
        ax.tick_params(labelsize=7)
    if m is not None:
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def orthogonal_slices(
    image: Any,
    amap: Any = None,
    *,
    point: Any = None,
    slab: float = 1.0,
    **options: Unpack[ViewOptions],
) -> Any:
    """Axial, coronal and sagittal slices of a volume through one point.

    Parameters
    ----------
    image : array_like or Tensor
        A 3D volume (squeezed), in the file's voxel order (:mod:`wsdet.io`).
    amap : array_like, optional
        An attention map of the same shape, overlaid with :func:`map_style` and a colour bar.
    point : sequence of 3 float, optional
        Where the slices cross (voxel indices); default the top detection (``points[0]``),
        else the first target, else the centre.
    slab : float, default 1.0
        Half-thickness (voxels) of the slab whose markers a slice shows.
    **options : ViewOptions
        ``points``, ``targets``: ``(k, 3)`` detections (red crosses) and targets (green
        circles), in voxel indices, drawn on a slice when within ``slab`` voxels of it;
        ``spacing``: voxel sizes (mm) for the aspect, when there is no ``affine``;
        ``affine``: the volume's 4x4 affine (voxel sizes and plane names); ``alpha``,
        ``cmap``: map opacity (default 0.5) and colormap (default by the map's sign);
        ``title``; ``panel_size``: panel size in inches (default 3.2).

    Returns
    -------
    matplotlib.figure.Figure
        Three image axes (in the order axial, coronal, sagittal), plus a colour bar with a
        map. Each panel shows the two other array axes, the lower-numbered one horizontal,
        with ``origin="lower"`` and aspect ``spacing[vertical] / spacing[horizontal]``.
    """
    return _views("slice", image, amap, point=point, slab=slab, **options)


def mip(image: Any, amap: Any = None, **options: Unpack[ViewOptions]) -> Any:
    """Maximum-intensity projections of a volume along its three axes, all points marked.

    As :func:`orthogonal_slices` (the keyword arguments of :class:`ViewOptions`, without
    ``point`` and ``slab``), with each panel the maximum of the image along the projected
    axis (an attention map shows its value of largest magnitude, sign kept), and every
    detection and target drawn.
    """
    return _views("mip", image, amap, point=None, slab=0.0, **options)
