"""The detection cache of the studies: every NMS candidate of every test image, computed
once per method and network.

``detections/<name>-<key>.npz`` holds the points, scores, per-image offsets and predicted
counts of one method on one network's test images (and the seconds they took); metrics and
bootstrap are recomputed from it at report time. An entry being computed is locked
(``<name>-<key>.lock``, the same :class:`~wsdet.experiments.store.FolderLock` as the
networks'), so two processes running the same study compute it once: the second waits for
the first and loads its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch import nn

from wsdet._io import atomic_write
from wsdet.detection import Detections, detect_maps
from wsdet.detector import Detector
from wsdet.experiments.store import FolderLock, Store

if TYPE_CHECKING:  # typing.Unpack and Required are Python >= 3.11; annotations are lazy
    from typing_extensions import Required, Unpack

__all__ = [
    "cached_detections",
    "detect_all",
    "detect_cached",
    "detections_path",
    "load_detections",
    "save_detections",
]


#: The default NMS window of :func:`detect_all`.
NMS_SIZE = 6


class DetectOptions(TypedDict, total=False):
    """How :func:`detect_all` detects: images per batch, NMS ``size``, Detector ``options``."""

    batch_size: Required[int]
    size: int | tuple[int, ...]
    options: dict[str, Any] | None


def detect_all(
    model: nn.Module,
    method: str,
    images: torch.Tensor,
    *,
    batch_size: int,
    size: int | tuple[int, ...] = NMS_SIZE,
    options: dict[str, Any] | None = None,
    masks: torch.Tensor | None = None,
) -> list[Detections]:
    """Every NMS candidate (``n="all"``, negatives clipped) of every image.

    ``masks``: ``(N, *S)`` bool region masks; each map is set to 0 outside its mask before
    the NMS (as the training-free references' maps are), so every candidate lies inside.
    """
    det = Detector(model, method=method, **(options or {}))
    out: list[Detections] = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        if masks is None:
            out += det.detect(x, n="all", size=size, negatives="clip")
            continue
        maps, counts = det.attention_and_count(x)
        inside = masks[i : i + batch_size].to(maps.device, maps.dtype)
        out += detect_maps(maps.clamp_min(0) * inside, n="all", counts=counts, size=size)
    return out


def save_detections(path: Path, dets: Sequence[Detections], seconds: float) -> None:
    """Write ``dets`` and the ``seconds`` they took to ``path`` (``.npz``, atomically)."""
    ndim = dets[0].points.shape[1] if dets else 2
    points = np.concatenate([d.points for d in dets]) if dets else np.zeros((0, ndim), np.int64)
    scores = np.concatenate([d.scores for d in dets]) if dets else np.zeros(0, np.float32)
    offsets = np.cumsum([0] + [len(d) for d in dets]).astype(np.int64)
    counts = np.array([d.count for d in dets], dtype=np.float64)

    def write(f: Any) -> None:
        np.savez_compressed(
            f,
            points=points,
            scores=scores,
            offsets=offsets,
            counts=counts,
            seconds=np.array(seconds),
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def load_detections(path: Path) -> tuple[list[Detections], float]:
    """Detections saved by :func:`save_detections` and the seconds they took."""
    with np.load(path, allow_pickle=False) as z:
        points, scores, offsets, counts = z["points"], z["scores"], z["offsets"], z["counts"]
        seconds = float(z["seconds"])
    dets = [
        Detections(points[a:b], scores[a:b], float(c), n_candidates=int(b - a))
        for a, b, c in zip(offsets[:-1], offsets[1:], counts, strict=True)
    ]
    return dets, seconds


def coarse_upsample_key(method: str, shape: Sequence[int]) -> dict[str, Any]:
    """``{"coarse_upsample": "in place"}`` for a method whose map upsamples a half-resolution
    layer (Grad-CAM on the reference networks, Gated Attention's multi-scale CAM) on volumes
    of a ``shape`` that is not a multiple of 2: a part of its detections' cache key, since
    those maps changed when :func:`wsdet.attention.base.upsample_to` began to upsample in
    place; else ``{}``, and earlier caches stay valid."""
    coarse = method in ("grad_cam", "gated_attention") and any(n % 2 for n in shape)
    return {"coarse_upsample": "in place"} if coarse else {}


def detections_path(
    store: Store,
    name: str,
    key: dict[str, Any],
    method: str,
    size: int | tuple[int, ...],
    options: dict[str, Any],
) -> Path:
    """The cache file of ``method``'s detections (NMS ``size``, Detector ``options``)."""
    config = {**key, "method": method, "size": size, "options": options}
    return store.entry("detections", name, config).with_suffix(".npz")


def cached_detections(
    path: Path, compute: Callable[[], list[Detections]]
) -> tuple[list[Detections], float]:
    """The detections cached at ``path``, or ``compute()``'s, timed and saved there.

    The entry is locked while it is computed: a second caller (another process or thread)
    waits, then loads the first one's result instead of computing it again.
    """
    if path.exists():
        return load_detections(path)
    with FolderLock(path.with_suffix(".lock")):
        if path.exists():  # computed by another process while this one waited
            return load_detections(path)
        t0 = time.perf_counter()
        dets = compute()
        seconds = time.perf_counter() - t0
        save_detections(path, dets, seconds)
    return dets, seconds


def detect_cached(
    store: Store,
    name: str,
    key: dict[str, Any],
    model: nn.Module,
    method: str,
    images: torch.Tensor,
    **detect: Unpack[DetectOptions],
) -> tuple[list[Detections], float]:
    """Detections of ``method`` on ``images`` (:func:`detect_all` with the keyword arguments
    ``batch_size``, ``size`` and ``options``), computed once and cached under ``key``."""
    size, options = detect.get("size", NMS_SIZE), detect.get("options") or {}
    path = detections_path(store, name, key, method, size, options)
    return cached_detections(path, lambda: detect_all(model, method, images, **detect))
