"""Gated Attention network (architecture B of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet._checks import check_int
from wsdet.models._blocks import (
    AttentionGate,
    Concat,
    GlobalAvgPool,
)
from wsdet.models.base import _ResidualEncoderNet

__all__ = ["GatedAttentionNet"]


class GatedAttentionNet(_ResidualEncoderNet):
    """GP-Unet whose two scales are merged by an additive attention gate, pooled at both scales.

    With ``w = width``, ``c = in_channels``, ``m = inter_channels`` and ``S`` the input
    spatial size::

        conv1     ConvReLU(c -> w)                        S
        conv2     ConvReLU(w -> w)                        S
        cat1      Concat[x, conv2]            c + w       S        = x (gated maps)
        pool      MaxPool 2                   c + w       S // 2
        conv3     ConvReLU(c + w -> 2w)                   S // 2
        conv4     ConvReLU(2w -> 2w)                      S // 2
        cat2      Concat[pool, conv4]         c + 3w      S // 2   = g (gating maps)
        gate      AttentionGate(x=cat1, g=cat2, m)
                    theta: conv k2 s2, no bias (c + w -> m)  S // 2
                    phi:   conv 1x1 (c + 3w -> m)            S // 2
                    relu, psi: conv 1x1 (m -> 1), sigmoid    S // 2
                    upsample alpha, (bi/tri)linear         S
                    out = cat1 * alpha        c + w       S
        gap_high  GlobalAvgPool(gate)         c + w
        gap_low   GlobalAvgPool(cat2)         c + 3w
        cat_pool  Concat[gap_high, gap_low]   2c + 4w
        head      Linear(2c + 4w, 1)

    Reconstruction choices (the paper only says "GP-Unet with an attention gate instead of
    upsampling, concatenation and convolution; both scales globally pooled into one linear
    layer; sigmoid normalisation"):

    * The gated high-resolution maps ``x`` are GP-Unet's pre-pooling concatenation ``cat1``
      (the image and the first-scale features) and the gating signal ``g`` is GP-Unet's
      low-resolution concatenation ``cat2`` — exactly the two tensors GP-Unet merges by
      upsampling and concatenation. The image channel is thus kept at full resolution, as
      in GP-Unet.
    * The gate follows Oktay et al.'s reference ``GridAttentionBlock``: ``theta`` a strided
      2x2(x2) convolution without bias, ``phi`` and ``psi`` 1x1 convolutions with bias,
      additive ``ReLU(theta(x) + phi(g))``, standard sigmoid (the paper replaces Schlemper's
      custom normalisation by it), coefficients upsampled (bi/tri)linearly with
      ``align_corners=False``. The intermediate width defaults to ``m = w``.
    * No convolution follows the gate (the gate *replaces* GP-Unet's upsample-concat-conv, and
      Oktay's output 1x1 conv + BatchNorm would add a normalisation layer absent from every
      other architecture): the gated maps ``cat1 * alpha`` are globally pooled directly.
    * The pooled vectors are concatenated high-resolution first, then low-resolution, so
      ``head.weight[:, :c + w]`` weighs ``gate`` and ``head.weight[:, c + w:]`` weighs
      ``cat2``. The multi-scale CAM is the sum of both per-scale CAMs (the low-resolution one
      upsampled); the Grad-CAM layer is the full-resolution ``gate``.

    Weights: 208,068 for ``dim=3`` (``w=32``), 4,836 for ``dim=2`` (``w=8``), with one input
    channel and the default ``inter_channels``.

    Parameters
    ----------
    dim, in_channels, width, init
        As for :class:`~wsdet.models.CountingNet` (default width 8 in 2D and 32 in 3D).
    inter_channels : int, optional
        Channels of the gate's intermediate representation; default ``w``.

    Examples
    --------
    >>> model = GatedAttentionNet(dim=2)
    >>> model(torch.randn(2, 1, 13, 17)).shape, sum(p.numel() for p in model.parameters())
    (torch.Size([2]), 4836)

    The head weighs ``c + w = 9`` gated maps, then ``c + 3w = 25`` low-resolution maps:

    >>> model.wsdet_layers()["features"], model.head.in_features
    (['gate', 'cat2'], 34)
    >>> GatedAttentionNet(dim=2, inter_channels=3).gate.psi.in_channels
    3
    """

    n_pools = 1
    _features = ("gate", "cat2")
    _gradcam = "gate"

    def __init__(
        self,
        dim: int,
        in_channels: int = 1,
        width: int | None = None,
        init: str = "default",
        inter_channels: int | None = None,
    ) -> None:
        # Read by _build, which the base constructor calls once the width is known.
        self._inter_channels = inter_channels
        super().__init__(dim, in_channels, width, init)

    def _build(self) -> None:
        c, w = self.in_channels, self.width
        m = w if self._inter_channels is None else self._inter_channels
        self.inter_channels = check_int("inter_channels", m, minimum=1)
        self._build_encoder()
        self.gate = AttentionGate(
            self.dim, x_channels=c + w, g_channels=c + 3 * w, inter_channels=m
        )
        self.gap_high = GlobalAvgPool()
        self.gap_low = GlobalAvgPool()
        self.cat_pool = Concat()
        self.head = nn.Linear(2 * c + 4 * w, 1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        high, low = self._encode(x)
        gated = self.gate(high, low)
        pooled: torch.Tensor = self.cat_pool(self.gap_high(gated), self.gap_low(low))
        return pooled
