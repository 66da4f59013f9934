"""The global part of a tiled computation: pooled vectors and the head's gradient.

For a network ``y = head(pooled_1, ..., pooled_J)`` with ``pooled_j`` the global mean (or
sum) of local feature maps ``f_j``, everything global about ``y`` is in the small pooled
vectors:

* :class:`PooledSum` accumulates the exact ``pooled_j`` over tile cores (each feature
  position belongs to exactly one core);
* :func:`head_pass` runs one forward pass on a small input with every pooled vector
  *replaced* by a given one (:class:`~wsdet.attention.pooling.ForwardWatch` substitutes
  the pooling's result), giving ``y`` and ``∂y/∂pooled_j`` through whatever head follows.
  It also tells whether the head is *affine* in the pooled vectors, judged from the
  autograd graph's operations (then ``∂y/∂pooled`` does not depend on them, and no
  separate pooling sweep is needed before the gradient sweep), and, for Grad-CAM, whether
  the explained layer's output is consumed by its global poolings only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wsdet.attention._tiling_plan import (
    Tile,
    TilePlan,
    batch_index,
    feature_core,
    full_feature_size,
    spatial_dims,
)
from wsdet.attention._tiling_probe import TilingGeometry
from wsdet.attention.base import AttentionMethod, instrumented, select_target
from wsdet.attention.gradcam import LayerLeaves
from wsdet.attention.gradient import autograd_region
from wsdet.attention.pooling import ForwardWatch, PoolCall

__all__ = [
    "Forward",
    "HeadPass",
    "PoolCapture",
    "PooledSum",
    "head_pass",
    "pooled_sweep",
    "tile_features",
]

#: Runs the model (or the method's instrumented forward, e.g. guided ReLUs) on a tensor.
Forward = Callable[[Tensor], Any]


class PoolCapture:
    """``on_pool`` callback: keeps the pooled feature maps of the wanted calls.

    With ``substitute``, the result of those poolings is replaced (and grad mode switched
    on, so that autograd records the head from there). With ``copy``, the maps kept are
    copies (safe from later in-place operations of the forward pass).
    """

    def __init__(
        self,
        wanted: Sequence[int],
        substitute: Mapping[int, Tensor] | None = None,
        enable_grad: bool = False,
        copy: bool = False,
    ) -> None:
        self.wanted = frozenset(wanted)
        self.substitute = substitute
        self.enable_grad = enable_grad
        self.copy = copy
        self.feats: dict[int, Tensor] = {}

    def __call__(self, call: PoolCall, feats: Tensor, pooled: Tensor) -> Tensor | None:
        if call.index in self.wanted:
            self.feats[call.index] = feats.clone() if self.copy else feats
        if self.substitute is not None and call.index in self.substitute:
            if self.enable_grad:
                torch.set_grad_enabled(True)
            return self.substitute[call.index].to(pooled.dtype)
        return None

    def check(self, geometry: TilingGeometry) -> None:
        """The forward pass made the global poolings the probe saw."""
        missing = [p.index for p in geometry.pools if p.index not in self.feats]
        if missing:
            raise RuntimeError(
                f"tiling: the forward pass no longer makes the global poolings {missing} seen "
                "by the probe (data-dependent control flow?)"
            )


def watch(x: Tensor, capture: PoolCapture) -> ForwardWatch:
    """A :class:`ForwardWatch` for a forward pass on ``x``, reporting to ``capture``."""
    return ForwardWatch(x.shape[0], x.ndim, on_pool=capture)


class PooledSum:
    """Exact global pooled vectors, summed over tile cores (in float64).

    The first tile added must be the plan's far corner: it fixes the whole volume's
    feature size (and so the number of positions ``N_j``) of every pooling.
    """

    def __init__(self, geometry: TilingGeometry, size: Sequence[int]) -> None:
        self.geometry = geometry
        self.size = tuple(size)
        self.sums: dict[int, Tensor] = {}
        self.full: dict[int, tuple[int, ...]] = {}

    def sizes_from(self, tile: Tile, feats: Mapping[int, Tensor]) -> None:
        """Record the volume's feature sizes from the far-corner tile (once)."""
        for p in self.geometry.pools:
            if p.index not in self.full:
                self.full[p.index] = full_feature_size(tile, p.factor, feats[p.index].shape[2:])

    def add(self, tile: Tile, feats: Mapping[int, Tensor]) -> None:
        """Add the core of each pooled feature map of ``tile``."""
        self.sizes_from(tile, feats)
        for p in self.geometry.pools:
            f = feats[p.index].detach()
            local, _ = feature_core(tile, p.factor, f.shape[2:], self.size)
            part = f[batch_index(local)].sum(dim=spatial_dims(f), dtype=torch.float64)
            old = self.sums.get(p.index)
            self.sums[p.index] = part if old is None else old + part

    def positions(self, index: int) -> int:
        """Number of feature positions ``N_j`` of pooling ``index`` in the whole volume."""
        return math.prod(self.full[index])

    def scale(self, index: int, kind: str) -> float:
        """``∂pooled/∂f(p)`` for every position: ``1/N`` for a mean, 1 for a sum."""
        return 1.0 / self.positions(index) if kind == "mean" else 1.0

    def pooled(self) -> dict[int, Tensor]:
        """The global pooled vectors ``(B, C_j)`` (float64)."""
        out = {}
        for p in self.geometry.pools:
            s = self.sums[p.index]
            out[p.index] = s / self.positions(p.index) if p.kind == "mean" else s
        return out


