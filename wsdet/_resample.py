"""Fit an upsampled map to the size pooling came from: the one step that keeps positions aligned.

Pooling by ``f`` with sizes floored maps ``n`` voxels to ``m = n // f``; upsampling ``m`` by
exactly ``f`` gives ``f * m`` voxels, which may be up to ``f - 1`` short of ``n`` (or, after
ceil pooling, longer). :func:`fit_by_edge` makes the length ``n`` without moving a voxel:
the missing end voxels repeat the last one (what nearest upsampling and clamped linear
interpolation both give there), extra ones are cropped. Used by the decoders' upsampling
(:class:`wsdet.models.UpsampleTo`) and by the coarse maps of the CAM backends
(:func:`wsdet.attention.base.upsample_to`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fit_by_edge(x: torch.Tensor, size: Sequence[int], first_axis: int) -> torch.Tensor:
    """Return ``x`` with its axes ``first_axis, first_axis + 1, ...`` made ``size`` long.

    Each such axis is cropped at its end or extended by repeating its last element; axes
    already of the right length are left alone (``x`` itself is returned when all are).

    Examples
    --------
    >>> fit_by_edge(torch.tensor([[0.0, 1.0, 2.0]]), [5], first_axis=1).tolist()
    [[0.0, 1.0, 2.0, 2.0, 2.0]]
    >>> fit_by_edge(torch.tensor([[0.0, 1.0, 2.0]]), [2], first_axis=1).tolist()
    [[0.0, 1.0]]
    """
    if x.ndim < first_axis + len(size):
        raise ValueError(
            f"x has {x.ndim} dims; size {list(size)} from axis {first_axis} needs "
            f"{first_axis + len(size)}"
        )
    out = x
    for axis, n in enumerate(size, start=first_axis):
        m = out.shape[axis]
        if n != m:
            index = torch.arange(n, device=out.device).clamp_(max=m - 1)
            out = out.index_select(axis, index)
    return out
