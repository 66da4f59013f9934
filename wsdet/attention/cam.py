"""Class activation maps (CAM) for networks ending in global average pooling + Linear.

``M = Σ_s Σ_k w^s_k f^s_k``: the feature maps ``f^s`` that are globally pooled into the
linear head (one entry per scale; a single entry for GP-Unet), weighted by the matching
slice ``w^s`` of the head's weight row, upsampled to the input size when coarser
(linear/bilinear/trilinear, ``align_corners=False``). The head's bias is not part of the
map. For sum pooling the map is multiplied by the number of positions, so that for every
single-scale model ``mean(map) + bias == output``; this identity (per scale, at feature
resolution) is checked on every call, so a map is never silently wrong.

The features are found by what happens to tensors, not by which module returned them
(:mod:`wsdet.attention.pooling`): the tensor a global pooling receives — after any
functional or in-place op — whose pooled vector is (part of) the head's input. Features
and head given explicitly (``features=``, ``head=``, or a model's ``wsdet_layers()``) are
verified the same way and rejected with what was found instead.

Registered as ``gp_unet`` (the paper's GP-Unet), ``gp_unet_no_residual`` (its earlier
version, with the optional intensity fusion) and ``gated_attention`` (multi-scale CAM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wsdet._checks import check_int
from wsdet.attention.base import (
    AttentionMethod,
    AttentionUndefinedError,
    LayerSpec,
    Target,
    check_channel,
    instrumented,
    register_method,
    select_target,
    upsample_to,
    warn_once,
)
from wsdet.attention.cam_discovery import (
    CAMLayers,
    discover_cam_layers,
    float_rtol,
    last_pool_index,
    smallest_input,
)
from wsdet.attention.pooling import ForwardWatch, PoolCall

__all__ = [
    "CAM",
    "CAMLayers",
    "GPUnetNoResidualCAM",
    "GatedAttentionCAM",
    "check_identity",
    "discover_cam_layers",
    "fuse_with_intensity",
    "scale_maps",
]


@register_method("gp_unet")
class CAM(AttentionMethod):
    """CAM on the maps feeding global pooling (GP-Unet, paper Eq. 1).

    Parameters
    ----------
    model : torch.nn.Module
        A network whose explained output is ``Linear(GAP(f))`` (several pooled maps may be
        concatenated into the head input; then the map sums over them).
    target : None, int or callable
        The explained scalar per sample (see :func:`~wsdet.attention.base.select_target`);
        it must be a column of the head's output (its weight row is used).
    features : "auto", module, dotted name, or a list of them
        The modules whose outputs are globally pooled, in the head's input order
        (verified; ``"auto"`` finds the pooled tensors, also functional ones).
    head : "auto", module or dotted name
        The final ``nn.Linear`` (verified).
    fuse_intensity : bool
        Rescale the (negatives-clipped) map and the image channel ``fuse_channel`` each to
        [0, 1] per image and sum them (Dubost et al.'s post-processing for hyperintense
        lesions). Off by default.
    fuse_channel : int
        Image channel used by ``fuse_intensity``.

    Raises
    ------
    AttentionUndefinedError
        On the first call, when CAM is undefined for the model (no global pooling, an MLP
        head, no linear head, features of one voxel: the message says what to do).

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import GPUnet
    >>> det = wsdet.Detector(GPUnet(dim=2), method="gp_unet")
    >>> det.attention(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target: Target = None,
        features: Any = "auto",
        head: LayerSpec = "auto",
        fuse_intensity: bool = False,
        fuse_channel: int = 0,
    ) -> None:
        super().__init__(model, target=target)
        self.features_spec = features
        self.head_spec = head
        self.fuse_intensity = bool(fuse_intensity)
        self.fuse_channel = check_int("fuse_channel", fuse_channel)
        self._layers: CAMLayers | None = None

    @property
    def layers(self) -> CAMLayers | None:
        """The resolved layers (``None`` until the first call)."""
        return self._layers

    def fusion_image(self, x: Tensor) -> Tensor:
        """The image channel ``fuse_channel`` of ``x`` (``ValueError`` if out of range)."""
        return x[:, check_channel("fuse_channel", self.fuse_channel, x.shape[1])]

    def _discover(self, x: Tensor) -> CAMLayers:
        try:
            return discover_cam_layers(
                self.model,
                x,
                head=self.head_spec,
                features=self.features_spec,
                target=self.target,
            )
        except AttentionUndefinedError as e:
            if e.reason != "one_voxel":
                raise
            seen_index = last_pool_index(self.model, x)
            size = None if seen_index is None else smallest_input(self.model, x, seen_index)
            hint = (
                f" The smallest input giving >= 2 voxels per axis is {size}."
                if size
                else " No input up to 8x larger gives >= 2 voxels per axis."
            )
            raise AttentionUndefinedError("one_voxel", str(e) + hint) from None

    def _features(self, x: Tensor, layers: CAMLayers) -> tuple[list[Tensor], Tensor, Tensor, Any]:
        """One forward pass: the pooled feature maps, the head's weight row and bias."""
        model = self.model
        named = dict(model.named_modules())
        feats: dict[int, Tensor] = {}
        lin: list[tuple[Tensor, Tensor | None]] = []
        # Module outputs are read with forward hooks (no per-op cost); tensors pooled after a
        # functional op need the ForwardWatch, which sees every torch call of the pass.
        if layers.head in named and all(n in named for n, _ in layers.features):
            captured: dict[int, list[Tensor]] = {i: [] for i in range(len(layers.features))}

            def make_hook(i: int) -> Callable[[nn.Module, Any, Any], None]:
                def hook(mod: nn.Module, inp: Any, out: Any) -> None:
                    captured[i].append(out)

                return hook

            with instrumented(model) as ins:
                for i, (name, _call) in enumerate(layers.features):
                    ins.forward_hook(named[name], make_hook(i))
                output = model(x)
            for i, (name, call) in enumerate(layers.features):
                if not captured[i]:
                    raise RuntimeError(f"features: {name!r} was not called in the forward pass")
                feats[i] = captured[i][call]
            head = named[layers.head]
            weight, bias = head.weight, head.bias
        else:
            assert layers.pools is not None
            want = {p.index: i for i, p in enumerate(layers.pools)}
            hidx = layers.head_call

            def on_pool(call: PoolCall, f: Tensor, pooled: Tensor) -> None:
                if call.index in want:
                    feats[want[call.index]] = f

            def on_linear(i: int, inp: Tensor, w: Tensor, b: Tensor | None, o: Tensor) -> None:
                if i == hidx:
                    lin.append((w, b))

            with (
                instrumented(model),
                ForwardWatch(x.shape[0], x.ndim, on_pool=on_pool, on_linear=on_linear),
            ):
                output = model(x)
            if len(feats) != len(layers.pools) or not lin:
                raise RuntimeError(
                    "CAM: the forward pass no longer makes the pooling/linear calls found on "
                    "the first call (data-dependent control flow?); create a new Detector"
                )
            weight, bias = lin[0]
        ordered = [feats[i] for i in range(len(layers.features))]
        b0 = weight.new_zeros(()) if bias is None else bias[layers.row]
        return ordered, weight[layers.row], b0, output

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        image = self.fusion_image(x) if self.fuse_intensity else None
        if self._layers is None:
            with torch.inference_mode(False):
                self._layers = self._discover(x)
        layers = self._layers
        with torch.inference_mode():
            feats, w, bias, output = self._features(x, layers)
            y = select_target(output, self.target, x.shape[0])
            total = sum(f.shape[1] for f in feats)
            if total != w.shape[0]:
                raise ValueError(
                    f"features: the feature maps have {total} channels in total but the head "
                    f"takes {w.shape[0]} inputs"
                )
            size = x.shape[2:]
            maps = None
            means = torch.zeros_like(y, dtype=torch.float64)
            for f, m, scale in zip(feats, scale_maps(w, feats), layers.scales, strict=True):
                if scale != 1.0:
                    m = m * scale
                means += m.flatten(1).double().mean(1)
                if any(s * 16 < n for s, n in zip(f.shape[2:], size, strict=True)):
                    warn_once(
                        self,
                        f"the CAM features have shape {list(f.shape[2:])} for an input of "
                        f"{list(size)}: coarser than 1/16 of the input per axis; the map is "
                        "blurred by upsampling (a larger input or grad_cam on an earlier "
                        "layer gives finer maps)",
                    )
                m = upsample_to(m, size)
                maps = m if maps is None else maps + m
            assert maps is not None
            what = f"features {[n for n, _ in layers.features]}, head {layers.head!r}"
            check_identity(means + float(bias), y, feats[0].dtype, what)
            if image is not None:
                maps = fuse_with_intensity(maps, image)
            return maps.to(x.dtype), y


