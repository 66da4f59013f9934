"""GP-Unet (architecture A of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet.models._blocks import (
    Concat,
    ConvReLU,
    GlobalAvgPool,
    UpsampleTo,
    _CountingNet,
    max_pool_nd,
)
from wsdet.models.init import init_weights

__all__ = ["GPUnet"]


class GPUnet(_CountingNet):
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
    conv5[:, k]`` at full input resolution. Parameters: 308,705 for ``dim=3`` (``w=32``),
    6,761 for ``dim=2`` (``w=8``), with one input channel.

    Parameters
    ----------
    dim : {2, 3}
        Number of spatial dimensions.
    in_channels : int, default 1
        Input channels.
    width : int, optional
        Filters of the first convolutions ``w``; default 8 in 2D and 32 in 3D (the paper uses
        four times fewer maps in 2D).
    init : {"default", "keras", "kaiming", "kaiming_conv"}, default "default"
        Weight initialisation, see :func:`wsdet.models.init_weights`.

    Examples
    --------
    >>> model = GPUnet(dim=2)
    >>> sum(p.numel() for p in model.parameters())
    6761
    >>> model(torch.randn(3, 1, 13, 17)).shape
    torch.Size([3])
    >>> model.wsdet_layers()
    {'head': 'head', 'features': ['conv5'], 'gradcam': 'conv5'}
    """

    n_pools = 1

    def __init__(
        self,
        dim: int,
        in_channels: int = 1,
        width: int | None = None,
        init: str = "default",
    ) -> None:
        super().__init__(dim, in_channels, width)
        c, w = self.in_channels, self.width
        self.conv1 = ConvReLU(dim, c, w)
        self.conv2 = ConvReLU(dim, w, w)
        self.cat1 = Concat()
        self.pool = max_pool_nd(dim)
        self.conv3 = ConvReLU(dim, c + w, 2 * w)
        self.conv4 = ConvReLU(dim, 2 * w, 2 * w)
        self.cat2 = Concat()
        self.up = UpsampleTo("nearest")
        self.cat3 = Concat()
        self.conv5 = ConvReLU(dim, 2 * c + 4 * w, w)
        self.gap = GlobalAvgPool()
        self.head = nn.Linear(w, 1)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict one scalar (count) per sample.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape (B, in_channels, *S), every spatial size >= 2.

        Returns
        -------
        torch.Tensor
            Shape (B,).
        """
        self._check_input(x)
        skip = self.cat1(x, self.conv2(self.conv1(x)))
        p = self.pool(skip)
        low = self.cat2(p, self.conv4(self.conv3(p)))
        merged = self.cat3(skip, self.up(low, skip))
        out: torch.Tensor = self.head(self.gap(self.conv5(merged)))
        return out.squeeze(-1)

    def wsdet_layers(self) -> dict[str, str | list[str]]:
        """Return the dotted names attention methods need.

        Returns
        -------
        dict
            ``"head"``: the final linear layer; ``"features"``: modules whose outputs are
            globally pooled, in head-input order; ``"gradcam"``: the last feature maps.
        """
        return {"head": "head", "features": ["conv5"], "gradcam": "conv5"}
