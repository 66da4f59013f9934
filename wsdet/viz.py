"""Figures: attention overlays, method grids, 3D views and FROC curves (``viz`` extra).

matplotlib is imported lazily, so ``import wsdet`` never requires it. Every function
draws on a given axes (or a new figure) and returns the figure; saving is the caller's.
Points are index coordinates in array axis order, as everywhere in wsdet: a 2D point
``(row, col)`` is drawn at ``x=col, y=row``.

Maps are drawn with a colour bar. A signed map (negative and positive values) gets a
diverging colormap centred on zero (``RdBu_r``, limits ``+-max|map|``); a non-negative
one a perceptually uniform sequential colormap (``magma``) from 0. Never ``jet``.

3D volumes (:func:`orthogonal_slices`, :func:`mip`) are drawn in three panels named by
the world axis each array axis runs along (from the affine): axial (fixed S-I), coronal
(fixed A-P) and sagittal (fixed R-L); each panel's pixels have the voxels' true aspect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from wsdet._checks import PathLike, check_bool, check_choice, check_float, check_int, check_path

if TYPE_CHECKING:
    from wsdet.viz3d import mip, orthogonal_slices

__all__ = [
    "FROCBand",
    "attention_grid",
    "froc_band",
    "map_style",
    "mip",
    "orthogonal_slices",
    "overlay",
    "plot_froc",
    "save_figure",
]


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


def _array(a: Any, name: str, ndim: int = 2) -> np.ndarray:
    """``a`` (tensor or array) as a float array of ``ndim`` dims after squeezing."""
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    arr = np.squeeze(np.asarray(a, dtype=float))
    if arr.ndim != ndim:
        what = "a 2D image" if ndim == 2 else f"a {ndim}D volume"
        raise ValueError(f"{name} must be {what} (after squeezing), got shape {arr.shape}")
    return arr


def _np2d(a: Any, name: str) -> np.ndarray:
    return _array(a, name, 2)


#: How targets (ground truth) and detections are marked, in every figure.
_TARGET_MARKS: dict[str, Any] = {
    "s": 80,
    "facecolors": "none",
    "edgecolors": "lime",
    "linewidths": 1.5,
}
_DETECTION_MARKS: dict[str, Any] = {"s": 40, "marker": "x", "c": "red", "linewidths": 1.5}


def _mark(ax: Any, xy: tuple[np.ndarray, np.ndarray], style: dict[str, Any], **kw: Any) -> None:
    """Scatter points ``(x, y)`` on ``ax`` with ``style`` (nothing when there are none)."""
    if len(xy[0]):
        ax.scatter(*xy, **{**style, **kw})


def _same_shape(name: str, a: np.ndarray, image: np.ndarray) -> None:
    if a.shape != image.shape:
        raise ValueError(
            f"{name} has shape {a.shape} but image has {image.shape}: expected the image's shape"
        )


def _image_and_map(image: Any, amap: Any, ndim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` and the optional ``amap`` as ``ndim``-D float arrays of the same shape."""
    img = _array(image, "image", ndim)
    if amap is None:
        return img, None
    m = _array(amap, "amap", ndim)
    _same_shape("amap", m, img)
    return img, m


def _opacity(alpha: object) -> float:
    return check_float("alpha", alpha, probability=True)


def _optional_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None; got {type(value).__name__} {value!r}")


def _mapping(name: str, value: object, *, optional: bool = False) -> Mapping[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping name -> value; got {type(value).__name__}")
    return value


def _pts(p: Any, name: str, ndim: int = 2) -> np.ndarray:
    """``(k, ndim)`` points (``None`` or empty: none)."""
    if p is None:
        return np.zeros((0, ndim))
    arr = np.asarray(p, dtype=float)
    if arr.size == 0:
        return np.zeros((0, ndim))
    if arr.ndim != 2 or arr.shape[1] != ndim:
        what = "(row, col) points" if ndim == 2 else "voxel indices"
        raise ValueError(f"{name} must be (k, {ndim}) {what}, got shape {arr.shape}")
    return arr


def map_style(amap: Any, cmap: str | None = None) -> dict[str, Any]:
    """``imshow`` keywords for a map: colormap and limits (see the module docstring).

    Examples
    --------
    >>> map_style(np.array([-1.0, 3.0]))
    {'cmap': 'RdBu_r', 'vmin': -3.0, 'vmax': 3.0}
    >>> map_style(np.array([0.0, 2.0]))
    {'cmap': 'magma', 'vmin': 0.0, 'vmax': 2.0}
    """
    m = np.asarray(amap, dtype=float)
    lo = float(np.nanmin(m)) if m.size else 0.0
    hi = float(np.nanmax(m)) if m.size else 1.0
    if lo < 0:
        v = max(abs(lo), abs(hi)) or 1.0
        return {"cmap": cmap or "RdBu_r", "vmin": -v, "vmax": v}
    return {"cmap": cmap or "magma", "vmin": 0.0, "vmax": hi if hi > 0 else 1.0}


def _show_map(
    ax: Any, m: np.ndarray, colorbar: bool, *, alpha: float | None = None, cmap: str | None = None
) -> None:
    """Draw the 2D map ``m`` on ``ax`` in its :func:`map_style`, with its colour bar."""
    im = ax.imshow(m, alpha=alpha, interpolation="nearest", **map_style(m, cmap))
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=7)


