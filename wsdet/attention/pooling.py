"""Watching a forward pass: which tensors are globally pooled, and which linear layers run.

CAM needs the tensor that is globally average-pooled into the model's linear head. Users
write that pooling in many ways: a pooling module, ``F.adaptive_avg_pool2d(t, 1)``,
``F.avg_pool2d(t, t.shape[2:])``, ``t.mean((2, 3))``, ``t.sum(dim=(-3, -2, -1))``,
``torch.flatten(t, 2).mean(-1)``, often after a functional or in-place ``F.relu``. Module
hooks see none of the functional forms, so :class:`ForwardWatch` looks at every torch
function call of the forward pass instead (a :class:`torch.overrides.TorchFunctionMode`,
thread-local and active only for the call): it reports each *global pooling* — a mean or
sum over all spatial positions of a ``(B, C, *S)`` tensor — with the pooled tensor exactly
as the pooling received it, and each ``F.linear`` call (``nn.Linear`` calls it) with its
weight, bias, input and output.

A ``TorchFunctionMode`` was chosen over ``torch.fx``/``torch.export`` tracing because it
runs the user's real Python forward on the real input: data-dependent control flow,
tuple/dict outputs, in-place ops and any module structure work unchanged, nothing is
compiled, and tensors are seen with the values they hold at the moment they are used.

Pooling calls are numbered in the order the forward pass makes them (``index``), so a
later pass can pick the same call again (for capture, or to substitute its output).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["CallMode", "ForwardWatch", "PoolCall", "tensor_version"]


@dataclass(frozen=True)
class PoolCall:
    """One global pooling seen in a forward pass.

    Attributes
    ----------
    index : int
        Its rank among the global poolings of the forward pass (0 = first).
    op : str
        The function that pooled (``"adaptive_avg_pool2d"``, ``"mean"``, ``"sum"``, ...).
    kind : str
        ``"mean"``, ``"sum"`` or ``"max"`` (max pooling is reported, never used by CAM).
    shape : tuple of int
        Shape ``(B, C, *S)`` of the pooled tensor.
    """

    index: int
    op: str
    kind: str
    shape: tuple[int, ...]

    @property
    def positions(self) -> int:
        """Number of spatial positions pooled over."""
        return math.prod(self.shape[2:])

    @property
    def scale(self) -> float:
        """Factor from a spatial mean to the pooled value (1 for a mean, ``N`` for a sum)."""
        return float(self.positions) if self.kind == "sum" else 1.0


#: ``on_pool(call, features, pooled) -> replacement or None``; ``pooled`` is ``(B, C)``.
PoolHook = Callable[[PoolCall, Tensor, Tensor], "Tensor | None"]
#: ``on_linear(index, input, weight, bias, output)``.
LinearHook = Callable[[int, Tensor, Tensor, "Tensor | None", Tensor], None]


def _dims(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (tuple, list, torch.Size)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    return None


def _all_ones(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value == 1
    if isinstance(value, (tuple, list, torch.Size)):
        return all(v == 1 for v in value)
    return False


def _arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int, name: str) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(name)


_ADAPTIVE_AVG = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch._C._nn.adaptive_avg_pool2d,
    torch._C._nn.adaptive_avg_pool3d,
}
_ADAPTIVE_MAX = {F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_AVG_POOL = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_MEAN = {torch.mean, Tensor.mean}
_SUM = {torch.sum, Tensor.sum}
_AMAX = {torch.amax, Tensor.amax}
_FLATTEN = {torch.flatten, Tensor.flatten}
_RESHAPE = {torch.reshape, Tensor.reshape, Tensor.view}
_LINEAR = {F.linear, torch._C._nn.linear}
# calls that return a tensor without computing anything from it
_METADATA = {Tensor.__getitem__, Tensor.detach, Tensor.contiguous, Tensor.to, Tensor.clone}


def _member(table: set[Any], func: Any) -> bool:
    try:
        return func in table
    except TypeError:  # an unhashable callable
        return False


def _pooled_operand(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Tensor, str]:
    """The tensor a call pools over *all* its dims after the first two, and the kind.

    Raises ``LookupError`` when the call is not such a pooling.
    """
    t = args[0] if args else kwargs.get("input")
    if not isinstance(t, Tensor) or t.ndim < 3:
        raise LookupError
    nd = t.ndim
    if _member(_ADAPTIVE_AVG, func) or _member(_ADAPTIVE_MAX, func):
        if _all_ones(_arg(args, kwargs, 1, "output_size")):
            return t, "max" if _member(_ADAPTIVE_MAX, func) else "mean"
        raise LookupError
    if _member(_AVG_POOL, func):
        k = _arg(args, kwargs, 1, "kernel_size")
        ks = (k,) * (nd - 2) if isinstance(k, int) else tuple(k) if k is not None else ()
        stride = _arg(args, kwargs, 2, "stride")
        pad = _arg(args, kwargs, 3, "padding")
        if (
            ks == tuple(t.shape[2:])
            and stride in (None, [], (), k, ks)
            and (pad is None or _all_zero(pad))
            and kwargs.get("divisor_override") is None
        ):
            return t, "mean"
        raise LookupError
    kind = (
        "mean"
        if _member(_MEAN, func)
        else "sum"
        if _member(_SUM, func)
        else "max"
        if _member(_AMAX, func)
        else None
    )
    if kind is None:
        raise LookupError
    dims = _dims(_arg(args, kwargs, 1, "dim"))
    if dims is None:
        raise LookupError
    if sorted(d % nd for d in dims) != list(range(2, nd)):
        raise LookupError
    return t, kind


def _all_zero(value: Any) -> bool:
    if isinstance(value, int):
        return value == 0
    return all(v == 0 for v in value)


def tensor_version(t: Tensor) -> int:
    """``t``'s in-place version counter (``-1`` for inference tensors, which have none)."""
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return -1


