"""Base CNN for Grad, Guided backpropagation and Grad-CAM (architecture C of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet.models._blocks import GlobalAvgPool
from wsdet.models.base import _ResidualEncoderNet

__all__ = ["BaseCNN"]


class BaseCNN(_ResidualEncoderNet):
    """Base CNN: GP-Unet's encoder, globally pooled at half resolution.

    With ``w = width``, ``c = in_channels`` and ``S`` the input spatial size, the layers
    ``conv1`` to ``cat2`` are those of :class:`~wsdet.models.GPUnet` (see its table), then::

        cat2    Concat[pool, conv4]       c + 3w       S // 2
        gap     GlobalAvgPool             c + 3w
        head    Linear(c + 3w, 1)

    The pooled maps are the (max-pooled) image, the pooled first-scale features and the
    second-scale features: the paper's "1 + 32 + 64" maps. Grad-CAM on ``cat2`` therefore has
    half the input resolution. Weights: 196,418 for ``dim=3`` (``w=32``), 4,322 for
    ``dim=2`` (``w=8``), with one input channel.

    Parameters: those of :class:`~wsdet.models.CountingNet` (``dim``, ``in_channels``,
    ``width``, ``init``); the default width is 8 in 2D and 32 in 3D.

    Examples
    --------
    The head weighs the ``c + 3w = 25`` pooled maps of ``cat2``:

    >>> model = BaseCNN(dim=2)
    >>> model.head.in_features, sum(p.numel() for p in model.parameters())
    (25, 4322)
    >>> model(torch.randn(2, 1, 9, 8)).shape, model.wsdet_layers()["gradcam"]
    (torch.Size([2]), 'cat2')
    """

    n_pools = 1
    _features = ("cat2",)
    _gradcam = "cat2"

    def _build(self) -> None:
        c, w = self.in_channels, self.width
        self._build_encoder()
        self.gap = GlobalAvgPool()
        self.head = nn.Linear(c + 3 * w, 1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        _, low = self._encode(x)
        pooled: torch.Tensor = self.gap(low)
        return pooled