def overlay(
    image: Any,
    amap: Any = None,
    *,
    points: Any = None,
    gt: Any = None,
    ax: Any = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str | None = None,
    colorbar: bool = True,
) -> Any:
    """Draw an image, optionally its attention map (semi-transparent), detections (red
    crosses) and ground-truth points (green circles).

    ``cmap=None`` picks by the map's sign (:func:`map_style`); ``colorbar`` adds the map's
    colour bar. Returns the figure.
    """
    alpha = _opacity(alpha)
    colorbar = check_bool("colorbar", colorbar)
    _optional_str("title", title)
    img, m = _image_and_map(image, amap, 2)
    g, p = _pts(gt, "gt"), _pts(points, "points")
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4 * img.shape[0] / max(img.shape[1], 1)))
    else:
        fig = ax.figure
    ax.imshow(img, cmap="gray", interpolation="nearest")
    if m is not None:
        _show_map(ax, m, colorbar, alpha=alpha, cmap=cmap)
    _mark(ax, (g[:, 1], g[:, 0]), _TARGET_MARKS)  # scatter takes (x, y) = (col, row)
    _mark(ax, (p[:, 1], p[:, 0]), _DETECTION_MARKS)
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
    colorbar: bool = True,
) -> Any:
    """One panel with the image (and ``gt``) and one panel per named map (paper Fig. 3).

    Each map has its own colour scale (:func:`map_style`) and, with ``colorbar``, bar.

    Parameters
    ----------
    image : array_like or Tensor
        A 2D image (squeezed).
    maps : mapping of str to array_like
        Name -> map of the image's shape, one panel each.
    points : mapping of str to array_like, optional
        Name (one of ``maps``) -> ``(k, 2)`` detections drawn on that map's panel.
    gt : array_like, optional
        ``(k, 2)`` ground-truth points drawn on the image panel.
    ncols : int
        Panels per row (at least 1).
    panel_size : float
        Panel width in inches (> 0).
    colorbar : bool
        A colour bar beside each map.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a map does not have the image's shape, ``points`` names a map not in ``maps``,
        or a scalar option is out of range.
    TypeError
        If ``maps`` or ``points`` is not a mapping, or a scalar option has the wrong type.
    """
    maps = _mapping("maps", maps)
    marks = _mapping("points", points, optional=True)
    unknown = sorted(set(marks) - set(maps))
    if unknown:
        raise ValueError(f"points names maps not in maps: {unknown}; maps has {list(maps)}")
    ncols = check_int("ncols", ncols, minimum=1)
    panel_size = check_float("panel_size", panel_size, positive=True)
    colorbar = check_bool("colorbar", colorbar)
    img = _np2d(image, "image")
    arrays = {name: _np2d(m, f"maps[{name!r}]") for name, m in maps.items()}
    for name, mm in arrays.items():
        _same_shape(f"maps[{name!r}]", mm, img)
    plt = _plt()
    n = 1 + len(arrays)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    aspect = img.shape[0] / max(img.shape[1], 1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, panel_size * aspect * nrows + 0.4), squeeze=False
    )
    flat = axes.ravel()
    overlay(img, gt=gt, ax=flat[0], title="image")
    for ax, (name, mm) in zip(flat[1:], arrays.items(), strict=False):
        _show_map(ax, mm, colorbar)
        p = _pts(marks.get(name), f"points[{name!r}]")
        _mark(ax, (p[:, 1], p[:, 0]), _DETECTION_MARKS, s=30, c="lime", linewidths=1.2)
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class FROCBand:
    """A pointwise bootstrap band of a FROC curve (see :func:`froc_band`).

    Attributes
    ----------
    fp : numpy.ndarray
        ``(G,)`` false positives per image where the band is read.
    lower, upper : numpy.ndarray
        ``(G,)`` percentile limits of the replicates' sensitivities.
    level : float
        E.g. 0.95 for the 2.5th and 97.5th percentiles.
    """

    fp: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float


