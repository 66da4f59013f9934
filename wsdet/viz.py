"""Figures: attention overlays, method grids and FROC curves (needs the ``viz`` extra).

matplotlib is imported lazily, so ``import wsdet`` never requires it. Every function
draws on a given axes (or a new figure) and returns the figure; saving is the caller's.
Points are index coordinates in array axis order, as everywhere in wsdet: a 2D point
``(row, col)`` is drawn at ``x=col, y=row``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["attention_grid", "overlay", "plot_froc", "save_figure"]


def _plt() -> Any:
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in (
            "agg",
            "module://matplotlib_inline.backend_inline",
        ):
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("wsdet.viz needs matplotlib: pip install 'wsdet[viz]'") from e
    return plt


def _np2d(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    arr = np.asarray(a, dtype=float)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (after squeezing), got shape {arr.shape}")
    return arr


def _pts(p: Any, name: str) -> np.ndarray:
    if p is None:
        return np.zeros((0, 2))
    arr = np.asarray(p, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be (k, 2) (row, col) points, got shape {arr.shape}")
    return arr


def overlay(
    image: Any,
    amap: Any = None,
    *,
    points: Any = None,
    gt: Any = None,
    ax: Any = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Any:
    """Draw an image, optionally its attention map (semi-transparent), detections (red
    crosses) and ground-truth points (green circles).

    Returns the figure.
    """
    plt = _plt()
    img = _np2d(image, "image")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4 * img.shape[0] / max(img.shape[1], 1)))
    else:
        fig = ax.figure
    ax.imshow(img, cmap="gray", interpolation="nearest")
    if amap is not None:
        m = _np2d(amap, "amap")
        if m.shape != img.shape:
            raise ValueError(f"amap has shape {m.shape} but image has {img.shape}")
        ax.imshow(m, cmap=cmap, alpha=alpha, interpolation="nearest")
    g = _pts(gt, "gt")
    if len(g):
        ax.scatter(g[:, 1], g[:, 0], s=80, facecolors="none", edgecolors="lime", linewidths=1.5)
    p = _pts(points, "points")
    if len(p):
        ax.scatter(p[:, 1], p[:, 0], s=40, marker="x", c="red", linewidths=1.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def attention_grid(
    image: Any,
    maps: Mapping[str, Any],
    *,
    points: Mapping[str, Any] | None = None,
    gt: Any = None,
    ncols: int = 4,
    panel_size: float = 3.0,
) -> Any:
    """One panel with the image (and ``gt``) and one panel per named map (paper Fig. 3)."""
    plt = _plt()
    n = 1 + len(maps)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    img = _np2d(image, "image")
    aspect = img.shape[0] / max(img.shape[1], 1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, panel_size * aspect * nrows + 0.4), squeeze=False
    )
    flat = axes.ravel()
    overlay(img, gt=gt, ax=flat[0], title="image")
    for ax, (name, m) in zip(flat[1:], maps.items(), strict=False):
        mm = _np2d(m, f"maps[{name!r}]")
        ax.imshow(mm, cmap="jet", interpolation="nearest")
        p = _pts((points or {}).get(name), f"points[{name!r}]")
        if len(p):
            ax.scatter(p[:, 1], p[:, 0], s=30, marker="x", c="white", linewidths=1.2)
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_froc(
    curves: Mapping[str, Any],
    *,
    max_fp: float | None = None,
    ax: Any = None,
    operating_points: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
    fp_unit: str = "image",
) -> Any:
    """FROC curves: each value has ``fp_avg`` and ``sensitivity`` arrays (a
    :class:`wsdet.metrics` curve, or any object/tuple ``(fp_avg, sensitivity)``).

    ``operating_points`` maps a name to ``(fp_avg, sensitivity)`` drawn as a marker;
    ``fp_unit`` names what false positives are counted per in the x label (e.g. "volume").
    """
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4))
    else:
        fig = ax.figure
    for name, c in curves.items():
        if hasattr(c, "fp_avg"):
            fp, se = np.asarray(c.fp_avg, float), np.asarray(c.sensitivity, float)
        else:
            fp, se = (np.asarray(v, float) for v in c)
        if max_fp is not None and len(fp) and fp[-1] < max_fp:  # flat beyond the end-point
            fp, se = np.append(fp, max_fp), np.append(se, se[-1])
        (line,) = ax.plot(fp, se, label=name, lw=1.5)
        if operating_points and name in operating_points:
            ofp, ose = operating_points[name]
            ax.plot([ofp], [ose], marker="o", color=line.get_color(), ms=5)
    if max_fp is not None:
        ax.set_xlim(0, max_fp)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"average false positives per {fp_unit}")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save_figure(fig: Any, path: str, *, dpi: int = 80) -> None:
    """Save ``fig`` to ``path`` (PNG by extension) atomically and close it."""
    import os

    from wsdet._io import atomic_write

    plt = _plt()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
