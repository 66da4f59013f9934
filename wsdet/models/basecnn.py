"""Base CNN for Grad, Guided backpropagation and Grad-CAM (architecture C of Dubost et al.)."""

from __future__ import annotations

import torch
from torch import nn

from wsdet.models._blocks import Concat, ConvReLU, GlobalAvgPool, _CountingNet, max_pool_nd
from wsdet.models.init import init_weights

__all__ = ["BaseCNN"]


class BaseCNN(_CountingNet):
    """Base CNN: GP-Unet's encoder, globally pooled at half resolution.

    With ``w = width``, ``c = in_channels`` and ``S`` the input spatial size::

        conv1   ConvReLU(c -> w)                       S
        conv2   ConvReLU(w -> w)                       S
        cat1    Concat[x, conv2]          c + w        S
        pool    MaxPool 2                 c + w        S // 2
        conv3   ConvReLU(c + w -> 2w)                  S // 2
        conv4   ConvReLU(2w -> 2w)                     S // 2
        cat2    Concat[pool, conv4]       c + 3w       S // 2
        gap     GlobalAvgPool             c + 3w
        head    Linear(c + 3w, 1)

    The pooled maps are the (max-pooled) image, the pooled first-scale features and the
    second-scale features: the paper's "1 + 32 + 64" maps. Grad-CAM on ``cat2`` therefore has
    half the input resolution. Parameters: 196,418 for ``dim=3`` (``w=32``), 4,322 for
    ``dim=2`` (``w=8``), with one input channel.

    Parameters
    ----------
    dim : {2, 3}
        Number of spatial dimensions.
    in_channels : int, default 1
        Input channels.
    width : int, optional
        Filters of the first convolutions ``w``; default 8 in 2D and 32 in 3D.
    init : {"default", "keras", "kaiming", "kaiming_conv"}, default "default"
        Weight initialisation, see :func:`wsdet.models.init_weights`.

    Examples
    --------
    >>> model = BaseCNN(dim=2)
    >>> sum(p.numel() for p in model.parameters())
    4322
    >>> model(torch.randn(2, 1, 9, 8)).shape
    torch.Size([2])
    >>> model.wsdet_layers()
    {'head': 'head', 'features': ['cat2'], 'gradcam': 'cat2'}
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
        self.gap = GlobalAvgPool()
        self.head = nn.Linear(c + 3 * w, 1)
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
        p = self.pool(self.cat1(x, self.conv2(self.conv1(x))))
        low = self.cat2(p, self.conv4(self.conv3(p)))
        out: torch.Tensor = self.head(self.gap(low))
        return out.squeeze(-1)

    def wsdet_layers(self) -> dict[str, str | list[str]]:
        """Return the dotted names attention methods need.

        Returns
        -------
        dict
            ``"head"``: the final linear layer; ``"features"``: modules whose outputs are
            globally pooled, in head-input order; ``"gradcam"``: the last feature maps (the
            half-resolution concatenation).
        """
        return {"head": "head", "features": ["cat2"], "gradcam": "cat2"}
