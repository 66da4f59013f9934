"""How many detections each image gets: ``n`` and the predicted counts, one per image.

The rules of :func:`wsdet.detect_maps` and :meth:`wsdet.Detector.detect` for their ``n``
and ``counts`` arguments (re-exported from :mod:`wsdet.detection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Union

import numpy as np
from torch import Tensor

__all__ = ["NArg", "parse_counts", "parse_n"]

#: ``n`` of :func:`wsdet.detect_maps`: ``None`` (the rounded predicted count), ``"all"``,
#: one number for every image, or one per image.
NArg = Union[None, int, float, Sequence[Union[int, float]], Literal["all"]]


def parse_n(n: NArg, batch: int) -> list[Any]:
    """One ``n`` per image: ``None``, ``"all"``, or a non-negative finite number.

    Parameters
    ----------
    n : None, "all", number, or sequence of numbers
        ``None`` (keep the rounded predicted count), ``"all"``, one non-negative number for
        every image, or ``batch`` of them (list, numpy array or tensor).
    batch : int
        The number of images.

    Returns
    -------
    list
        ``batch`` entries, each ``None``, ``"all"`` or a number.

    Examples
    --------
    >>> parse_n(2, 3), parse_n("all", 2), parse_n([1, 2.5], 2)
    ([2, 2, 2], ['all', 'all'], [1, 2.5])
    """

    def ok(v: Any) -> bool:
        return bool(
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)
            and np.isfinite(v)
            and v >= 0
        )

    if n is None or (isinstance(n, str) and n == "all"):
        return [n] * batch
    if isinstance(n, (np.ndarray, Tensor)) and n.ndim == 0:
        n = n.item()
    if ok(n):
        return [n] * batch
    if isinstance(n, (Sequence, np.ndarray, Tensor)) and not isinstance(n, str):
        vals = list(n.tolist() if isinstance(n, (np.ndarray, Tensor)) else n)
        if len(vals) != batch or not all(ok(v) for v in vals):
            raise ValueError(
                f"n must be None, 'all', a non-negative number, or {batch} non-negative "
                f"numbers (one per image), got {n!r}"
            )
        return vals
    raise ValueError(
        f"n must be None, 'all', a non-negative number, or one number per image, got {n!r}"
    )


def parse_counts(counts: Any, batch: int) -> np.ndarray | None:
    """``counts`` as ``(batch,)`` floats (a ``(batch, 1)`` column squeezed), or ``None``;
    a tensor is read as float32, as :meth:`wsdet.Detector.detect` reads the model's."""
    if counts is None:
        return None
    if isinstance(counts, Tensor):
        arr = counts.detach().float().cpu().numpy()  # float32, as Detector.detect reads them
    else:
        try:
            arr = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"counts must be None or {batch} numbers (one per image), got {counts!r}"
            ) from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (batch,):
        raise ValueError(
            f"counts must hold one number per image: expected shape ({batch},), "
            f"got {tuple(arr.shape)}"
        )
    return arr
