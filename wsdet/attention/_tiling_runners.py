"""Per-method tiled computations (see :mod:`wsdet.attention.tiling` for why each is exact).

Every runner takes the method, the input ``x (B, C, *S)``, the tile plan and the probed
geometry, and returns ``(maps (B, *S), y (B,))`` as the untiled method does. The plan's
first tile is the far corner, whose features give the whole volume's feature sizes before
anything is written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from wsdet.attention._tiling_head import (
    HeadPass,
    PoolCapture,
    PooledSum,
    head_pass,
    pooled_sweep,
    tile_features,
)
from wsdet.attention._tiling_plan import (
    Tile,
    TilePlan,
    batch_index,
    feature_core,
    full_feature_size,
    map_index,
    spatial_dims,
)
from wsdet.attention._tiling_probe import TilingGeometry
from wsdet.attention.base import check_channel, instrumented, select_target, upsample_to
from wsdet.attention.cam import (
    CAM,
    check_identity,
    discover_cam_layers,
    fuse_with_intensity,
    scale_maps,
)
from wsdet.attention.gradcam import GradCAM, LayerLeaves, discover_gradcam_layer
from wsdet.attention.gradient import GuidedBackprop, InputGradient, reduce_channels
from wsdet.attention.intensity import Intensity
from wsdet.attention.pooling import ForwardWatch

__all__ = ["probe_input", "run_cam", "run_gradcam", "run_gradient", "run_intensity"]


def probe_input(x: Tensor, geometry: TilingGeometry) -> Tensor:
    """A fixed random ``(1, C, *probe_size)`` input like ``x`` (a size the model accepts)."""
    gen = torch.Generator().manual_seed(7)
    z = torch.randn((1, x.shape[1], *geometry.probe_size), generator=gen, dtype=torch.float64)
    return z.to(device=x.device, dtype=x.dtype)


def head_input(x: Tensor, plan: TilePlan, geometry: TilingGeometry) -> Tensor:
    """A small valid input with ``x``'s batch size for the head passes: the smallest tile,
    or the probe volume if that is smaller (their pooled vectors are replaced anyway)."""
    tile = min(plan.tiles, key=lambda t: t.voxels)
    if tile.voxels <= math.prod(geometry.probe_size):
        return x[batch_index(tile.window)]
    z = probe_input(x, geometry)
    return z.expand(x.shape[0], *z.shape[1:]).contiguous()


def _uniform(g: Tensor, like: Tensor) -> Tensor:
    """``(B, C)`` → broadcastable ``(B, C, 1, ..., 1)`` in ``like``'s dtype."""
    return g.to(like.dtype).reshape(*g.shape, *([1] * (like.ndim - 2)))


def _exact_head(
    method: Any,
    forward: Any,
    x: Tensor,
    small: Tensor,
    plan: TilePlan,
    geometry: TilingGeometry,
    **kw: Any,
) -> HeadPass:
    """``∂y/∂pooled`` at the exact pooled vectors (a pooling sweep first, unless affine),
    from head passes on the small input ``small`` (:func:`head_input`)."""
    head = head_pass(method, forward, small, geometry, None, **kw)
    if head.affine:
        return head
    exact = pooled_sweep(method.model, x, plan, geometry).pooled()
    return head_pass(method, forward, small, geometry, exact, **kw)


def _output(
    method: Any, small: Tensor, geometry: TilingGeometry, pooled: dict[int, Tensor]
) -> Tensor:
    """The explained output for the given pooled vectors (one head pass on ``small``)."""
    return head_pass(method, method.model, small, geometry, pooled, need_grad=False).y


def _final_y(
    method: Any, small: Tensor, geometry: TilingGeometry, head: HeadPass, acc: PooledSum
) -> Tensor:
    """The output: the head pass's own (non-affine heads ran at the exact pooled vectors),
    or one more head pass at the swept pooled vectors."""
    return _output(method, small, geometry, acc.pooled()) if head.affine else head.y


# ---------------------------------------------------------------------------- CAM