def scale_maps(weight: Tensor, feats: Sequence[Tensor]) -> list[Tensor]:
    """``Σ_k w_k f_k`` per scale, at the scale's resolution: ``(B, *s)`` each.

    ``weight`` is the head's weight row ``(K,)``, split across the scales' channels in
    order (``K = Σ C_s``); ``feats`` the pooled feature maps ``(B, C_s, *s)``.
    """
    maps = []
    j = 0
    for f in feats:
        c = f.shape[1]
        # Σ_k w_k f_k as one (K,) @ (B, K, S) product. torch.einsum (and matmul with a
        # weight that requires grad) first copy f to (B, S, K): ~20-50x slower.
        wk = weight[j : j + c].detach().to(f.dtype)
        j += c
        maps.append(torch.matmul(wk, f.flatten(2)).reshape(f.shape[0], *f.shape[2:]))
    return maps


def check_identity(pred: Tensor, y: Tensor, dtype: torch.dtype, what: str) -> None:
    """``Σ_s scale_s · mean(Σ_k w_k f_k) + bias`` (``pred``) must be the explained output.

    The tolerance follows the features' ``dtype`` (:func:`float_rtol`: 1e-4 relative in
    float32, looser in float16/bfloat16, 1e-9 in float64).
    """
    yd = y.detach().double()
    tol = float_rtol(dtype) * max(1.0, float(yd.abs().max()), float(pred.abs().max()))
    err = float((pred - yd).abs().max())
    if not err <= tol:
        raise ValueError(
            f"CAM identity failed: mean(map) + bias differs from the output by {err:.3g} "
            f"({what}); the features are not what the head pools. Check features=/head=, "
            "or use 'auto'"
        )


