"""Detections out: CSV tables, 3D Slicer markups (``.mrk.json``) and point/label volumes.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``).

CSV (:func:`write_detections_csv`, :func:`read_points_csv`)
    One header row, then one row per detection: ``image, rank, score``, the voxel index
    ``i, j[, k]`` (array axis order, see :mod:`wsdet.io`) and the world position
    ``x_mm, y_mm, z_mm`` (RAS+). Plain comma-separated values, ``.`` decimals, floats
    written with ``repr`` (they read back exactly): ``pandas.read_csv`` and
    ``csv.DictReader`` read them without options.

3D Slicer markups (:func:`write_markups`, :func:`read_markups`)
    A point list (markups ``type`` ``"Fiducial"``) following Slicer's markups JSON schema
    v1.0.3: the documented required fields ``@schema`` and ``markups[].type``, with
    ``coordinateSystem`` (``"RAS"`` by default, or ``"LPS"``: ``(-x, -y, z)``, stated in
    the file) and ``coordinateUnits`` ``"mm"``. Each control point has an ``id``, a
    ``label`` (its rank), a ``description`` (score and voxel index), a ``position`` and
    ``positionStatus`` ``"defined"``. Drag the file onto Slicer with the volume.

Point and label volumes (:func:`points_to_mask`, :func:`save_point_volume`)
    A mask with the input's geometry: the rank ``1..k`` of each detection at its voxel
    (or in a ball of ``radius_mm``), 0 elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsdet._checks import check_choice, check_float, check_int
from wsdet._io import atomic_write_text
from wsdet.detection import Detections
from wsdet.io import Volume, WorldDetections, _as_points, _as_spacing, save_volume

__all__ = [
    "MARKUPS_SCHEMA",
    "VOXEL_COLUMNS",
    "WORLD_COLUMNS",
    "points_to_mask",
    "read_markups",
    "read_points_csv",
    "save_point_volume",
    "write_csv",
    "write_detections_csv",
    "write_markups",
]

#: The schema URL written in ``@schema`` (3D Slicer markups JSON, v1.0.3).
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
VOXEL_COLUMNS = ("i", "j", "k")
WORLD_COLUMNS = ("x_mm", "y_mm", "z_mm")
CoordinateSystem = Literal["RAS", "LPS"]


def _num(x: float) -> str:
    """A float as text that reads back exactly (``repr``), integers without ``.0``."""
    v = float(x)
    if math.isfinite(v) and v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(v)


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Sequence[Any]) -> Path:
    """Write a CSV table (one header row) atomically.

    Examples
    --------
    >>> import tempfile
    >>> p = write_csv(Path(tempfile.mkdtemp()) / "t.csv", ["a", "b"], [[1, 2.5]])
    >>> p.read_text()
    'a,b\\n1,2.5\\n'
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    for r in rows:
        w.writerow([_num(float(v)) if isinstance(v, (float, np.floating)) else v for v in r])
    return atomic_write_text(buf.getvalue(), path)


def _rows(image: str, det: Detections) -> tuple[list[str], list[list[Any]]]:
    pts = np.asarray(det.points)
    nd = pts.shape[1] if pts.ndim == 2 and pts.shape[1] else 3
    if nd not in (2, 3):
        raise ValueError(f"detections must be 2D or 3D points, got shape {pts.shape}")
    header = ["image", "rank", "score", *VOXEL_COLUMNS[:nd]]
    world = isinstance(det, WorldDetections)
    if world:
        header += list(WORLD_COLUMNS)
    rows: list[list[Any]] = []
    for r in range(len(det)):
        row: list[Any] = [image, r + 1, float(det.scores[r]), *(int(v) for v in pts[r])]
        if world:
            row += [float(v) for v in det.points_mm[r]]  # type: ignore[attr-defined]
        rows.append(row)
    return header, rows


