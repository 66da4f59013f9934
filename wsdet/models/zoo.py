"""The reference architectures by name, and the network each attention method reads.

:func:`get_model` builds a fresh network from its name; every architecture takes ``dim``
(2 or 3) and optionally ``in_channels`` and ``width``.

>>> from wsdet.models import get_model
>>> net = get_model("basecnn", dim=2, width=4)
>>> type(net).__name__
'BaseCNN'
>>> METHOD_ARCHITECTURE["grad_cam"]
'basecnn'
>>> get_model("resnet", dim=2)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: name must be one of ["'basecnn'", ..., "'gpunet_no_residual'"]; got 'resnet'
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsdet._checks import check_choice
from wsdet.models.basecnn import BaseCNN
from wsdet.models.gated_attention import GatedAttentionNet
from wsdet.models.gpunet import GPUnet
from wsdet.models.gpunet_no_residual import GPUnetNoResidual

__all__ = ["ARCHITECTURES", "METHOD_ARCHITECTURE", "get_model"]

#: Architecture name -> class (the paper's A: ``gpunet``, B: ``gated_attention``,
#: C: ``basecnn``, D: ``gpunet_no_residual``).
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "gpunet": GPUnet,
    "gpunet_no_residual": GPUnetNoResidual,
    "gated_attention": GatedAttentionNet,
    "basecnn": BaseCNN,
}

#: Attention method -> the architecture whose trained network it reads (paper §2.2:
#: Grad, Guided backpropagation and Grad-CAM share the base network; the intensity
#: baseline takes its count from it).
METHOD_ARCHITECTURE: dict[str, str] = {
    "gp_unet": "gpunet",
    "gp_unet_no_residual": "gpunet_no_residual",
    "gated_attention": "gated_attention",
    "grad": "basecnn",
    "guided_backprop": "basecnn",
    "grad_cam": "basecnn",
    "intensity": "basecnn",
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """A fresh reference network by architecture name.

    Parameters
    ----------
    name : str
        One of :data:`ARCHITECTURES`: ``"gpunet"``, ``"gpunet_no_residual"``,
        ``"gated_attention"`` or ``"basecnn"``.
    **kwargs
        The architecture's arguments: ``dim`` (2 or 3, required), ``in_channels`` (default
        1), ``width`` (default: the paper's width for ``dim``).

    Returns
    -------
    torch.nn.Module
        The network, freshly initialised by PyTorch's defaults (see
        :func:`wsdet.models.init_weights` for the paper's schemes).

    Raises
    ------
    ValueError
        When ``name`` is not an architecture; the message lists the choices.
    """
    check_choice("name", name, ARCHITECTURES)
    return ARCHITECTURES[name](**kwargs)
