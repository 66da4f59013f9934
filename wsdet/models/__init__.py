"""Reference architectures of Dubost et al., in 2D and 3D.

``GPUnet`` (A), ``GatedAttentionNet`` (B), ``BaseCNN`` (C) and ``GPUnetNoResidual`` (D). Each
returns one scalar per sample and names, through ``wsdet_layers()``, the head, the globally
pooled feature modules and the Grad-CAM layer; all four derive from :class:`CountingNet`, which
documents their shared parameters.
"""

from wsdet.models._blocks import (
    AttentionGate,
    Concat,
    ConvReLU,
    GlobalAvgPool,
    UpsampleTo,
    conv_nd,
    max_pool_nd,
)
from wsdet.models.base import CountingNet
from wsdet.models.basecnn import BaseCNN
from wsdet.models.gated_attention import GatedAttentionNet
from wsdet.models.gpunet import GPUnet
from wsdet.models.gpunet_no_residual import GPUnetNoResidual
from wsdet.models.init import INIT_SCHEMES, init_weights
from wsdet.models.zoo import get_model as get_model

__all__ = [
    "INIT_SCHEMES",
    "AttentionGate",
    "BaseCNN",
    "Concat",
    "ConvReLU",
    "CountingNet",
    "GPUnet",
    "GPUnetNoResidual",
    "GatedAttentionNet",
    "GlobalAvgPool",
    "UpsampleTo",
    "conv_nd",
    "init_weights",
    "max_pool_nd",
]
