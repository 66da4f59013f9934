"""Sampling and rendering of MNIST grids: which pool digit fills each cell, and the image."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__: list[str] = []


def _check_pool(
    digits: npt.NDArray[Any], labels: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    digits = np.asarray(digits)
    labels = np.asarray(labels)
    if digits.ndim != 3 or digits.shape[0] == 0:
        raise ValueError(f"digits must have shape (M, h, w) with M >= 1, got {digits.shape}")
    if labels.shape != (digits.shape[0],):
        raise ValueError(f"labels must have shape ({digits.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if digits.dtype == np.uint8:
        pass
    elif np.issubdtype(digits.dtype, np.floating):
        lo, hi = float(digits.min()), float(digits.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"float digits must lie in [0, 1], got range [{lo}, {hi}]; pass uint8 0-255 "
                "digits or scale them"
            )
        digits = digits.astype(np.float32, copy=False)
    else:
        raise TypeError(f"digits must be uint8 (0-255) or float in [0, 1], got {digits.dtype}")
    return digits, labels.astype(np.int64, copy=False)


def _truncated_binomial_pmf(n: int, p: float) -> npt.NDArray[np.float64]:
    """P(K = k | K >= 1) for K ~ Binomial(n, p), k = 1..n."""
    k = np.arange(1, n + 1)
    log_pmf = np.array(
        [
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + (i * math.log(p) if p > 0 else -math.inf)
            + ((n - i) * math.log1p(-p) if p < 1 else (0.0 if i == n else -math.inf))
            for i in k
        ]
    )
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.asarray(pmf / pmf.sum(), dtype=np.float64)


def _sample_cells(
    rng: np.random.Generator,
    pool_labels: npt.NDArray[np.int64],
    target: int,
    n_images: int,
    n_cells: int,
    positive_fraction: float,
) -> npt.NDArray[np.int64]:
    """Pool indices ``(n_images, n_cells)``: exactly ``round(n * fraction)`` positives.

    A cell drawn uniformly from the pool is a target with probability ``p`` (the target
    fraction of the pool). Negatives: cells i.i.d. uniform over non-target digits (the
    uniform draw conditioned on "no target"). Positives: the uniform draw conditioned on
    "at least one target", sampled exactly without rejection: the number of targets
    ``K`` from Binomial(n_cells, p) truncated to ``K >= 1``, their positions a uniformly
    random ``K``-subset of the cells, target cells uniform over target digits and the
    other cells uniform over non-target digits.
    """
    target_idx = np.flatnonzero(pool_labels == target)
    other_idx = np.flatnonzero(pool_labels != target)
    n_pos = math.floor(n_images * positive_fraction + 0.5)
    n_neg = n_images - n_pos
    if n_pos > 0 and len(target_idx) == 0:
        raise ValueError(f"the digit pool holds no digit of target class {target}")
    if n_neg > 0 and len(other_idx) == 0:
        raise ValueError(f"the digit pool holds only digits of target class {target}")
    cells = np.empty((n_images, n_cells), dtype=np.int64)
    if n_pos > 0:
        p = len(target_idx) / len(pool_labels)
        k_values = rng.choice(
            np.arange(1, n_cells + 1), size=n_pos, p=_truncated_binomial_pmf(n_cells, p)
        )
        ranks = np.argsort(np.argsort(rng.random((n_pos, n_cells)), axis=1), axis=1)
        is_target = ranks < k_values[:, None]
        tgt = target_idx[rng.integers(0, len(target_idx), size=(n_pos, n_cells))]
        if len(other_idx):
            oth = other_idx[rng.integers(0, len(other_idx), size=(n_pos, n_cells))]
        else:  # p == 1: every cell is a target
            oth = tgt
        cells[:n_pos] = np.where(is_target, tgt, oth)
    if n_neg > 0:
        cells[n_pos:] = other_idx[rng.integers(0, len(other_idx), size=(n_neg, n_cells))]
    return cells[rng.permutation(n_images)]


def _render(digits: npt.NDArray[Any], cells: npt.NDArray[np.int64]) -> torch.Tensor:
    """Tile pool digits ``cells`` (N, rows, cols) into images (N, 1, rows*h, cols*w)."""
    n, rows, cols = cells.shape
    h, w = digits.shape[1:]
    tiles = digits[cells]  # (N, rows, cols, h, w)
    grid = np.ascontiguousarray(tiles.transpose(0, 1, 3, 2, 4)).reshape(n, 1, rows * h, cols * w)
    out = torch.from_numpy(grid)
    if out.dtype == torch.uint8:
        return out.to(torch.float32).div_(255.0)
    return out.to(torch.float32)
