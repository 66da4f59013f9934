"""MNIST-grid counting datasets (paper §3.1): :class:`MNISTGrid`, :class:`GridSampler`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from wsdet._checks import PathLike, check_float, check_int
from wsdet.data._items import item_index
from wsdet.data.mnist._sampling import _check_pool, _render, _sample_cells
from wsdet.data.mnist.files import load_mnist
from wsdet.data.mnist.pools import DigitPool, SeedLike, split_pool

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

__all__ = ["GridLayout", "GridSampler", "GridSplits", "MNISTGrid", "mnist_grid_splits"]


class GridLayout(TypedDict, total=False):
    """The layout options of :class:`MNISTGrid` that :class:`GridSampler` passes on."""

    rows: int
    cols: int
    positive_fraction: float


class MNISTGrid(Dataset[dict[str, Any]]):
    """Images of ``rows × cols`` MNIST digits, labelled by the count of a target digit.

    Every cell holds a digit drawn uniformly from the pool. ``round(n_images *
    positive_fraction)`` images contain at least one target digit and the others none,
    each drawn from the uniform-cell distribution conditioned on that event (paper
    §3.1); see the notes. The images are built at construction, vectorised.

    Parameters
    ----------
    digits : numpy.ndarray
        Pool of digit images ``(M, h, w)``: ``uint8`` 0–255 (scaled by 1/255) or float in
        ``[0, 1]``.
    labels : numpy.ndarray
        ``(M,)`` integer digit classes.
    target : int
        The digit class to count.
    n_images : int
        Number of images.
    rows, cols : int
        Grid size in cells (paper: 5 × 7, giving 140 × 196 images with 28 × 28 digits).
    positive_fraction : float
        Fraction of images containing at least one target (paper: 0.5).
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the numpy Generator; equal seeds give equal datasets.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 1, rows*h, cols*w)`` float32 in ``[0, 1]``.
    counts : torch.Tensor
        ``(N,)`` float32 number of target digits.
    labels : torch.Tensor
        ``(N,)`` float32, 1 where ``count > 0``.
    centers : list of numpy.ndarray
        Per image, ``(k, 2)`` float64 ``(row, col)`` centres of the target cells
        (``r0 + (h-1)/2, c0 + (w-1)/2``), in row-major cell order.
    boxes : list of (numpy.ndarray, numpy.ndarray)
        Per image, ``(lo, hi)`` int64 ``(k, 2)`` half-open cell boxes ``[lo, hi)``.
    cell_indices : numpy.ndarray
        ``(N, rows, cols)`` int64 index into the pool of every cell's digit.
    cell_labels : numpy.ndarray
        ``(N, rows, cols)`` int64 class of every cell's digit.

    Notes
    -----
    Negative images draw each cell uniformly from the non-target digits, which is exactly
    the uniform draw conditioned on containing no target. Positive images are the
    uniform draw conditioned on at least one target, sampled without rejection: the
    number of targets ``K`` follows Binomial(``rows*cols``, ``p``) truncated to ``K >= 1``
    (``p`` = target fraction of the pool, about 0.1), the ``K`` target positions are a
    uniformly random subset of the cells, and target / non-target cells are uniform within
    their class. This is the same distribution as "draw uniformly and resample until
    there is a target", at a fixed cost. Expected count of a positive image:
    ``rows*cols*p / (1 - (1-p)**(rows*cols))`` (≈ 3.5 for MNIST).

    Items (``grid[i]``) are dicts with ``"image"`` ``(1, H, W)`` float32, ``"count"``
    and ``"label"`` 0-d float32 tensors, ``"centers"`` ``(k, 2)`` float64 and
    ``"boxes_lo"`` / ``"boxes_hi"`` ``(k, 2)`` int64 numpy arrays; batch them with
    :func:`wsdet.data.collate_points`. For fast training use the stacked tensors
    ``images`` / ``counts`` / ``labels`` directly.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> digits = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    >>> labels = np.arange(50) % 10
    >>> grid = MNISTGrid(digits, labels, target=4, n_images=8, seed=0)
    >>> grid.images.shape
    torch.Size([8, 1, 140, 196])
    >>> int((grid.labels == 1).sum())
    4
    >>> item = grid[0]
    >>> item["centers"].shape == (int(item["count"]), 2)
    True
    """

    def __init__(
        self,
        digits: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        target: int,
        n_images: int,
        *,
        rows: int = 5,
        cols: int = 7,
        positive_fraction: float = 0.5,
        seed: SeedLike = 0,
    ) -> None:
        self._digits, self._pool_labels = _check_pool(digits, labels)
        self.target = check_int("target", target, minimum=0)
        self.n_images = check_int("n_images", n_images, minimum=0)
        self.rows = check_int("rows", rows, minimum=1)
        self.cols = check_int("cols", cols, minimum=1)
        self.positive_fraction = check_float(
            "positive_fraction", positive_fraction, probability=True
        )
        self.seed = seed
        rng = np.random.default_rng(seed)
        cells = _sample_cells(
            rng,
            self._pool_labels,
            self.target,
            self.n_images,
            self.rows * self.cols,
            self.positive_fraction,
        )
        self.cell_indices = cells.reshape(self.n_images, self.rows, self.cols)
        self.cell_labels = self._pool_labels[self.cell_indices]
        self.cell_shape: tuple[int, int] = (int(self._digits.shape[1]), int(self._digits.shape[2]))
        self.images = _render(self._digits, self.cell_indices)
        is_target = self.cell_labels == self.target
        self.counts = torch.from_numpy(is_target.sum(axis=(1, 2)).astype(np.float32))
        self.labels = (self.counts > 0).to(torch.float32)
        size = np.array(self.cell_shape, dtype=np.int64)
        half = (size.astype(np.float64) - 1.0) / 2.0
        self.centers: list[npt.NDArray[np.float64]] = []
        self.boxes: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for mask in is_target:
            lo = np.argwhere(mask).astype(np.int64).reshape(-1, 2) * size
            self.boxes.append((lo, lo + size))
            self.centers.append(lo + half)

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = item_index(index, self.n_images)
        lo, hi = self.boxes[i]
        return {
            "image": self.images[i],
            "count": self.counts[i],
            "label": self.labels[i],
            "centers": self.centers[i],
            "boxes_lo": lo,
            "boxes_hi": hi,
        }

    def resample(self, seed: SeedLike) -> MNISTGrid:
        """Draw a fresh dataset of the same size from the same pool with another seed.

        Examples
        --------
        >>> digits = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
        >>> grid = MNISTGrid(digits, np.arange(20) % 10, 4, 6, seed=0)
        >>> fresh = grid.resample(1)
        >>> bool((fresh.images == grid.images).all())
        False
        """
        return MNISTGrid(
            self._digits,
            self._pool_labels,
            self.target,
            self.n_images,
            rows=self.rows,
            cols=self.cols,
            positive_fraction=self.positive_fraction,
            seed=seed,
        )

    def __repr__(self) -> str:
        return (
            f"MNISTGrid(n_images={self.n_images}, target={self.target}, "
            f"grid={self.rows}x{self.cols}, pool={len(self._pool_labels)}, "
            f"positives={int(self.labels.sum())})"
        )


class GridSampler:
    """Fresh MNIST grids every epoch, deterministic per ``(seed, epoch)``.

    A callable ``epoch -> (images, counts, labels)`` for training on newly drawn grids
    each epoch from a (training) digit pool, instead of a fixed set of images.

    Parameters
    ----------
    digits, labels, target, n_images
        As for :class:`MNISTGrid`.
    seed : int
        Base seed; epoch ``e`` uses the seed sequence ``(seed, e)``.
    **layout : GridLayout
        ``rows``, ``cols`` and ``positive_fraction``, as for :class:`MNISTGrid`.

    Examples
    --------
    >>> digits = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    >>> sampler = GridSampler(digits, np.arange(40) % 10, target=4, n_images=16, seed=3)
    >>> images, counts, labels = sampler(0)
    >>> images.shape, counts.shape
    (torch.Size([16, 1, 140, 196]), torch.Size([16]))
    >>> bool(torch.equal(sampler(0)[0], images)), bool(torch.equal(sampler(1)[0], images))
    (True, False)
    """

    def __init__(
        self,
        digits: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        target: int,
        n_images: int,
        *,
        seed: int = 0,
        **layout: Unpack[GridLayout],
    ) -> None:
        self._digits, self._labels = _check_pool(digits, labels)
        self.seed = check_int("seed", seed, minimum=0)
        self._layout = layout
        self.target = target
        self.n_images = n_images
        self.grid(0)  # validate the remaining arguments now rather than at the first epoch

    def grid(self, epoch: int) -> MNISTGrid:
        """The full :class:`MNISTGrid` (with centres and boxes) of ``epoch``."""
        epoch = check_int("epoch", epoch, minimum=0)
        return MNISTGrid(
            self._digits,
            self._labels,
            self.target,
            self.n_images,
            seed=(self.seed, epoch),
            **self._layout,
        )

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = self.grid(epoch)
        return grid.images, grid.counts, grid.labels


class GridSplits(NamedTuple):
    """Train / validation / test MNIST grids and the disjoint digit pools they use."""

    train: MNISTGrid
    val: MNISTGrid
    test: MNISTGrid
    train_pool: DigitPool
    val_pool: DigitPool
    test_pool: DigitPool


def mnist_grid_splits(
    root: PathLike | None = None,
    target: int = 4,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 500,
    seed: int = 0,
    *,
    source: Literal["test", "official", "train5k"] = "test",
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    rows: int = 5,
    cols: int = 7,
    positive_fraction: float = 0.5,
) -> GridSplits:
    """Build the paper's train / validation / test MNIST grids from disjoint digit pools.

    Parameters
    ----------
    root : str or os.PathLike, optional
        MNIST folder; defaults to ``WSDET_MNIST_DIR``.
    target : int
        Digit to count (the paper reports 4 among others).
    n_train, n_val, n_test : int
        Number of grid images per split (paper: 400 / 100 / 500).
    seed : int
        Seeds the pool split and the three grid datasets (independent streams).
    source : {"test", "official"}
        ``"test"``: split the 10,000 test digits into three pools by ``fractions``
        (stratified per class). ``"official"``: split the 60,000 training digits into the
        train and validation pools in the ratio ``fractions[0] : fractions[1]``; the test
        pool is the 10,000 official test digits. ``"train5k"``: the training pool is the
        5,000 training digits of the ``train5k`` files (see :func:`load_mnist`); the 10,000
        test digits are split into the validation and test pools in the ratio
        ``fractions[1] : fractions[2]`` (stratified per class), so that no digit image
        appears in two splits and the test grids draw on many distinct digits.
    fractions : sequence of three floats
        Pool fractions (see ``source``).
    rows, cols, positive_fraction
        As for :class:`MNISTGrid`.

    Returns
    -------
    GridSplits
        ``(train, val, test, train_pool, val_pool, test_pool)``.

    Examples
    --------
    >>> splits = mnist_grid_splits(target=4)  # doctest: +SKIP
    >>> len(splits.train), len(splits.val), len(splits.test)  # doctest: +SKIP
    (400, 100, 500)
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must hold three floats (train, val, test), got {fractions}")
    seeds = np.random.SeedSequence(seed).spawn(4)
    if source == "test":
        images, labels = load_mnist(root, "test")
        pools = split_pool(images, labels, tuple(float(f) for f in fractions), seed=seeds[0])
        train_pool, val_pool, test_pool = pools
    elif source in ("official", "train5k"):
        # one split set whole, the other split in two by the ratio of its two fractions
        whole: Literal["test", "train5k"] = "test" if source == "official" else "train5k"
        halves = (0, 1) if source == "official" else (1, 2)
        fa, fb = (float(fractions[i]) for i in halves)
        if fa <= 0 or fb <= 0:
            raise ValueError(
                f"fractions[{halves[0]}] and fractions[{halves[1]}] must be positive, "
                f"got {fractions}"
            )
        split: Literal["train", "test"] = "train" if source == "official" else "test"
        images, labels = load_mnist(root, split)
        first, second = split_pool(
            images, labels, (share := fa / (fa + fb), 1.0 - share), seed=seeds[0]
        )
        w_images, w_labels = load_mnist(root, whole)
        kept = DigitPool(w_images, w_labels, np.arange(len(w_labels)))
        if source == "official":
            train_pool, val_pool, test_pool = first, second, kept
        else:
            train_pool, val_pool, test_pool = kept, first, second
    else:
        raise ValueError(f"source must be 'test', 'official' or 'train5k', got {source!r}")
    kwargs: dict[str, Any] = {"rows": rows, "cols": cols, "positive_fraction": positive_fraction}
    grids = [
        MNISTGrid(pool.images, pool.labels, target, n, seed=s, **kwargs)
        for pool, n, s in zip(
            (train_pool, val_pool, test_pool), (n_train, n_val, n_test), seeds[1:], strict=True
        )
    ]
    return GridSplits(grids[0], grids[1], grids[2], train_pool, val_pool, test_pool)
