"""MNIST: IDX reader, verified download, and the paper's MNIST-grid counting datasets.

The grid datasets follow §3.1 of the paper: every image is a grid of ``rows × cols``
(default 5 × 7) MNIST digits, each drawn uniformly from a digit pool; half of the images
contain no occurrence of the target digit and half contain at least one. The weak label
is the number of target digits (regression) or their presence (classification); the
cell centres and 28 × 28 cell boxes of the target digits are the detection ground truth.

Only the 10,000 MNIST *test* digits are available on the machines this project is
developed on, so :func:`mnist_grid_splits` splits them, by default, into disjoint
train / validation / test pools (60 / 20 / 20 %, stratified per class): no digit image
appears in two splits. With the official 60,000 training digits present,
``source="official"`` uses them for the training and validation pools and the test digits
for the test pool.

Coordinates are index coordinates in array axis order, ``(row, col)``, with pixel centres
at integer positions: the centre of the cell whose top-left pixel is ``(r0, c0)`` is
``(r0 + 13.5, c0 + 13.5)`` and its box is the half-open ``[r0, r0 + 28) × [c0, c0 + 28)``.

Everything is importable from ``wsdet.data.mnist`` (and from :mod:`wsdet.data`); the
modules: :mod:`~wsdet.data.mnist.idx` (the IDX format), :mod:`~wsdet.data.mnist.files`
(finding and loading a split), :mod:`~wsdet.data.mnist.download` (verified download),
:mod:`~wsdet.data.mnist.pools` (disjoint digit pools) and :mod:`~wsdet.data.mnist.grids`
(the grid datasets).
"""

from __future__ import annotations

from wsdet._checks import PathLike as PathLike
from wsdet.data.mnist.download import (
    MNIST_MD5,
    MNIST_MIRRORS,
    DownloadError,
    download_mnist,
    file_md5,
)
from wsdet.data.mnist.download import _fetch as _fetch
from wsdet.data.mnist.files import MNIST_ENV_VAR, MNIST_FILES, find_mnist_files, load_mnist
from wsdet.data.mnist.grids import GridSampler, GridSplits, MNISTGrid, mnist_grid_splits
from wsdet.data.mnist.idx import IDXFormatError, read_idx
from wsdet.data.mnist.idx import _parse_idx as _parse_idx
from wsdet.data.mnist.pools import DigitPool, split_pool
from wsdet.data.mnist.pools import SeedLike as SeedLike

__all__ = [
    "MNIST_ENV_VAR",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "DigitPool",
    "DownloadError",
    "GridSampler",
    "GridSplits",
    "IDXFormatError",
    "MNISTGrid",
    "download_mnist",
    "file_md5",
    "find_mnist_files",
    "load_mnist",
    "mnist_grid_splits",
    "read_idx",
    "split_pool",
]
