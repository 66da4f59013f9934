"""wsdet.io: the voxel-order convention against nibabel, round trips, masks -> points, mm."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.io import (
    Volume,
    WorldDetections,
    image_id,
    load_volume,
    normalize_intensity,
    points_from_mask,
    save_volume,
    size_in_voxels,
)
from wsdet.metrics import evaluate


def rotated_affine() -> np.ndarray:
    """Anisotropic voxels (0.7, 1.3, 2.9 mm), rotated about an oblique axis, off-origin."""
    a, b = 0.4, -0.9
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.7, 1.3, 2.9])
    aff[:3, 3] = [-31.5, 12.25, 40.0]
    return aff


class Constant(nn.Module):
    """A counting network whose count is a constant (for the intensity method)."""

    def __init__(self, value: float = 2.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0]) + 0 * x.flatten(1).sum(1)


# ----------------------------------------------------------------------------- convention
def test_nifti_voxel_order_and_world_coordinates_match_nibabel(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    aff = rotated_affine()
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # distinct values
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    vol = load_volume(tmp_path / "v.nii.gz")
    # the file's voxel order, untouched: array[i, j, k] is nibabel's [i, j, k]
    assert vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.array, nib.load(tmp_path / "v.nii.gz").get_fdata())
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)  # float32 in the header
    np.testing.assert_allclose(vol.spacing, nib.affines.voxel_sizes(aff), rtol=1e-6)
    np.testing.assert_allclose(vol.spacing, (0.7, 1.3, 2.9), rtol=1e-6)
    pts = np.array([[0, 0, 0], [4, 0, 0], [0, 5, 0], [0, 0, 6], [3, 1, 5]])
    np.testing.assert_allclose(
        vol.to_world(pts), nib.affines.apply_affine(vol.affine, pts), atol=1e-9
    )
    np.testing.assert_allclose(vol.to_voxel(vol.to_world(pts)), pts, atol=1e-9)
    assert vol.id == "v" and vol.path == tmp_path / "v.nii.gz"


def test_detections_in_mm_through_the_affine(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    aff = rotated_affine()
    data = np.zeros((12, 10, 8), np.float32)
    peaks = [(2, 7, 1), (9, 3, 6)]
    for v, p in zip((2.0, 1.0), peaks, strict=True):
        data[p] = v
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "case.nii")
    vol = load_volume(tmp_path / "case.nii")
    det = wsdet.Detector(Constant(2.0), method="intensity")
    x = torch.from_numpy(vol.array)[None, None]
    (found,) = det.detect(x, n="all", size=3)
    located = vol.locate(found)
    assert isinstance(located, WorldDetections) and isinstance(located, wsdet.Detections)
    assert located.points.tolist() == [list(p) for p in peaks]
    np.testing.assert_allclose(located.points_mm, nib.affines.apply_affine(aff, peaks), atol=1e-5)
    assert located.image == "case" and located.count == 2.0


def test_2d_images_lie_in_the_plane_k0() -> None:
    vol = Volume(np.zeros((4, 5)), spacing=(0.5, 2.0))
    np.testing.assert_array_equal(vol.affine, np.diag([0.5, 2.0, 1.0, 1.0]))
    assert vol.to_world([[2, 3]]).tolist() == [[1.0, 6.0, 0.0]]
    assert vol.to_voxel([[1.0, 6.0, 0.0]]).tolist() == [[2.0, 3.0]]


def test_volume_validates_geometry() -> None:
    with pytest.raises(ValueError, match="2D image or a 3D volume"):
        Volume(np.zeros(4))
    with pytest.raises(ValueError, match="spacing must be one positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="disagrees with the affine"):
        Volume(np.zeros((2, 2, 2)), spacing=1.0, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((2, 2, 2)), affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), affine=np.eye(3))
    with pytest.raises(TypeError, match="real numbers"):
        Volume(np.zeros((2, 2), dtype=complex))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_volume_nifti_keeps_geometry_and_header(tmp_path: Path, suffix: str) -> None:
    nib = pytest.importorskip("nibabel")
    aff = rotated_affine()
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.int16), aff)
    img.header["descrip"] = b"source scan"
    nib.save(img, tmp_path / f"src{suffix}")
    src = load_volume(tmp_path / f"src{suffix}")
    amap = np.random.default_rng(0).normal(size=src.shape).astype(np.float32)
    out = save_volume(tmp_path / f"map{suffix}", amap, like=src)
    back = nib.load(out)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), amap)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    assert back.header.get_data_dtype() == np.float32
    assert back.header["descrip"].item() == b"source scan"
    assert int(back.header["sform_code"]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"src{suffix}", f"map{suffix}"])
    if suffix == ".nii.gz":
        assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the name says


def test_numpy_round_trips(tmp_path: Path) -> None:
    aff = rotated_affine()
    vol = Volume(np.arange(24.0).reshape(2, 3, 4), affine=aff)
    back = load_volume(save_volume(tmp_path / "v.npz", vol))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_array_equal(back.affine, aff)  # exact: float64 in the .npz
    save_volume(tmp_path / "a.npy", vol.array)
    plain = load_volume(tmp_path / "a.npy", spacing=(1.0, 2.0, 3.0))
    assert plain.spacing == (1.0, 2.0, 3.0) and plain.to_world([[1, 1, 1]]).tolist() == [
        [1.0, 2.0, 3.0]
    ]
    with pytest.raises(ValueError, match="only for files without geometry"):
        load_volume(tmp_path / "v.npz", spacing=1.0)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="key 'array'"):
        load_volume(tmp_path / "two.npz")


def test_png_images_load_as_grey_2d(tmp_path: Path) -> None:
    from skimage import io as skio

    grey = (np.arange(20).reshape(4, 5) * 10).astype(np.uint8)
    skio.imsave(tmp_path / "g.png", grey, check_contrast=False)
    np.testing.assert_array_equal(load_volume(tmp_path / "g.png").array, grey)
    rgb = np.stack([grey, grey, grey], axis=-1)
    skio.imsave(tmp_path / "c.png", rgb, check_contrast=False)
    vol = load_volume(tmp_path / "c.png", spacing=0.25)
    assert vol.shape == (4, 5) and vol.spacing == (0.25, 0.25)
    np.testing.assert_allclose(vol.array, grey / 255.0, atol=1e-3)  # equal channels -> grey


def test_read_errors_are_precise(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"this is not a nifti file")
    with pytest.raises(ValueError, match=r"cannot read .*bad\.nii\.gz as NIfTI"):
        load_volume(tmp_path / "bad.nii.gz")
    good = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8), np.float32), np.eye(4))
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(good.to_bytes())[:200])  # truncated
    with pytest.raises(ValueError, match=r"cannot read .*cut\.nii\.gz as NIfTI"):
        load_volume(tmp_path / "cut.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ValueError, match=r"shape \(3, 3, 3, 2\).*one file per volume"):
        load_volume(tmp_path / "4d.nii")
    (tmp_path / "x.mha").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown volume suffix '\.mha'"):
        load_volume(tmp_path / "x.mha")
    with pytest.raises(ValueError, match="only for files without geometry"):
        nib.save(good, tmp_path / "ok.nii")
        load_volume(tmp_path / "ok.nii", spacing=1.0)


def test_missing_nibabel_gives_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "v.nii").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'wsdet\[nifti\]'"):
        load_volume(tmp_path / "v.nii")
    with pytest.raises(ImportError, match=r"pip install 'wsdet\[nifti\]'"):
        save_volume(tmp_path / "o.nii.gz", np.zeros((2, 2, 2)))


def test_image_id_strips_one_volume_suffix() -> None:
    assert image_id("a/b/case_01.nii.gz") == "case_01"
    assert image_id("scan.v2.npz") == "scan.v2"
    assert image_id("IMG.PNG") == "IMG"


# ----------------------------------------------------------------------------- masks
def test_points_from_binary_mask_merges_touching_regions() -> None:
    m = np.zeros((6, 8), dtype=bool)
    m[1:3, 1:3] = True  # a 2x2 square
    m[3, 3] = True  # touches the square diagonally: one component (full connectivity)
    m[5, 6:8] = True
    pts = points_from_mask(m)
    square = np.argwhere(m[:4, :4]).mean(axis=0)  # the hand-made centroid
    np.testing.assert_allclose(pts, [square, [5.0, 6.5]])
    # faces only: the diagonal voxel is its own component
    assert len(points_from_mask(m, connectivity=1)) == 3


def test_points_from_label_mask_keeps_touching_labels_apart() -> None:
    m = np.zeros((4, 6), dtype=np.uint8)
    m[1:3, 0:3] = 1
    m[1:3, 3:6] = 2  # shares a face with label 1
    np.testing.assert_allclose(points_from_mask(m), [[1.5, 1.0], [1.5, 4.0]])
    m[1:3, 3:6] = 1  # the same label: one region
    np.testing.assert_allclose(points_from_mask(m), [[1.5, 2.5]])


def test_points_from_mask_3d_anisotropic_min_size_in_mm() -> None:
    m = np.zeros((6, 6, 6), dtype=np.int32)
    m[0:2, 0:2, 0:2] = 1  # 8 voxels
    m[4, 4, 4] = 1  # 1 voxel
    vol = Volume(m, spacing=(1.0, 1.0, 4.0))  # 4 mm^3 per voxel
    both = [[0.5, 0.5, 0.5], [4, 4, 4]]
    np.testing.assert_allclose(points_from_mask(vol), both)
    np.testing.assert_allclose(points_from_mask(vol, min_size=3.0), both)  # 4 mm^3 >= 3
    np.testing.assert_allclose(points_from_mask(m, min_size=3.0), [[0.5, 0.5, 0.5]])  # voxels
    np.testing.assert_allclose(points_from_mask(vol, min_size=5.0), [[0.5, 0.5, 0.5]])
    assert points_from_mask(np.zeros((3, 3, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match="integer labels"):
        points_from_mask(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="connectivity must be <= 3; got 4"):
        points_from_mask(m, connectivity=4)


# ----------------------------------------------------------------------------- millimetres
def test_size_in_voxels() -> None:
    assert size_in_voxels(6.0, (1.0, 1.0, 3.0)) == (6, 6, 2)
    assert size_in_voxels(1.0, (5.0, 5.0)) == (1, 1)  # never below one voxel
    with pytest.raises(ValueError, match="size_mm must be one positive"):
        size_in_voxels(-1.0, (1.0, 1.0))
    with pytest.raises(ValueError, match="size_mm must be one positive"):
        size_in_voxels((1.0, 2.0, 3.0), (1.0, 1.0))


def test_detect_size_mm_uses_the_spacing() -> None:
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 2] = 2.0
    x[0, 0, 4, 4, 5] = 1.0  # 3 voxels away along axis 2
    det = wsdet.Detector(Constant(), method="intensity")
    # 9 mm apart with 3 mm slices: a 6 mm window (2 slices) keeps both, 6 voxels only one
    (mm,) = det.detect(x, n="all", size_mm=6.0, spacing=(1.0, 1.0, 3.0))
    (vox,) = det.detect(x, n="all", size=6)
    assert mm.points.tolist() == [[4, 4, 2], [4, 4, 5]] and vox.points.tolist() == [[4, 4, 2]]
    (same,) = det.detect(x, n="all", size=size_in_voxels(6.0, (1.0, 1.0, 3.0)))
    assert same.points.tolist() == mm.points.tolist()
    with pytest.raises(ValueError, match="size_mm and spacing go together"):
        det.detect(x, size_mm=6.0)
    with pytest.raises(ValueError, match="not both"):
        det.detect(x, size=3, size_mm=6.0, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"one voxel size \(mm\) per spatial axis \(3\)"):
        det.detect(x, size_mm=6.0, spacing=(1.0, 1.0))


def test_evaluate_radius_mm_per_image_spacing_and_report_unit() -> None:
    dets = [([[0, 0, 3]], [0.9]), ([[0, 0, 3]], [0.8])]
    gts = [[[0, 0, 0]], [[0, 0, 0]]]  # 3 voxels along axis 2 in both images
    # image 0: 1 mm slices (3 mm: hit at 4 mm), image 1: 2 mm slices (6 mm: miss)
    rep = evaluate(
        dets, gts, radius_mm=4.0, spacing=[[1, 1, 1], [1, 1, 2]], n_bootstrap=0, max_fp=1.0
    )
    assert (rep.n_tp, rep.n_fp) == (1, 1)
    assert "within 4 mm" in str(rep) and rep.settings["radius_unit"] == "mm"
    assert "within 6 voxels" in str(evaluate(dets, gts, n_bootstrap=0))
    with pytest.raises(ValueError, match="radius_mm needs spacing"):
        evaluate(dets, gts, radius_mm=4.0)
    with pytest.raises(ValueError, match="radius or radius_mm, not both"):
        evaluate(dets, gts, radius=3.0, radius_mm=4.0, spacing=1.0)
    with pytest.raises(ValueError, match=r"one row per image \(2, 3\)"):
        evaluate(dets, gts, radius_mm=4.0, spacing=[[1, 1, 1]])


def test_normalize_intensity() -> None:
    z = normalize_intensity(np.array([1.0, 2.0, 3.0, 6.0]))
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-6 and z.dtype == np.float32
    assert normalize_intensity(np.ones(3), "minmax").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="method must be one of"):
        normalize_intensity(np.ones(3), "median")


def test_normalize_intensity_robust_against_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 2.0, (6, 7, 8))
    m = rng.random(a.shape) < 0.5
    inside = a[m]  # the peer: scipy's MAD scaled to the normal sd
    expect = (inside - np.median(inside)) / stats.median_abs_deviation(inside, scale="normal")
    got = normalize_intensity(a, "robust", mask=m)[m]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    assert (normalize_intensity(a, "robust", mask=m)[~m] == 0).all()
    # bright outliers in 3 % of the voxels shift the z-scored rest, barely the robust one
    b = a.copy()
    b[m & (rng.random(a.shape) < 0.03)] += 20.0
    rest = m & (a == b)
    z_shift = np.abs(normalize_intensity(b, mask=m)[rest] - normalize_intensity(a, mask=m)[rest])
    r_shift = np.abs(
        normalize_intensity(b, "robust", mask=m)[rest]
        - normalize_intensity(a, "robust", mask=m)[rest]
    )
    assert float(r_shift.mean()) < 0.2 * float(z_shift.mean())
    assert normalize_intensity(np.full(5, 2.0), "robust").tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="median absolute deviation is 0"):
        normalize_intensity(np.array([1.0, 1.0, 1.0, 5.0]), "robust")


def test_normalize_intensity_inside_a_mask() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, (5, 6, 7))
    m = rng.random(a.shape) < 0.4
    z = normalize_intensity(a, mask=m)
    inside = a[m]  # hand computation: population statistics of the masked voxels
    np.testing.assert_allclose(z[m], (inside - inside.mean()) / inside.std(), rtol=1e-5)
    assert (z[~m] == 0).all() and z.dtype == np.float32
    mm = normalize_intensity(a, "minmax", mask=m)
    assert mm[m].min() == 0.0 and mm[m].max() == 1.0 and (mm[~m] == 0).all()
    kept = normalize_intensity(a, "none", mask=m)
    np.testing.assert_array_equal(kept[m], a[m].astype(np.float32))
    assert (kept[~m] == 0).all()
    with pytest.raises(ValueError, match="mask must be a bool array"):
        normalize_intensity(a, mask=m[0])
    with pytest.raises(ValueError, match="mask must be a bool array"):
        normalize_intensity(a, mask=m.astype(np.uint8))
    with pytest.raises(ValueError, match="mask is empty"):
        normalize_intensity(a, mask=np.zeros(a.shape, bool))
    with pytest.raises(ValueError, match="mask must be a bool array"):
        normalize_intensity(a, "none", mask=m[0])
