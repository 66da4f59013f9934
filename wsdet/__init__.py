"""wsdet: weakly supervised object detection from counting networks.

The top-level names are loaded lazily, so that ``import wsdet.metrics`` (pure NumPy/SciPy)
does not import torch.

>>> import wsdet
>>> "gp_unet" in wsdet.available_methods()
True
>>> from importlib.metadata import version
>>> wsdet.__version__ == version("wsdet")
True
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

try:
    __version__ = _version("wsdet")  # the installed distribution's metadata
except _PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "AttentionMethod": "wsdet.attention",
    "available_methods": "wsdet.attention",
    "register_method": "wsdet.attention",
    "Detections": "wsdet.detection",
    "detect_maps": "wsdet.detection",
    "find_peaks": "wsdet.detection",
    "Detector": "wsdet.detector",
    "run_detection": "wsdet.inference",
}

__all__ = [
    "AttentionMethod",
    "Detections",
    "Detector",
    "__version__",
    "available_methods",
    "detect_maps",
    "find_peaks",
    "register_method",
    "run_detection",
]

if TYPE_CHECKING:
    from wsdet.attention import AttentionMethod, available_methods, register_method
    from wsdet.detection import Detections, detect_maps, find_peaks
    from wsdet.detector import Detector
    from wsdet.inference import run_detection


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsdet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
