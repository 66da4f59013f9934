"""Digit pools: disjoint, class-stratified subsets of the MNIST digits (:func:`split_pool`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["DigitPool", "SeedLike", "split_pool"]

SeedLike: TypeAlias = int | Sequence[int] | np.random.SeedSequence


class DigitPool(NamedTuple):
    """A pool of digit images to draw grid cells from.

    Attributes
    ----------
    images : numpy.ndarray
        ``(M, h, w)`` digit images.
    labels : numpy.ndarray
        ``(M,)`` digit classes.
    indices : numpy.ndarray
        ``(M,)`` positions of these digits in the array the pool was split from.
    """

    images: npt.NDArray[Any]
    labels: npt.NDArray[Any]
    indices: npt.NDArray[np.int64]


def _split_sizes(fractions: Sequence[float] | Sequence[int], total: int) -> list[int]:
    values = list(fractions)
    if len(values) == 0:
        raise ValueError("fractions must hold at least one entry")
    if any(isinstance(v, bool) for v in values):
        raise TypeError("fractions must be numbers, not booleans")
    if all(isinstance(v, int | np.integer) for v in values):
        sizes = [int(v) for v in values]
        if any(s < 0 for s in sizes) or sum(sizes) > total:
            raise ValueError(
                f"sizes {sizes} must be non-negative and sum to at most the pool size {total}"
            )
        return sizes
    if not all(isinstance(v, float | np.floating) for v in values):
        raise TypeError(
            f"fractions must be all floats (fractions) or all ints (sizes), got {values!r}"
        )
    fr = np.asarray(values, dtype=np.float64)
    if np.any(fr < 0) or not np.all(np.isfinite(fr)) or fr.sum() > 1 + 1e-9:
        raise ValueError(f"fractions {values} must be non-negative and sum to at most 1")
    exact = fr * total
    sizes_arr = np.floor(exact + 1e-9).astype(np.int64)
    if abs(fr.sum() - 1) <= 1e-9:  # hand the rounding remainder out by largest remainder
        rest = total - int(sizes_arr.sum())
        order = np.argsort(-(exact - sizes_arr), kind="stable")
        sizes_arr[order[:rest]] += 1
    return [int(s) for s in sizes_arr]


def split_pool(
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    fractions: Sequence[float] | Sequence[int] = (0.6, 0.2, 0.2),
    *,
    seed: SeedLike = 0,
    stratify: bool = True,
) -> list[DigitPool]:
    """Split digits into disjoint pools (e.g. train / validation / test).

    With only the 10,000 MNIST test digits available, the grid datasets of all three
    splits must be drawn from disjoint subsets of them, so that no digit image is seen
    both in training and in evaluation.

    Parameters
    ----------
    images : numpy.ndarray
        ``(M, h, w)`` digits.
    labels : numpy.ndarray
        ``(M,)`` integer classes.
    fractions : sequence of float, or sequence of int
        Floats: fraction of the digits per pool (summing to at most 1; when they sum to 1
        every digit is used). Ints: exact pool sizes (summing to at most ``M``).
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the random assignment.
    stratify : bool
        Keep every pool's class counts within two digits of proportional (digits are
        ordered so that every prefix is class-balanced, then cut into consecutive
        pools). Otherwise a plain random permutation.

    Returns
    -------
    list of DigitPool
        One pool per entry of ``fractions``, in order, with the exact requested sizes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    >>> labs = np.repeat(np.arange(10, dtype=np.uint8), 10)
    >>> train, val, test = split_pool(imgs, labs, (0.6, 0.2, 0.2), seed=0)
    >>> len(train.labels), len(val.labels), len(test.labels)
    (60, 20, 20)
    >>> np.bincount(val.labels).tolist()
    [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (M, h, w), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    total = images.shape[0]
    sizes = _split_sizes(fractions, total)
    rng = np.random.default_rng(seed)
    if stratify:
        # Each class's digits are shuffled and spread evenly over [0, 1); sorting by that
        # position yields an order whose every prefix holds each class in proportion
        # (to about one digit), so consecutive chunks are stratified pools.
        key = np.empty(total, dtype=np.float64)
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            ranks = rng.permutation(len(members))
            key[members] = (ranks + rng.random()) / len(members)
        tie = np.asarray(rng.random(size=total), dtype=np.float64)
        order = np.lexsort((tie, key))
    else:
        order = rng.permutation(total)
    pools: list[DigitPool] = []
    start = 0
    for size in sizes:
        idx = np.sort(order[start : start + size]).astype(np.int64)
        pools.append(DigitPool(images[idx], labels[idx], idx))
        start += size
    return pools