def froc_band(
    results: Sequence[Any],
    *,
    fp: Sequence[float] | None = None,
    max_fp: float = 8.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    interpolation: Literal["linear", "step"] = "linear",
) -> FROCBand:
    """Percentile band of a FROC curve over bootstrap replicates of the images.

    The images are resampled as in :func:`wsdet.metrics.bootstrap` (multinomial weights,
    seeded); every replicate's curve is read at each ``fp`` (as
    :func:`wsdet.metrics.sensitivity_at_fp`), and the band is the pointwise percentile
    interval. Replicates without targets are left out.

    Parameters
    ----------
    results : sequence of wsdet.metrics.MatchResult
        One per image (:func:`wsdet.metrics.match_images`).
    fp : sequence of float, optional
        Where to read the curves; default 200 points from 0 to ``max_fp``.
    max_fp : float
        End of the default grid.
    n_bootstrap, seed : int
        Replicates and seed.
    level : float
        Band level in (0, 1).
    interpolation : {"linear", "step"}
        How the curves are read.
    """
    from wsdet.metrics import bootstrap_weights, sensitivity_at_fp, weighted_froc_curves

    check_float("level", level, level=True)
    if fp is None:
        grid = np.linspace(0.0, check_float("max_fp", max_fp, positive=True), 200)
    else:
        grid = np.asarray(fp, float)
    if grid.ndim != 1 or grid.size == 0 or not (grid >= 0).all():
        raise ValueError("fp must be a non-empty 1D sequence of non-negative numbers")
    w = bootstrap_weights(len(results), B=n_bootstrap, seed=seed)
    curves = weighted_froc_curves(results, w)
    sens = np.stack(
        [np.asarray(sensitivity_at_fp(curves, float(f), interpolation)) for f in grid], axis=1
    )
    ok = np.isfinite(sens).all(axis=1)
    if not ok.any():
        raise ValueError("no bootstrap replicate holds a target: the band is undefined")
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(sens[ok], [q, 100 - q], axis=0)
    return FROCBand(fp=grid, lower=lo, upper=hi, level=float(level))


#: LUNA16's FP budgets, the ticks of a log-x FROC plot.
_LOG_TICKS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _curve(name: str, c: Any) -> tuple[np.ndarray, np.ndarray]:
    """``curves[name]`` as ``(fp_avg, sensitivity)`` float arrays of one length."""
    try:
        if hasattr(c, "fp_avg"):
            fp, se = np.asarray(c.fp_avg, float), np.asarray(c.sensitivity, float)
        else:
            fp, se = (np.asarray(v, float) for v in c)
    except (TypeError, ValueError, AttributeError):
        fp = se = np.zeros((0, 0))
    if fp.ndim != 1 or fp.shape != se.shape:
        raise ValueError(
            f"curves[{name!r}] must be a FROC (fp_avg, sensitivity) or a pair of 1D "
            f"sequences of one length; got {c!r:.80}"
        )
    return fp, se


def _point(name: str, op: Any) -> tuple[list[float], list[float]]:
    """``operating_points[name]`` as ``([fp], [sensitivity])``."""
    try:
        fp, se = (float(v) for v in op)
    except (TypeError, ValueError):
        raise ValueError(
            f"operating_points[{name!r}] must be two numbers (fp_avg, sensitivity); got {op!r}"
        ) from None
    return [fp], [se]