def run_cam(
    method: CAM, x: Tensor, plan: TilePlan, geometry: TilingGeometry
) -> tuple[Tensor, Tensor]:
    """CAM: per-scale maps at feature resolution, assembled from cores, upsampled once."""
    image = method.fusion_image(x) if method.fuse_intensity else None
    model = method.model
    b = x.shape[0]
    probe = probe_input(x, geometry)
    layers = discover_cam_layers(
        model, probe, head=method.head_spec, target=method.target, declared=False
    )
    if not (isinstance(method.features_spec, str) and method.features_spec == "auto"):
        discover_cam_layers(  # verifies the user's features (raises when wrong)
            model,
            probe,
            head=method.head_spec,
            features=method.features_spec,
            target=method.target,
            declared=False,
        )
    assert layers.pools is not None
    by_index = {p.index: p for p in geometry.pools}
    pools = [by_index[p.index] for p in layers.pools]
    maps: list[Tensor | None] = [None] * len(pools)
    full: list[tuple[int, ...]] = [()] * len(pools)
    bias = 0.0
    lin: list[tuple[Tensor, Tensor | None]] = []

    def on_linear(i: int, inp: Tensor, w: Tensor, bb: Tensor | None, o: Tensor) -> None:
        if i == layers.head_call:
            lin.append((w, bb))

    with instrumented(model), torch.inference_mode():
        for tile in plan.tiles:
            cap = PoolCapture([p.index for p in pools])
            lin.clear()
            xt = x[batch_index(tile.window)]
            with ForwardWatch(b, xt.ndim, on_pool=cap, on_linear=on_linear):
                out = model(xt)
            if len(cap.feats) != len(pools) or not lin:
                raise RuntimeError(
                    "tiling: the forward pass no longer makes the pooling/linear calls found "
                    "by CAM's discovery (data-dependent control flow?)"
                )
            weight, bvec = lin[0]
            w = weight[layers.row]
            bias = 0.0 if bvec is None else float(bvec[layers.row])
            pred = torch.zeros(b, dtype=torch.float64, device=x.device)
            feats = [cap.feats[p.index] for p in pools]
            for s, (p, f, m) in enumerate(zip(pools, feats, scale_maps(w, feats), strict=True)):
                pred += (
                    m.flatten(1).double().sum(1)
                    if p.kind == "sum"
                    else m.flatten(1).double().mean(1)
                )
                if maps[s] is None:
                    full[s] = full_feature_size(tile, p.factor, f.shape[2:])
                    maps[s] = m.new_zeros((b, *full[s]))
                local, glob = feature_core(tile, p.factor, f.shape[2:], plan.size)
                maps[s][map_index(glob)] = m[map_index(local)]  # type: ignore[index]
            check_identity(pred + bias, select_target(out, method.target, b), x.dtype, "on a tile")
    y = torch.zeros(b, dtype=torch.float64, device=x.device) + bias
    total: Tensor | None = None
    for s, p in enumerate(pools):
        ms = maps[s]
        assert ms is not None
        if p.kind == "sum":
            ms = ms * math.prod(full[s])
        y += ms.flatten(1).double().mean(1)
        ms = upsample_to(ms, x.shape[2:])
        total = ms if total is None else total + ms
    assert total is not None
    if image is not None:
        total = fuse_with_intensity(total, image)
    return total.to(x.dtype), y.to(out.dtype if isinstance(out, Tensor) else x.dtype)


# ------------------------------------------------------------------ grad / guided