def write_detections_csv(
    path: str | os.PathLike[str],
    detections: Detections | Mapping[str, Detections],
    *,
    image: str | None = None,
) -> Path:
    """Write detections as CSV: one row per detection, one header row.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (its folder must exist).
    detections : Detections or mapping of str to Detections
        One image's detections (:class:`wsdet.io.WorldDetections` adds the ``x_mm, y_mm,
        z_mm`` columns), or ``{image_id: detections}`` for several images in one file (all
        2D or all 3D, all with world coordinates or none).
    image : str, optional
        The image id of a single image (default: ``detections.image`` or ``""``).

    Returns
    -------
    pathlib.Path
        ``path``, written atomically: readers never see a partial table.

    Examples
    --------
    >>> import tempfile
    >>> from wsdet import Detections
    >>> d = Detections(points=np.array([[3, 4, 5]]), scores=np.array([0.5], np.float32))
    >>> p = write_detections_csv(Path(tempfile.mkdtemp()) / "d.csv", d, image="case1")
    >>> p.read_text().splitlines()
    ['image,rank,score,i,j,k', 'case1,1,0.5,3,4,5']
    """
    if isinstance(detections, Detections):
        name = image if image is not None else str(getattr(detections, "image", ""))
        items: list[tuple[str, Detections]] = [(name, detections)]
    elif isinstance(detections, Mapping):
        items = [(str(k), v) for k, v in detections.items()]
    else:
        raise TypeError(
            f"detections must be a Detections or a mapping id -> Detections, "
            f"got {type(detections).__name__}"
        )
    header: list[str] | None = None
    rows: list[list[Any]] = []
    for name, det in items:
        if not isinstance(det, Detections):
            raise TypeError(f"detections[{name!r}] must be a Detections, got {type(det).__name__}")
        h, r = _rows(name, det)
        if header is not None and len(det) and h != header:
            raise ValueError(
                f"detections[{name!r}] needs columns {h}, the others {header}: write 2D and 3D, "
                "or located and unlocated detections, to separate files"
            )
        if header is None or (len(det) and not rows):
            header = h
        rows += r
    return write_csv(path, header or ["image", "rank", "score", *VOXEL_COLUMNS], rows)


