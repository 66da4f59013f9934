"""Datasets and augmentation: MNIST grids, synthetic 2D/3D phantoms, random affine.

* :mod:`wsdet.data.mnist` — IDX reader, verified download, MNIST-grid counting datasets
  (paper §3.1) built from disjoint digit pools.
* :mod:`wsdet.data.phantoms` — 2D blob phantoms and 3D lesion volumes with point truth
  (formerly ``wsdet.data.synthetic``, which still re-exports them).
* :mod:`wsdet.data.augment` — batched random shifts / rotations / flips (paper §3.5).

Points are index coordinates in array axis order — ``(row, col)`` in 2D, ``(z, y, x)``
in 3D — as ``(k, ndim)`` float arrays; images are float32 tensors ``(C, *S)`` in
``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from wsdet.data import mnist as _mnist
from wsdet.data.augment import RandomAffine, apply_affine, augment, random_affine, transform_points
from wsdet.data.mnist import *  # noqa: F403  (the names of mnist.__all__)
from wsdet.data.phantoms import PhantomSet, make_lesion_volumes, make_phantoms_2d

__all__ = [
    "PhantomSet",
    "RandomAffine",
    "apply_affine",
    "augment",
    "collate_points",
    "make_lesion_volumes",
    "make_phantoms_2d",
    "random_affine",
    "transform_points",
]
__all__ += _mnist.__all__


def collate_points(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate dataset items whose point fields vary in length.

    Tensors of equal shape are stacked; everything else (point arrays of varying
    length, ints, strings) is kept as a list, one entry per item. Use it as the
    ``collate_fn`` of a ``torch.utils.data.DataLoader`` over :class:`MNISTGrid` or
    :class:`PhantomSet`.

    Parameters
    ----------
    batch : sequence of mappings
        Items with identical keys.

    Returns
    -------
    dict
        One entry per key.

    Examples
    --------
    >>> import numpy as np
    >>> items = [{"image": torch.zeros(1, 4, 4), "points": np.zeros((k, 2))} for k in (1, 3)]
    >>> out = collate_points(items)
    >>> out["image"].shape, [p.shape for p in out["points"]]
    (torch.Size([2, 1, 4, 4]), [(1, 2), (3, 2)])
    """
    if len(batch) == 0:
        raise ValueError("batch must hold at least one item")
    keys = list(batch[0].keys())
    for i, item in enumerate(batch):
        if list(item.keys()) != keys:
            raise ValueError(f"item {i} has keys {list(item.keys())}, expected {keys}")
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        if (
            all(isinstance(v, torch.Tensor) for v in values)
            and len({tuple(v.shape) for v in values}) == 1
        ):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
