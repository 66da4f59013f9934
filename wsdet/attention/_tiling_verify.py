"""Check, before tiling a real volume, that tiles reproduce the whole volume's features.

The probe (:mod:`wsdet.attention._tiling_probe`) measures locality; what it cannot see is
whether the network is shift-equivariant *at the input size*: a layer that stretches to a
reference size (``UpsampleTo(factor=None)``, ``F.interpolate(size=...)``) shifts positions
when the size is not a multiple of the downsampling factor ``D``. :func:`verify_tiling` computes
the pooled features of a small random volume with the same size modulo ``D`` whole and tile
by tile, with the real halo, and compares the cores; then it checks that the output depends
on the input only through the pooled vectors. Cached like the probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wsdet.attention._tiling_head import PoolCapture, watch
from wsdet.attention._tiling_probe import TilingGeometry, cached
from wsdet.attention.base import Target, instrumented, select_target

__all__ = ["verify_tiling"]


def _capture(
    model: nn.Module,
    x: Tensor,
    pools: Sequence[int],
    substitute: dict[int, Tensor] | None = None,
    layer: tuple[nn.Module, int] | None = None,
) -> tuple[dict[int, Tensor], Tensor | None, Any]:
    """One forward pass: copies of the pooled feature maps, of ``layer``'s output, and the
    output (the poolings in ``substitute`` replaced)."""
    cap = PoolCapture(pools, substitute=substitute, copy=True)
    outs: list[Tensor] = []

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            outs.append(out.clone())

    with instrumented(model) as ins, torch.inference_mode():
        if layer is not None:
            ins.forward_hook(layer[0], hook)
        with watch(x, cap):
            output = model(x)
    picked = None
    if layer is not None and outs:
        call = layer[1]
        picked = outs[call] if -len(outs) <= call < len(outs) else None
    return cap.feats, picked, output


def verify_tiling(
    model: nn.Module,
    x: Tensor,
    geometry: TilingGeometry,
    halo: Sequence[int],
    split: Sequence[bool],
    *,
    target: Target = None,
    layer: tuple[str, nn.Module, int] | None = None,
) -> None:
    """Check on a small random volume that tiles reproduce the whole volume's features.

    The test volume has ``2 (halo + c) + (S mod D)`` voxels along each axis (``S`` is
    ``x``'s size, ``c`` the smallest multiple of ``D`` of at least 4 voxels); two tiles are
    cut from it, one cropped on the high side of every ``split`` axis, one on the low side,
    and the cores of their pooled features (and of ``layer``'s output, for Grad-CAM) must
    equal the whole test volume's. Then the output for another random input whose pooled vectors are
    replaced by the test volume's must be the test volume's output.

    Raises
    ------
    ValueError
        Naming what differs and the likely cause.
    """
    residue = tuple(s % d for s, d in zip(x.shape[2:], geometry.factor, strict=True))
    key = (
        "verify",
        x.shape[1],
        x.dtype,
        str(x.device),
        geometry,
        tuple(halo),
        tuple(split),
        residue,
        None if layer is None else (layer[0], layer[2]),
        id(target) if callable(target) else target,
    )
    cached(model, key, lambda: _verify(model, x, geometry, halo, split, target, layer, residue))


def _verify(
    model: nn.Module,
    x: Tensor,
    geometry: TilingGeometry,
    halo: Sequence[int],
    split: Sequence[bool],
    target: Target,
    layer: tuple[str, nn.Module, int] | None,
    residue: tuple[int, ...],
) -> bool:
    factor = geometry.factor
    # cores of at least 4 voxels (a multiple of D) either side of the cut
    cores = [d * -(-4 // d) for d in factor]
    size = tuple(2 * (h + c) + r for h, c, r in zip(halo, cores, residue, strict=True))
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn((1, x.shape[1], *size), generator=gen, dtype=torch.float64)
    xs = xs.to(device=x.device, dtype=x.dtype)
    pools = [p.index for p in geometry.pools]
    lay = None if layer is None else (layer[1], layer[2])
    full, full_layer, output = _capture(model, xs, pools, layer=lay)
    y_full = select_target(output, target, 1)
    rel = 1e-9 if x.dtype == torch.float64 else 1e-4
    axes: list[list[tuple[int, int, int, int]]] = []
    for s, h, core, cut in zip(size, halo, cores, split, strict=True):
        c = h + core
        axes.append([(0, c + h, 0, c), (c - h, s, c, s)] if cut else [(0, s, 0, s)])
    worst: tuple[float, str] = (0.0, "")
    # the tile cut on the high side of every split axis, and the one cut on the low side
    for parts in (tuple(a[0] for a in axes), tuple(a[-1] for a in axes)):
        window = tuple(slice(p[0], p[1]) for p in parts)
        tile_x = xs[(slice(None), slice(None), *window)]
        feats, tile_layer, _ = _capture(model, tile_x, pools, layer=lay)
        checks = [
            (f"pooled features #{p.index}", p.factor, full[p.index], feats[p.index])
            for p in geometry.pools
        ]
        if layer is not None and full_layer is not None and tile_layer is not None:
            fac = geometry.layer_factors.get(layer[0], [factor])[layer[2]]
            checks.append((f"the output of layer {layer[0]!r}", fac, full_layer, tile_layer))
        for what, fac, whole, part in checks:
            sl_t, sl_w = [], []
            for a, (p0, _p1, c0, c1) in enumerate(parts):
                d = fac[a]
                g0, off = c0 // d, p0 // d
                g1 = c1 // d if c1 < size[a] else off + part.shape[2 + a]
                sl_t.append(slice(g0 - off, g1 - off))
                sl_w.append(slice(g0, g1))
            a_ = part[(slice(None), slice(None), *sl_t)]
            b_ = whole[(slice(None), slice(None), *sl_w)]
            if a_.shape != b_.shape:
                dev = math.inf
            else:
                scale = max(float(whole.abs().max()), 1e-30)
                dev = float((a_ - b_).abs().max()) / scale if a_.numel() else 0.0
            if dev > worst[0]:
                worst = (dev, what)
    if worst[0] > rel:
        off_grid = [a for a, r in enumerate(residue) if r and split[a]]
        cause = (
            f" The input size {list(x.shape[2:])} is not a multiple of the network's "
            f"downsampling factor {list(factor)} along axes {off_grid}: a layer that resizes "
            "to a reference size (UpsampleTo(factor=None), F.interpolate(size=...)) is then not "
            "shift-equivariant. Pad the input to a multiple of the factor, or give a "
            "tile_size covering those axes."
            if off_grid
            else " The receptive field exceeds the halo, or a layer depends on the input "
            "size: pass a larger halo=, or compute the untiled map."
        )
        raise ValueError(
            f"tiling: tiles do not reproduce the whole-volume features: {worst[1]} differ "
            f"by {worst[0]:.3g} (relative to their largest value) on a {list(size)} test "
            f"volume cut into tiles with halo {list(halo)}.{cause}"
        )
    # The output must depend on the input only through the pooled vectors.
    pooled = {
        p.index: (
            full[p.index].flatten(2).double().mean(-1)
            if p.kind == "mean"
            else full[p.index].flatten(2).double().sum(-1)
        ).to(x.dtype)
        for p in geometry.pools
    }
    other = torch.randn(xs.shape, generator=gen, dtype=torch.float64)
    _, _, out = _capture(model, other.to(xs), pools, substitute=pooled)
    y_sub = select_target(out, target, 1)
    err = float((y_sub.double() - y_full.double()).abs().max())
    scale = max(1.0, float(y_full.double().abs().max()))
    if not err <= rel * 10 * scale:
        raise ValueError(
            "tiling: the model output depends on the input other than through its global "
            f"average (or sum) poolings (with the pooled vectors of another input substituted, "
            f"the output changed by {err:.3g}): e.g. a head reading un-pooled features "
            "(flatten + linear). Tiles cannot reproduce it; compute the untiled map"
        )
    return True
