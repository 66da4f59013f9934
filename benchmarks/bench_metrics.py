"""Benchmark of wsdet.metrics: matching + FROC + FAUC + bootstrap, against MONAI's FROC.

Synthetic 3D data: ``--images`` volumes, each with about ``--targets`` target points and
``--candidates`` scored candidates (some near targets, scored higher; the rest uniform).
Timed (median over ``--repeats``):

- wsdet: ``match_images`` (one-to-one Hungarian, radius 6), ``froc_curve``, ``fauc``
  (0 to ``--max-fp``), and ``bootstrap`` of the FAUC with ``--replicates`` replicates;
- MONAI: ``compute_froc_curve_data`` + ``compute_froc_score`` on each bootstrap replicate
  (the resampled per-image FP/TP probabilities of the same matching), looped. MONAI's
  curve costs O(thresholds x events) per replicate, so only ``--monai-replicates``
  replicates are run and the time per replicate is multiplied by ``--replicates``
  (stated in the table).

Prints a Markdown table. Example (the documented configuration)::

    python benchmarks/bench_metrics.py --images 1000 --targets 20 --candidates 200 \\
        --replicates 1000 --repeats 5 --monai-replicates 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from wsdet.metrics import bootstrap, bootstrap_weights, fauc, froc_curve, match_images
from wsdet.metrics.matching import MatchResult

Dataset = tuple[list[NDArray[np.float64]], list[NDArray[np.float64]], list[NDArray[np.float64]]]


def make_data(n_images: int, n_targets: int, n_candidates: int, size: int, seed: int) -> Dataset:
    """Per-image candidate points, scores (float32 values) and target points."""
    rng = np.random.default_rng(seed)
    points, scores, targets = [], [], []
    for _ in range(n_images):
        m = int(rng.poisson(n_targets))
        k = max(int(rng.poisson(n_candidates)), 0)
        gt = rng.integers(0, size, size=(m, 3)).astype(np.float64)
        found = gt[rng.random(m) < 0.7]
        n_near = min(found.shape[0], k)
        near = np.clip(np.round(found[:n_near] + rng.normal(0, 2.5, (n_near, 3))), 0, size - 1)
        far = rng.integers(0, size, size=(k - n_near, 3)).astype(np.float64)
        pts = np.concatenate([near, far])
        sc = np.concatenate([rng.normal(1.0, 0.8, n_near), rng.normal(0.0, 0.8, k - n_near)])
        points.append(pts)
        scores.append(sc.astype(np.float32).astype(np.float64))
        targets.append(gt)
    return points, scores, targets


def run_wsdet(
    data: Dataset, max_fp: float, replicates: int, seed: int
) -> tuple[dict[str, float], list[MatchResult], float]:
    """One timed run of the wsdet pipeline; returns stage times, results and the FAUC."""
    points, scores, targets = data
    c0, t0 = time.process_time(), time.perf_counter()
    results = match_images(points, scores, targets, radius=6.0)
    t1 = time.perf_counter()
    curve = froc_curve(results)
    t2 = time.perf_counter()
    value = fauc(curve, max_fp)
    t3 = time.perf_counter()
    bootstrap(partial(fauc, max_fp=max_fp), results, B=replicates, seed=seed, max_fp=max_fp)
    t4, c4 = time.perf_counter(), time.process_time()
    times = {
        "matching": t1 - t0,
        "FROC curve": t2 - t1,
        "FAUC": t3 - t2,
        f"bootstrap ({replicates} replicates)": t4 - t3,
        "total": t4 - t0,
        "total, CPU time": c4 - c0,
    }
    return times, results, value


def run_monai(results: Sequence[MatchResult], replicates: int, seed: int, count: int) -> float:
    """Seconds per replicate of MONAI's curve + score on the resampled FP/TP probabilities."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    weights = bootstrap_weights(len(results), replicates, seed)[:count]
    fp_img = [r.scores[r.det_label == 0] for r in results]
    tp_img = [r.gt_score[r.gt_hit].astype(np.float32) for r in results]
    n_targets = np.array([r.n_targets for r in results])
    start = time.perf_counter()
    for w in weights:
        fp = np.concatenate([np.repeat(a, c) for a, c in zip(fp_img, w, strict=True)])
        tp = np.concatenate([np.repeat(a, c) for a, c in zip(tp_img, w, strict=True)])
        fps, sens = compute_froc_curve_data(fp, tp, int(n_targets @ w), len(results))
        compute_froc_score(fps, sens)
    return (time.perf_counter() - start) / max(count, 1)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=20, help="mean targets per image")
    parser.add_argument("--candidates", type=int, default=200, help="mean candidates per image")
    parser.add_argument("--size", type=int, default=64, help="volume edge in voxels")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-fp", type=float, default=15.0)
    parser.add_argument(
        "--monai-replicates",
        type=int,
        default=1,
        help="replicates actually run through MONAI (0 to skip MONAI)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = make_data(args.images, args.targets, args.candidates, args.size, args.seed)
    runs = [run_wsdet(data, args.max_fp, args.replicates, args.seed) for _ in range(args.repeats)]
    stages = list(runs[0][0])
    med = {s: statistics.median(r[0][s] for r in runs) for s in stages}
    results, value = runs[0][1], runs[0][2]
    n_det = sum(r.det_label.size for r in results)
    n_gt = sum(r.n_targets for r in results)

    lines = [
        f"wsdet.metrics benchmark: {args.images} 3D images ({args.size}^3), {n_gt} targets, "
        f"{n_det} candidates, radius 6, FAUC 0-{args.max_fp:g} = {value:.4f}; "
        f"median of {args.repeats} repeats; Python {platform.python_version()}, "
        f"NumPy {np.__version__}",
        "",
        "| step | wsdet, wall (s) |",
        "|---|---:|",
    ]
    lines += [f"| {s} | {med[s]:.3f} |" for s in stages]
    with open("/proc/loadavg") if Path("/proc/loadavg").exists() else nullcontext(None) as f:
        if f is not None:
            lines.append(f"| (load average at the end: {f.read().split()[0]}) | |")
    if args.monai_replicates > 0:
        per = run_monai(results, args.replicates, args.seed, args.monai_replicates)
        monai_total = per * args.replicates
        lines += [
            "",
            "| comparison | seconds |",
            "|---|---:|",
            f"| MONAI compute_froc_curve_data + compute_froc_score, per replicate "
            f"(mean of {args.monai_replicates}) | {per:.3f} |",
            f"| MONAI, {args.replicates} replicates (per replicate x {args.replicates}) "
            f"| {monai_total:.1f} |",
            f"| wsdet matching + curve + FAUC + {args.replicates} replicates "
            f"| {med['total']:.3f} |",
            f"| speed-up (MONAI / wsdet) | {monai_total / med['total']:.0f}x |",
        ]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
