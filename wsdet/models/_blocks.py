"""Building blocks shared by the reference architectures.

Every operation that attention methods may want to observe (concatenation, upsampling,
global pooling, the attention gate) is an :class:`torch.nn.Module`, so that forward hooks
can be attached to it by dotted name.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wsdet._checks import check_choice, check_int
from wsdet._resample import fit_by_edge

__all__ = [
    "AttentionGate",
    "Concat",
    "ConvReLU",
    "GlobalAvgPool",
    "UpsampleTo",
    "conv_nd",
    "max_pool_nd",
]

UpsampleMode = Literal["nearest", "linear"]

_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_dim(dim: object) -> int:
    """``dim`` as an int, 2 or 3 (the number of spatial dimensions)."""
    value = check_int("dim", dim)
    check_choice("dim", value, (2, 3))
    return value


def conv_nd(
    dim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    bias: bool = True,
) -> nn.Conv2d | nn.Conv3d:
    """Create a 2D or 3D convolution with "same" zero padding for odd kernels.

    Parameters
    ----------
    dim : int
        Number of spatial dimensions, 2 or 3.
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int, default 3
        Cubic kernel size. Odd kernels get ``kernel_size // 2`` zero padding (output size equals
        input size at stride 1); even kernels get no padding.
    stride : int, default 1
        Convolution stride.
    bias : bool, default True
        Whether the convolution has a bias.

    Returns
    -------
    torch.nn.Conv2d or torch.nn.Conv3d

    Examples
    --------
    >>> conv_nd(3, 1, 4)
    Conv3d(1, 4, kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1))
    """
    dim = _check_dim(dim)
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size),
        ("stride", stride),
    ):
        check_int(name, value, minimum=1)
    padding = kernel_size // 2 if kernel_size % 2 == 1 else 0
    cls = nn.Conv2d if dim == 2 else nn.Conv3d
    return cls(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        bias=bias,
        padding_mode="zeros",
    )


def max_pool_nd(dim: int, kernel_size: int = 2) -> nn.MaxPool2d | nn.MaxPool3d:
    """Create a 2D or 3D max pooling layer with stride equal to its size (floor mode).

    Parameters
    ----------
    dim : int
        Number of spatial dimensions, 2 or 3.
    kernel_size : int, default 2
        Pooling size and stride.

    Returns
    -------
    torch.nn.MaxPool2d or torch.nn.MaxPool3d

    Examples
    --------
    >>> max_pool_nd(2)(torch.zeros(1, 1, 5, 4)).shape
    torch.Size([1, 1, 2, 2])
    """
    dim = _check_dim(dim)
    check_int("kernel_size", kernel_size, minimum=1)
    return nn.MaxPool2d(kernel_size) if dim == 2 else nn.MaxPool3d(kernel_size)


class ConvReLU(nn.Sequential):
    """A zero-padded convolution followed by its own (not in-place) ReLU.

    The children are named ``conv`` and ``relu``; the block's output is the rectified map.

    Parameters
    ----------
    dim, in_channels, out_channels
        As for :func:`conv_nd`.
    kernel_size : int, default 3
        Cubic kernel size; must be odd, so that the spatial size is preserved.

    Examples
    --------
    >>> block = ConvReLU(2, 1, 8)
    >>> block(torch.randn(2, 1, 7, 9)).shape
    torch.Size([2, 8, 7, 9])
    >>> bool((block(torch.randn(1, 1, 5, 5)) >= 0).all())
    True
    """

    conv: nn.Conv2d | nn.Conv3d
    relu: nn.ReLU

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        if isinstance(kernel_size, int) and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to preserve spatial size; got {kernel_size}")
        super().__init__(
            OrderedDict(
                [
                    ("conv", conv_nd(dim, in_channels, out_channels, kernel_size)),
                    ("relu", nn.ReLU(inplace=False)),
                ]
            )
        )


class Concat(nn.Module):
    """Concatenate tensors along one dimension (channels by default).

    Parameters
    ----------
    dim : int, default 1
        Dimension along which to concatenate.

    Examples
    --------
    >>> Concat()(torch.zeros(2, 1, 4, 4), torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 4, 4, 4])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensors`` along ``self.dim``."""
        if len(tensors) == 0:
            raise ValueError("Concat needs at least one tensor")
        return torch.cat(tensors, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class UpsampleTo(nn.Module):
    """Upsample a pooled map by ``factor`` and fit it to the spatial size of a reference.

    A decoder joins a map pooled ``factor`` times (sizes floored, as by max pooling or a
    stride-``factor`` convolution) to the map it was pooled from. Coarse voxel ``k`` covers
    the reference voxels ``factor * k`` to ``factor * k + factor - 1``, at every size: the
    map is upsampled by exactly ``factor`` and the remainder the floor dropped (fewer than
    ``factor`` voxels at the end of an axis) is filled with its last voxels (nearest) or
    clamped (linear), so that positions stay aligned; a ceil-pooled map is cropped at the
    end instead. ``factor=None`` stretches the map to the reference size instead (as
    ``F.interpolate(size=...)``); at sizes that are not multiples of the pooling it shifts
    positions by up to one coarse voxel (e.g. by one input slice for 11 slices pooled once),
    which moves a class activation map off its objects.

    Parameters
    ----------
    mode : {"nearest", "linear"}, default "nearest"
        ``"nearest"`` repeats each coarse voxel (as Keras ``UpSampling``). ``"linear"``
        resolves to linear / bilinear / trilinear for 1 / 2 / 3 spatial dimensions with
        ``align_corners=False`` (coarse voxel centres at the centres of the blocks they
        cover).
    factor : int, tuple of int, or None, default 2
        The pooling factor between ``ref`` and ``x``: one for every axis, or one per
        spatial axis (e.g. ``(1, 2, 2)`` after in-plane pooling of anisotropic volumes);
        ``None``: stretch to the reference size.

    Raises
    ------
    ValueError
        In ``forward``, when ``ref``'s size along an axis is not ``factor`` times ``x``'s
        up to fewer than ``factor`` voxels (``x`` is not ``ref`` pooled by ``factor``).

    Examples
    --------
    >>> up = UpsampleTo("nearest")
    >>> up(torch.zeros(1, 2, 3, 4), torch.zeros(1, 5, 7, 9)).shape
    torch.Size([1, 2, 7, 9])
    >>> up(torch.tensor([[[0.0, 1.0, 2.0]]]), torch.zeros(1, 1, 7)).tolist()
    [[[0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0]]]
    >>> UpsampleTo(factor=None)(torch.tensor([[[0.0, 1.0, 2.0]]]), torch.zeros(1, 1, 7)).tolist()
    [[[0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]]]
    """

    def __init__(
        self, mode: UpsampleMode = "nearest", factor: int | tuple[int, ...] | None = 2
    ) -> None:
        super().__init__()
        if mode not in ("nearest", "linear"):
            raise ValueError(f"mode must be 'nearest' or 'linear'; got {mode!r}")
        if factor is not None:
            values = factor if isinstance(factor, tuple) else (factor,)
            if not values or any(check_int("factor", f) < 1 for f in values):
                raise ValueError(
                    f"factor must be an int >= 1, a tuple of such ints, or None; got {factor}"
                )
        self.mode: UpsampleMode = mode
        self.factor = factor

    def _resize(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=_LINEAR_MODES[x.ndim - 2], align_corners=False)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` (B, C, *s) to ``ref.shape[2:]``."""
        if x.ndim < 3 or x.ndim > 5 or ref.ndim != x.ndim:
            raise ValueError(
                "x and ref must both have shape (B, C, *spatial) with 1-3 spatial dims; "
                f"got {tuple(x.shape)} and {tuple(ref.shape)}"
            )
        size = tuple(int(s) for s in ref.shape[2:])
        if self.factor is None:
            return self._resize(x, size)
        low = tuple(int(s) for s in x.shape[2:])
        fs = self.factor if isinstance(self.factor, tuple) else (self.factor,) * len(low)
        if len(fs) != len(low):
            raise ValueError(
                f"UpsampleTo(factor={self.factor}): one factor per spatial axis expected, "
                f"x has {len(low)}"
            )
        pairs = enumerate(zip(size, low, fs, strict=True))
        bad = [a for a, (n, m, f) in pairs if abs(n - f * m) >= f]
        if bad:
            raise ValueError(
                f"UpsampleTo(factor={self.factor}): ref's spatial size {list(size)} is not the "
                f"factor times x's {list(low)} up to fewer voxels than the factor along axes "
                f"{bad} (x is not ref pooled by it); pass the right factor(s), or factor=None "
                "to stretch"
            )
        scaled = tuple(f * m for m, f in zip(low, fs, strict=True))
        # the floor's remainder: repeat the last voxel; ceil: crop
        return fit_by_edge(self._resize(x, scaled), size, first_axis=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, factor={self.factor}"


class GlobalAvgPool(nn.Module):
    """Average every channel over all spatial positions: (B, C, *S) -> (B, C).

    Examples
    --------
    >>> GlobalAvgPool()(torch.ones(2, 3, 4, 5)).shape
    torch.Size([2, 3])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the spatial mean of ``x`` per sample and channel."""
        if x.ndim < 3:
            raise ValueError(f"x must have shape (B, C, *spatial); got {tuple(x.shape)}")
        return x.flatten(2).mean(dim=2)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018; Schlemper et al. 2019) with sigmoid.

    Given high-resolution maps ``x`` (B, Cx, *S) and coarser gating maps ``g``
    (B, Cg, *S//2)::

        q     = ReLU(theta(x) + phi(g))          # at the gating resolution
        alpha = sigmoid(psi(q))                  # (B, 1, *S//2), in (0, 1)
        alpha = upsample(alpha, x)               # (bi/tri)linear, by 2, aligned
        out   = x * alpha                        # broadcast over channels

    ``theta`` is a stride-2 convolution with kernel 2 and no bias (the bias of ``phi`` makes a
    second one redundant), as in the reference implementation of Oktay et al.; ``phi`` and
    ``psi`` are 1x1 convolutions with bias. Stride-2 ``theta`` floors odd sizes exactly as
    2x max pooling does, so ``theta(x)`` and ``g`` match whenever ``g`` comes from a pooled
    copy of ``x``. The gated map is returned; the upsampled coefficients are the output of the
    ``upsample`` submodule (hookable), or of :meth:`attention_coefficients`.

    Parameters
    ----------
    dim : int
        Number of spatial dimensions, 2 or 3.
    x_channels : int
        Channels of the high-resolution maps ``x``.
    g_channels : int
        Channels of the gating maps ``g``.
    inter_channels : int
        Channels of the intermediate (additive) representation.

    Examples
    --------
    >>> gate = AttentionGate(2, x_channels=3, g_channels=5, inter_channels=4)
    >>> x, g = torch.randn(2, 3, 9, 7), torch.randn(2, 5, 4, 3)
    >>> gate(x, g).shape
    torch.Size([2, 3, 9, 7])
    >>> alpha = gate.attention_coefficients(x, g)
    >>> alpha.shape, bool(((alpha > 0) & (alpha < 1)).all())
    (torch.Size([2, 1, 9, 7]), True)
    """

    def __init__(self, dim: int, x_channels: int, g_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        self.theta = conv_nd(dim, x_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi = conv_nd(dim, g_channels, inter_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=False)
        self.psi = conv_nd(dim, inter_channels, 1, kernel_size=1)
        self.sigmoid = nn.Sigmoid()
        self.upsample = UpsampleTo("linear")

    def attention_coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Return the gate coefficients ``alpha`` (B, 1, *x.shape[2:]), each in (0, 1).

        Parameters
        ----------
        x : torch.Tensor
            High-resolution maps, shape (B, x_channels, *S).
        g : torch.Tensor
            Gating maps, shape (B, g_channels, *S') with S' = S // 2.

        Returns
        -------
        torch.Tensor
            Sigmoid coefficients upsampled to the spatial size of ``x``.
        """
        n = 2 + self.dim
        if x.ndim != n or g.ndim != n or x.shape[0] != g.shape[0]:
            raise ValueError(
                f"x and g must be {n}-D tensors (B, C, *spatial) with the same batch size; "
                f"got x {tuple(x.shape)} and g {tuple(g.shape)}"
            )
        tx = self.theta(x)
        if tx.shape[2:] != g.shape[2:]:
            raise ValueError(
                f"g must have spatial size {tuple(tx.shape[2:])} (x's size halved, floored) "
                f"for x of shape {tuple(x.shape)}; got g of shape {tuple(g.shape)}"
            )
        q = self.relu(tx + self.phi(g))
        alpha = self.sigmoid(self.psi(q))
        out: torch.Tensor = self.upsample(alpha, x)
        return out

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Return ``x`` multiplied by its attention coefficients (same shape as ``x``)."""
        return x * self.attention_coefficients(x, g)
