"""Grad-CAM (Selvaraju et al. 2017) on any layer, in 2D and 3D.

``α_k = (1/Z) Σ_p ∂ŷ/∂f_k(p)`` and ``M = Σ_k α_k f_k`` (paper Eqs. 3-4), computed at the
target layer's resolution and upsampled to the input size with (bi/tri)linear
interpolation, ``align_corners=False``. The map is signed by default (``relu=False``).

The backward pass stops at the target layer: the forward pass runs without autograd up
to the layer, whose output is replaced by a leaf tensor that requires grad (then cloned,
so that later in-place operations stay legal); autograd records only the layers after it.
The cost is about one forward pass plus the backward pass of the layers above the target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from wsdet._checks import check_bool
from wsdet._modules import declared_layers
from wsdet.attention.base import (
    AttentionMethod,
    AttentionUndefinedError,
    LayerSpec,
    Target,
    instrumented,
    register_method,
    resolve_module,
    select_target,
    upsample_to,
)
from wsdet.attention.cam import discover_cam_layers
from wsdet.attention.gradient import _differentiate, autograd_region

__all__ = ["GradCAM", "LayerLeaves", "discover_gradcam_layer"]


class LayerLeaves:
    """Forward hook that makes a layer's output the start of autograd.

    Each call's output is replaced by a clone of a leaf tensor that requires grad, and
    grad mode is switched on: with the forward pass started under ``no_grad``, autograd
    records only the layers after it. ``leaves`` holds the leaves, one per call of the
    layer (and ``outputs`` the clones handed on, with ``keep_outputs``).

    Parameters
    ----------
    name : str
        The layer's dotted name, for the error message.
    strict : bool
        Raise ``TypeError`` when the layer returns something other than a tensor (else
        leave that output alone).
    keep_graph : bool
        Keep an output that already requires grad (a later call of a layer whose earlier
        output it depends on) as it is, rather than detaching it.
    keep_outputs : bool
        Also keep the clones handed on (they are otherwise freed with the graph).
    """

    def __init__(
        self,
        name: str,
        *,
        strict: bool = True,
        keep_graph: bool = False,
        keep_outputs: bool = False,
    ) -> None:
        self.name = name
        self.strict = strict
        self.keep_graph = keep_graph
        self.keep_outputs = keep_outputs
        self.leaves: list[Tensor] = []
        self.outputs: list[Tensor] = []

    def __call__(self, mod: nn.Module, inp: Any, out: Any) -> Tensor | None:
        if not isinstance(out, Tensor):
            if not self.strict:
                return None
            raise TypeError(
                f"layer: {self.name!r} returned {type(out).__name__}; grad_cam needs a tensor "
                "(B, C, *S)"
            )
        leaf = out if self.keep_graph and out.requires_grad else out.detach().requires_grad_()
        torch.set_grad_enabled(True)
        self.leaves.append(leaf)
        made = leaf.clone()
        if self.keep_outputs:
            self.outputs.append(made)
        return made

    def clear(self) -> None:
        """Forget the leaves and outputs of the previous forward pass."""
        self.leaves.clear()
        self.outputs.clear()


def _last_spatial_module(model: nn.Module, x: Tensor) -> tuple[str, nn.Module, int]:
    """The module whose forward finished last with an output ``(B, C, *S)``, ``S`` > 1 voxel."""
    names = {m: n for n, m in model.named_modules() if m is not model}
    calls: dict[nn.Module, int] = {}
    found: list[tuple[str, nn.Module, int]] = []
    b = x.shape[0]

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        k = calls.get(mod, 0)
        calls[mod] = k + 1
        if (
            isinstance(out, Tensor)
            and out.ndim == x.ndim
            and out.shape[0] == b
            and out[0, 0].numel() > 1
        ):
            found.append((names[mod], mod, k))

    with instrumented(model) as ins, torch.inference_mode():
        for m in names:
            ins.forward_hook(m, hook)
        model(x)
    if not found:
        raise ValueError(
            "grad_cam: no module of the model returned feature maps of shape (B, C, *S) with "
            "more than one spatial position; pass layer=<module or dotted name>"
        )
    return found[-1]


def discover_gradcam_layer(
    model: nn.Module, x: Tensor, target: Target = None
) -> tuple[str, nn.Module, int]:
    """Find Grad-CAM's default layer on the real input ``x``: ``(name, module, call)``.

    In order: the model's declared ``wsdet_layers()["gradcam"]``; the single feature
    module feeding a global-pooling + linear head (see
    :func:`wsdet.attention.cam.discover_cam_layers`); else the module whose forward pass
    finished last with an output ``(B, C, *S)`` of more than one spatial position.
    ``call`` is which call of the module in one forward pass (``-1``: the last).

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
    ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    >>> discover_gradcam_layer(m, torch.rand(1, 1, 8, 8))[0]
    '1'
    """
    declared = declared_layers(model).get("gradcam")
    if declared is not None:
        name, mod = resolve_module(model, declared, "wsdet_layers()['gradcam']")
        return name, mod, -1
    try:
        layers = discover_cam_layers(model, x, target=target)
    except ValueError:
        layers = None
    named = dict(model.named_modules())
    if layers is not None and len(layers.features) == 1 and layers.features[0][0] in named:
        name, call = layers.features[0]
        return name, named[name], call
    return _last_spatial_module(model, x)


@register_method("grad_cam")
class GradCAM(AttentionMethod):
    """Grad-CAM: feature maps of one layer weighted by their spatially averaged gradients.

    Parameters
    ----------
    model : torch.nn.Module
        A differentiable network taking ``(B, C, *S)`` with a layer of feature maps.
    target : None, int or callable
        The explained scalar per sample (see :func:`~wsdet.attention.base.select_target`).
    layer : "auto", module or dotted name
        The layer whose output ``f`` (``(B, K, *s)``, same number of spatial dims as the
        input) is explained. ``"auto"`` (default) uses :func:`discover_gradcam_layer` on
        the first input. For a module called several times in one forward pass, the
        output of its last call is used.
    relu : bool
        Apply ``ReLU`` to the map before upsampling, as Selvaraju et al. do. Default
        ``False``: signed maps; the negatives policy is left to ``detect()``.

    Notes
    -----
    If the layer feeds ``GAP → Linear`` directly, ``α_k = w_k / Z`` and Grad-CAM equals
    CAM divided by the number ``Z`` of positions of the layer.

    Examples
    --------
    >>> import torch
    >>> from wsdet.models import BaseCNN
    >>> method = GradCAM(BaseCNN(dim=2))
    >>> maps, y = method(torch.rand(2, 1, 16, 16))
    >>> maps.shape, y.shape, method.layer
    (torch.Size([2, 16, 16]), torch.Size([2]), 'cat2')
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target: Target = None,
        layer: LayerSpec = "auto",
        relu: bool = False,
    ) -> None:
        super().__init__(model, target=target)
        self.relu = check_bool("relu", relu)
        self._layer: tuple[str, nn.Module, int] | None = None
        if not (isinstance(layer, str) and layer == "auto"):
            name, mod = resolve_module(self.model, layer, "layer")  # the unwrapped model
            self._layer = (name, mod, -1)

    @property
    def layer(self) -> str | None:
        """Dotted name of the target layer (``None`` until resolved by the first call)."""
        return None if self._layer is None else self._layer[0]

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(maps (B, *S), output (B,))`` from one forward and a partial backward."""
        if self._layer is None:
            self._layer = discover_gradcam_layer(self.model, x, self.target)
        name, module, call = self._layer
        b = x.shape[0]
        # Autograd starts at the layer: the layers before it run without recording a graph.
        hook = LayerLeaves(name, keep_graph=True)
        leaves = hook.leaves
        with instrumented(self.model) as ins, autograd_region(x) as xg:
            ins.forward_hook(module, hook)
            torch.set_grad_enabled(False)  # undone by the hook, and by autograd_region's exit
            output = self.model(xg.detach())
            torch.set_grad_enabled(True)
            if not leaves:
                raise ValueError(f"layer: {name!r} was not called in the forward pass")
            if not -len(leaves) <= call < len(leaves):
                raise ValueError(
                    f"layer: {name!r} was called {len(leaves)} time(s), call {call} requested"
                )
            f = leaves[call]
            if f.ndim != x.ndim or f.shape[0] != b:
                raise ValueError(
                    f"layer: {name!r} returned shape {tuple(f.shape)}; grad_cam needs feature "
                    f"maps (B={b}, C, *S) with {x.ndim - 2} spatial dims like the input"
                )
            if f[0, 0].numel() == 1:
                raise AttentionUndefinedError(
                    "one_voxel",
                    f"layer: {name!r} returns a single voxel per channel {list(f.shape)} for an "
                    f"input of size {list(x.shape[2:])}, so the Grad-CAM map would be "
                    "constant; choose an earlier layer (layer=...) or a larger input",
                )
            y = select_target(output, self.target, b)
            g = _differentiate(y, f, f"the output of layer {name!r}")
        alpha = g.flatten(2).mean(2)
        # Σ_k α_k f_k per sample as a batched (1, K) @ (K, S) product (no copy of f).
        maps = torch.bmm(alpha.unsqueeze(1), f.detach().flatten(2)).reshape(b, *f.shape[2:])
        if self.relu:
            maps = maps.clamp_min(0)
        maps = upsample_to(maps, x.shape[2:])
        return maps.detach().to(x.dtype), y.detach()
