"""MNIST training grids from training digits: the local ``train5k`` subset beside the test
set (``load_mnist(split="train5k")``, ``mnist_grid_splits(source="train5k")``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data_mnist import REAL_DIR, fake_digits, identify_cells, write_mnist

from wsdet.data.mnist import download_mnist, load_mnist, mnist_grid_splits


def test_train5k_source_trains_on_training_digits_and_tests_on_test_digits(
    tmp_path: Path,
) -> None:
    test_images, test_labels = fake_digits(300, seed=7)
    train_images, train_labels = fake_digits(100, seed=8)
    write_mnist(tmp_path, "test", test_images, test_labels, gz=True)
    write_mnist(tmp_path, "train5k", train_images, train_labels, gz=False)
    np.testing.assert_array_equal(load_mnist(tmp_path, "train5k")[0], train_images)
    s = mnist_grid_splits(tmp_path, 2, 6, 4, 5, seed=1, source="train5k")
    # the whole training subset; the test digits split 1 : 1 (fractions 0.2 : 0.2)
    np.testing.assert_array_equal(s.train_pool.images, train_images)
    assert [len(p.indices) for p in s[4:]] == [150, 150]
    assert not set(s.val_pool.indices.tolist()) & set(s.test_pool.indices.tolist())
    np.testing.assert_array_equal(s.test_pool.images, test_images[s.test_pool.indices])
    for grid, pool in zip(s[:3], s[3:], strict=True):  # each split's cells from its pool
        classes = identify_cells(grid, pool.images, pool.labels)
        np.testing.assert_array_equal(grid.counts.numpy(), (classes == 2).sum(axis=(1, 2)))
    with pytest.raises(ValueError, match="fractions"):
        mnist_grid_splits(tmp_path, source="train5k", fractions=(0.6, 0.0, 0.4))
    with pytest.raises(ValueError, match="split"):
        download_mnist(tmp_path, splits=["train5k"])  # a local subset, on no mirror


def test_train5k_files_beside_the_test_set() -> None:
    """The shipped subset: 500 training digits per class, none of them a test digit."""
    if not (REAL_DIR / "train5k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no train5k files in {REAL_DIR}")
    images, labels = load_mnist(REAL_DIR, "train5k")
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    test = {bytes(x) for x in load_mnist(REAL_DIR, "test")[0]}
    assert not any(bytes(x) in test for x in images)