def _pool_seeds(
    feats: dict[int, Tensor],
    geometry: TilingGeometry,
    head: Any,
    acc: Any,
    tile: Tile,
    plan: TilePlan,
    *,
    everywhere: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """The pooled features of a tile and their backward seeds ``(∂y/∂pooled)/N``.

    The seed covers the tile's core positions only (linear methods: tiles add up), or every
    position of the tile with ``everywhere=True`` (guided backprop keeps only its core).
    """
    outs: list[Tensor] = []
    seeds: list[Tensor] = []
    for p in geometry.pools:
        f = feats[p.index]
        if not f.requires_grad:
            continue
        g = _uniform(head.grads[p.index] * acc.scale(p.index, p.kind), f)
        if everywhere:
            seed = g.expand_as(f)
        else:
            seed = torch.zeros_like(f)
            local, _ = feature_core(tile, p.factor, f.shape[2:], plan.size)
            seed[batch_index(local)] = g
        outs.append(f)
        seeds.append(seed)
    return outs, seeds


def run_gradient(
    method: InputGradient, x: Tensor, plan: TilePlan, geometry: TilingGeometry
) -> tuple[Tensor, Tensor]:
    """Input gradient (overlap-add of core-seeded tile gradients) or guided backprop
    (uniform seeds on the whole tile, core of the input gradient kept)."""
    guided = isinstance(method, GuidedBackprop)
    model = method.model
    forward = method._forward
    small = head_input(x, plan, geometry)
    head = _exact_head(method, forward, x, small, plan, geometry)
    acc = PooledSum(geometry, plan.size)
    with instrumented(model), torch.inference_mode(False), torch.enable_grad():
        for prm in model.parameters():
            prm.requires_grad_(False)
        grad = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
        for tile in plan.tiles:
            leaf = x[batch_index(tile.window)].detach().clone().requires_grad_()
            feats = tile_features(forward, leaf, tile, acc)
            outs, seeds = _pool_seeds(feats, geometry, head, acc, tile, plan, everywhere=guided)
            if not outs:
                continue
            (gx,) = torch.autograd.grad(outs, leaf, grad_outputs=seeds, allow_unused=True)
            if gx is None:
                continue
            if guided:
                grad[batch_index(tile.core)] = gx[batch_index(tile.core_in_window)]
            else:
                grad[batch_index(tile.window)] += gx
            del gx, outs, seeds, feats, leaf
    y = _final_y(method, small, geometry, head, acc)
    maps = reduce_channels(grad, method.channel_reduce)
    return maps.detach().to(x.dtype), y


# ------------------------------------------------------------------------- Grad-CAM


def run_gradcam(
    method: GradCAM, x: Tensor, plan: TilePlan, geometry: TilingGeometry
) -> tuple[Tensor, Tensor]:
    """Grad-CAM: ``α`` from core-seeded gradients at the layer, then ``Σ_k α_k f_k`` on cores."""
    model = method.model
    if method._layer is None:
        method._layer = discover_gradcam_layer(model, probe_input(x, geometry), method.target)
    name, module, call = method._layer
    calls = geometry.layer_factors.get(name)
    if not calls or not -len(calls) <= call < len(calls):
        raise ValueError(f"layer: {name!r} did not return a (B, C, *S) tensor in the forward pass")
    factor = calls[call]
    small = head_input(x, plan, geometry)
    head = _exact_head(method, model, x, small, plan, geometry, layer=(module, call))
    b = x.shape[0]
    acc = PooledSum(geometry, plan.size)
    by_index = {p.index: p for p in geometry.pools}
    out_map: Tensor | None = None

    def write(tile: Any, alpha: Tensor, f: Tensor, fac: tuple[int, ...]) -> None:
        nonlocal out_map
        if out_map is None:
            out_map = f.new_zeros((b, *full_feature_size(tile, fac, f.shape[2:])))
        local, glob = feature_core(tile, fac, f.shape[2:], plan.size)
        core = f[batch_index(local)]
        m = torch.bmm(alpha.to(f.dtype).unsqueeze(1), core.flatten(2))
        out_map[map_index(glob)] = m.reshape(b, *core.shape[2:])

    if head.layer_pools is not None:
        # The layer's output is only globally pooled: ∂y/∂f_L is uniform, α = Σ_j G_j / N_j.
        direct = head.layer_pools
        with instrumented(model), torch.inference_mode():
            for tile in plan.tiles:
                feats = tile_features(model, x[batch_index(tile.window)], tile, acc)
                alpha = sum(head.grads[j] * acc.scale(j, by_index[j].kind) for j in direct)
                assert isinstance(alpha, Tensor)
                write(tile, alpha, feats[direct[0]], by_index[direct[0]].factor)
    else:
        alpha = _gradcam_alpha(method, module, call, factor, x, plan, geometry, head, acc)
        outs: list[Tensor] = []

        def keep(mod: nn.Module, inp: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                outs.append(out)

        with instrumented(model) as ins, torch.inference_mode():
            ins.forward_hook(module, keep)
            for tile in plan.tiles:
                outs.clear()
                model(x[batch_index(tile.window)])
                write(tile, alpha, outs[call], factor)
        outs.clear()
    y = _final_y(method, small, geometry, head, acc)
    assert out_map is not None
    maps = out_map.clamp_min(0) if method.relu else out_map
    return upsample_to(maps, x.shape[2:]).detach().to(x.dtype), y


def _gradcam_alpha(
    method: GradCAM,
    module: nn.Module,
    call: int,
    factor: tuple[int, ...],
    x: Tensor,
    plan: TilePlan,
    geometry: TilingGeometry,
    head: HeadPass,
    acc: PooledSum,
) -> Tensor:
    """``α = (1/Z) Σ_q ∂y/∂f_L(q)``: each tile's gradient at the layer, seeded on its core."""
    model = method.model
    hook = LayerLeaves(str(method.layer))
    total: Tensor | None = None
    z = 0
    with instrumented(model) as ins, torch.inference_mode(False), torch.enable_grad():
        for prm in model.parameters():
            prm.requires_grad_(False)
        ins.forward_hook(module, hook)
        for tile in plan.tiles:
            hook.clear()
            xt = x[batch_index(tile.window)].detach().clone()
            torch.set_grad_enabled(False)  # autograd starts at the layer
            feats = tile_features(model, xt, tile, acc)
            torch.set_grad_enabled(True)
            f_l = hook.leaves[call]
            if not z:
                z = math.prod(full_feature_size(tile, factor, f_l.shape[2:]))
            outs, seeds = _pool_seeds(feats, geometry, head, acc, tile, plan)
            if not outs:
                continue
            (g,) = torch.autograd.grad(outs, f_l, grad_outputs=seeds, allow_unused=True)
            if g is None:
                continue
            part = g.sum(dim=spatial_dims(g), dtype=torch.float64)
            total = part if total is None else total + part
        hook.clear()
    if total is None:
        raise ValueError(f"layer: the explained output does not depend on {method.layer!r}")
    return total / z


# ------------------------------------------------------------------------ intensity


def run_intensity(
    method: Intensity, x: Tensor, plan: TilePlan, geometry: TilingGeometry
) -> tuple[Tensor, Tensor]:
    """The image channel itself; the count from the exact pooled vectors."""
    check_channel("channel", method.channel, x.shape[1])
    acc = pooled_sweep(method.model, x, plan, geometry)
    y = _output(method, head_input(x, plan, geometry), geometry, acc.pooled())
    return x[:, method.channel].detach().clone(), y
