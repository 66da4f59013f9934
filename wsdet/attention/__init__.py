"""Attention methods: one small class per method behind :class:`AttentionMethod`."""

from wsdet.attention.base import (
    AttentionMethod,
    available_methods,
    get_method,
    instrumented,
    register_method,
)
from wsdet.attention.cam import CAM, GatedAttentionCAM, GPUnetNoResidualCAM

__all__ = [
    "CAM",
    "AttentionMethod",
    "GPUnetNoResidualCAM",
    "GatedAttentionCAM",
    "available_methods",
    "get_method",
    "instrumented",
    "register_method",
]
