"""GP-Unet without residual connections (architecture D of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet.models._blocks import (
    Concat,
    ConvReLU,
    GlobalAvgPool,
    UpsampleTo,
    max_pool_nd,
)
from wsdet.models.base import CountingNet

__all__ = ["GPUnetNoResidual"]


class GPUnetNoResidual(CountingNet):
    """GP-Unet no residual: a two-level U-Net without input concatenations, GAP, linear head.

    This is the network of Dubost et al. (MICCAI 2017) with global *average* pooling. With
    ``w = width``, ``c = in_channels`` and ``S`` the input spatial size::

        conv1   ConvReLU(c -> w)                       S
        conv2   ConvReLU(w -> w)                       S
        pool1   MaxPool 2                 w            S // 2
        conv3   ConvReLU(w -> 2w)                      S // 2
        conv4   ConvReLU(2w -> 2w)                     S // 2
        pool2   MaxPool 2                 2w           S // 4
        conv5   ConvReLU(2w -> 4w)                     S // 4
        up1     UpsampleTo(conv4), nearest 4w          S // 2
        cat1    Concat[conv4, up1]        6w           S // 2
        conv6   ConvReLU(6w -> 2w)                     S // 2
        up2     UpsampleTo(conv2), nearest 2w          S
        cat2    Concat[conv2, up2]        3w           S
        conv7   ConvReLU(3w -> w)                      S
        gap     GlobalAvgPool             w
        head    Linear(w, 1)

    Weights: 830,753 for ``dim=3`` (``w=32``), 17,465 for ``dim=2`` (``w=8``), with one
    input channel. Inputs need a spatial size of at least 4 along every axis.

    Parameters: those of :class:`~wsdet.models.CountingNet` (``dim``, ``in_channels``,
    ``width``, ``init``); the default width is 8 in 2D and 32 in 3D.

    Examples
    --------
    >>> model = GPUnetNoResidual(dim=2)
    >>> model.n_pools, sum(p.numel() for p in model.parameters())
    (2, 17465)
    >>> model(torch.randn(2, 1, 4, 17)).shape
    torch.Size([2])
    >>> model(torch.randn(2, 1, 3, 17))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: x must have spatial size >= 4 along every axis ...
    """

    n_pools = 2
    _features = ("conv7",)
    _gradcam = "conv7"

    def _build(self) -> None:
        dim, c, w = self.dim, self.in_channels, self.width
        self.conv1 = ConvReLU(dim, c, w)
        self.conv2 = ConvReLU(dim, w, w)
        self.pool1 = max_pool_nd(dim)
        self.conv3 = ConvReLU(dim, w, 2 * w)
        self.conv4 = ConvReLU(dim, 2 * w, 2 * w)
        self.pool2 = max_pool_nd(dim)
        self.conv5 = ConvReLU(dim, 2 * w, 4 * w)
        self.up1 = UpsampleTo("nearest")
        self.cat1 = Concat()
        self.conv6 = ConvReLU(dim, 6 * w, 2 * w)
        self.up2 = UpsampleTo("nearest")
        self.cat2 = Concat()
        self.conv7 = ConvReLU(dim, 3 * w, w)
        self.gap = GlobalAvgPool()
        self.head = nn.Linear(w, 1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.conv2(self.conv1(x))
        f2 = self.conv4(self.conv3(self.pool1(f1)))
        f3 = self.conv5(self.pool2(f2))
        d2 = self.conv6(self.cat1(f2, self.up1(f3, f2)))
        d1 = self.conv7(self.cat2(f1, self.up2(d2, f1)))
        pooled: torch.Tensor = self.gap(d1)
        return pooled
