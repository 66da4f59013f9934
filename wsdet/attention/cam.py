"""Class activation maps (CAM) for networks ending in global average pooling + Linear.

``M = Σ_s Σ_k w^s_k f^s_k``: the feature maps ``f^s`` that are globally average-pooled
(one entry per scale; a single entry for GP-Unet), weighted by the matching slice
``w^s`` of the final linear layer's weights, upsampled to the input size when coarser
(linear/bilinear/trilinear, ``align_corners=False``). The head's bias is not part of the
map, so the spatial mean of a single full-resolution map plus the bias is the model's
output.

Registered as ``gp_unet`` (the paper's GP-Unet), ``gp_unet_no_residual`` (its earlier
version, with the optional intensity fusion) and ``gated_attention`` (multi-scale CAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from wsdet.attention.base import (
    AttentionMethod,
    LayerSpec,
    Target,
    instrumented,
    model_layers,
    register_method,
    resolve_module,
    select_target,
    upsample_to,
)

__all__ = ["CAM", "CAMLayers", "GPUnetNoResidualCAM", "GatedAttentionCAM", "discover_cam_layers"]


@dataclass(frozen=True)
class CAMLayers:
    """Where CAM reads a model: the pooled feature modules and the linear head.

    ``features`` holds ``(name, call)`` pairs: the module's dotted name and which of its
    calls in one forward pass produces the maps (``-1``: the last call).
    """

    head: str
    features: tuple[tuple[str, int], ...]


def _spatial_mean(t: Tensor) -> Tensor:
    return t.flatten(2).mean(-1)


def _match_offset(h: Tensor, m: Tensor) -> list[int]:
    """Offsets ``j`` where ``h[:, j:j+C]`` equals ``m`` (``(B, C)``) up to float error."""
    c = m.shape[1]
    if c > h.shape[1]:
        return []
    scale = float(h.abs().max()) if h.numel() else 1.0
    atol = 1e-5 * max(scale, 1.0)
    # torch.allclose(h[:, j:j+C], m, rtol=1e-4, atol) for every j at once (one call per
    # module output instead of one per offset: 279k calls on a DenseNet121).
    windows = h.unfold(1, c, 1)  # (B, K - C + 1, C)
    close = (windows - m[:, None, :]).abs() <= atol + 1e-4 * m.abs()[:, None, :]
    return [int(j) for j in torch.nonzero(close.all(2).all(0)).flatten()]


def discover_cam_layers(
    model: nn.Module, x: Tensor, *, head: LayerSpec = "auto", features: Any = "auto"
) -> CAMLayers:
    """Find the linear head and the pooled feature maps of ``model`` on the real input ``x``.

    The head is the last ``nn.Linear`` called in the forward pass whose output is the
    model's output. The features are module outputs ``(B, C, *S)`` (spatial size > 1)
    whose spatial means are contiguous slices of the head's input, covering it exactly
    (the latest-called match is preferred). Models may instead declare their layers with a
    ``wsdet_layers()`` method returning ``{"head": name, "features": [names]}``.

    Raises
    ------
    ValueError
        If no such head or features exist, naming what was looked for and the arguments
        (``head=``, ``features=``) that set them explicitly.
    """
    declared = model_layers(model)
    if head == "auto" and "head" in declared:
        head = declared["head"]
    if (isinstance(features, str) and features == "auto") and "features" in declared:
        f = declared["features"]
        features = [f] if isinstance(f, str) else list(f)

    if not (isinstance(head, str) and head == "auto") and not (
        isinstance(features, str) and features == "auto"
    ):
        head_name, _ = resolve_module(model, head, "head")
        specs = features if isinstance(features, (list, tuple)) else [features]
        feats = tuple((resolve_module(model, s, "features")[0], -1) for s in specs)
        return CAMLayers(head_name, feats)

    names = {m: n for n, m in model.named_modules()}
    calls: dict[nn.Module, int] = {}
    spatial: list[tuple[str, int, Tensor]] = []
    linears: list[tuple[str, Tensor, Tensor]] = []
    b = x.shape[0]

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        k = calls.get(mod, 0)
        calls[mod] = k + 1
        if isinstance(mod, nn.Linear) and inp and isinstance(inp[0], Tensor):
            linears.append((names[mod], inp[0].detach().clone(), out.detach().clone()))
        if (
            isinstance(out, Tensor)
            and out.ndim == x.ndim
            and out.shape[0] == b
            and out[0, 0].numel() > 1
        ):
            spatial.append((names[mod], k, out.detach().clone()))

    with instrumented(model) as ins, torch.inference_mode():
        for m in names:
            ins.forward_hook(m, hook)
        output = model(x)

    looked = "CAM needs a model ending in global average pooling followed by an nn.Linear head; "
    if isinstance(head, str) and head == "auto":
        found = None
        for n, _i, o in reversed(linears):
            if isinstance(output, Tensor) and o.numel() == output.numel():
                if torch.equal(o.reshape(-1), output.detach().reshape(-1)):
                    found = n
                    break
        if found is None:
            raise ValueError(
                looked + "no nn.Linear whose output is the model's output was called in the "
                "forward pass. Pass head=<module or dotted name> (and features=...)."
            )
        head_name = found
    else:
        head_name = resolve_module(model, head, "head")[0]
    head_inputs = [i for n, i, _ in linears if n == head_name]
    if not head_inputs:
        raise ValueError(f"head: the module {head_name!r} was not called in the forward pass")
    h = head_inputs[-1].reshape(b, -1)

    if not (isinstance(features, str) and features == "auto"):
        specs = features if isinstance(features, (list, tuple)) else [features]
        feats = tuple((resolve_module(model, s, "features")[0], -1) for s in specs)
        return CAMLayers(head_name, feats)

    # Cover the head input [0, K) with pooled feature maps, latest-called first.
    by_offset: dict[int, list[tuple[str, int, int]]] = {}
    for n, k, t in reversed(spatial):
        m = _spatial_mean(t.float()).to(h.dtype)
        for j in _match_offset(h, m):
            by_offset.setdefault(j, []).append((n, k, t.shape[1]))
    chosen: list[tuple[str, int]] = []
    j = 0
    while j < h.shape[1]:
        if j not in by_offset:
            raise ValueError(
                looked + f"no module output (B, C, *S) has a spatial mean equal to the head "
                f"{head_name!r}'s input channels {j}.. (the pooled feature vector). If the "
                "pooled maps are not the output of a module (e.g. a torch.cat in forward), "
                "pass features=<module or dotted name, or a list in the head's order>."
            )
        n, k, c = by_offset[j][0]
        chosen.append((n, k))
        j += c
    return CAMLayers(head_name, tuple(chosen))


@register_method("gp_unet")
class CAM(AttentionMethod):
    """CAM on the full-resolution maps feeding global pooling (GP-Unet, paper Eq. 1).

    Parameters
    ----------
    model : torch.nn.Module
        A network whose output is ``Linear(GAP(f))`` (several pooled maps may be
        concatenated into the head input; then the map sums over them).
    target : None or int
        ``None`` for a single-output head, else the output unit whose weights are used.
    features : "auto", module, dotted name, or a list of them
        The modules whose outputs are globally pooled, in the head's input order.
    head : "auto", module or dotted name
        The final ``nn.Linear``.
    fuse_intensity : bool
        Rescale the (negatives-clipped) map and the image channel ``fuse_channel`` each to
        [0, 1] per image and sum them (Dubost et al.'s post-processing for hyperintense
        lesions). Off by default.
    fuse_channel : int
        Image channel used by ``fuse_intensity``.

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import GPUnet
    >>> det = wsdet.Detector(GPUnet(dim=2), method="gp_unet")
    >>> det.attention(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 32, 32])
    """

    needs_grad = False

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
        if callable(target):
            raise ValueError(
                "target: CAM reads the weights of one output unit of the linear head; pass "
                "None or an int, not a callable"
            )
        self.features_spec = features
        self.head_spec = head
        self.fuse_intensity = bool(fuse_intensity)
        self.fuse_channel = int(fuse_channel)
        self._layers: CAMLayers | None = None

    @property
    def layers(self) -> CAMLayers | None:
        """The resolved layers (``None`` until the first call)."""
        return self._layers

    def _weights(self, head: nn.Module, channels: Sequence[int]) -> list[Tensor]:
        if not isinstance(head, nn.Linear):
            raise ValueError(f"head must be an nn.Linear, got {type(head).__name__}")
        row = 0 if self.target is None else int(self.target)  # type: ignore[arg-type]
        if self.target is None and head.out_features != 1:
            raise ValueError(
                f"the head has {head.out_features} outputs; pass target=<output index>"
            )
        if not -head.out_features <= row < head.out_features:
            raise ValueError(f"target={row} is out of range for a head with {head.out_features}")
        if sum(channels) != head.in_features:
            raise ValueError(
                f"features: the feature maps have {sum(channels)} channels in total but the "
                f"head takes {head.in_features} inputs"
            )
        w = head.weight[row]
        out, j = [], 0
        for c in channels:
            out.append(w[j : j + c])
            j += c
        return out

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        if self._layers is None:
            self._layers = discover_cam_layers(
                model, x, head=self.head_spec, features=self.features_spec
            )
        layers = self._layers
        named = dict(model.named_modules())
        head = named[layers.head]
        captured: dict[int, list[Tensor]] = {i: [] for i in range(len(layers.features))}

        def make_hook(i: int) -> Any:
            def hook(mod: nn.Module, inp: Any, out: Any) -> None:
                captured[i].append(out)

            return hook

        with instrumented(model) as ins, torch.inference_mode():
            for i, (name, _call) in enumerate(layers.features):
                ins.forward_hook(named[name], make_hook(i))
            output = model(x)
            y = select_target(output, None if self.target is None else self.target, x.shape[0])
            feats = []
            for i, (name, call) in enumerate(layers.features):
                outs = captured[i]
                if not outs:
                    raise RuntimeError(f"features: {name!r} was not called in the forward pass")
                feats.append(outs[call])
            ws = self._weights(head, [f.shape[1] for f in feats])
            size = x.shape[2:]
            maps = None
            for f, w in zip(feats, ws, strict=True):
                # Σ_k w_k f_k as one (K,) @ (B, K, S) product. torch.einsum (and matmul with
                # a weight that requires grad) first copy f to (B, S, K): ~20-50x slower.
                wk = w.detach().to(f.dtype)
                m = torch.matmul(wk, f.flatten(2)).reshape(f.shape[0], *f.shape[2:])
                m = upsample_to(m, size)
                maps = m if maps is None else maps + m
            assert maps is not None
            if self.fuse_intensity:
                maps = fuse_with_intensity(maps, x[:, self.fuse_channel])
            return maps.to(x.dtype), y


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
