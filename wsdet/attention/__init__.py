"""Attention methods: one small class per method behind :class:`AttentionMethod`."""

from wsdet.attention.base import (
    AttentionMethod,
    available_methods,
    get_method,
    instrumented,
    register_method,
)
from wsdet.attention.cam import CAM, GatedAttentionCAM, GPUnetNoResidualCAM
from wsdet.attention.gradcam import GradCAM
from wsdet.attention.gradient import GuidedBackprop, InputGradient
from wsdet.attention.intensity import Intensity
from wsdet.attention.tiling import TiledAttention

__all__ = [
    "CAM",
    "AttentionMethod",
    "GPUnetNoResidualCAM",
    "GatedAttentionCAM",
    "GradCAM",
    "GuidedBackprop",
    "InputGradient",
    "Intensity",
    "TiledAttention",
    "available_methods",
    "get_method",
    "instrumented",
    "register_method",
]