def plot_froc(
    curves: Mapping[str, Any],
    *,
    max_fp: float | None = None,
    ax: Any = None,
    operating_points: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
    fp_unit: str = "image",
    bands: Mapping[str, FROCBand] | None = None,
    log_x: bool = False,
    min_fp: float = 0.125,
    legend: str = "outside",
) -> Any:
    """FROC curves of several methods, with optional bootstrap bands.

    Parameters
    ----------
    curves : mapping
        Name -> curve: an object with ``fp_avg`` and ``sensitivity`` arrays (a
        :class:`wsdet.metrics.FROC`) or a tuple ``(fp_avg, sensitivity)``. A curve ending
        before ``max_fp`` is extended flat (the metrics' convention).
    max_fp : float, optional
        The x range ends here.
    ax : matplotlib axes, optional
        Where to draw (default: a new figure).
    operating_points : mapping, optional
        Name -> ``(fp_avg, sensitivity)`` drawn as a marker in the curve's colour.
    title : str, optional
    fp_unit : str
        What false positives are counted per, in the x label (e.g. "volume").
    bands : mapping of str to FROCBand, optional
        Name -> :func:`froc_band`, drawn as a shaded band in the curve's colour.
    log_x : bool
        Logarithmic x axis from ``min_fp`` (LUNA16 plots: ticks 1/8 ... 8).
    min_fp : float
        Left end of a log x axis.
    legend : {"outside", "inside", "none"}
        ``"outside"``: right of the axes, never over the curves.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If ``curves``, ``bands`` or ``operating_points`` is not a mapping, a band is not a
        :class:`FROCBand`, or a scalar option has the wrong type.
    ValueError
        If a curve is not two 1D sequences of one length, ``bands`` or
        ``operating_points`` name a curve not in ``curves``, an operating point is not two
        numbers, or a scalar option is out of range.
    """
    check_choice("legend", legend, ("outside", "inside", "none"))
    lines = {name: _curve(name, c) for name, c in _mapping("curves", curves).items()}
    shaded = _mapping("bands", bands, optional=True)
    marked = _mapping("operating_points", operating_points, optional=True)
    for what, named in (("bands", shaded), ("operating_points", marked)):
        unknown = sorted(set(named) - set(lines))
        if unknown:
            raise ValueError(f"{what} names curves not in curves: {unknown}")
    for name, b in shaded.items():
        if not isinstance(b, FROCBand):
            raise TypeError(f"bands[{name!r}] must be a FROCBand; got {type(b).__name__}")
    points = {name: _point(name, op) for name, op in marked.items()}
    if max_fp is not None:
        max_fp = check_float("max_fp", max_fp, positive=True)
    min_fp = check_float("min_fp", min_fp, positive=True)
    log_x = check_bool("log_x", log_x)
    if log_x and max_fp is not None and max_fp <= min_fp:
        raise ValueError(f"max_fp must exceed min_fp ({min_fp}) on a log x axis; got {max_fp}")
    if not isinstance(fp_unit, str):
        raise TypeError(f"fp_unit must be a str; got {type(fp_unit).__name__}")
    _optional_str("title", title)
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.2, 4) if legend == "outside" else (5, 4))
    else:
        fig = ax.figure
    for name, (fp, se) in lines.items():
        if max_fp is not None and len(fp) and fp[-1] < max_fp:  # flat beyond the end-point
            fp, se = np.append(fp, max_fp), np.append(se, se[-1])
        if log_x:
            keep = fp > 0
            fp, se = fp[keep], se[keep]
        (line,) = ax.plot(fp, se, label=name, lw=1.5)
        if name in shaded:
            b = shaded[name]
            sel = b.fp > 0 if log_x else np.ones(b.fp.shape, bool)
            ax.fill_between(
                b.fp[sel],
                b.lower[sel],
                b.upper[sel],
                color=line.get_color(),
                alpha=0.2,
                lw=0,
                label=f"{name} {100 * b.level:g}% band",
            )
        if name in points:
            ax.plot(*points[name], marker="o", color=line.get_color(), ms=5)
    if log_x:
        ax.set_xscale("log")
        hi = max_fp if max_fp is not None else _LOG_TICKS[-1]
        ax.set_xlim(min_fp, hi)
        ticks = [t for t in _LOG_TICKS if min_fp <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    elif max_fp is not None:
        ax.set_xlim(0, max_fp)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"average false positives per {fp_unit}")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    if legend == "outside":
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    elif legend == "inside":
        ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save_figure(fig: Any, path: PathLike, *, dpi: int = 80) -> None:
    """Save ``fig`` to ``path`` (PNG by extension) atomically and close it."""
    from wsdet._io import atomic_write

    target = check_path("path", path)
    dpi = check_int("dpi", dpi, minimum=1)
    plt = _plt()
    target.absolute().parent.mkdir(parents=True, exist_ok=True)
    fmt = target.suffix.lstrip(".") or "png"
    try:
        atomic_write(target, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def __getattr__(name: str) -> Any:
    """``mip`` and ``orthogonal_slices`` live in :mod:`wsdet.viz3d` (which uses this module)."""
    if name in ("mip", "orthogonal_slices"):
        from wsdet import viz3d

        return getattr(viz3d, name)
    raise AttributeError(f"module 'wsdet.viz' has no attribute {name!r}")