def read_points_csv(
    path: str | os.PathLike[str], *, coords: Literal["voxel", "mm"] = "voxel"
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64] | None]]:
    """Read points per image from a CSV (detections or targets).

    The file needs an ``image`` column and the coordinate columns: ``i, j[, k]`` for
    ``coords="voxel"`` or ``x_mm, y_mm, z_mm`` for ``coords="mm"``; a ``score`` column is
    read when present. A row whose coordinates are all empty lists an image without
    points (e.g. a target-free image).

    Returns
    -------
    dict
        ``{image: (points (k, ndim) float64, scores (k,) or None)}`` in file order; within an
        image, rows keep their order.

    Raises
    ------
    ValueError
        If a column is missing (the message lists the columns found) or a value is not a
        number.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("image,i,j\\na,1,2\\na,3,4\\nb,,\\n")
    >>> {k: v[0].tolist() for k, v in read_points_csv(p).items()}
    {'a': [[1.0, 2.0], [3.0, 4.0]], 'b': []}
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    check_choice("coords", coords, ("voxel", "mm"))
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = fields
        wanted = VOXEL_COLUMNS if coords == "voxel" else WORLD_COLUMNS
        cols = [c for c in wanted if c in fields]
        if (
            "image" not in fields
            or len(cols) < (2 if coords == "voxel" else 3)
            or cols[:2] != list(wanted[:2])
        ):
            need = "i, j[, k]" if coords == "voxel" else "x_mm, y_mm, z_mm"
            raise ValueError(
                f"{p} needs the columns image and {need} for {coords} coordinates; "
                f"found {', '.join(fields) or 'no header'}"
            )
        has_score = "score" in fields
        pts: dict[str, list[list[float]]] = {}
        scs: dict[str, list[float]] = {}
        for n, row in enumerate(reader, start=2):
            name = (row["image"] or "").strip()
            vals = [(row[c] or "").strip() for c in cols]
            pts.setdefault(name, [])
            scs.setdefault(name, [])
            if not any(vals):
                continue
            try:
                pts[name].append([float(v) for v in vals])
                if has_score:
                    scs[name].append(float(row["score"]))
            except (TypeError, ValueError):
                raise ValueError(f"{p} line {n}: expected numbers, got {dict(row)}") from None
    nd = len(cols)
    return {
        k: (
            np.asarray(v, dtype=np.float64).reshape(-1, nd),
            np.asarray(scs[k], dtype=np.float64) if has_score else None,
        )
        for k, v in pts.items()
    }


# ----------------------------------------------------------------------------- Slicer
def write_markups(
    path: str | os.PathLike[str],
    detections: WorldDetections | ArrayLike,
    *,
    scores: ArrayLike | None = None,
    coordinate_system: CoordinateSystem = "RAS",
    name: str = "wsdet",
) -> Path:
    """Write a 3D Slicer markups point list (``.mrk.json``), positions in mm.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, conventionally ``*.mrk.json``.
    detections : WorldDetections or array_like
        Located detections (:meth:`wsdet.io.Volume.locate`), or ``(k, 3)`` RAS+ mm points.
    scores : array_like, optional
        ``(k,)`` scores of bare points (written in the descriptions).
    coordinate_system : {"RAS", "LPS"}
        The frame of the written positions, stated in ``coordinateSystem``. wsdet's world
        coordinates are RAS+; ``"LPS"`` writes ``(-x, -y, z)`` (Slicer reads both).
    name : str
        The point list's name; control points are labelled ``name-1``, ``name-2``... by rank.

    Returns
    -------
    pathlib.Path
        ``path``, written atomically; :func:`read_markups` reads it back.

    Examples
    --------
    >>> import tempfile
    >>> p = write_markups(Path(tempfile.mkdtemp()) / "p.mrk.json", [[1.0, 2.0, 3.0]],
    ...                   coordinate_system="LPS")
    >>> read_markups(p)[0].tolist()  # read back in RAS
    [[1.0, 2.0, 3.0]]
    """
    check_choice("coordinate_system", coordinate_system, ("RAS", "LPS"))
    voxels: NDArray[Any] | None = None
    sc: NDArray[np.float64] | None
    if isinstance(detections, WorldDetections):
        pts = np.asarray(detections.points_mm, dtype=np.float64)
        sc = np.asarray(detections.scores, dtype=np.float64)
        voxels = np.asarray(detections.points)
    elif isinstance(detections, Detections):
        raise TypeError(
            "detections have no world coordinates: locate them first "
            "(wsdet.io.Volume.locate(detections)), or pass (k, 3) points in mm"
        )
    else:
        pts = np.asarray(detections, dtype=np.float64)
        sc = None if scores is None else np.asarray(scores, dtype=np.float64)
    pts = _as_points(pts, "points", 3, "positions in mm")
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite positions in mm")
    if sc is not None and sc.shape != (pts.shape[0],):
        raise ValueError(f"scores must have shape ({pts.shape[0]},), got {sc.shape}")
    flip = np.array([-1.0, -1.0, 1.0]) if coordinate_system == "LPS" else np.ones(3)
    points = []
    for r, pos in enumerate(pts * flip):
        desc = [] if sc is None else [f"score={_num(sc[r])}"]
        if voxels is not None:
            desc.append("voxel=(" + ", ".join(str(int(v)) for v in voxels[r]) + ")")
        points.append(
            {
                "id": str(r + 1),
                "label": f"{name}-{r + 1}",
                "description": " ".join(desc),
                "position": [float(v) for v in pos],
                "selected": True,
                "locked": True,
                "visibility": True,
                "positionStatus": "defined",
            }
        )
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "name": name,
                "coordinateSystem": coordinate_system,
                "coordinateUnits": "mm",
                "locked": True,
                "labelFormat": "%N-%d",
                "controlPoints": points,
            }
        ],
    }
    return atomic_write_text(json.dumps(doc, indent=2) + "\n", path)


def read_markups(
    path: str | os.PathLike[str],
) -> tuple[NDArray[np.float64], list[str], list[str]]:
    """Read the control points of the first markup of a ``.mrk.json`` file, in RAS mm.

    Returns
    -------
    positions : numpy.ndarray
        ``(k, 3)`` RAS+ mm (LPS files are converted: ``(-x, -y, z)``).
    labels, descriptions : list of str

    Raises
    ------
    ValueError
        If the file is not markups JSON (the message names the missing field).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not JSON: {err}") from None
    if not isinstance(doc, dict) or "@schema" not in doc or not doc.get("markups"):
        raise ValueError(f"{p} is not a markups file: it needs '@schema' and 'markups'")
    m = doc["markups"][0]
    if "type" not in m:
        raise ValueError(f"{p}: markups[0] has no 'type'")
    system = m.get("coordinateSystem", "LPS")  # the schema's default
    if system not in ("RAS", "LPS"):
        raise ValueError(f"{p}: unknown coordinateSystem {system!r}")
    if m.get("coordinateUnits", "mm") not in ("mm", ["mm", "UCUM", "millimeter"]):
        raise ValueError(f"{p}: coordinateUnits must be mm, got {m['coordinateUnits']!r}")
    cps = m.get("controlPoints", [])
    pos = np.asarray([c["position"] for c in cps], dtype=np.float64).reshape(-1, 3)
    if system == "LPS":
        pos = pos * np.array([-1.0, -1.0, 1.0])
    return pos, [c.get("label", "") for c in cps], [c.get("description", "") for c in cps]


