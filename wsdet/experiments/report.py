"""Markdown tables of the reproduction studies (their figures:
:mod:`wsdet.experiments.figures`, re-exported here).

The tables read ``results`` (as :func:`~wsdet.experiments.run_mnist` returns it, or as
read back from ``results.json``) and build the labels they look up from run keys
(:class:`~wsdet.experiments.keys.RunKey`), never by splitting strings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from wsdet.experiments.common import METHOD_ARCHITECTURE, STUCK_FRACTION
from wsdet.experiments.figures import DISPLAY, lesions_figures, mnist_figures
from wsdet.experiments.keys import RunKey
from wsdet.metrics import compare_seeds

__all__ = ["lesions_figures", "lesions_markdown", "mnist_figures", "mnist_markdown"]


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


def _trained_seed(results: dict[str, Any], key: RunKey) -> int:
    """The seed the network of ``key`` was trained from: the requested one (``key.seed``,
    else the study's), or the seed a restart off the plateau moved it to."""
    requested = results["config"].get("seed", 0) if key.seed is None else key.seed
    network = key.network(METHOD_ARCHITECTURE[key.method])
    attempts = (results.get("networks") or {}).get(network, {}).get("attempts")
    return int(attempts[-1]["seed"]) if attempts else int(requested)


def _seed_cells(
    results: dict[str, Any],
    key: RunKey,
    seeds: list[int],
    by_seed: dict[str, dict[str, float]] | None = None,
) -> tuple[list[float | None], list[str]]:
    """FAUC of ``key`` per seed and its cells (×100; the true seed of a restarted run);
    ``by_seed``: the FAUCs to read (default ``results["fauc_by_seed"]``)."""
    if by_seed is None:
        by_seed = results.get("fauc_by_seed") or {}
    main = results["config"].get("seed", 0)
    vals: list[float | None] = []
    texts: list[str] = []
    for s in seeds:
        v = by_seed.get(key.label, {}).get(str(s))
        true = _trained_seed(results, dataclasses.replace(key, seed=None if s == main else s))
        vals.append(v)
        restart = "" if true == s else f" (seed {true})"
        texts.append("—" if v is None else f"{100 * v:.1f}{restart}")
    return vals, texts


def _mean_sd(vals: list[float | None]) -> str:
    """Mean ± sample sd (×100) of the values present, or "—" for fewer than two."""
    got = [v for v in vals if v is not None]
    if len(got) < 2:
        return "—"
    return f"{100 * np.mean(got):.1f} ± {100 * np.std(got, ddof=1):.1f}"


def _seed_test(a: list[float | None], b: list[float | None]) -> str:
    """Mean paired difference ×100 across the seeds both have, its t-interval and the
    exact sign-flip p-value (with its floor), or "—" for fewer than two seeds."""
    ra: dict[str, float] = {}
    rb: dict[str, float] = {}
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x is not None and y is not None:
            ra[str(i)], rb[str(i)] = x, y
    if len(ra) < 2:
        return "—"
    r = compare_seeds(ra, rb)
    return (
        f"{100 * r.mean:+.1f} ({100 * r.ci[0]:+.1f} to {100 * r.ci[1]:+.1f}), "
        f"p {r.p_value:.2g} (≥ {r.min_p_value:.2g})"
    )


#: Seed-table rows of a variant: its name after the method's.
_VARIANT_ROWS = {"": "", "paper400": ", the paper's 400 fixed grids + augmentation"}


def _seed_table(results: dict[str, Any], field: str = "fauc_by_seed") -> list[str]:
    """FAUC of every method and objective per training seed, mean ± sd over the seeds, and
    in how many seeds regression beat classification. A network restarted off the plateau
    under another seed shows it: ``97.2 (seed 1)`` in the column of seed 0. ``field``:
    ``"fauc_by_seed_dups_ignored"`` gives the table with duplicate hits ignored. Variants
    (the paper-faithful GP-Unet) get a row when they were trained from several seeds."""
    by_seed: dict[str, dict[str, float]] = results.get(field) or {}
    seeds = sorted({int(k) for v in by_seed.values() for k in v})
    if len(seeds) < 2:
        return []
    ignored = field == "fauc_by_seed_dups_ignored"
    out = [
        "",
        f"The same networks trained from {len(seeds)} seeds (initialisation and batch order; "
        "same data and test images): FAUC ×100 per seed "
        f"({', '.join(map(str, seeds))}), mean ± sd over the seeds"
        + (", **duplicate hits ignored** (not counted as false positives):" if ignored else ":"),
        "",
        "| method | regression | mean ± sd | classification | mean ± sd "
        "| seeds where regression > classification | regression − classification, "
        "95% t-CI, permutation p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    restarted = False
    for method in results["config"]["methods"]:
        for variant, suffix in _VARIANT_ROWS.items():
            reg = RunKey(method, "regression", variant)
            cls = RunKey(method, "classification", variant)
            if variant and reg.label not in by_seed and cls.label not in by_seed:
                continue
            r_vals, r_texts = _seed_cells(results, reg, seeds, by_seed)
            c_vals, c_texts = _seed_cells(results, cls, seeds, by_seed)
            restarted |= any("(seed" in t for t in r_texts + c_texts)
            pairs = zip(r_vals, c_vals, strict=True)
            both = [(a, b) for a, b in pairs if a is not None and b is not None]
            wins = f"{sum(a > b for a, b in both)} of {len(both)}" if both else "—"
            out.append(
                f"| {DISPLAY[method]}{suffix} | {' / '.join(r_texts)} | {_mean_sd(r_vals)} "
                f"| {' / '.join(c_texts)} | {_mean_sd(c_vals)} | {wins} "
                f"| {_seed_test(r_vals, c_vals)} |"
            )
    if restarted:
        out += [
            "",
            "(seed N): the network stayed on the plateau of constant outputs under the "
            "column's seed and was trained again from seed N (see the training runs).",
        ]
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


def _lesion_protocol(cfg: dict[str, Any]) -> list[str]:
    """One paragraph stating what the tables rest on: phantoms, normalisation, training caps
    (none for a hand-made config that does not record them)."""
    if not all(k in cfg for k in ("n_train", "lr", "max_epochs", "patience", "max_restarts")):
        return []
    if not cfg.get("zscore"):
        norm = "raw intensities"
    elif cfg.get("zscore_stats") == "train":
        norm = "z-scored inside the region with the training volumes' pooled mean and sd"
    else:
        norm = "each volume z-scored inside the region with its own mean and sd"
    scratch = list(cfg.get("scratch") or [])
    text = (
        f"Protocol: phantoms {cfg.get('phantoms', 'v1')}, data seed {cfg.get('data_seed')}, "
        f"{cfg.get('n_train')}/{cfg.get('n_val')}/{cfg.get('n_test')} training/validation/"
        f"test volumes per setting; inputs {norm}"
        + (" (0 outside)" if cfg.get("zscore") else "")
        + f"; {str(cfg.get('optimizer')).capitalize()}, lr {cfg.get('lr'):g}, batch "
        f"{cfg.get('batch_size')}; at most {cfg.get('max_epochs')} epochs, patience "
        f"{cfg.get('patience')}, up to {cfg.get('max_restarts')} restart(s) off the plateau"
    )
    if cfg.get("time_budget_min"):
        text += f", {cfg['time_budget_min']:g} min per network"
    if cfg.get("finetune"):
        text += (
            f"; later settings fine-tuned from the first one's networks, at most "
            f"{cfg.get('finetune_epochs')} epochs, no restart"
        )
    if scratch:
        text += (
            f"; trained from scratch instead: {', '.join(scratch)} (at most "
            f"{cfg.get('scratch_epochs') or cfg.get('max_epochs')} epochs, patience "
            f"{cfg.get('scratch_patience') or cfg.get('patience')})"
        )
    return [text + ".", ""]


def _comparisons(results: dict[str, Any]) -> list[str]:
    comparisons = results.get("comparisons", {})
    two_way = any("two_way" in c for c in comparisons.values())
    lines = [
        "| comparison (FAUC ×100) | difference ± sd | 95% CI | p |"
        + (" ± sd, 95% CI, p (grids and digits) |" if two_way else ""),
        "| --- | --- | --- | --- |" + (" --- |" if two_way else ""),
    ]

    def ci_text(c: dict[str, Any]) -> str:
        ci = c.get("ci")
        return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else "—"

    for name, c in comparisons.items():
        line = (
            f"| {name} | {100 * c['difference']:+.1f} ± {100 * c['sd']:.1f} | {ci_text(c)} "
            f"| {c['p_value']:.3g} |"
        )
        if two_way:
            t = c.get("two_way")
            line += f" ± {100 * t['sd']:.1f}, {ci_text(t)}, p {t['p_value']:.3g} |" if t else " — |"
        lines.append(line)
    return lines


def _footer(results: dict[str, Any], heading: str, extra: list[str] | None = None) -> list[str]:
    """The comparisons under ``heading``, ``extra`` lines, then the training runs."""
    out = ["", heading, "", *_comparisons(results), *(extra or [])]
    return [*out, "", "Training runs:", "", *_training_table(results["networks"])]


def _mnist_row(title: str, r: dict[str, Any] | None, c: dict[str, Any] | None) -> str:
    """A row of the MNIST table from the regression and classification records."""
    op = (r or {}).get("operating_point")
    op_s = f"{op['sensitivity']['estimate']:.3f} / {op['fp_avg']['estimate']:.3f}" if op else "—"
    mae = f"{r['count_mae']:.3f}" if r and "count_mae" in r else "—"
    cand = (
        f"{_per(r, 'n_detections', 'n_images', '{:.1f}')} / "
        f"{_per(c, 'n_detections', 'n_images', '{:.1f}')}"
    )
    return (
        f"| {title} | {_pm(r and r['fauc'])} | {_pm(c and c['fauc'])} | {op_s} | {mae} | {cand} |"
    )


def _two_way_table(results: dict[str, Any]) -> list[str]:
    """FAUC sd and CI resampling grids and digits (two-way bootstrap), when recorded."""
    ev = results["evaluations"]
    rows = [(label, e["fauc_two_way"]) for label, e in ev.items() if "fauc_two_way" in e]
    if not rows:
        return []
    n_obj = rows[0][1]["n_objects"]
    n_targets = ev[rows[0][0]].get("n_targets", 0)
    out = [
        "",
        f"The test grids' {n_targets} target digits are {n_obj} distinct images (each shown "
        f"{n_targets / max(n_obj, 1):.1f} times on average), which the image bootstrap above "
        "treats as independent. Resampling grids and, independently, distinct digits "
        "(two-way bootstrap: each target by its digit, each false positive by the digit it "
        "lies on):",
        "",
        "| run | FAUC ×100 ± sd (grids) | ± sd (grids and digits) | 95% CI (grids and digits) |",
        "| --- | --- | --- | --- |",
    ]
    for label, two in rows:
        ci = two.get("ci")
        ci_s = f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f}" if ci else "—"
        out.append(
            f"| {label} | {_pm(ev[label]['fauc'])} | {100 * two['estimate']:.1f} ± "
            f"{100 * two['sd']:.1f} | {ci_s} |"
        )
    return out


def _digit_source(cfg: dict[str, Any]) -> str:
    """Where the grids' digits come from, when not the test set split in three."""
    if cfg.get("source", "test") == "test":
        return ""
    return (
        " Training grids from the 5,000 MNIST training digits (train5k); validation and "
        "test grids from disjoint pools of the test set."
    )


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
        f"{cfg['nms_size']}, one-to-one matching with the 28×28-cell rule." + _digit_source(cfg),
        "",
        "| method | regression FAUC | classification FAUC | regression: sensitivity / FP "
        "per image at the operating point | regression count MAE | candidates/image "
        "(regression / classification) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in cfg["methods"]:
        r = ev.get(RunKey(method, "regression").label)
        c = ev.get(RunKey(method, "classification").label)
        out.append(_mnist_row(DISPLAY[method], r, c))
    p400 = ev.get(RunKey("gp_unet", "regression", "paper400").label)
    c400 = ev.get(RunKey("gp_unet", "classification", "paper400").label)
    if p400 or c400:
        out.append(_mnist_row("GP-Unet, paper's 400 fixed images + augmentation", p400, c400))
    out += _two_way_table(results)
    heading = "Paired bootstrap differences (same resampled images for both):"
    seed_tables = _seed_table(results) + _seed_table(results, "fauc_by_seed_dups_ignored")
    out += _footer(results, heading, seed_tables)
    return "\n".join(out) + "\n"


def _lesion_network(
    results: dict[str, Any], setting: str, method: str, seed: int | None = None
) -> dict[str, Any]:
    """The record of the network ``method`` reads on ``setting`` (trained from ``seed``,
    default the study's); empty when its map needs none (the references, and the
    intensity baseline: only its operating point reads the base CNN's count)."""
    if method == "intensity":
        return {}
    arch = METHOD_ARCHITECTURE.get(method)
    own = seed is None or seed == results["config"].get("seed", 0)
    name = f"{setting}-{arch}" + ("" if own else f"-seed{seed}")
    return dict((results.get("networks") or {}).get(name, {}))


def _failed(results: dict[str, Any], setting: str, method: str, seed: int | None = None) -> bool:
    """Whether the network ``method`` reads on ``setting`` (trained from ``seed``, default
    the study's) stayed no better than a constant (best validation loss above
    ``STUCK_FRACTION`` × the constant's, after its restarts); never for a method whose map
    needs no network."""
    return bool(_lesion_network(results, setting, method, seed).get("stuck"))


def _lesion_rows(results: dict[str, Any], s: str, methods: list[str]) -> list[str]:
    """The rows of one setting: FAUC (and at the other budgets), the operating point,
    candidates, the all-candidates sensitivity and the count MAE."""
    ev = results["evaluations"][s]

    def fauc_cell(m: str, b: dict[str, Any] | None) -> str:
        return _pm(b) + (" †" if b and _failed(results, s, m) else "")

    rows = [[f"{s} FAUC", *(fauc_cell(m, ev[m]["fauc"]) if m in ev else "—" for m in methods)]]
    budgets = sorted({k for m in methods for k in ev.get(m, {}).get("fauc_at", {})}, key=float)
    for k in budgets:
        cells = (fauc_cell(m, ev.get(m, {}).get("fauc_at", {}).get(k)) for m in methods)
        rows.append([f"{s} FAUC 0–{k}", *cells])
    ops = [ev.get(m, {}).get("operating_point") for m in methods]
    rows.append([f"{s} FP/volume", *(f"{o['fp_avg']['estimate']:.2f}" if o else "—" for o in ops)])
    rows.append(
        [f"{s} sensitivity", *(f"{o['sensitivity']['estimate']:.3f}" if o else "—" for o in ops)]
    )
    rows.append(
        [f"{s} candidates/volume"]
        + [_per(ev.get(m), "n_detections", "n_images", "{:.1f}") for m in methods]
    )
    rows.append(
        [f"{s} sensitivity, all candidates"]
        + [_per(ev.get(m), "n_tp", "n_targets", "{:.3f}") for m in methods]
    )
    if any("count_mae" in ev.get(m, {}) for m in methods):
        maes = (ev.get(m, {}).get("count_mae") for m in methods)
        rows.append([f"{s} count MAE", *("—" if v is None else f"{v:.2f}" for v in maes)])
    return ["| " + " | ".join(r) + " |" for r in rows]


def _kept(
    results: dict[str, Any], setting: str, method: str, seeds: list[int]
) -> list[float | None]:
    """FAUC of ``method`` on ``setting`` per seed; None where missing or failed."""
    vals = (results.get("fauc_by_seed") or {}).get(RunKey(method, variant=setting).label, {})
    return [None if _failed(results, setting, method, k) else vals.get(str(k)) for k in seeds]


def _lesion_seed_table(results: dict[str, Any], settings: list[str]) -> list[str]:
    """FAUC ×100 per initialisation seed, mean ± sd, and GP-Unet against each method
    across seeds (paired by seed), per setting."""
    by_seed: dict[str, dict[str, float]] = results.get("fauc_by_seed") or {}
    if not by_seed:
        return []
    seeds = sorted({int(k) for v in by_seed.values() for k in v})
    out = [
        "",
        f"The networks trained from {len(seeds)} initialisation seeds "
        f"({', '.join(map(str, seeds))}; same data): FAUC ×100 per seed, mean ± sd, and "
        "GP-Unet − method across the seeds "
        "(mean, 95% t-CI, exact sign-flip permutation p and its floor); † networks that failed "
        "are left out of the mean and the comparison:",
        "",
        "| setting | method | FAUC per seed | mean ± sd | GP-Unet − method |",
        "| --- | --- | --- | --- | --- |",
    ]
    restarted = False
    for s in settings:
        ref = _kept(results, s, "gp_unet", seeds)
        for m in results["config"]["methods"]:
            vals = by_seed.get(RunKey(m, variant=s).label, {})
            got = _kept(results, s, m, seeds)
            texts = []
            for k, v in zip(seeds, got, strict=True):
                if str(k) not in vals:
                    texts.append("—")
                    continue
                attempts = _lesion_network(results, s, m, k).get("attempts")
                true = int(attempts[-1]["seed"]) if attempts else k
                restarted |= true != k
                texts.append(
                    f"{100 * vals[str(k)]:.1f}"
                    + ("" if true == k else f" (seed {true})")
                    + (" †" if v is None else "")
                )
            cells = " / ".join(texts)
            test = "—" if m == "gp_unet" else _seed_test(ref, got)
            out.append(f"| {s} | {DISPLAY[m]} | {cells} | {_mean_sd(got)} | {test} |")
    if restarted:
        out += [
            "",
            "(seed k): the network of that column stayed on the plateau and was trained again; "
            "the column reports the network trained from seed k.",
        ]
    return out


def lesions_markdown(results: dict[str, Any]) -> str:
    """The 3D tables: FAUC (paper Table 1, and at the other FP budgets when recorded),
    FP/image and sensitivity at the operating point (Tables 2–3), candidates, count MAE, per
    setting; the training-free references; the seed-level comparisons when networks were
    trained from several seeds."""
    cfg = results["config"]
    settings = list(results["evaluations"])
    methods = [m for m in cfg["methods"]]
    for ref in ("log", "chance"):
        if any(ref in ev for ev in results["evaluations"].values()):
            methods.append(ref)
    out = [
        *_interim(results),
        *_lesion_protocol(cfg),
        f"FAUC over 0–{cfg.get('max_fp', 15):g} FP/volume (×100) ± bootstrap sd; operating "
        "point = top-n with n the rounded predicted count (for the intensity baseline, the base "
        "CNN's count; for the chance reference, NMS on uniform noise inside the region, the "
        "training mean count). Candidates: the local maxima left after non-maximum "
        "suppression (negatives clipped"
        + ("; every map 0 outside the region mask" if cfg.get("mask_maps") else "")
        + "); with all of them taken, the FROC curve ends at the last row's sensitivity.",
        "",
        "| setting | " + " | ".join(DISPLAY[m] for m in methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]
    for s in settings:
        out += _lesion_rows(results, s, methods)
    if any(_failed(results, s, m) for s in settings for m in cfg["methods"]):
        out += [
            "",
            f"†: the network is no better than a constant (best validation loss above "
            f"{STUCK_FRACTION:g}× the constant prediction's, after its restarts): failed, left "
            "out of any ranking.",
        ]
    if "log" in methods:
        out += [
            "",
            "LoG: the training-free Laplacian-of-Gaussian baseline (`wsdet.baselines`), σ "
            "chosen by FAUC on the validation volumes; no count, so no operating point.",
        ]
    out += _footer(results, "Paired bootstrap differences:", _lesion_seed_table(results, settings))
    return "\n".join(out) + "\n"
