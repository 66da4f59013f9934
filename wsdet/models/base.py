"""The base every reference architecture builds on: one scalar per sample from pooled maps."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from wsdet._checks import check_int
from wsdet.models._blocks import Concat, ConvReLU, _check_dim, max_pool_nd
from wsdet.models.init import init_weights

__all__ = ["CountingNet"]

_DEFAULT_WIDTH = {2: 8, 3: 32}


class CountingNet(nn.Module):
    """Base of the reference counting networks: validated sizes, one forward, named layers.

    The constructor validates ``dim``, ``in_channels`` and ``width``, lets the subclass
    register its layers (:meth:`_build`, in the order that fixes the state-dict keys and the
    random draws), then initialises the weights. :meth:`forward` checks the input, and maps
    the globally pooled vector of :meth:`_pooled` through the linear ``head`` to one scalar
    per sample. Subclasses name their layers for attention methods through the class
    attributes ``_features`` and ``_gradcam`` (see :class:`wsdet._modules.WsdetLayers`).

    This class is abstract: use one of :class:`~wsdet.models.GPUnet`,
    :class:`~wsdet.models.GatedAttentionNet`, :class:`~wsdet.models.BaseCNN` or
    :class:`~wsdet.models.GPUnetNoResidual`, which all take the parameters below.

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

    Attributes
    ----------
    n_pools : int
        Number of 2x poolings on the deepest path; inputs need ``2**n_pools`` voxels per
        axis.

    Examples
    --------
    >>> from wsdet.models import BaseCNN, GPUnet
    >>> isinstance(GPUnet(dim=2), CountingNet)
    True
    >>> [BaseCNN(dim=d).width for d in (2, 3)]
    [8, 32]
    >>> BaseCNN(dim=3)(torch.zeros(1, 1, 8, 8))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (B, 1, D, H, W) for this 3D model with in_channels=1; ...
    """

    n_pools: int = 1
    #: modules whose outputs are globally pooled, in head-input order.
    _features: ClassVar[tuple[str, ...]] = ()
    #: the Grad-CAM layer.
    _gradcam: ClassVar[str] = ""

    head: nn.Linear

    def __init__(
        self,
        dim: int,
        in_channels: int = 1,
        width: int | None = None,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.width = (
            _DEFAULT_WIDTH[self.dim] if width is None else check_int("width", width, minimum=1)
        )
        self._build()
        init_weights(self, init)

    def _build(self) -> None:
        """Register the layers (subclasses)."""
        raise NotImplementedError

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input ``(B, K)`` for a validated input ``x`` (subclasses)."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        spatial = ("H", "W") if self.dim == 2 else ("D", "H", "W")
        expected = f"(B, {self.in_channels}, {', '.join(spatial)})"
        if x.ndim != 2 + self.dim or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape {expected} for this {self.dim}D model with "
                f"in_channels={self.in_channels}; got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
        min_size = 2**self.n_pools
        if min(x.shape[2:]) < min_size:
            raise ValueError(
                f"x must have spatial size >= {min_size} along every axis (the model pools by 2 "
                f"{self.n_pools} time(s)); got spatial shape {tuple(x.shape[2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict one scalar (count) per sample.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape (B, in_channels, *S), every spatial size >= ``2**n_pools``.

        Returns
        -------
        torch.Tensor
            Shape (B,).
        """
        self._check_input(x)
        out: torch.Tensor = self.head(self._pooled(x))
        return out.squeeze(-1)

    def wsdet_layers(self) -> dict[str, str | list[str]]:
        """Return the dotted names attention methods need.

        Returns
        -------
        dict
            ``"head"``: the final linear layer; ``"features"``: modules whose outputs are
            globally pooled, in head-input order; ``"gradcam"``: the Grad-CAM layer (see
            the class's description). A fresh dict each call.
        """
        return {"head": "head", "features": list(self._features), "gradcam": self._gradcam}


class _ResidualEncoderNet(CountingNet):
    """A counting network on GP-Unet's two-scale encoder with input concatenations.

    :meth:`_build_encoder` registers ``conv1``, ``conv2``, ``cat1`` (the input and the
    first-scale features), ``pool``, ``conv3``, ``conv4`` and ``cat2`` (the pooled ``cat1``
    and the second-scale features), as tabulated in :class:`~wsdet.models.GPUnet`;
    :meth:`_encode` returns the outputs of ``cat1`` (``c + w`` maps at full resolution)
    and ``cat2`` (``c + 3w`` maps at half resolution).
    """

    def _build_encoder(self) -> None:
        dim, c, w = self.dim, self.in_channels, self.width
        self.conv1 = ConvReLU(dim, c, w)
        self.conv2 = ConvReLU(dim, w, w)
        self.cat1 = Concat()
        self.pool = max_pool_nd(dim)
        self.conv3 = ConvReLU(dim, c + w, 2 * w)
        self.conv4 = ConvReLU(dim, 2 * w, 2 * w)
        self.cat2 = Concat()

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cat1, cat2)``: full-resolution ``c + w`` and half-resolution ``c + 3w`` maps."""
        high = self.cat1(x, self.conv2(self.conv1(x)))
        p = self.pool(high)
        low = self.cat2(p, self.conv4(self.conv3(p)))
        return high, low
