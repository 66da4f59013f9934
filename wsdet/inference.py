"""Detection over a whole cohort: sharded over ``torchrun`` processes, resumable.

:func:`run_detection` runs :meth:`wsdet.Detector.detect` on every volume of a dataset and
keeps the results in a folder:

``run.json``
    The settings of the run: the attention method, the detection options, the number of
    volumes, the ids given, and a SHA-256 fingerprint of the model's weights. A rerun into
    the same folder must have the same settings (it raises otherwise), so that results of
    different settings are never mixed.
``volumes/000017.npz``
    One file per volume, written atomically (temporary file in the same folder, then
    ``os.replace``) by the process that computed it, as soon as it is done. A rerun skips
    the volumes whose file exists: an interrupted run resumes where it stopped.
``detections.npz``
    Every volume's detections, merged by rank 0 (read back with :func:`read_detections`).
``detections.csv``
    The same as a table (:func:`wsdet.export.write_detections_csv`): one row per
    detection, ``image, rank, score, i, j[, k]``.

Under ``torchrun`` the unfinished volumes are dealt round-robin to the processes, each
writes its own files, and after a barrier rank 0 merges them; every process returns the
merged result. Each volume is computed alone (batch of one) whatever the number of
processes, so the merged result equals the single-process one exactly. With several nodes,
``out_dir`` must be on a file system all of them see.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from wsdet._checks import PathLike, check_int
from wsdet._io import atomic_write, atomic_write_text
from wsdet.detection import Detections, NArg, Negatives, SizeArg, check_detect_options
from wsdet.detector import Detector
from wsdet.distributed import Collective

__all__ = ["read_detections", "run_detection"]

logger = logging.getLogger(__name__)

_FORMAT = "wsdet.detect/1"
_MANIFEST, _VOLUMES, _MERGED, _TABLE = "run.json", "volumes", "detections.npz", "detections.csv"


def _keep(item: Any) -> Any:
    """The ``DataLoader`` conversion that leaves each item as the dataset returned it."""
    return item


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON round trip (tuples become lists), so that settings compare as stored."""
    return json.loads(json.dumps(value))


def _volume_input(item: Any, index: int, dtype: torch.dtype) -> tuple[Tensor, str | None]:
    """``(1, C, *S)`` input tensor and the item's own id (if it has one)."""
    from wsdet.io import Volume

    own_id: str | None = None
    if isinstance(item, Volume):
        image: Any = item.array[None]
        own_id = item.id or None
    elif isinstance(item, dict):
        if "image" not in item:
            raise KeyError(f"dataset item {index} is a dict without 'image' (keys {list(item)})")
        image = item["image"]
        own_id = None if item.get("id") is None else str(item["id"])
    elif isinstance(item, tuple | list):
        image = item[0]
    else:
        image = item
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"dataset item {index} must hold an image (C, H, W) or (C, D, H, W) (or a "
            f"wsdet.io.Volume); got shape {tuple(x.shape)}"
        )
    return x.to(dtype)[None], own_id