def tile_features(forward: Forward, xt: Tensor, tile: Tile, acc: PooledSum) -> dict[int, Tensor]:
    """One forward pass on ``tile``'s input ``xt``: its pooled feature maps, by pooling index.

    The poolings must be those the probe saw; the cores of the features are added to
    ``acc`` (without recording a graph).
    """
    cap = PoolCapture([p.index for p in acc.geometry.pools])
    with watch(xt, cap):
        forward(xt)
    cap.check(acc.geometry)
    with torch.no_grad():
        acc.add(tile, cap.feats)
    return cap.feats


def pooled_sweep(
    model: nn.Module, x: Tensor, plan: TilePlan, geometry: TilingGeometry
) -> PooledSum:
    """One forward pass per tile (inference mode): the exact global pooled vectors."""
    acc = PooledSum(geometry, plan.size)
    with instrumented(model), torch.inference_mode():
        for tile in plan.tiles:
            tile_features(model, x[batch_index(tile.window)], tile, acc)
    return acc


# ------------------------------------------------------------------------ head pass

#: Autograd nodes that are linear in each of their inputs.
_LINEAR_NODES = frozenset(
    {
        "torch::autograd::AccumulateGrad",
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "RsubBackward0",
        "RsubBackward1",
        "NegBackward0",
        "MulBackward1",
        "DivBackward1",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "AsStridedBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "SqueezeBackward4",
        "UnsqueezeBackward0",
        "ExpandBackward0",
        "PermuteBackward0",
        "TBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "SelectBackward0",
        "SliceBackward0",
        "NarrowBackward0",
        "IndexBackward0",
        "CatBackward0",
        "StackBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "UnbindBackward0",
        "SumBackward0",
        "SumBackward1",
        "MeanBackward0",
        "MeanBackward1",
        "CloneBackward0",
        "ToCopyBackward0",
    }
)
#: Products: linear when at most one of the two operands (by position) depends on the input.
_PRODUCT_NODES = {
    "MulBackward0": (0, 1),
    "MmBackward0": (0, 1),
    "MvBackward0": (0, 1),
    "BmmBackward0": (0, 1),
    "DotBackward0": (0, 1),
    "LinearBackward0": (0, 1),
    "AddmmBackward0": (1, 2),
    "AddmvBackward0": (1, 2),
    "BaddbmmBackward0": (1, 2),
}


def is_affine(root: Any) -> bool:
    """Whether the autograd graph below ``root`` is affine in its leaves (conservative).

    Every node must be a known linear operation, and a product's two operands must not
    both depend on the leaves (only the pooled vectors require grad in a head pass).
    """
    stack = [root]
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = fn.name()
        nexts = fn.next_functions
        if name in _PRODUCT_NODES:
            i, j = _PRODUCT_NODES[name]
            if len(nexts) > j and nexts[i][0] is not None and nexts[j][0] is not None:
                return False
        elif name == "DivBackward0":
            if len(nexts) > 1 and nexts[1][0] is not None:
                return False
        elif name not in _LINEAR_NODES:
            return False
        stack.extend(f for f, _ in nexts if f is not None)
    return True


