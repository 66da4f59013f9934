"""What tiling needs to know about a network, measured by probes, and checked.

Exact tiling rests on three properties of the network, none of which is assumed:

* **alignment**: every intermediate map is the input downsampled by an integer factor per
  axis; the least common multiple ``D`` of those factors is the period of the network's
  shift equivariance, so tile offsets are multiples of ``D``;
* **locality**: a globally pooled feature depends only on input voxels within a radius
  ``R`` of its cell. :func:`probe_geometry` perturbs one voxel in the middle of random
  probe volumes (several inputs, positions and signs) and records which pooled feature
  positions change; the probe is enlarged while changes reach its border. A layer that
  mixes all positions (InstanceNorm, GroupNorm, BatchNorm with batch statistics, global
  pooling or attention in the middle of the network) is refused by module type before it
  runs, and otherwise shows up as changes reaching the border of every probe;
* **equivariance at this input size**: checked by
  :func:`~wsdet.attention._tiling_verify.verify_tiling` on a small volume, tile by tile.

Results are cached per model (keyed by its parameters' and buffers' versions and every
module's training flag), so a Detector probes a model once per input layout.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wsdet.attention.base import instrumented
from wsdet.attention.pooling import ForwardWatch, PoolCall, tensor_version

__all__ = ["PoolGeometry", "TilingGeometry", "cached", "check_module", "probe_geometry"]

#: First probe edge (voxels per axis); doubled while the changes reach the probe border.
PROBE_START = 32
#: Largest probe, in voxels.
PROBE_MAX_VOXELS = 1 << 21
#: (offset of the perturbed voxel from the centre along every axis, perturbation).
TRIALS = ((0, 1.0), (1, -1.0), (2, 2.0), (3, -2.0))

_NONLOCAL_HINT = (
    "tiled attention needs pooled features that depend on a bounded neighbourhood of the "
    "input only (no InstanceNorm/GroupNorm, BatchNorm in eval mode, no global pooling or "
    "attention in the middle of the network); compute the untiled map (tile_size=None)"
)


@dataclass(frozen=True)
class PoolGeometry:
    """A global pooling of the forward pass whose pooled vector feeds the output.

    Attributes
    ----------
    index : int
        Its rank among the forward pass's global poolings (see
        :class:`~wsdet.attention.pooling.ForwardWatch`).
    kind : str
        ``"mean"`` or ``"sum"``.
    channels : int
        Channels ``C`` of the pooled ``(B, C, *s)`` tensor.
    factor : tuple of int
        Input voxels per feature voxel, per axis.
    """

    index: int
    kind: str
    channels: int
    factor: tuple[int, ...]


@dataclass(frozen=True)
class TilingGeometry:
    """What a probe measured on a network.

    Attributes
    ----------
    factor : tuple of int
        ``D`` per axis: the least common multiple of every intermediate map's
        downsampling factor; tile offsets and halos are multiples of it.
    radius : tuple of int
        ``R`` per axis: how far (in input voxels) a pooled feature's cell reaches into the
        input.
    pools : tuple of PoolGeometry
        The global poolings, in call order.
    layer_factors : dict
        Downsampling factor of each module's output per call (dotted name → one tuple per
        call), for Grad-CAM's layer.
    probe_size : tuple of int
        The probe size that contained the receptive field.
    seconds : float
        Wall time of the probe.
    """

    factor: tuple[int, ...]
    radius: tuple[int, ...]
    pools: tuple[PoolGeometry, ...]
    layer_factors: dict[str, list[tuple[int, ...]]] = field(repr=False, compare=False)
    probe_size: tuple[int, ...]
    seconds: float = field(compare=False)


# ------------------------------------------------------------------------------ caching

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()
_CACHE_GUARD = threading.Lock()
_CACHE_SIZE = 16


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer is modified, replaced, or a mode flipped."""
    tensors = [*model.parameters(), *model.buffers()]
    return (
        tuple((id(t), t.data_ptr(), tensor_version(t)) for t in tensors),
        tuple(m.training for m in model.modules()),
    )


