"""Markdown tables and figures of the reproduction studies."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsdet.detector import Detector
from wsdet.experiments.common import METHOD_ARCHITECTURE, METHOD_LABELS, STUCK_FRACTION

__all__ = ["lesions_markdown", "mnist_figures", "mnist_markdown"]

_NO_FIGURES = "the study's figures need matplotlib: pip install 'wsdet[viz]' (skipped)"


def _pm(b: dict[str, Any] | None, scale: float = 100.0) -> str:
    if not b:
        return "—"
    return f"{scale * b['estimate']:.1f} ± {scale * b['sd']:.1f}"


def _minutes(info: dict[str, Any]) -> str:
    return f"{info.get('train_seconds', float('nan')) / 60:.1f}"


def _training_table(networks: dict[str, dict[str, Any]]) -> list[str]:
    """One row per trained network, and a line per run restarted off the plateau."""
    out = [
        "| network | seed | epochs | best epoch | stop | best val loss (constant) | device "
        "| minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    restarts: list[str] = []
    for name, info in networks.items():
        attempts = info.get("attempts") or [{}]
        seed = attempts[-1].get("seed", "")
        loss = f"{info.get('best_val_loss', float('nan')):.4g}"
        if "constant_val_loss" in info:
            loss += f" ({info['constant_val_loss']:.4g})" + (" stuck" if info["stuck"] else "")
        out.append(
            f"| {name} | {seed} | {info['epochs']} | {info['best_epoch']} | {info['stop_reason']} "
            f"| {loss} | {info.get('device', 'cpu')} | {_minutes(info)} |"
        )
        for a in attempts[:-1]:
            restarts.append(
                f"- {name}, seed {a['seed']}: best val loss {a['best_val_loss']:.4g}, above "
                f"{STUCK_FRACTION:g}× the constant's {info['constant_val_loss']:.4g}: trained again"
            )
    if restarts:
        out += ["", "Runs that stayed on the plateau of constant outputs were restarted:", ""]
        out += restarts
    return out


def _seed_table(results: dict[str, Any]) -> list[str]:
    """FAUC of every method and objective per training seed, mean ± sd over the seeds, and
    in how many seeds regression beat classification."""
    by_seed: dict[str, dict[str, float]] = results.get("fauc_by_seed") or {}
    seeds = sorted({int(k) for v in by_seed.values() for k in v})
    if len(seeds) < 2:
        return []
    out = [
        "",
        f"The same networks trained from {len(seeds)} seeds (initialisation and batch order; "
        "same data and test images): FAUC ×100 per seed "
        f"({', '.join(map(str, seeds))}), mean ± sd over the seeds:",
        "",
        "| method | regression | mean ± sd | classification | mean ± sd "
        "| seeds where regression > classification |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def cells(label: str) -> tuple[str, str, list[float]]:
        vals = [by_seed.get(label, {}).get(str(s)) for s in seeds]
        text = " / ".join("—" if v is None else f"{100 * v:.1f}" for v in vals)
        got = [v for v in vals if v is not None]
        if len(got) < 2:
            return text, "—", got
        return text, f"{100 * np.mean(got):.1f} ± {100 * np.std(got, ddof=1):.1f}", got

    for method in results["config"]["methods"]:
        r_text, r_ms, _ = cells(f"{method}-regression")
        c_text, c_ms, _ = cells(f"{method}-classification")
        pairs = [
            (by_seed.get(f"{method}-regression", {}).get(str(s)),
             by_seed.get(f"{method}-classification", {}).get(str(s)))
            for s in seeds
        ]  # fmt: skip
        both = [(a, b) for a, b in pairs if a is not None and b is not None]
        wins = f"{sum(a > b for a, b in both)} of {len(both)}" if both else "—"
        out.append(f"| {METHOD_LABELS[method]} | {r_text} | {r_ms} | {c_text} | {c_ms} | {wins} |")
    return out


def _per(ev: dict[str, Any] | None, num: str, den: str, fmt: str) -> str:
    """``ev[num] / ev[den]`` formatted, or "—"."""
    if not ev or not ev.get(den):
        return "—"
    return fmt.format(ev[num] / ev[den])


def _interim(results: dict[str, Any]) -> list[str]:
    missing = results.get("missing") or []
    if not missing:
        return []
    return [
        f"**Interim report**: {len(missing)} network(s) still to train "
        f"({', '.join(missing)}); the methods that need them show —.",
        "",
    ]


def _comparisons(results: dict[str, Any]) -> list[str]:
    lines = [
        "| comparison (FAUC ×100) | difference ± sd | 95% CI | p |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in results.get("comparisons", {}).items():
        ci = c.get("ci")
        ci_s = f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else "—"
        lines.append(
            f"| {name} | {100 * c['difference']:+.1f} ± {100 * c['sd']:.1f} | {ci_s} "
            f"| {c['p_value']:.3g} |"
        )
    return lines


def mnist_markdown(results: dict[str, Any]) -> str:
    """The MNIST tables: FAUC per method and objective (paper Fig. 5), operating points,
    paired comparisons, and the training runs."""
    cfg = results["config"]
    ev = results["evaluations"]
    out = [
        f"### MNIST, target digit {cfg['digit']}",
        "",
        *_interim(results),
        f"FAUC over 0–{cfg['max_fp']:g} FP/image (×100) ± bootstrap sd "
        f"({cfg['n_bootstrap']} replicates), {cfg['n_test']} balanced test images, NMS size "
        f"{cfg['nms_size']}, one-to-one matching with the 28×28-cell rule.",
        "",
        "| method | regression FAUC | classification FAUC | regression: sensitivity / FP "
        "per image at the operating point | regression count MAE | candidates/image "
        "(regression / classification) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in cfg["methods"]:
        r = ev.get(f"{method}-regression")
        c = ev.get(f"{method}-classification")
        op = (r or {}).get("operating_point")
        op_s = (
            f"{op['sensitivity']['estimate']:.3f} / {op['fp_avg']['estimate']:.3f}" if op else "—"
        )
        mae = f"{r['count_mae']:.3f}" if r and "count_mae" in r else "—"
        cand = (
            f"{_per(r, 'n_detections', 'n_images', '{:.1f}')} / "
            f"{_per(c, 'n_detections', 'n_images', '{:.1f}')}"
        )
        out.append(
            f"| {METHOD_LABELS[method]} | {_pm(r and r['fauc'])} | {_pm(c and c['fauc'])} "
            f"| {op_s} | {mae} | {cand} |"
        )
    p400 = ev.get("gp_unet-regression-paper400")
    c400 = ev.get("gp_unet-classification-paper400")
    if p400 or c400:
        op = (p400 or {}).get("operating_point")
        op_s = (
            f"{op['sensitivity']['estimate']:.3f} / {op['fp_avg']['estimate']:.3f}" if op else "—"
        )
        mae = f"{p400['count_mae']:.3f}" if p400 and "count_mae" in p400 else "—"
        out.append(
            f"| GP-Unet, paper's 400 fixed images + augmentation | {_pm(p400 and p400['fauc'])} "
            f"| {_pm(c400 and c400['fauc'])} | {op_s} | {mae} "
            f"| {_per(p400, 'n_detections', 'n_images', '{:.1f}')} / "
            f"{_per(c400, 'n_detections', 'n_images', '{:.1f}')} |"
        )
    out += ["", "Paired bootstrap differences (same resampled images for both):", ""]
    out += _comparisons(results)
    out += _seed_table(results)
    out += [
        "",
        "Training runs:",
        "",
    ]
    out += _training_table(results["networks"])
    return "\n".join(out) + "\n"


def lesions_markdown(results: dict[str, Any]) -> str:
    """The 3D tables: FAUC (paper Table 1), FP/image and sensitivity at the operating point
    (Tables 2–3), per setting."""
    cfg = results["config"]
    settings = list(results["evaluations"])
    methods = [m for m in cfg["methods"]]
    labels = dict(METHOD_LABELS, chance="Chance (random map)")
    if any("chance" in ev for ev in results["evaluations"].values()):
        methods.append("chance")
    out = [
        *_interim(results),
        "FAUC over 0–15 FP/volume (×100) ± bootstrap sd; operating point = top-n with n "
        "the rounded predicted count (for the intensity baseline, the base CNN's count; for "
        "the chance reference, NMS on uniform noise inside the region, the training mean "
        "count). Candidates: the local maxima left after non-maximum suppression (negatives "
        "clipped); with all of them taken, the FROC curve ends at the last row's "
        "sensitivity.",
        "",
        "| setting | " + " | ".join(labels[m] for m in methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]
    for s in settings:
        ev = results["evaluations"][s]
        out.append(
            f"| {s} FAUC | "
            + " | ".join(_pm(ev[m]["fauc"]) if m in ev else "—" for m in methods)
            + " |"
        )
        fp = []
        se = []
        cand = []
        ceil = []
        for m in methods:
            op = ev.get(m, {}).get("operating_point")
            fp.append(f"{op['fp_avg']['estimate']:.2f}" if op else "—")
            se.append(f"{op['sensitivity']['estimate']:.3f}" if op else "—")
            cand.append(_per(ev.get(m), "n_detections", "n_images", "{:.1f}"))
            ceil.append(_per(ev.get(m), "n_tp", "n_targets", "{:.3f}"))
        out.append(f"| {s} FP/volume | " + " | ".join(fp) + " |")
        out.append(f"| {s} sensitivity | " + " | ".join(se) + " |")
        out.append(f"| {s} candidates/volume | " + " | ".join(cand) + " |")
        out.append(f"| {s} sensitivity, all candidates | " + " | ".join(ceil) + " |")
    out += ["", "Paired bootstrap differences:", ""]
    out += _comparisons(results)
    out += [
        "",
        "Training runs:",
        "",
    ]
    out += _training_table(results["networks"])
    return "\n".join(out) + "\n"


def _maps(
    networks: dict[tuple[str, str], nn.Module], methods: list[str], objective: str, x: torch.Tensor
) -> dict[str, np.ndarray]:
    out = {}
    for m in methods:
        model = networks[(METHOD_ARCHITECTURE[m], objective)]
        amap = Detector(model, method=m).attention(x)[0].clamp_min(0)
        out[METHOD_LABELS[m]] = amap.float().cpu().numpy()
    return out


def mnist_figures(
    results: dict[str, Any],
    curves: dict[str, Any],
    networks: dict[tuple[str, str], nn.Module],
    test: Any,
    out: Path,
    cfg: Any,
) -> None:
    """FROC curves, Fig. 3 (every method on one image), Fig. 4 (regression vs
    classification GP-Unet on an image with and one without the digit)."""
    try:
        import matplotlib.pyplot as plt

        from wsdet.viz import attention_grid, overlay, plot_froc, save_figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        warnings.warn(_NO_FIGURES, stacklevel=2)
        return
    for objective in cfg.objectives:
        sel = {
            METHOD_LABELS[k.split("-")[0]] + ("" if "paper400" not in k else " (400 fixed)"): v
            for k, v in curves.items()
            if f"-{objective}" in k
        }
        if sel:
            fig = plot_froc(sel, max_fp=cfg.max_fp, title=f"MNIST digit {cfg.digit}, {objective}")
            save_figure(fig, str(out / f"froc_{objective}.png"))
    counts = test.counts.numpy()
    pos = int(np.argmax(counts))
    neg = int(np.flatnonzero(counts == 0)[0]) if (counts == 0).any() else 0
    x = test.images[pos : pos + 1]
    shown = [m for m in cfg.methods if (METHOD_ARCHITECTURE[m], "regression") in networks]
    if shown:
        maps = _maps(networks, shown, "regression", x)
        fig = attention_grid(x[0, 0], maps, gt=test.centers[pos], ncols=4, panel_size=2.6)
        save_figure(fig, str(out / "fig3_methods.png"))
    if "gp_unet" in cfg.methods and all(
        ("gpunet", o) in networks for o in ("regression", "classification")
    ):
        fig, axes = plt.subplots(2, 3, figsize=(10, 4.6))
        for row, i in enumerate((neg, pos)):
            xi = test.images[i : i + 1]
            overlay(
                xi[0, 0],
                gt=test.centers[i],
                ax=axes[row, 0],
                title=f"image, {int(counts[i])} target digits",
            )
            for col, obj in enumerate(("classification", "regression"), start=1):
                amap = _maps(networks, ["gp_unet"], obj, xi)["GP-Unet"]
                axes[row, col].imshow(amap, cmap="jet")
                axes[row, col].set_axis_off()
                axes[row, col].set_title(f"GP-Unet, {obj}", fontsize=9)
        fig.tight_layout()
        save_figure(fig, str(out / "fig4_regression_vs_classification.png"))


def lesions_figures(
    curves: dict[str, dict[str, Any]], examples: dict[str, Any], out: Path, cfg: Any
) -> None:
    """FROC curves per setting (paper Fig. 6) and one slice per setting with every
    method's map (Fig. 7–8)."""
    try:
        import matplotlib.pyplot as plt

        from wsdet.viz import attention_grid, plot_froc, save_figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        warnings.warn(_NO_FIGURES, stacklevel=2)
        return
    n = len(curves)
    if n:
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4), squeeze=False)
        for ax, (setting, c) in zip(axes[0], curves.items(), strict=True):
            plot_froc(c, max_fp=cfg.max_fp, ax=ax, title=setting, fp_unit="volume")
        fig.tight_layout()
        save_figure(fig, str(out / "froc_lesions3d.png"))
    for setting, (test, nets) in examples.items():
        counts = test.counts.numpy()
        i = int(np.argmax(counts))
        x = test.images[i : i + 1]
        pts = np.asarray(test.points[i], float).reshape(-1, 3)
        z = (
            int(test.annotated_slice[i])
            if test.annotated_slice is not None
            else int(np.round(pts[0, 0]))
            if len(pts)
            else x.shape[2] // 2
        )
        maps = {}
        for m in cfg.methods:
            if METHOD_ARCHITECTURE[m] not in nets:  # interim report: not trained yet
                continue
            model = nets[METHOD_ARCHITECTURE[m]]
            opts = (
                {"fuse_intensity": True}
                if m == "gp_unet_no_residual" and cfg.fuse_intensity
                else {}
            )
            amap = Detector(model, method=m, **opts).attention(x)[0, z].clamp_min(0)
            maps[METHOD_LABELS[m]] = amap.float().cpu().numpy()
        gt = pts[np.abs(pts[:, 0] - z) <= 1][:, 1:] if len(pts) else None
        fig = attention_grid(x[0, 0, z], maps, gt=gt, ncols=4, panel_size=2.4)
        save_figure(fig, str(out / f"slices_{setting}.png"))
