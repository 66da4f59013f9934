"""wsdet: weakly supervised object detection from counting networks.

>>> import wsdet
>>> wsdet.available_methods()[:1]
['gated_attention']
"""

from wsdet.attention import AttentionMethod, available_methods, register_method
from wsdet.detection import Detections, find_peaks
from wsdet.detector import Detector

__version__ = "0.1.0.dev0"

__all__ = [
    "AttentionMethod",
    "Detections",
    "Detector",
    "__version__",
    "available_methods",
    "find_peaks",
    "register_method",
]
