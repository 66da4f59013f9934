"""Exact attention maps of volumes too large for memory, computed tile by tile.

A counting network explains ``y = head(mean_p f(p))``: its pooled features ``f`` are
*local* (a feature depends on the input within a radius ``R`` of its cell) and *shift
equivariant* by multiples of the network's downsampling factor ``D``. The volume is cut
into cores of ``tile_size`` voxels (the last core per axis may be smaller); each tile is
its core plus a halo, clipped at the volume border. Core starts and halos are multiples of
``D``, so the features of a tile's core are exactly the whole volume's. Everything global
is a small pooled vector: ``pooled_j = (1/N_j) Σ_cores Σ_p f_j(p)``.

What each method needs (all exact, i.e. equal to the untiled map up to float rounding):

* **CAM family** (``gp_unet``, ``gp_unet_no_residual``, ``gated_attention``): the map
  ``Σ_k w_k f_k`` at feature resolution is local, so each tile's core is written into the
  whole feature-resolution map (one per scale), which is then upsampled *once*, as the
  untiled method does (cropping upsampled tiles would differ near core borders and when
  ``S`` is not a multiple of ``D``). ``y = Σ_s mean(map_s) + bias``; the intensity fusion
  (a per-image min-max) comes after assembly. Halo ``R``; one forward sweep.
* **grad**: ``∂y/∂I = Σ_j Σ_cores Σ_{p∈core} (∂y/∂pooled_j / N_j) ∂f_j(p)/∂I`` is linear
  in the seeds, so each tile is differentiated with the seed ``(∂y/∂pooled)/N`` on its
  core positions (zero elsewhere) and the tiles' input gradients are added where they
  overlap. ``∂y/∂pooled`` comes from a small forward pass with the exact pooled vectors
  substituted (through any head, even non-linear: then a forward sweep computes the exact
  pooled vectors first; for an affine head, recognised from its autograd graph, the
  gradient does not depend on them and that sweep is skipped). Halo ``R``.
* **guided_backprop** is not additive (each ReLU clamps the *total* upstream gradient),
  but the guided gradient at a voxel depends only on seeds within ``R`` and forward values
  within ``2R``: each tile (halo ``2R``) is seeded with the uniform seed ``(∂y/∂pooled)/N``
  (computed under the guided rule) at *every* pooled position, and only the core of its
  input gradient is kept.
* **grad_cam**: ``α_k = mean_q ∂y/∂f_L(q)``: each tile's gradient at the layer ``L``,
  seeded on its core, is summed over the tile (its support is the core ± ``R``); a second
  sweep writes ``Σ_k α_k f_L`` on the cores at ``L``'s resolution; the map is upsampled
  once. When ``L``'s output is only globally pooled (the default layer of the reference
  models), ``∂y/∂f_L`` is uniform, ``α = (∂y/∂pooled)/N`` and one sweep suffices.
* **intensity**: the map is the image; ``y`` from the exact pooled vectors.

``R`` and ``D`` are measured by probes (:func:`probe_geometry`: one input voxel is
perturbed in random probe volumes, the probe enlarged until the changed pooled features
stay inside it), and the tiling is checked on a small random volume with the same size
modulo ``D`` before the real one is tiled (``verify_tiling``). Non-local layers
(InstanceNorm, GroupNorm, BatchNorm with batch statistics, global pooling or attention in
the middle of the network) and layers that break shift equivariance at the input size are
refused with a ``ValueError``, never mapped wrongly. Everything runs under
:func:`~wsdet.attention.base.instrumented`: the model comes back exactly as it was.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from wsdet.attention._tiling_plan import Tile, TilePlan, make_plan
from wsdet.attention._tiling_probe import (
    PoolGeometry,
    TilingGeometry,
    check_module,
    probe_geometry,
)
from wsdet.attention._tiling_runners import (
    probe_input,
    run_cam,
    run_gradcam,
    run_gradient,
    run_intensity,
)
from wsdet.attention._tiling_verify import verify_tiling
from wsdet.attention.base import AttentionMethod, model_lock
from wsdet.attention.cam import CAM
from wsdet.attention.gradcam import GradCAM, discover_gradcam_layer
from wsdet.attention.gradient import GuidedBackprop, InputGradient
from wsdet.attention.intensity import Intensity

__all__ = [
    "PoolGeometry",
    "Tile",
    "TilePlan",
    "TiledAttention",
    "TilingGeometry",
    "check_module",
    "probe_geometry",
]

_SUPPORTED = (CAM, GradCAM, InputGradient, Intensity)


def _ints(value: Any, argname: str, *, minimum: int, nd: int | None = None) -> tuple[int, ...]:
    """A sequence of ints ``>= minimum`` (an int is broadcast when ``nd`` is given)."""
    expected = f"{argname} must be {'an int or ' if nd is not None else ''}a sequence of "
    expected += f"{'non-negative' if minimum == 0 else 'positive'} ints, one per spatial axis"
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool) and nd is not None:
        value = (int(value),) * nd
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, torch.Size)):
        raise ValueError(f"{expected}, got {value!r}")
    out = tuple(value)
    if not out or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{expected}, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{expected}, got {value!r}")
    return out


class TiledAttention(AttentionMethod):
    """Compute ``method(x)`` tile by tile, exactly.

    An :class:`~wsdet.attention.base.AttentionMethod` wrapping another one: calling it
    returns what the wrapped method returns for the whole input, ``(maps (B, *S), y (B,))``,
    with the memory of one tile (plus the maps). It is not registered by name;
    :meth:`wsdet.Detector.attention` builds one for ``tile_size=``.

    Parameters
    ----------
    method : AttentionMethod
        A built-in method object (``Detector.method``): CAM family, ``grad_cam``,
        ``grad``, ``guided_backprop`` or ``intensity``.
    tile_size : sequence of int
        Core size per spatial axis (2 or 3 values), a multiple of the network's
        downsampling factor ``D`` along every axis it splits. Axes at least as long as the
        volume are not split; if no axis is split, the untiled method runs.
    halo : int or sequence of int, optional
        Halo around each core, per axis, a multiple of ``D``. Default: the measured
        receptive-field radius ``R`` rounded up to a multiple of ``D`` (``2R`` for guided
        backprop). A halo below ``R`` is refused; one below the guided ``2R`` warns.

    Attributes
    ----------
    radius : tuple of int or None
        The measured receptive-field radius ``R`` per axis (after :meth:`probe` or a tiled
        call).
    factor : tuple of int or None
        The measured downsampling factor ``D`` per axis.
    halo : tuple of int or None
        The halo used by the last call.
    plan : TilePlan or None
        The tiles of the last call.
    geometry : TilingGeometry or None
        Everything the probe measured.
    probe_seconds : float
        Time spent probing and verifying in the last call (about 0 once cached).

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import GPUnet
    >>> det = wsdet.Detector(GPUnet(dim=3, width=2).eval(), method="gp_unet")
    >>> x = torch.rand(1, 1, 16, 20, 12)
    >>> tiled = TiledAttention(det.method, tile_size=(8, 8, 8))
    >>> maps, y = tiled(x)
    >>> tiled.radius, tiled.halo, tiled.plan.grid
    ((8, 8, 8), (8, 8, 8), (2, 3, 2))
    >>> bool(torch.allclose(maps, det.attention(x), atol=1e-6))
    True
    """

    def __init__(
        self,
        method: AttentionMethod,
        *,
        tile_size: Sequence[int],
        halo: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(method, AttentionMethod):
            raise TypeError(f"method must be an AttentionMethod, got {type(method).__name__}")
        if not isinstance(method, _SUPPORTED):
            raise ValueError(
                "method: tiled attention supports the built-in methods (CAM family, grad_cam, "
                f"grad, guided_backprop, intensity), got {type(method).__name__}"
            )
        super().__init__(method.model, target=method.target)
        self.method = method
        self.tile_size = _ints(tile_size, "tile_size", minimum=1)
        if len(self.tile_size) not in (2, 3):
            raise ValueError(
                f"tile_size must have 2 or 3 values (one per spatial axis), got {tile_size!r}"
            )
        self.requested_halo: tuple[int, ...] | None = None
        if halo is not None:
            self.requested_halo = _ints(halo, "halo", minimum=0, nd=len(self.tile_size))
            if len(self.requested_halo) != len(self.tile_size):
                raise ValueError(
                    f"halo must be an int or {len(self.tile_size)} ints (one per spatial axis, "
                    f"like tile_size), got {halo!r}"
                )
        self.radius: tuple[int, ...] | None = None
        self.factor: tuple[int, ...] | None = None
        self.halo: tuple[int, ...] | None = None
        self.plan: TilePlan | None = None
        self.geometry: TilingGeometry | None = None
        self.probe_seconds = 0.0

    def __repr__(self) -> str:
        halo = self.halo if self.halo is not None else self.requested_halo
        return (
            f"TiledAttention(method={type(self.method).__name__}, tile_size={self.tile_size}, "
            f"halo={halo})"
        )

    @property
    def guided(self) -> bool:
        """Whether the method needs the doubled halo (guided backprop)."""
        return isinstance(self.method, GuidedBackprop)

    def _check_x(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim not in (4, 5) or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a floating-point tensor (B, C, H, W) or (B, C, D, H, W), got {got}"
            )
        if len(self.tile_size) != x.ndim - 2:
            raise ValueError(
                f"tile_size has {len(self.tile_size)} values but x has {x.ndim - 2} spatial "
                f"dims (shape {tuple(x.shape)}): give one core size per spatial axis"
            )
        return x

    def probe(self, x: Tensor) -> TilingGeometry:
        """Measure (or fetch from the cache) ``D`` and ``R`` for inputs shaped like ``x``.

        Only ``x``'s channels, dtype and device matter: the probes are small random
        volumes. The model is used as it is (call it in eval mode).
        """
        x = self._check_x(x)
        with model_lock(self.model):
            geo = probe_geometry(self.model, x)
        self.geometry, self.radius, self.factor = geo, geo.radius, geo.factor
        return geo

    def _halo(self, geo: TilingGeometry, split: Sequence[bool]) -> tuple[int, ...]:
        d, r = geo.factor, geo.radius
        reach = tuple(2 * ri if self.guided else ri for ri in r)
        need = tuple(-(-n // di) * di for n, di in zip(reach, d, strict=True))
        if self.requested_halo is None:
            return need
        halo = self.requested_halo
        if any(h % di for h, di in zip(halo, d, strict=True)):
            raise ValueError(
                f"halo must be a multiple of the network's downsampling factor {list(d)} per "
                f"axis (so that tiles start on its feature grid), got {list(halo)}"
            )
        rows = list(zip(halo, r, need, split, strict=True))
        short = [a for a, (h, ri, _, cut) in enumerate(rows) if cut and h < ri]
        if short:
            raise ValueError(
                f"halo={list(halo)} is smaller than the receptive-field radius {list(r)} "
                f"measured by the probe along axes {short}: the tiled maps would not be exact"
            )
        if any(cut and h < n for h, _, n, cut in rows):
            warnings.warn(
                f"halo={list(halo)} is smaller than the {list(need)} guided backprop needs "
                "(twice the receptive-field radius): the tiled map is not exact",
                UserWarning,
                stacklevel=3,
            )
        return halo

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(maps (B, *S), y (B,))``, equal to ``method(x)``."""
        x = self._check_x(x)
        size = tuple(int(s) for s in x.shape[2:])
        split = tuple(t < s for t, s in zip(self.tile_size, size, strict=True))
        method = self.method
        if not any(split):
            self.plan = make_plan(size, size, (0,) * len(size))
            self.halo = (0,) * len(size)
            return method(x)
        model = self.model
        with model_lock(model):
            t0 = time.perf_counter()
            geo = self.probe(x)
            d = geo.factor
            rows = list(zip(self.tile_size, d, split, strict=True))
            bad = [a for a, (t, di, cut) in enumerate(rows) if cut and t % di]
            if bad:
                hint = [max(di, t // di * di) for t, di, _ in rows]
                raise ValueError(
                    f"tile_size must be a multiple of the network's downsampling factor "
                    f"{list(d)} along every axis it splits (axes {bad}), got "
                    f"{list(self.tile_size)}; e.g. {hint}"
                )
            halo = self._halo(geo, split)
            self.halo = halo
            layer = None
            if isinstance(method, GradCAM):
                if method._layer is None:
                    method._layer = discover_gradcam_layer(
                        model, probe_input(x, geo), method.target
                    )
                layer = method._layer
            verify_tiling(model, x, geo, halo, split, target=method.target, layer=layer)
            self.probe_seconds = time.perf_counter() - t0
            plan = make_plan(size, self.tile_size, halo)
            self.plan = plan
            if isinstance(method, CAM):
                return run_cam(method, x, plan, geo)
            if isinstance(method, GradCAM):
                return run_gradcam(method, x, plan, geo)
            if isinstance(method, InputGradient):
                return run_gradient(method, x, plan, geo)
            assert isinstance(method, Intensity)
            return run_intensity(method, x, plan, geo)
