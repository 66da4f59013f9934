"""Benchmark of ``wsdet.data.augment.augment`` against the textbook affine pipeline.

Batch 64 of 140x196 (the MNIST grids' size), float32 on the CPU. Timed, interleaved
(A, B, A, B, ...) after a warm-up:

- ``wsdet``: ``augment(x, seed=0)`` (random flip, shift and rotation, resampled once);
- ``reference``: ``F.affine_grid`` + ``F.grid_sample`` with an identity matrix (the
  resampling alone, which is what ``augment`` replaces).

The ratio is the median of per-round ratios, times are medians. Target: ratio <= 1.0.
This used to be a unit test; speed targets belong here, not in the tests. Example::

    python benchmarks/bench_augment.py --repeats 11
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from wsdet.data.augment import augment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shape", type=int, nargs=2, default=[140, 196])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 1, *args.shape)
    theta = torch.zeros(args.batch, 2, 3)
    theta[:, :, :2] = torch.eye(2)

    def reference() -> torch.Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def ours() -> torch.Tensor:
        return augment(x, seed=0)

    ours(), reference()  # warm-up
    t_ours: list[float] = []
    t_ref: list[float] = []
    ratios: list[float] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference()
        t_ref.append(time.perf_counter() - start)
        ratios.append(t_ours[-1] / t_ref[-1])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; batch {args.batch}x1x{args.shape[0]}x"
        f"{args.shape[1]}, {args.repeats} interleaved rounds"
    )
    print("| wsdet augment (ms) | affine_grid + grid_sample (ms) | ratio (target <= 1.0) |")
    print("|---:|---:|---:|")
    print(
        f"| {statistics.median(t_ours) * 1e3:.1f} | {statistics.median(t_ref) * 1e3:.1f} "
        f"| {statistics.median(ratios):.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
