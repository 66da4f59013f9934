"""GP-Unet (architecture A of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet.models._blocks import (
    Concat,
    ConvReLU,
    GlobalAvgPool,
    UpsampleTo,
)
from wsdet.models.base import _ResidualEncoderNet

__all__ = ["GPUnet"]


class GPUnet(_ResidualEncoderNet):
    """GP-Unet: a one-level U-Net with residual concatenations, GAP and a linear head.

    With ``w = width``, ``c = in_channels`` and ``S`` the input spatial size::

        conv1   ConvReLU(c -> w)                       S
        conv2   ConvReLU(w -> w)                       S
        cat1    Concat[x, conv2]          c + w        S
        pool    MaxPool 2                 c + w        S // 2
        conv3   ConvReLU(c + w -> 2w)                  S // 2
        conv4   ConvReLU(2w -> 2w)                     S // 2
        cat2    Concat[pool, conv4]       c + 3w       S // 2
        up      UpsampleTo(cat1), nearest c + 3w       S
        cat3    Concat[cat1, up]          2c + 4w      S
        conv5   ConvReLU(2c + 4w -> w)                 S
        gap     GlobalAvgPool             w
        head    Linear(w, 1)

    The output is the predicted count ``(B,)``; the CAM is ``sum_k head.weight[0, k] *
    conv5[:, k]`` at full input resolution. Weights: 308,705 for ``dim=3`` (``w=32``), 6,761
    for ``dim=2`` (``w=8``), with one input channel.

    Parameters: those of :class:`~wsdet.models.CountingNet` (``dim``, ``in_channels``,
    ``width``, ``init``); the default width is 8 in 2D and 32 in 3D (the paper uses four
    times fewer maps in 2D).

    Examples
    --------
    >>> model = GPUnet(dim=2)
    >>> sum(p.numel() for p in model.parameters())
    6761
    >>> model(torch.randn(3, 1, 13, 17)).shape
    torch.Size([3])

    Odd sizes are floored by the pooling and restored by the upsampling (aligned: the
    pooled voxel ``k`` feeds the voxels ``2k`` and ``2k + 1``, see
    :class:`~wsdet.models.UpsampleTo`), so the CAM layer ``conv5`` keeps the input size:

    >>> feats = {}
    >>> hook = model.conv5.register_forward_hook(lambda m, i, o: feats.update(conv5=o))
    >>> _ = model(torch.randn(1, 1, 13, 17))
    >>> feats["conv5"].shape
    torch.Size([1, 8, 13, 17])
    """

    n_pools = 1
    _features = ("conv5",)
    _gradcam = "conv5"

    def _build(self) -> None:
        dim, c, w = self.dim, self.in_channels, self.width
        self._build_encoder()
        self.up = UpsampleTo("nearest")
        self.cat3 = Concat()
        self.conv5 = ConvReLU(dim, 2 * c + 4 * w, w)
        self.gap = GlobalAvgPool()
        self.head = nn.Linear(w, 1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        skip, low = self._encode(x)
        merged = self.cat3(skip, self.up(low, skip))
        pooled: torch.Tensor = self.gap(self.conv5(merged))
        return pooled
