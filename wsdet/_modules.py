"""Torch helpers shared by training, attention and inference: one definition each.

- :class:`WsdetLayers`: the optional ``wsdet_layers()`` convention, as a typed protocol;
  :func:`declared_layers` reads it.
- :func:`find_count_head`: the final ``Linear(K, 1)`` of a counting network.
- :func:`eval_mode`: every submodule in eval mode for a block, each flag restored after.
- :func:`one_value_per_sample`: a model output checked to hold one value per sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "WsdetLayers",
    "declared_layers",
    "eval_mode",
    "find_count_head",
    "one_value_per_sample",
]


@runtime_checkable
class WsdetLayers(Protocol):
    """A model that names its layers for wsdet.

    ``wsdet_layers()`` returns a dict with any of the keys ``"head"`` (dotted name of the
    final ``Linear``), ``"features"`` (names of the modules whose outputs are globally
    pooled into the head, coarse to fine) and ``"gradcam"`` (the Grad-CAM layer). Every
    name is one of ``model.named_modules()``. Models without the method are handled by
    automatic discovery; declared names are verified, never trusted blindly.
    """

    def wsdet_layers(self) -> dict[str, str | list[str]]: ...


def declared_layers(model: nn.Module) -> dict[str, Any]:
    """The layers ``model`` declares through an optional ``wsdet_layers()`` (else ``{}``).

    >>> declared_layers(nn.Linear(2, 1))
    {}
    """
    fn = getattr(model, "wsdet_layers", None)
    if not callable(fn):
        return {}
    layers = fn()
    if not isinstance(layers, Mapping):
        raise TypeError(f"model.wsdet_layers() must return a dict; got {type(layers).__name__}")
    return dict(layers)


def find_count_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Find the final ``Linear(K, 1)`` of a counting network.

    Uses ``model.wsdet_layers()["head"]`` when the model declares it, else the last
    ``nn.Linear`` with ``out_features == 1`` in registration order.

    Parameters
    ----------
    model : torch.nn.Module
        A network with a single output.

    Returns
    -------
    (str, torch.nn.Linear)
        Dotted name and module.

    Raises
    ------
    ValueError
        If there is no such layer, or the declared head is not a ``Linear(K, 1)``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> find_count_head(net)[0]
    '3'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    name = declared_layers(model).get("head")
    if isinstance(name, str):
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear) or module.out_features != 1:
            raise ValueError(
                f"model.wsdet_layers()['head'] = {name!r} must be an nn.Linear(K, 1); got {module}"
            )
        return name, module
    found: tuple[str, nn.Linear] | None = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == 1:
            found = (mod_name, module)
    if found is None:
        raise ValueError(
            "the model declares no wsdet_layers()['head'] and has no nn.Linear with "
            "out_features == 1 (a counting network's final layer)"
        )
    return found


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block; each one's flag restored after.

    >>> m = nn.Sequential(nn.Dropout(), nn.Linear(2, 1))
    >>> m[0].train(True) and None
    >>> with eval_mode(m):
    ...     m[0].training
    False
    >>> m[0].training
    True
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def one_value_per_sample(out: object, batch: int) -> torch.Tensor:
    """The output ``out`` of a counting network as shape ``(batch,)`` (``(batch, 1)`` is
    squeezed); any other shape or type raises, naming what was expected."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
    if out.shape == (batch, 1):
        out = out[:, 0]
    if out.shape != (batch,):
        raise ValueError(
            f"the model must return one value per sample, shape ({batch},); got {tuple(out.shape)}"
        )
    return out