class CallMode(TorchFunctionMode):
    """A :class:`~torch.overrides.TorchFunctionMode` that hands every torch call of the
    block to :meth:`on_call` (with ``kwargs`` always a dict), which returns its result."""

    def on_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run (or replace) ``func(*args, **kwargs)``; subclasses observe or substitute."""
        return func(*args, **kwargs)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self.on_call(func, args, {} if kwargs is None else kwargs)


class ForwardWatch(CallMode):
    """Report global poolings and linear calls of the forward pass run inside it.

    Parameters
    ----------
    batch : int
        The batch size ``B`` of the input; only ``(B, C, *S)`` tensors count.
    ndim : int
        ``x.ndim`` of the input (4 in 2D, 5 in 3D): pooled tensors have as many dims.
    on_pool : callable, optional
        ``on_pool(call, features, pooled)`` for each global pooling; ``features`` is the
        pooled tensor (as the pooling received it) and ``pooled`` the result as ``(B, C)``.
        A tensor returned replaces the result of the pooling (same shape as ``pooled``).
    on_linear : callable, optional
        ``on_linear(index, input, weight, bias, output)`` for each ``F.linear`` on a
        ``(B, K)`` input.
    """

    def __init__(
        self,
        batch: int,
        ndim: int,
        *,
        on_pool: PoolHook | None = None,
        on_linear: LinearHook | None = None,
    ) -> None:
        super().__init__()
        self.batch = batch
        self.ndim = ndim
        self.on_pool = on_pool
        self.on_linear = on_linear
        self.n_pool = 0
        self.n_linear = 0
        #: Functions that produced a ``(B, C, *S)`` map (``S`` > 1 voxel) after a global
        #: pooling: the pooled vector then feeds spatial computations (squeeze-excitation,
        #: attention gates), so the features are not local.
        self.spatial_after_pool: list[str] = []
        # flatten(t, 2) / t.view(B, C, -1) results -> t, so that a mean over the flattened
        # axis is seen as a spatial mean of t. Weak on both sides: nothing is kept alive.
        self._flat: dict[int, tuple[weakref.ref[Tensor], weakref.ref[Tensor], torch.Size]] = {}

    def _source(self, t: Tensor) -> Tensor:
        entry = self._flat.get(id(t))
        if entry is not None and entry[0]() is t:
            src = entry[1]()
            # a temporary flattened in inference mode may be gone: its values are t's
            return src if src is not None else t.reshape(entry[2])
        return t

    def on_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the call; report it when it is a global pooling or a linear layer."""
        result = func(*args, **kwargs)
        if isinstance(result, Tensor):
            out = result
        elif _member(_ADAPTIVE_MAX, func) and isinstance(result, tuple):
            out = result[0]  # (values, indices) with return_indices=True
        else:
            return result
        b = self.batch
        if _member(_LINEAR, func):
            inp = args[0] if args else kwargs.get("input")
            if self.on_linear is not None and isinstance(inp, Tensor) and inp.ndim == 2:
                if inp.shape[0] == b:
                    weight = _arg(args, kwargs, 1, "weight")
                    bias = _arg(args, kwargs, 2, "bias")
                    self.on_linear(self.n_linear, inp, weight, bias, out)
                    self.n_linear += 1
            return result
        if _member(_FLATTEN, func) or _member(_RESHAPE, func):
            t = args[0] if args else kwargs.get("input")
            if (
                isinstance(t, Tensor)
                and t.ndim == self.ndim
                and t.shape[0] == b
                and out.ndim == 3
                and tuple(out.shape) == (b, t.shape[1], math.prod(t.shape[2:]))
            ):
                self._flat[id(out)] = (weakref.ref(out), weakref.ref(t), t.shape)
            return result
        try:
            operand, kind = _pooled_operand(func, args, kwargs)
        except LookupError:
            if (
                self.n_pool
                and out.ndim == self.ndim
                and out.shape[0] == b
                and out.shape[2:].numel() > 1
                and not _member(_METADATA, func)
            ):
                self.spatial_after_pool.append(getattr(func, "__name__", str(func)))
            return result
        feats = self._source(operand)
        if feats.ndim != self.ndim or feats.shape[0] != b or out.numel() != feats.shape[:2].numel():
            return result
        call = PoolCall(self.n_pool, getattr(func, "__name__", str(func)), kind, tuple(feats.shape))
        self.n_pool += 1
        if self.on_pool is not None:
            new = self.on_pool(call, feats, out.reshape(b, -1))
            if new is not None:
                if kind == "max":
                    raise ValueError("the result of a max pooling cannot be replaced")
                return new.reshape(out.shape)
        return result
