"""The attention-method protocol, the registry, and the model-instrumentation helpers.

An attention method is a small class with one job: given a model and an input batch
``x`` of shape ``(B, C, *S)``, return the raw signed attention maps ``(B, *S)`` at input
resolution together with the model's output ``(B,)`` from the same forward pass.

Every method instruments the model only for the duration of one call, through
:func:`instrumented`, which removes its hooks and restores every submodule's ``training``
flag, every parameter's ``requires_grad`` and every ``inplace`` flag, also when an
exception is raised inside the forward pass.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from wsdet._modules import declared_layers
from wsdet._resample import fit_by_edge

__all__ = [
    "AttentionMethod",
    "AttentionUndefinedError",
    "LayerSpec",
    "Target",
    "available_methods",
    "check_channel",
    "get_method",
    "instrumented",
    "model_lock",
    "register_method",
    "resolve_module",
    "select_target",
    "unwrap_model",
]

#: A layer given by the user: the module itself, its dotted name in ``named_modules()``,
#: or ``"auto"``.
LayerSpec = Union[nn.Module, str]
#: What a gradient method differentiates: ``None`` (the single output per sample), an int
#: (a column of a ``(B, K)`` output), or a callable ``output -> (B,)``.
Target = Union[None, int, Callable[[Tensor], Tensor]]


class AttentionUndefinedError(ValueError):
    """A method cannot produce a map for this model (or this input size).

    ``reason`` says why, one of:

    - ``"no_pooling"``: no global average (or sum) pooling feeds the linear head, so CAM
      is undefined (use ``grad_cam`` or a gradient method);
    - ``"mlp_head"``: the pooled features pass through two or more ``Linear`` layers, so
      the output is not linear in them and CAM is undefined;
    - ``"no_linear_head"``: the explained output is not the output of a ``Linear`` layer
      (a sum of a density map, a final non-linearity), so CAM is undefined;
    - ``"one_voxel"``: the features (or Grad-CAM's layer) have a single voxel for this
      input size, so the map would be constant; the message gives the smallest input
      that yields at least two voxels per axis.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AttentionMethod:
    """Base class of attention methods.

    Subclasses set :attr:`name` and implement :meth:`compute`. They are constructed by
    :class:`wsdet.Detector` as ``cls(model, target=..., **options)``.

    Parameters
    ----------
    model : torch.nn.Module
        The user's network. It is never modified beyond the duration of a call.
    target : None, int or callable, optional
        Which scalar per sample the method explains (see :func:`select_target`).
    """

    #: Registry name.
    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, target: Target = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.target = target

    def compute(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(maps (B, *S), output (B,))`` for a validated input ``x``."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.compute(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, type[AttentionMethod]] = {}


def register_method(
    name: str, cls: type[AttentionMethod] | None = None, *, overwrite: bool = False
) -> Any:
    """Register an attention method class under ``name``.

    Usable directly, ``register_method("mine", MyMethod)``, or as a class decorator,
    ``@register_method("mine")``.

    Parameters
    ----------
    name : str
        Registry name, used as ``Detector(model, method=name)``.
    cls : type, optional
        A subclass of :class:`AttentionMethod`.
    overwrite : bool
        Allow replacing an existing registration.

    Examples
    --------
    >>> import torch
    >>> from wsdet.attention.base import AttentionMethod, register_method
    >>> @register_method("double_intensity", overwrite=True)
    ... class Double(AttentionMethod):
    ...     def compute(self, x):
    ...         with torch.inference_mode():
    ...             return 2 * x[:, 0], self.model(x).reshape(-1)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def _register(c: type[AttentionMethod]) -> type[AttentionMethod]:
        if not (isinstance(c, type) and issubclass(c, AttentionMethod)):
            raise TypeError(f"cls must be a subclass of AttentionMethod, got {c!r}")
        if name in _REGISTRY and _REGISTRY[name] is not c and not overwrite:
            raise ValueError(
                f"an attention method named {name!r} is already registered "
                f"({_REGISTRY[name].__name__}); pass overwrite=True to replace it"
            )
        _REGISTRY[name] = c
        if not c.__dict__.get("name"):  # one source for a method's name: its registry name
            c.name = name
        return c

    if cls is None:
        return _register
    return _register(cls)


def available_methods() -> list[str]:
    """Names of the registered attention methods, sorted.

    Examples
    --------
    >>> import wsdet
    >>> "gp_unet" in wsdet.available_methods()
    True
    """
    return sorted(_REGISTRY)


def get_method(name: str) -> type[AttentionMethod]:
    """The class registered under ``name`` (``ValueError`` listing the known names if none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method must be one of {available_methods()}, got {name!r}") from None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``-d model wraps (hooks and modes need the eager one)."""
    seen = 0
    while isinstance(getattr(model, "_orig_mod", None), nn.Module) and seen < 8:
        model = model._orig_mod  # type: ignore[assignment]
        seen += 1
    return model


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises wsdet's calls on one model across threads.

    Every call instruments the model (hooks, training flags, ``requires_grad``) for its
    duration; two threads doing so at once would see each other's hooks. One lock per
    model object, shared by every Detector and method that wraps it.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


# ----------------------------------------------------------------------------- layers


def resolve_module(model: nn.Module, spec: LayerSpec, argname: str) -> tuple[str, nn.Module]:
    """Resolve a module or a dotted name to ``(name, module)`` inside ``model``."""
    named = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        for n, m in named.items():
            if m is spec:
                return n, m
        raise ValueError(f"{argname}: the module given is not a submodule of the model")
    if isinstance(spec, str):
        if spec in named:
            return spec, named[spec]
        close = [n for n in named if n and spec.split(".")[-1] in n][:8]
        hint = f"; similar names: {close}" if close else ""
        raise ValueError(
            f"{argname}: no submodule named {spec!r} in the model{hint} "
            "(names are those of model.named_modules())"
        )
    raise TypeError(f"{argname} must be an nn.Module or a dotted module name, got {spec!r}")


#: Former name of :func:`wsdet._modules.declared_layers` (the ``wsdet_layers()`` reader).
model_layers = declared_layers


# ----------------------------------------------------------------------- instrumenting


@dataclass
class _Instrumentation:
    """Handles registered during one call; removed by :func:`instrumented`."""

    handles: list[RemovableHandle] = field(default_factory=list)

    def forward_hook(self, module: nn.Module, fn: Callable[[nn.Module, Any, Any], Any]) -> None:
        self.handles.append(module.register_forward_hook(fn))

    def forward_pre_hook(self, module: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        self.handles.append(module.register_forward_pre_hook(fn))


@contextlib.contextmanager
def instrumented(model: nn.Module) -> Iterator[_Instrumentation]:
    """Instrument ``model`` for one call and restore it exactly afterwards.

    Inside the block hooks are registered through the yielded object; on exit (normal or
    by exception) they are removed and every submodule's ``training`` flag, every
    parameter's ``requires_grad`` and every ``inplace`` attribute are put back. The
    model's :func:`model_lock` is held throughout, so threads sharing a model take turns.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> with instrumented(m) as ins:
    ...     ins.forward_hook(m[0], lambda mod, i, o: None)
    >>> len(m[0]._forward_hooks)
    0
    """
    with model_lock(model):
        with _restored(model) as ins:
            yield ins


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[_Instrumentation]:
    modules = list(model.modules())
    training = [m.training for m in modules]
    inplace = [(m, m.inplace) for m in modules if isinstance(getattr(m, "inplace", None), bool)]
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    ins = _Instrumentation()
    try:
        yield ins
    finally:
        for h in ins.handles:
            h.remove()
        for m, t in zip(modules, training, strict=True):
            m.training = t
        for m, flag in inplace:
            m.inplace = flag  # type: ignore[assignment]
        for p, r in zip(params, req, strict=True):
            if p.requires_grad != r:
                p.requires_grad_(r)


def select_target(output: Tensor, target: Target, batch: int) -> Tensor:
    """Reduce a model output to one scalar per sample, ``(B,)``.

    ``None`` accepts outputs of shape ``(B,)``, ``(B, 1)`` (or any ``(B, 1, ..., 1)``);
    an int picks column ``target`` of a ``(B, K)`` output; a callable maps the output to
    ``(B,)``.
    """
    if callable(target):
        y = target(output)
        if not isinstance(y, Tensor) or y.shape != (batch,):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"target(output) must return a tensor of shape ({batch},), got {got}")
        return y
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}; pass target=callable to select "
            "one scalar per sample from it"
        )
    if output.shape[0] != batch:
        raise ValueError(
            f"the model output has shape {tuple(output.shape)}, expected a first dimension "
            f"of {batch} (one row per sample)"
        )
    if target is None:
        if output.numel() != batch:
            raise ValueError(
                f"the model output has shape {tuple(output.shape)}, not one scalar per "
                "sample; pass target=<int column> or target=<callable output -> (B,)>"
            )
        return output.reshape(batch)
    if isinstance(target, int) and not isinstance(target, bool):
        flat = output.reshape(batch, -1)
        if not -flat.shape[1] <= target < flat.shape[1]:
            raise ValueError(
                f"target={target} is out of range for a model output with "
                f"{flat.shape[1]} values per sample"
            )
        return flat[:, target]
    raise TypeError(f"target must be None, an int or a callable, got {target!r}")


def check_channel(name: str, index: int, channels: int) -> int:
    """``index`` if it names one of ``channels`` input channels (negative counts from the end).

    >>> check_channel("channel", -1, 3)
    -1
    >>> check_channel("c", 3, 3)
    Traceback (most recent call last):
    ...
    ValueError: c=3 is out of range for an input with 3 channel(s); expected -3 <= c <= 2
    """
    if not -channels <= index < channels:
        raise ValueError(
            f"{name}={index} is out of range for an input with {channels} channel(s); "
            f"expected {-channels} <= {name} <= {channels - 1}"
        )
    return index


def _unfloored(size: Sequence[int], coarse: Sequence[int]) -> tuple[int, ...]:
    """Per axis ``f * m`` for the power of two ``f`` with ``f * m <= n < f * (m + 1)`` (what
    pooling by ``f`` with sizes floored leaves), or ``n`` itself where no such ``f`` fits."""
    scaled = []
    for n, m in zip(size, coarse, strict=True):
        f = 1 << ((n // m).bit_length() - 1) if 1 <= m <= n else 0  # largest 2**k <= n // m
        scaled.append(f * m if f and n - f * m < f else n)
    return tuple(scaled)


def upsample_to(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Upsample ``(B, *s)`` maps to ``size`` with (bi/tri)linear interpolation.

    ``align_corners=False``, as Captum's ``LayerAttribution.interpolate`` and the paper's
    "linear interpolation" do. Maps already at ``size`` are returned unchanged. Along an
    axis of ``size`` that is ``f * s`` plus fewer than ``f`` voxels for a power of two ``f``
    (what floored pooling leaves, e.g. 11 slices pooled once: 5), coarse voxel ``k`` is
    centred on the block ``f * k ... f * k + f - 1`` it covers, as
    :class:`wsdet.models.UpsampleTo` does, and the remainder is clamped to the edge value;
    stretching to ``size`` (Captum) would move the map by up to one coarse voxel across
    the axis. At multiples of ``f`` both are the same; along other axes (e.g. ceil-mode
    strided layers) the map is stretched to ``size``.
    """
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    scaled = _unfloored(size, maps.shape[1:])
    out = torch.nn.functional.interpolate(
        maps.unsqueeze(1), size=scaled, mode=mode, align_corners=False
    ).squeeze(1)
    # the floor's remainder: the edge value, as linear interpolation clamps
    return fit_by_edge(out, size, first_axis=1)


# Keyed weakly by the owner object itself: keying by id() would silence the warning for a
# new owner that reuses the memory address of a collected one.
_WARNED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def warn_once(owner: object, message: str) -> None:
    """Emit ``message`` as a ``UserWarning`` once per ``owner`` object."""
    try:
        seen = _WARNED.setdefault(owner, set())
    except TypeError:  # not weak-referenceable: warn every time rather than never
        seen = set()
    if message not in seen:
        seen.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)