@dataclass
class HeadPass:
    """What one forward pass with substituted pooled vectors gave.

    Attributes
    ----------
    y : Tensor
        The explained output ``(B,)``.
    grads : dict
        ``∂(Σ_b y_b)/∂pooled_j``, ``(B, C_j)`` per pooling index (empty without grad).
    affine : bool
        Whether ``y`` is affine in the pooled vectors.
    layer_pools : tuple of int or None
        For Grad-CAM: the poolings that read the layer's output directly, when nothing
        else consumes it (then ``∂y/∂f_L`` is uniform); ``None`` otherwise.
    """

    y: Tensor
    grads: dict[int, Tensor]
    affine: bool
    layer_pools: tuple[int, ...] | None = None


def head_pass(
    method: AttentionMethod,
    forward: Forward,
    x: Tensor,
    geometry: TilingGeometry,
    pooled: Mapping[int, Tensor] | None,
    *,
    need_grad: bool = True,
    layer: tuple[nn.Module, int] | None = None,
) -> HeadPass:
    """Forward ``x`` with every global pooling's result replaced by ``pooled`` (zeros if None).

    ``x`` is any small valid input with the batch's ``B`` samples (a tile). Parameters are
    frozen for the call, the part of the network before the poolings runs without
    autograd, and ``∂y/∂pooled`` is taken with :func:`torch.autograd.grad`.
    """
    model = method.model
    b = x.shape[0]
    indices = [p.index for p in geometry.pools]
    values = {
        p.index: (pooled[p.index] if pooled is not None else x.new_zeros((b, p.channels))).detach()
        for p in geometry.pools
    }
    if not need_grad:
        with instrumented(model), torch.inference_mode():
            cap = PoolCapture(indices, substitute=values)
            with watch(x, cap):
                out = forward(x)
            cap.check(geometry)
            return HeadPass(select_target(out, method.target, b).detach(), {}, False)
    with instrumented(model) as ins, autograd_region(x) as xs:
        for prm in model.parameters():
            prm.requires_grad_(False)
        leaves = {i: v.to(device=x.device).clone().requires_grad_() for i, v in values.items()}
        hook = LayerLeaves("", strict=False, keep_outputs=True)
        if layer is not None:
            ins.forward_hook(layer[0], hook)
        cap = PoolCapture(indices, substitute=leaves, enable_grad=True)
        torch.set_grad_enabled(False)  # autograd starts at the substituted poolings
        with watch(xs, cap):
            out = forward(xs.detach())
        torch.set_grad_enabled(True)
        cap.check(geometry)
        y = select_target(out, method.target, b)
        if not y.requires_grad:
            raise ValueError(
                "tiling: the explained output does not depend (differentiably) on the "
                "globally pooled features; compute the untiled map"
            )
        order = list(leaves)
        got = torch.autograd.grad(
            y.sum(), [leaves[i] for i in order], allow_unused=True, retain_graph=layer is not None
        )
        grads = {
            i: (torch.zeros_like(leaves[i]) if g is None else g).detach()
            for i, g in zip(order, got, strict=True)
        }
        affine = is_affine(y.grad_fn)
        layer_pools = None
        if layer is not None and len(hook.outputs) == 1:
            layer_pools = _direct_pools(y, cap.feats, hook.outputs[0], hook.leaves[0])
    return HeadPass(y.detach(), grads, affine, layer_pools)


def _direct_pools(
    y: Tensor, feats: Mapping[int, Tensor], made: Tensor, leaf: Tensor
) -> tuple[int, ...] | None:
    """Poolings reading ``made`` directly, if nothing else between it and ``y`` uses it."""
    direct = tuple(i for i, f in feats.items() if f is made)
    if not direct:
        return None
    others = [y] + [f for i, f in feats.items() if i not in direct and f.requires_grad]
    for t in others:
        (g,) = torch.autograd.grad(t.sum(), leaf, allow_unused=True, retain_graph=True)
        if g is not None:
            return None
    return direct