def _rescale01(t: Tensor) -> Tensor:
    flat = t.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (t.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (t.ndim - 1)))
    span = hi - lo
    return torch.where(span > 0, (t - lo) / torch.where(span > 0, span, 1), torch.zeros_like(t))


def fuse_with_intensity(maps: Tensor, image: Tensor) -> Tensor:
    """Dubost et al.'s fusion: clip negatives, rescale map and image to [0, 1], add.

    Each sample is rescaled on its own (min–max); a constant map or image becomes zeros.
    """
    return _rescale01(maps.clamp_min(0)) + _rescale01(image.to(maps.dtype))


@register_method("gp_unet_no_residual")
class GPUnetNoResidualCAM(CAM):
    """CAM on the GP-Unet-no-residual architecture (paper's architecture D).

    Identical to :class:`CAM`; registered separately so that experiments name the method
    they evaluate. ``fuse_intensity=True`` adds the paper's intensity fusion.
    """


@register_method("gated_attention")
class GatedAttentionCAM(CAM):
    """Multi-scale CAM (paper Eq. 2): ``Σ_s Σ_k w^s_k f^s_k``, coarse scales upsampled.

    For :class:`wsdet.models.GatedAttentionNet` the two pooled scales are found from the
    model's ``wsdet_layers()``; for other models, automatically or via ``features=[...]``.
    """