def _check_ids(ids: Sequence[str] | None, n: int) -> list[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise TypeError(f"ids must be a sequence of str (one per volume); got {type(ids).__name__}")
    out = [str(i) for i in ids]
    if len(out) != n:
        raise ValueError(f"ids must have one entry per volume ({n}); got {len(out)}")
    if len(set(out)) != n:
        raise ValueError("ids must be unique")
    return out


def _write_volume(path: Path, det: Detections, ident: str) -> None:
    def write(handle: Any) -> None:
        np.savez(
            handle,
            points=np.asarray(det.points, dtype=np.int64),
            scores=np.asarray(det.scores),
            count=np.float64(det.count),
            n_candidates=np.int64(det.n_candidates),
            id=np.str_(ident),
        )

    atomic_write(path, write)


def _read_volume(path: Path) -> tuple[str, Detections]:
    with np.load(path, allow_pickle=False) as f:
        det = Detections(
            points=f["points"],
            scores=f["scores"],
            count=float(f["count"]),
            n_candidates=int(f["n_candidates"]),
        )
        return str(f["id"]), det


def _merge(out: Path, n: int) -> list[Detections]:
    """Rank 0: every volume's file into ``detections.npz`` and ``detections.csv``."""
    from wsdet.export import write_detections_csv

    parts = [_read_volume(out / _VOLUMES / f"{i:06d}.npz") for i in range(n)]
    dets = [d for _, d in parts]
    ndim = max((d.points.shape[1] for d in dets if d.points.ndim == 2), default=0)
    sizes = np.array([len(d) for d in dets], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    points = np.concatenate([d.points.reshape(-1, ndim) for d in dets]).astype(np.int64)

    def write(handle: Any) -> None:
        np.savez(
            handle,
            ids=np.array([i for i, _ in parts], dtype=np.str_),
            offsets=offsets,
            points=points,
            scores=np.concatenate([d.scores for d in dets]),
            counts=np.array([d.count for d in dets], dtype=np.float64),
            n_candidates=np.array([d.n_candidates for d in dets], dtype=np.int64),
        )

    atomic_write(out / _MERGED, write)
    names: dict[str, Detections] = {}
    for i, (ident, det) in enumerate(parts):
        names[ident if ident not in names else f"{ident}#{i}"] = det
    write_detections_csv(out / _TABLE, names)
    return read_detections(out)


def read_detections(out_dir: PathLike) -> list[Detections]:
    """The merged detections of a :func:`run_detection` folder, in dataset order.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder given to :func:`run_detection` (or its ``detections.npz``).

    Returns
    -------
    list of Detections
    """
    path = Path(out_dir)
    if path.is_dir():
        path = path / _MERGED
    if not path.is_file():
        raise FileNotFoundError(f"no merged detections at {path} (run run_detection first)")
    with np.load(path, allow_pickle=False) as f:
        offsets, points, scores = f["offsets"], f["points"], f["scores"]
        counts, candidates = f["counts"], f["n_candidates"]
        return [
            Detections(
                points=points[offsets[i] : offsets[i + 1]],
                scores=scores[offsets[i] : offsets[i + 1]],
                count=float(counts[i]),
                n_candidates=int(candidates[i]),
            )
            for i in range(len(counts))
        ]


def _describe(value: Any) -> Any:
    """A method option as JSON: callables and modules by their qualified name."""
    if isinstance(value, torch.nn.Module):
        return f"<module {type(value).__qualname__}>"
    if callable(value):
        mod = getattr(value, "__module__", "?")
        return f"<callable {mod}.{getattr(value, '__qualname__', type(value).__qualname__)}>"
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


def _manifest(out: Path, settings: dict[str, Any]) -> None:
    """Rank 0: write ``run.json``, or check that a previous run had the same settings."""
    path = out / _MANIFEST
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = [k for k in settings if saved.get(k) != settings[k]]
        if diff:
            raise ValueError(
                f"{out} holds a detection run with other settings ({', '.join(diff)}); use "
                "another out_dir, or delete the folder to start afresh"
            )
        return
    atomic_write_text(json.dumps(settings, indent=1) + "\n", path)


def run_detection(
    dataset: Any,
    detector: Detector,
    out_dir: PathLike,
    *,
    n: NArg = None,
    size: SizeArg = 6,
    negatives: Negatives = "clip",
    min_value: float | None = None,
    tile_size: Sequence[int] | None = None,
    tile_halo: int | Sequence[int] | None = None,
    ids: Sequence[str] | None = None,
    num_workers: int = 0,
) -> list[Detections]:
    """Detect points in every volume of ``dataset``; sharded under ``torchrun``, resumable.

    Parameters
    ----------
    dataset : map-style Dataset or sequence
        Indexable with a length. Items are images ``(C, *S)`` (tensors or numpy arrays),
        tuples ``(image, ...)``, dicts with ``"image"`` (and optionally ``"id"``), or
        :class:`wsdet.io.Volume` (its id is the file name). Images are cast to the dtype of
        the model's parameters and moved to its device.
    detector : Detector
        The model and attention method; put its model on :func:`wsdet.distributed.device`
        under ``torchrun`` with GPUs.
    out_dir : str or os.PathLike
        Results folder (created if needed); see :mod:`wsdet.inference` for its files.
    n, size, negatives, min_value, tile_size, tile_halo
        As in :meth:`wsdet.Detector.detect` (``n`` may be None, an int, or ``"all"``).
    ids : sequence of str, optional
        One unique name per volume, used in the merged results (default: the item's own
        id, else its index).
    num_workers : int, default 0
        ``DataLoader`` worker processes reading the volumes of each process.

    Returns
    -------
    list of Detections
        One per volume, in dataset order, on every process.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a run with other settings (method, options, volumes, weights).

    Examples
    --------
    >>> import tempfile
    >>> from wsdet.models import GPUnet
    >>> _ = torch.manual_seed(0)
    >>> volumes = [torch.rand(1, 16, 16) for _ in range(3)]
    >>> det = Detector(GPUnet(dim=2), method="gp_unet")
    >>> out = run_detection(volumes, det, tempfile.mkdtemp(), n=2, negatives="keep")
    >>> [len(d) for d in out]
    [2, 2, 2]
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a wsdet.Detector; got {type(detector).__name__}")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "dataset must be indexable with a length (a map-style Dataset or a sequence): "
            f"volumes are named by index to resume; got {type(dataset).__name__}"
        )
    check_int("num_workers", num_workers, minimum=0)
    check_detect_options(None, size=size, negatives=negatives, min_value=min_value)
    if not (n is None or n == "all" or (isinstance(n, int) and not isinstance(n, bool))):
        raise ValueError(f"n must be None, an int or 'all' (one rule for every volume); got {n!r}")
    total = len(dataset)
    if total == 0:
        raise ValueError("dataset holds no volume")
    names = _check_ids(ids, total)
    param = next(detector.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    comm = Collective.setup(device)
    out = Path(out_dir)
    options = {"n": n, "size": size, "negatives": negatives, "min_value": min_value}
    # tile_size/tile_halo are not settings: tiled maps equal the untiled ones
    settings = _plain(
        {
            "format": _FORMAT,
            "method": detector.method_name,
            "method_options": {k: _describe(v) for k, v in detector.options.items()},
            "eval_mode": detector.eval_mode,
            "options": options,
            "volumes": total,
            "ids": names,
            "weights": _fingerprint(detector.model),
        }
    )

    def prepare() -> list[int]:
        (out / _VOLUMES).mkdir(parents=True, exist_ok=True)
        _manifest(out, settings)
        return [i for i in range(total) if not (out / _VOLUMES / f"{i:06d}.npz").is_file()]

    pending = comm.on_main(prepare)
    mine = pending[comm.rank :: comm.world]
    logger.info(
        "rank %d: %d of %d volumes to compute (%d already done)",
        comm.rank,
        len(mine),
        total,
        total - len(pending),
    )
    loader = DataLoader(
        Subset(dataset, mine), batch_size=None, collate_fn=_keep, num_workers=num_workers
    )
    for index, item in zip(mine, loader, strict=True):
        x, own_id = _volume_input(item, index, dtype)
        (found,) = detector.detect(
            x.to(device),
            n=n,
            size=size,
            negatives=negatives,
            min_value=min_value,
            tile_size=tile_size,
            tile_halo=tile_halo,
        )
        ident = names[index] if names is not None else (own_id or str(index))
        _write_volume(out / _VOLUMES / f"{index:06d}.npz", found, ident)
    comm.barrier()
    return comm.on_main(lambda: _merge(out, total))