# ----------------------------------------------------------------------------- volumes
def points_to_mask(
    points: ArrayLike,
    shape: Sequence[int],
    *,
    spacing: Sequence[float] | None = None,
    radius_mm: float = 0.0,
) -> NDArray[np.uint16]:
    """A label volume marking points: value ``r`` (1-based rank) around point ``r``.

    Parameters
    ----------
    points : array_like
        ``(k, ndim)`` voxel indices (rounded to the nearest voxel), best first.
    shape : sequence of int
        The volume's shape.
    spacing : sequence of float, optional
        Voxel size per axis (mm) for ``radius_mm`` (default 1).
    radius_mm : float
        Mark every voxel within this distance of the point (0: the point's voxel only).
        Where balls overlap, the better rank wins.

    Examples
    --------
    >>> points_to_mask([[1, 1], [0, 3]], (3, 4)).tolist()
    [[0, 0, 0, 2], [0, 1, 0, 0], [0, 0, 0, 0]]
    """
    shp = tuple(check_int(f"shape[{i}]", s, minimum=1) for i, s in enumerate(shape))
    pts = _as_points(points, "points", len(shp), "voxel indices")
    if pts.shape[0] > np.iinfo(np.uint16).max:
        raise ValueError(f"at most 65535 points fit a uint16 label volume, got {pts.shape[0]}")
    sp = np.asarray(_as_spacing(1.0 if spacing is None else spacing, len(shp)))
    radius_mm = check_float("radius_mm", radius_mm, nonnegative=True)
    out = np.zeros(shp, dtype=np.uint16)
    idx = np.floor(pts + 0.5).astype(np.int64)
    half = np.floor(radius_mm / sp).astype(np.int64)
    for r in range(idx.shape[0] - 1, -1, -1):  # worst first: better ranks overwrite
        c = idx[r]
        if ((c < 0) | (c >= np.asarray(shp))).any():
            raise ValueError(f"point {r} at {pts[r].tolist()} lies outside the shape {shp}")
        lo = np.maximum(c - half, 0)
        hi = np.minimum(c + half + 1, np.asarray(shp))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        d2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grids, c, sp, strict=True))
        block = out[sl]
        block[d2 <= radius_mm**2 * (1 + 1e-9)] = r + 1
    return out


def save_point_volume(
    path: str | os.PathLike[str],
    detections: Detections,
    like: Volume,
    *,
    radius_mm: float = 0.0,
) -> Path:
    """Write the detections as a label volume with ``like``'s geometry (NIfTI or NumPy).

    See :func:`points_to_mask`; the file type follows the suffix (see
    :func:`wsdet.io.save_volume`).
    """
    mask = points_to_mask(detections.points, like.shape, spacing=like.spacing, radius_mm=radius_mm)
    return save_volume(path, mask, like=like)
