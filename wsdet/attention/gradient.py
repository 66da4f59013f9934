"""Input-gradient attention: Grad (Simonyan et al.) and guided backprop (Springenberg et al.).

``grad``: ``M = ∂ŷ/∂I``, the signed derivative of the explained output with respect to
the input image, one backward pass after one forward pass.

``guided_backprop``: the same backward pass, except that at every ReLU the signal is
zeroed where the forward input was ``<= 0`` (as plain backpropagation does) *or* where the
incoming gradient is negative. ReLUs are guided wherever they are called from: ``nn.ReLU``
(in place or not, a module reused several times) and the functional ``F.relu``,
``F.relu_``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_``. A
:class:`torch.overrides.TorchFunctionMode` swaps these calls for a guided autograd
function for the duration of the forward pass only. Other rectifier-like activations
(LeakyReLU, GELU, SiLU, ELU, PReLU, Softplus, Mish, Hardswish, ...) cannot be guided; a
warning names those the forward pass used.

Both methods differentiate with :func:`torch.autograd.grad` with respect to a detached
copy of the input, so parameter ``.grad`` fields are never touched, frozen parameters are
fine, and they work inside a caller's ``torch.no_grad()`` or ``torch.inference_mode()``
(the computation runs in a local ``inference_mode(False)`` + ``enable_grad()`` region;
an input created under inference mode is copied once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsdet.attention.base import (
    AttentionMethod,
    Target,
    check_channel,
    instrumented,
    register_method,
    select_target,
    warn_once,
)
from wsdet.attention.pooling import CallMode

__all__ = ["ChannelReduce", "GuidedBackprop", "InputGradient", "reduce_channels"]

#: How a ``(B, C, *S)`` input gradient becomes a ``(B, *S)`` map.
ChannelReduce = Literal["sum", "mean", "max_abs"] | int

_REDUCTIONS = ("sum", "mean", "max_abs")


def check_channel_reduce(value: object) -> ChannelReduce:
    """Validate a ``channel_reduce`` option (``"sum"``, ``"mean"``, ``"max_abs"`` or an int)."""
    if isinstance(value, str):
        if value not in _REDUCTIONS:
            raise ValueError(
                f"channel_reduce must be one of {list(_REDUCTIONS)} or a channel index, "
                f"got {value!r}"
            )
        return value  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(
        f"channel_reduce must be one of {list(_REDUCTIONS)} or an int channel index, got {value!r}"
    )


def reduce_channels(grad: Tensor, how: ChannelReduce = "sum") -> Tensor:
    """Reduce a ``(B, C, *S)`` input gradient to a signed ``(B, *S)`` map.

    Parameters
    ----------
    grad : Tensor
        Gradient with respect to the input, ``(B, C, *S)``.
    how : {"sum", "mean", "max_abs"} or int
        ``"sum"``: ``Σ_c ∂ŷ/∂I_c``, the derivative of ŷ when every channel of a voxel is
        brightened by the same amount (the default); ``"mean"``: the same divided by
        ``C``; ``"max_abs"``: the signed value of the channel of largest magnitude (its
        absolute value is Simonyan et al.'s ``max_c |∂ŷ/∂I_c|``); an int: that channel.
        With one channel every rule returns the gradient itself.

    Returns
    -------
    Tensor
        ``(B, *S)``.

    Examples
    --------
    >>> import torch
    >>> g = torch.tensor([[[1.0, -4.0]], [[-3.0, 2.0]]]).reshape(1, 2, 2)
    >>> reduce_channels(g, "sum").tolist(), reduce_channels(g, "max_abs").tolist()
    ([[-2.0, -2.0]], [[-3.0, -4.0]])
    """
    how = check_channel_reduce(how)
    c = grad.shape[1]
    if isinstance(how, int):
        return grad[:, check_channel("channel_reduce", how, c)]
    if c == 1:
        return grad[:, 0]
    if how == "sum":
        return grad.sum(1)
    if how == "mean":
        return grad.mean(1)
    idx = grad.abs().argmax(1, keepdim=True)
    return grad.gather(1, idx).squeeze(1)


@contextlib.contextmanager
def autograd_region(x: Tensor) -> Iterator[Tensor]:
    """Enable autograd locally, also under a caller's ``no_grad`` or ``inference_mode``.

    Yields ``x``, or a normal (non-inference) copy of it when it was created under
    inference mode, since inference tensors cannot be saved for backward.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield x.clone() if x.is_inference() else x


def _differentiate(y: Tensor, wrt: Tensor, what: str) -> Tensor:
    """``Σ_b ∂y_b/∂wrt`` (per-sample gradients when samples are independent)."""
    if not y.requires_grad:
        raise ValueError(
            f"the explained output does not depend differentiably on {what}: it has no "
            "autograd graph (does the model detach its output or run under no_grad?)"
        )
    (g,) = torch.autograd.grad(y, wrt, grad_outputs=torch.ones_like(y), allow_unused=True)
    if g is None:
        raise ValueError(f"the explained output does not depend on {what}")
    return g


@register_method("grad")
class InputGradient(AttentionMethod):
    """Grad (Simonyan et al. 2014): the signed input gradient ``M = ∂ŷ/∂I``.

    Parameters
    ----------
    model : torch.nn.Module
        Any differentiable network taking ``(B, C, *S)``.
    target : None, int or callable
        The explained scalar per sample (see :func:`~wsdet.attention.base.select_target`).
    channel_reduce : {"sum", "mean", "max_abs"} or int
        How multi-channel input gradients become one map (see :func:`reduce_channels`);
        default ``"sum"``.

    Notes
    -----
    The map of a sample is the gradient of its own output only (``Σ_b ŷ_b`` is
    differentiated, whose derivative with respect to sample ``i`` is ``∂ŷ_i/∂I_i`` as long as
    samples do not interact, e.g. BatchNorm in eval mode). One forward and one backward
    pass; parameter gradients are neither computed nor stored.

    Examples
    --------
    For ``y = w · mean(x) + b`` every voxel of a 4x4 image has ``∂y/∂x = w / 16``:

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    >>> maps, y = InputGradient(net)(torch.rand(2, 1, 4, 4))
    >>> maps.shape, bool(torch.allclose(maps, net[0].weight.detach() / 16))
    (torch.Size([2, 4, 4]), True)
    """

    def __init__(
        self, model: nn.Module, *, target: Target = None, channel_reduce: ChannelReduce = "sum"
    ) -> None:
        super().__init__(model, target=target)
        self.channel_reduce = check_channel_reduce(channel_reduce)

    def _forward(self, x: Tensor) -> Any:
        return self.model(x)

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(maps (B, *S), output (B,))`` from one forward and one backward pass."""
        b = x.shape[0]
        with instrumented(self.model), autograd_region(x) as xg:
            leaf = xg.detach().requires_grad_()
            output = self._forward(leaf)
            y = select_target(output, self.target, b)
            g = _differentiate(y, leaf, "the input x")
        maps = reduce_channels(g, self.channel_reduce)
        return maps.detach().to(x.dtype), y.detach()


# --------------------------------------------------------------------- guided backprop


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward keeps only positive gradients at positive inputs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return _guided_backward(grad, out)


def _guided_backward(grad: Tensor, out: Tensor) -> Tensor:
    """``g · [out > 0] · [g > 0]``: ReLU's own backward, then negatives zeroed (2 passes)."""
    masked: Tensor = torch.ops.aten.threshold_backward(grad, out, 0)
    return masked.relu_()


class _GuidedReLUInplace(_GuidedReLU):
    """In-place variant of :class:`_GuidedReLU` (``relu_``, ``ReLU(inplace=True)``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x


def _relu_table() -> dict[Any, bool]:
    """ReLU entry points → whether they work in place (``F.relu`` decides by its kwarg)."""
    return {
        F.relu: False,
        torch.relu: False,
        Tensor.relu: False,
        torch.relu_: True,
        Tensor.relu_: True,
    }


_UNGUIDED_NAMES = (
    "leaky_relu",
    "leaky_relu_",
    "prelu",
    "rrelu",
    "rrelu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "elu",
    "elu_",
    "celu",
    "celu_",
    "selu",
    "selu_",
    "gelu",
    "silu",
    "mish",
    "softplus",
    "hardswish",
    "threshold",
    "threshold_",
)


def _unguided_table() -> dict[Any, str]:
    """Functional activations guided backprop cannot guide → their names."""
    table: dict[Any, str] = {}
    for n in _UNGUIDED_NAMES:
        for ns in (F, torch, torch._C._nn):
            fn = getattr(ns, n, None)
            if fn is not None:
                table[fn] = n.rstrip("_")
    return table


_RELU_FUNCS = _relu_table()
_UNGUIDED_FUNCS = _unguided_table()

#: Activation modules whose gradients guided backprop leaves unguided.
UNGUIDED_MODULES: tuple[type[nn.Module], ...] = (
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.Hardtanh,  # includes ReLU6
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.Threshold,
)


def _lookup(table: dict[Any, Any], func: Callable[..., Any]) -> Any:
    try:
        return table.get(func)
    except TypeError:  # an unhashable callable
        return None


class _GuideReLUs(CallMode):
    """Swap every ReLU call for the guided autograd function; note unguided activations."""

    def __init__(self) -> None:
        super().__init__()
        self.unguided: dict[str, None] = {}

    def on_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Guide a ReLU call, note an unguided activation, run anything else as is."""
        inplace = _lookup(_RELU_FUNCS, func)
        if inplace is not None and args and isinstance(args[0], Tensor):
            if func is F.relu:
                inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            fn = _GuidedReLUInplace if inplace else _GuidedReLU
            return fn.apply(args[0])  # type: ignore[no-untyped-call]
        name = _lookup(_UNGUIDED_FUNCS, func)
        if name is not None:
            self.unguided[name] = None
        return func(*args, **kwargs)


@register_method("guided_backprop")
class GuidedBackprop(InputGradient):
    """Guided backpropagation (Springenberg et al. 2015): ReLU-guided input gradient.

    At every ReLU, the backward signal is ``g_in = g_out · [x > 0] · [g_out > 0]``
    (plain backpropagation keeps ``g_out · [x > 0]``); everything else is differentiated
    normally. The map is signed like :class:`InputGradient`'s, although it is mostly
    non-negative: negative values come only from layers after the last ReLU.

    Parameters
    ----------
    model : torch.nn.Module
        Any differentiable network taking ``(B, C, *S)``.
    target : None, int or callable
        The explained scalar per sample (see :class:`InputGradient`).
    channel_reduce : {"sum", "mean", "max_abs"} or int
        Multi-channel reduction, default ``"sum"`` (see :func:`reduce_channels`).

    Notes
    -----
    Covered: ``nn.ReLU`` (also ``inplace=True`` and one module called several times),
    ``F.relu`` (also ``inplace=True``), ``F.relu_``, ``torch.relu``, ``torch.relu_``,
    ``Tensor.relu``, ``Tensor.relu_``. The activations listed in
    :data:`UNGUIDED_MODULES` and their functional forms are differentiated normally; a
    ``UserWarning`` (once per method object) names those the forward pass used.

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import BaseCNN
    >>> det = wsdet.Detector(BaseCNN(dim=2), method="guided_backprop")
    >>> det.attention(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 16, 16])
    """

    def _forward(self, x: Tensor) -> Any:
        mode = _GuideReLUs()
        with mode:
            output = self.model(x)
        if mode.unguided:
            mods = [
                f"{n!r} ({type(m).__name__})"
                for n, m in self.model.named_modules()
                if isinstance(m, UNGUIDED_MODULES)
            ]
            where = f" (modules: {', '.join(mods)})" if mods else ""
            warn_once(
                self,
                "guided_backprop guides only ReLU activations; the forward pass also "
                f"called {', '.join(mode.unguided)}{where}, through which gradients flow "
                "unguided (plain backpropagation)",
            )
        return output
