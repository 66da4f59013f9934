"""Figures of the reproduction studies, drawn from FROC curves and attention maps.

The runner computes every map a figure shows once
(:func:`~wsdet.experiments.runner.figure_maps`) and passes them here, keyed by
``(RunKey, test image index)``; nothing here runs a network.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsdet.experiments.common import METHOD_LABELS
from wsdet.experiments.keys import RunKey
from wsdet.train import Objective

__all__ = [
    "FIG4_OBJECTIVES",
    "lesion_example",
    "lesions_figures",
    "mnist_examples",
    "mnist_figures",
]

_NO_FIGURES = "the study's figures need matplotlib: pip install 'wsdet[viz]' (skipped)"
#: Display names of the runs, the chance reference included.
DISPLAY: dict[str, str] = {
    **METHOD_LABELS,
    "chance": "Chance (random map)",
    "log": "LoG (training-free)",
}

#: The columns of Fig. 4: GP-Unet trained for classification, then for regression.
FIG4_OBJECTIVES: tuple[Objective, Objective] = ("classification", "regression")

Maps = Mapping[tuple[RunKey, int], np.ndarray]


def mnist_examples(counts: np.ndarray) -> tuple[int, int]:
    """The MNIST figures' test images: the one with most target digits, and the first
    without any (the first image when every image holds one).

    >>> mnist_examples(np.array([1, 0, 3, 0]))
    (2, 1)
    """
    pos = int(np.argmax(counts))
    neg = int(np.flatnonzero(counts == 0)[0]) if (counts == 0).any() else 0
    return pos, neg


def lesion_example(test: Any) -> tuple[int, int]:
    """The 3D figures' volume (the one with most lesions) and slice: the annotated slice,
    else that of its first lesion, else the middle one."""
    i = int(np.argmax(test.counts.numpy()))
    pts = np.asarray(test.points[i], float).reshape(-1, 3)
    if test.annotated_slice is not None:
        return i, int(test.annotated_slice[i])
    return i, int(np.round(pts[0, 0])) if len(pts) else test.images.shape[2] // 2


def _froc_label(key: RunKey) -> str:
    return DISPLAY[key.method] + (" (400 fixed)" if key.variant == "paper400" else "")


def mnist_figures(curves: Mapping[RunKey, Any], maps: Maps, test: Any, out: Path, cfg: Any) -> None:
    """FROC curves, Fig. 3 (every method on one image), Fig. 4 (regression vs
    classification GP-Unet on an image with and one without the digit)."""
    try:
        import matplotlib.pyplot as plt

        from wsdet.viz import attention_grid, overlay, plot_froc, save_figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        warnings.warn(_NO_FIGURES, stacklevel=2)
        return
    for objective in cfg.objectives:
        sel = {_froc_label(k): v for k, v in curves.items() if k.objective == objective}
        if sel:
            fig = plot_froc(sel, max_fp=cfg.max_fp, title=f"MNIST digit {cfg.digit}, {objective}")
            save_figure(fig, str(out / f"froc_{objective}.png"))
    counts = test.counts.numpy()
    pos, neg = mnist_examples(counts)
    x = test.images[pos : pos + 1]
    shown = {
        METHOD_LABELS[m]: maps[(RunKey(m, "regression"), pos)]
        for m in cfg.methods
        if (RunKey(m, "regression"), pos) in maps
    }
    if shown:
        fig = attention_grid(x[0, 0], shown, gt=test.centers[pos], ncols=4, panel_size=2.6)
        save_figure(fig, str(out / "fig3_methods.png"))
    gp = [(RunKey("gp_unet", o), i) for i in (neg, pos) for o in FIG4_OBJECTIVES]
    if "gp_unet" in cfg.methods and all(k in maps for k in gp):
        fig, axes = plt.subplots(2, 3, figsize=(10, 4.6))
        for row, i in enumerate((neg, pos)):
            xi = test.images[i : i + 1]
            overlay(
                xi[0, 0],
                gt=test.centers[i],
                ax=axes[row, 0],
                title=f"image, {int(counts[i])} target digits",
            )
            for col, obj in enumerate(FIG4_OBJECTIVES, start=1):
                axes[row, col].imshow(maps[(RunKey("gp_unet", obj), i)], cmap="jet")
                axes[row, col].set_axis_off()
                axes[row, col].set_title(f"GP-Unet, {obj}", fontsize=9)
        fig.tight_layout()
        save_figure(fig, str(out / "fig4_regression_vs_classification.png"))


def lesions_figures(
    curves: Mapping[RunKey, Any], maps: Maps, tests: Mapping[str, Any], out: Path, cfg: Any
) -> None:
    """FROC curves per setting (paper Fig. 6) and one slice per setting with every
    method's map (Fig. 7–8). ``tests``: the test set of each setting, in order."""
    try:
        import matplotlib.pyplot as plt

        from wsdet.viz import attention_grid, plot_froc, save_figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        warnings.warn(_NO_FIGURES, stacklevel=2)
        return
    n = len(tests)
    if n:
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4), squeeze=False)
        for ax, setting in zip(axes[0], tests, strict=True):
            c = {DISPLAY[k.method]: v for k, v in curves.items() if k.variant == setting}
            plot_froc(c, max_fp=cfg.max_fp, ax=ax, title=setting, fp_unit="volume")
        fig.tight_layout()
        save_figure(fig, str(out / "froc_lesions3d.png"))
    for setting, test in tests.items():
        i, z = lesion_example(test)
        x = test.images[i : i + 1]
        pts = np.asarray(test.points[i], float).reshape(-1, 3)
        shown = {
            METHOD_LABELS[m]: maps[(RunKey(m, variant=setting), i)][z]
            for m in cfg.methods
            if (RunKey(m, variant=setting), i) in maps  # interim report: not trained yet
        }
        gt = pts[np.abs(pts[:, 0] - z) <= 1][:, 1:] if len(pts) else None
        fig = attention_grid(x[0, 0, z], shown, gt=gt, ncols=4, panel_size=2.4)
        save_figure(fig, str(out / f"slices_{setting}.png"))
