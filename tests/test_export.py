"""wsdet.export: CSV tables, 3D Slicer markups, label volumes with the input's geometry."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsdet import Detections
from wsdet.export import (
    MARKUPS_SCHEMA,
    points_to_mask,
    read_markups,
    read_points_csv,
    save_point_volume,
    write_detections_csv,
    write_markups,
)
from wsdet.io import Volume, load_volume


def affine() -> np.ndarray:
    a = np.array([[0.0, -0.8, 0.0, 12.5], [1.1, 0.0, 0.0, -40.0], [0.0, 0.0, 3.0, 7.0]])
    return np.vstack([a, [0, 0, 0, 1]])


def located() -> Any:
    vol = Volume(np.zeros((10, 12, 8)), affine=affine(), path="case7.nii.gz")
    det = Detections(
        points=np.array([[1, 2, 3], [9, 0, 7]]),
        scores=np.array([0.123456789, -0.5], dtype=np.float32),
        count=1.6,
        n_candidates=2,
    )
    return vol, vol.locate(det)


# ----------------------------------------------------------------------------- CSV
def test_csv_one_row_per_detection_reads_back_exactly(tmp_path: Path) -> None:
    vol, det = located()
    path = write_detections_csv(tmp_path / "d.csv", det)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "rank", "score", "i", "j", "k", "x_mm", "y_mm", "z_mm"]
    assert [r["image"] for r in rows] == ["case7", "case7"]
    assert [int(r["rank"]) for r in rows] == [1, 2]
    assert [float(r["score"]) for r in rows] == [float(s) for s in det.scores]  # exact
    mm = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
    np.testing.assert_array_equal(mm, det.points_mm)  # exact, not approximately
    np.testing.assert_array_equal(mm, vol.to_world([[1, 2, 3], [9, 0, 7]]))
    voxel = read_points_csv(path)
    np.testing.assert_array_equal(voxel["case7"][0], det.points)
    world = read_points_csv(path, coords="mm")
    np.testing.assert_array_equal(world["case7"][0], det.points_mm)
    assert world["case7"][1] is not None and world["case7"][1].tolist() == [
        float(s) for s in det.scores
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["d.csv"]  # no temporary file left


def test_csv_reads_with_pandas_without_options(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    _, det = located()
    frame = pd.read_csv(write_detections_csv(tmp_path / "d.csv", det))
    assert list(frame.columns) == ["image", "rank", "score", "i", "j", "k", "x_mm", "y_mm", "z_mm"]
    np.testing.assert_array_equal(frame[["x_mm", "y_mm", "z_mm"]].to_numpy(), det.points_mm)


def test_csv_several_images_and_plain_detections(tmp_path: Path) -> None:
    a = Detections(points=np.array([[1, 2]]), scores=np.array([0.5], np.float32))
    b = Detections(points=np.zeros((0, 2), np.int64), scores=np.zeros(0, np.float32))
    path = write_detections_csv(tmp_path / "m.csv", {"a": a, "b": b})
    assert path.read_text() == "image,rank,score,i,j\na,1,0.5,1,2\n"
    got = read_points_csv(path)
    assert list(got) == ["a"] and got["a"][0].tolist() == [[1.0, 2.0]]


def test_read_points_csv_errors_and_empty_rows(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("image,x_mm,y_mm,z_mm\na,1,2,3\nb,,,\n")
    got = read_points_csv(p, coords="mm")
    assert got["a"][0].tolist() == [[1.0, 2.0, 3.0]] and got["b"][0].shape == (0, 3)
    assert got["a"][1] is None  # no score column
    with pytest.raises(ValueError, match=r"needs the columns image and i, j\[, k\].*found image"):
        read_points_csv(p)
    p.write_text("image,i,j\na,1,x\n")
    with pytest.raises(ValueError, match="line 2: expected numbers"):
        read_points_csv(p)
    with pytest.raises(FileNotFoundError):
        read_points_csv(tmp_path / "none.csv")


# ----------------------------------------------------------------------------- markups
def check_markups_schema(doc: Any) -> None:
    """The constraints of Slicer's markups schema v1.0.3 on the fields wsdet writes
    (required fields, types, enums, array lengths), checked by hand."""
    assert isinstance(doc, dict)
    assert {"@schema", "markups"} <= set(doc)  # required at the top level
    assert isinstance(doc["@schema"], str) and doc["@schema"].endswith(".json#")
    assert isinstance(doc["markups"], list) and doc["markups"]
    for m in doc["markups"]:
        assert "type" in m  # required in a markup
        assert m["type"] in ("Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI")
        assert m["coordinateSystem"] in ("LPS", "RAS")
        assert m["coordinateUnits"] in ("mm", "um")
        assert isinstance(m["name"], str) and isinstance(m["locked"], bool)
        assert isinstance(m["labelFormat"], str)
        for cp in m["controlPoints"]:
            for key in ("id", "label", "description"):
                assert isinstance(cp[key], str)
            pos = cp["position"]
            assert isinstance(pos, list) and len(pos) == 3
            assert all(isinstance(v, float) for v in pos)
            for key in ("selected", "locked", "visibility"):
                assert isinstance(cp[key], bool)
            assert cp["positionStatus"] in ("undefined", "preview", "defined")
            assert set(cp) <= {
                "id",
                "label",
                "description",
                "associatedNodeID",
                "position",
                "orientation",
                "selected",
                "locked",
                "visibility",
                "positionStatus",
            }


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_markups_follow_the_schema_and_load_back(tmp_path: Path, system: str) -> None:
    _, det = located()
    path = write_markups(tmp_path / "c.mrk.json", det, coordinate_system=system, name="case7")  # type: ignore[arg-type]
    doc = json.loads(path.read_text())
    check_markups_schema(doc)
    assert doc["@schema"] == MARKUPS_SCHEMA
    m = doc["markups"][0]
    assert m["type"] == "Fiducial" and m["coordinateSystem"] == system
    written = np.array([cp["position"] for cp in m["controlPoints"]])
    flip = np.array([-1.0, -1.0, 1.0]) if system == "LPS" else np.ones(3)
    np.testing.assert_array_equal(written, det.points_mm * flip)
    assert [cp["label"] for cp in m["controlPoints"]] == ["case7-1", "case7-2"]
    assert m["controlPoints"][0]["description"] == f"score={float(det.scores[0])!r} voxel=(1, 2, 3)"
    pos, labels, _ = read_markups(path)
    np.testing.assert_array_equal(pos, det.points_mm)  # back in RAS
    assert labels == ["case7-1", "case7-2"]


def test_markups_of_bare_points_and_errors(tmp_path: Path) -> None:
    path = write_markups(tmp_path / "p.mrk.json", [[1.5, -2.0, 3.0]], scores=[0.7])
    doc = json.loads(path.read_text())
    check_markups_schema(doc)
    assert doc["markups"][0]["controlPoints"][0]["description"] == "score=0.7"
    check_markups_schema(json.loads(write_markups(tmp_path / "e.mrk.json", []).read_text()))
    plain = Detections(points=np.array([[1, 2, 3]]), scores=np.array([1.0]))
    with pytest.raises(TypeError, match="locate them first"):
        write_markups(tmp_path / "x.mrk.json", plain)
    with pytest.raises(ValueError, match=r"points must have shape \(k, 3\) \(positions in mm\)"):
        write_markups(tmp_path / "x.mrk.json", [[1.0, 2.0]])
    with pytest.raises(ValueError, match="coordinate_system must be"):
        write_markups(tmp_path / "x.mrk.json", [[1.0, 2.0, 3.0]], coordinate_system="XYZ")  # type: ignore[arg-type]
    (tmp_path / "bad.json").write_text('{"markups": []}')
    with pytest.raises(ValueError, match="needs '@schema' and 'markups'"):
        read_markups(tmp_path / "bad.json")


def test_read_markups_defaults_to_lps_as_the_schema() -> None:
    # a file written by Slicer without coordinateSystem is LPS (the schema's default)
    import tempfile

    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {"type": "Fiducial", "controlPoints": [{"label": "F-1", "position": [1.0, 2.0, 3.0]}]}
        ],
    }
    p = Path(tempfile.mkdtemp()) / "s.mrk.json"
    p.write_text(json.dumps(doc))
    assert read_markups(p)[0].tolist() == [[-1.0, -2.0, 3.0]]


# ----------------------------------------------------------------------------- volumes
def test_points_to_mask_ranks_and_anisotropic_balls() -> None:
    m = points_to_mask([[2, 2, 2], [2, 2, 3]], (5, 5, 5), spacing=(1.0, 1.0, 3.0), radius_mm=1.0)
    assert m.dtype == np.uint16
    assert m[2, 2, 2] == 1 and m[2, 2, 3] == 2  # 3 mm slices: the balls do not reach across
    assert set(map(tuple, np.argwhere(m == 1))) == {
        (2, 2, 2),
        (1, 2, 2),
        (3, 2, 2),
        (2, 1, 2),
        (2, 3, 2),
    }
    m = points_to_mask([[2, 2], [2, 3]], (5, 5), radius_mm=1.0)
    assert m[2, 3] == 1 and m[2, 2] == 1  # overlap: the better rank wins
    with pytest.raises(ValueError, match="outside the shape"):
        points_to_mask([[5, 0]], (5, 5))
    with pytest.raises(ValueError, match=r"shape \(k, 2\)"):
        points_to_mask([[1, 2, 3]], (5, 5))


def test_point_volume_keeps_the_input_geometry(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 8), np.float32), affine()), tmp_path / "v.nii.gz")
    vol = load_volume(tmp_path / "v.nii.gz")
    det = Detections(points=np.array([[1, 2, 3], [9, 0, 7]]), scores=np.array([0.9, 0.1]))
    out = save_point_volume(tmp_path / "det.nii.gz", det, vol)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-6)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint16 and data[1, 2, 3] == 1 and data[9, 0, 7] == 2
    assert int((data > 0).sum()) == 2
    npz = load_volume(save_point_volume(tmp_path / "det.npz", det, vol))
    np.testing.assert_array_equal(npz.array, data)
    np.testing.assert_array_equal(npz.affine, vol.affine)
