"""Benchmark of the NMS on CPU: wsdet's SciPy path against its torch path and bare SciPy.

A seeded smooth random map (Gaussian-filtered white noise, float32, thousands of local
maxima) of the size of a hippocampi crop, 168x128x84 by default. Timed, interleaved
(A, B, C, A, B, C, ...) after a warm-up:

- ``wsdet (scipy)``: ``find_peaks_batch(maps)`` on a CPU tensor (the default dispatch): the
  full semantics (threshold, plateau components, ordering);
- ``wsdet (torch)``: ``find_peaks_batch(maps, backend="torch")``, the GPU implementation
  run on the CPU (what CPU tensors used before);
- ``bare scipy``: ``np.argwhere(a == scipy.ndimage.maximum_filter(a, size))``, the
  reference (no threshold, no plateau handling, no ordering).

Ratios are medians of per-round ratios, times are medians. Prints a Markdown table and
checks that the two wsdet paths return identical candidates. ``--quantize STEP`` rounds the
map to multiples of ``STEP``, so that it has plateaus of equal maxima (the case where the
component search runs). Examples::

    python benchmarks/bench_nms.py --repeats 11
    python benchmarks/bench_nms.py --repeats 11 --quantize 0.05
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage as ndi

from wsdet.detection import find_peaks_batch


def make_map(shape: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    """Gaussian-filtered white noise, float32: a smooth map with many local maxima."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape).astype(np.float32)
    return np.ascontiguousarray(ndi.gaussian_filter(noise, sigma), dtype=np.float32)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[168, 128, 84])
    parser.add_argument("--size", type=int, default=6, help="maximum-filter size (default 6)")
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma of the map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quantize", type=float, default=0.0, help="round the map to multiples of this"
    )
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds (>= 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    torch.set_num_threads(args.threads)

    a = make_map(tuple(args.shape), args.sigma, args.seed)
    if args.quantize > 0:
        a = (np.round(a / args.quantize) * args.quantize).astype(np.float32)
    maps = torch.from_numpy(a)[None]
    size = args.size

    def ours() -> object:
        return find_peaks_batch(maps, size=size)

    def old() -> object:
        return find_peaks_batch(maps, size=size, backend="torch")

    def bare() -> object:
        return np.argwhere(a == ndi.maximum_filter(a, size=size))

    ((c_new, s_new),) = find_peaks_batch(maps, size=size)
    ((c_old, s_old),) = find_peaks_batch(maps, size=size, backend="torch")
    identical = torch.equal(c_new, c_old) and torch.equal(s_new, s_old)
    n_bare = int(bare().shape[0])  # type: ignore[attr-defined]

    calls = {"wsdet (scipy)": ours, "wsdet (torch)": old, "bare scipy": bare}
    for _ in range(args.warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k, fn in calls.items():
            times[k].append(timed(fn))
    ref = times["bare scipy"]

    shape = "×".join(str(s) for s in args.shape)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"### NMS on CPU: {shape} float32 map (Gaussian noise, sigma {args.sigma:g}, seed "
        f"{args.seed}{f', quantised to {args.quantize:g}' if args.quantize > 0 else ''}), "
        f"size {size}; {c_new.shape[0]} candidates ({n_bare} before the "
        f"threshold and plateau reduction); {args.repeats} interleaved rounds, torch "
        f"{torch.__version__} ({args.threads} thread), {platform.python_version()}, load "
        f"average {load:.1f}"
    )
    print()
    print("| implementation | median (ms) | ÷ bare scipy (median of per-round ratios) |")
    print("|---|---:|---:|")
    for k, ts in times.items():
        ratio = statistics.median(t / r for t, r in zip(ts, ref, strict=True))
        print(f"| {k} | {1000 * statistics.median(ts):.1f} | {ratio:.3f} |")
    speedup = statistics.median(
        o / n for o, n in zip(times["wsdet (torch)"], times["wsdet (scipy)"], strict=True)
    )
    print()
    print(f"wsdet scipy path vs torch path on CPU: {speedup:.1f}× faster; identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