def cached(model: nn.Module, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered per model for ``key`` while the model is unchanged."""
    full = (key, _fingerprint(model))
    with _CACHE_GUARD:
        table = _CACHE.setdefault(model, {})
        if full in table:
            return table[full]
    value = compute()
    with _CACHE_GUARD:
        table = _CACHE.setdefault(model, {})
        if len(table) >= _CACHE_SIZE:
            table.pop(next(iter(table)))
        table[full] = value
    return value


# ------------------------------------------------------------------- non-local modules

_ADAPTIVE = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def check_module(module: nn.Module) -> str | None:
    """Why ``module`` mixes all spatial positions (or is random), or ``None`` if it is local.

    Examples
    --------
    >>> check_module(torch.nn.GroupNorm(2, 4))
    'GroupNorm normalises with statistics over all spatial positions'
    >>> check_module(torch.nn.BatchNorm3d(4).eval()) is None
    True
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or not module.track_running_stats or module.running_mean is None:
            return (
                f"{type(module).__name__} in training mode (or without running statistics) "
                "normalises with statistics over all spatial positions and the batch; put "
                "the model in eval mode (Detector(eval_mode=True))"
            )
        return None
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        if module.training or not module.track_running_stats:
            return f"{type(module).__name__} normalises with statistics over all spatial positions"
        return None
    if isinstance(module, nn.GroupNorm):
        return "GroupNorm normalises with statistics over all spatial positions"
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
        return f"{type(module).__name__} in training mode is random (tiles would differ)"
    if isinstance(module, _ADAPTIVE):
        size = module.output_size
        sizes = size if isinstance(size, (tuple, list)) else (size,)
        if not all(s == 1 for s in sizes):
            return (
                f"{type(module).__name__}(output_size={size}) pools windows whose size "
                "depends on the whole input"
            )
        return None
    if isinstance(module, nn.Upsample) and module.size is not None:
        return "Upsample(size=...) resizes to a fixed size, whatever the input's"
    if isinstance(module, _ATTENTION):
        return f"{type(module).__name__} mixes all positions"
    return None


# --------------------------------------------------------------------------- the probe


@dataclass
class _Observed:
    """What the forward passes of one probe size saw."""

    radius: list[int]
    border: bool = False
    pools: dict[int, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    maxed: list[PoolCall] = field(default_factory=list)
    layer_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    far_layers: list[str] = field(default_factory=list)


def _changed(a: Tensor, b: Tensor) -> Tensor:
    """Boolean ``(*s)``: spatial positions where ``a`` and ``b`` (``(C, *s)``) differ."""
    diff = (a - b).abs().amax(0)
    eps = 1e-12 if a.dtype == torch.float64 else 1e-6
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return diff > eps * max(scale, 1e-30)


def _touches_border(changed: Tensor) -> bool:
    nd = changed.ndim
    for a in range(nd):
        first = changed.select(a, 0)
        last = changed.select(a, changed.shape[a] - 1)
        if bool(first.any()) or bool(last.any()):
            return True
    return False


def _factor(probe: int, n: int) -> int | None:
    """Integer downsampling ``d`` with ``n`` in ``{floor(P/d), ceil(P/d)}``; ``None`` if none."""
    if n >= probe:
        return 1 if n % probe == 0 else None
    d = max(1, round(probe / n))
    for cand in (d - 1, d, d + 1):
        if cand >= 1 and n in (probe // cand, -(-probe // cand)):
            return cand
    return None


def _probe_once(
    model: nn.Module,
    channels: int,
    dtype: torch.dtype,
    device: torch.device,
    size: tuple[int, ...],
    name_layers: bool = False,
) -> _Observed:
    """One probe size: record the changed pooled positions (and, with ``name_layers``, the
    layers whose output changed up to the border, for the error message)."""
    nd = len(size)
    names = {m: n for n, m in model.named_modules() if m is not model}
    obs = _Observed(radius=[0] * nd)
    gen = torch.Generator().manual_seed(20170611)
    centre: list[int] = []
    first = [True]

    def refuse(mod: nn.Module, inp: Any) -> None:
        why = check_module(mod)
        if why is not None:
            raise ValueError(
                f"tiling: layer {names[mod]!r} ({type(mod).__name__}) is not local: {why}; "
                + _NONLOCAL_HINT
            )

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        if not (isinstance(out, Tensor) and out.ndim == nd + 2 and out.shape[0] == 2):
            return
        s = tuple(out.shape[2:])
        if first[0]:
            obs.layer_shapes.setdefault(names[mod], []).append(s)
        if not name_layers or min(s) < 2 or not out.is_floating_point():
            return
        with torch._C.DisableTorchFunction():
            if _touches_border(_changed(out[0], out[1])):
                obs.far_layers.append(names[mod])

    def on_pool(call: PoolCall, feats: Tensor, pooled: Tensor) -> None:
        if call.kind == "max":
            obs.maxed.append(call)
            return None
        obs.pools[call.index] = (call.kind, call.shape)
        s = call.shape[2:]
        if min(s) < 2:
            return None
        factor = [_factor(p, n) or 1 for p, n in zip(size, s, strict=True)]
        changed = _changed(feats[0], feats[1])
        if _touches_border(changed):
            obs.border = True
        where = torch.nonzero(changed)
        if where.numel():
            for a in range(nd):
                q = where[:, a]
                lo = q * factor[a] - centre[a]
                hi = centre[a] - (q * factor[a] + factor[a] - 1)
                reach = int(torch.maximum(lo, hi).clamp_min(0).max())
                obs.radius[a] = max(obs.radius[a], reach)
        return None

    with instrumented(model) as ins:
        for mod in names:
            if check_module(mod) is not None:
                ins.forward_pre_hook(mod, refuse)
            ins.forward_hook(mod, hook)
        for off, delta in TRIALS:
            base = torch.randn((1, channels, *size), generator=gen, dtype=torch.float64)
            centre[:] = [s // 2 + off for s in size]
            pert = base.clone()
            index: tuple[int | slice, ...] = (0, slice(None), *centre)
            pert[index] += delta
            batch = torch.cat([base, pert]).to(device=device, dtype=dtype)
            watch = ForwardWatch(2, nd + 2, on_pool=on_pool)
            with torch.inference_mode(), watch:
                model(batch)
            if watch.spatial_after_pool:
                raise ValueError(
                    "tiling: the model is not local: a global pooling in the middle of the "
                    "network feeds later spatial computations (first: "
                    f"{watch.spatial_after_pool[0]!r} after pooling call #0), e.g. "
                    f"squeeze-excitation or an attention gate; {_NONLOCAL_HINT}"
                )
            first[0] = False
    return obs


def probe_geometry(model: nn.Module, x: Tensor) -> TilingGeometry:
    """Measure the alignment factor ``D`` and the receptive-field radius ``R`` of ``model``.

    Probes have ``x``'s channels, dtype and device, batch 2 (a random volume and a copy
    with one voxel perturbed) and ``32 * 2**k`` voxels per axis. Cached per model.

    Raises
    ------
    ValueError
        For a non-local layer (named), a global max pooling, no global average or sum
        pooling at all, or intermediate maps that are not integer downsamplings.
    """
    nd = x.ndim - 2
    key = ("geometry", x.shape[1], x.dtype, str(x.device), nd)
    geo: TilingGeometry = cached(model, key, lambda: _probe(model, x))
    return geo


def _probe(model: nn.Module, x: Tensor) -> TilingGeometry:
    t0 = time.perf_counter()
    nd = x.ndim - 2
    edge = PROBE_START
    while True:
        size = (edge,) * nd
        try:
            obs = _probe_once(model, x.shape[1], x.dtype, x.device, size)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:  # too small for the network, or a fixed-size network
            if (edge * 2) ** nd <= PROBE_MAX_VOXELS:
                edge *= 2
                continue
            raise ValueError(
                f"tiling: the model fails on probe inputs of {PROBE_START} to {edge} voxels per "
                f"axis ({e}); tiles have different sizes, so the network must accept inputs of "
                "any size (no flatten + linear head); compute the untiled map"
            ) from e
        if obs.maxed:
            call = obs.maxed[0]
            raise ValueError(
                f"tiling: the forward pass takes a global max ({call.op} #{call.index} of a "
                f"tensor of shape {list(call.shape[1:])}); tiles combine by sums, so only global "
                "average or sum pooling can be tiled exactly; compute the untiled map"
            )
        if not obs.pools:
            raise ValueError(
                "tiling: the forward pass makes no global average (or sum) pooling of a "
                "(B, C, *S) tensor, so the output cannot be assembled from tiles; compute the "
                "untiled map (tile_size=None)"
            )
        small = [s for _, s in obs.pools.values() if min(s[2:]) < 2]
        if not obs.border and not small:
            break
        if (edge * 2) ** nd > PROBE_MAX_VOXELS:
            named = _probe_once(model, x.shape[1], x.dtype, x.device, size, name_layers=True)
            raise ValueError(_nonlocal_message(named, size))
        edge *= 2
    factors: list[int] = [1] * nd
    layer_factors: dict[str, list[tuple[int, ...]]] = {}
    odd: list[str] = []
    for name, shapes in obs.layer_shapes.items():
        per_call = []
        for s in shapes:
            f = [_factor(p, n) for p, n in zip(size, s, strict=True)]
            if min(s) >= 2 and any(v is None for v in f):
                odd.append(f"{name!r} returns {list(s)}")
            per_call.append(tuple(v or 1 for v in f))
            if min(s) >= 2:
                factors = [math.lcm(a, v or 1) for a, v in zip(factors, f, strict=True)]
        layer_factors[name] = per_call
    pools = []
    for index in sorted(obs.pools):
        kind, shape = obs.pools[index]
        f = [_factor(p, n) for p, n in zip(size, shape[2:], strict=True)]
        if any(v is None for v in f):
            odd.append(f"the tensor pooled by call #{index} has shape {list(shape[2:])}")
        fac = tuple(v or 1 for v in f)
        factors = [math.lcm(a, v) for a, v in zip(factors, fac, strict=True)]
        pools.append(PoolGeometry(index, kind, shape[1], fac))
    if odd:
        raise ValueError(
            f"tiling: for a probe input of {list(size)} voxels, {'; '.join(odd[:3])}: not an "
            "integer downsampling of the input (valid convolutions or cropping?); tiling needs "
            "'same'-padded convolutions, strided layers and poolings"
        )
    _far_test(model, x, size, obs)
    return TilingGeometry(
        factor=tuple(factors),
        radius=tuple(obs.radius),
        pools=tuple(pools),
        layer_factors=layer_factors,
        probe_size=size,
        seconds=time.perf_counter() - t0,
    )


def _far_test(
    model: nn.Module,
    x: Tensor,
    size: tuple[int, ...],
    obs: _Observed,
    name_layers: bool = False,
) -> None:
    """Replace the input farther than ``R`` from the upper half of each axis: nothing there
    may change. Catches layers that mix all positions with a weight too small for a
    one-voxel perturbation to show (a global mean over a large probe)."""
    nd = len(size)
    names = {m: n for n, m in model.named_modules() if m is not model}
    gen = torch.Generator().manual_seed(314)
    axis = [0]
    changed: list[str] = []

    def upper(t: Tensor) -> tuple[Tensor, Tensor] | None:
        s = t.shape[2:]
        if min(s) < 2:
            return None
        a, n = axis[0], s[axis[0]]
        start = -(-(size[a] // 2) * n // size[a])  # first position at or past the middle
        return t[0].narrow(a + 1, start, n - start), t[1].narrow(a + 1, start, n - start)

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.ndim == nd + 2 and out.shape[0] == 2:
            if out.is_floating_point():
                with torch._C.DisableTorchFunction():
                    parts = upper(out)
                    if parts is not None and bool(_changed(*parts).any()):
                        changed.append(names[mod])

    def on_pool(call: PoolCall, feats: Tensor, pooled: Tensor) -> None:
        parts = upper(feats)
        if parts is not None and bool(_changed(*parts).any()):
            changed.append(f"<pooled features #{call.index}>")

    for a in range(nd):
        cut = size[a] // 2 - obs.radius[a] - 1
        if cut < 1:
            continue
        axis[0] = a
        base = torch.randn((1, x.shape[1], *size), generator=gen, dtype=torch.float64)
        other = base.clone()
        region = other.narrow(a + 2, 0, cut)
        region.copy_(torch.randn(region.shape, generator=gen, dtype=torch.float64))
        batch = torch.cat([base, other]).to(device=x.device, dtype=x.dtype)
        with instrumented(model) as ins:
            if name_layers:
                for mod in names:
                    ins.forward_hook(mod, hook)
            with torch.inference_mode(), ForwardWatch(2, nd + 2, on_pool=on_pool):
                model(batch)
        if changed and not name_layers:
            _far_test(model, x, size, obs, name_layers=True)  # again, to name the layer
        if changed:
            first = changed[0]
            what = "pooled features" if first.startswith("<") else f"the output of layer {first!r}"
            pools = ", ".join(
                f"#{i} ({k}) of {list(s[1:])}" for i, (k, s) in sorted(obs.pools.items())
            )
            raise ValueError(
                "tiling: the model is not local: replacing the input more than the measured "
                f"receptive-field radius {obs.radius[a]} away along axis {a} changed "
                f"{what} (if that layer is local itself, the operation just before it mixes all "
                f"positions, such as a global pooling in the middle of the network: global "
                f"poolings seen: {pools}); {_NONLOCAL_HINT}"
            )


def _nonlocal_message(obs: _Observed, size: tuple[int, ...]) -> str:
    culprit = obs.far_layers[0] if obs.far_layers else None
    where = f"; the first layer whose output changed that far is {culprit!r}" if culprit else ""
    pools = ", ".join(f"#{i} ({k}) of {list(s[1:])}" for i, (k, s) in sorted(obs.pools.items()))
    return (
        "tiling: the model is not local: changing one input voxel changed pooled features "
        f"at the border of a {'x'.join(map(str, size))} probe volume{where} (global poolings "
        f"seen: {pools}). Either a layer mixes all positions or the receptive field is "
        f"larger than the probe; {_NONLOCAL_HINT}"
    )
