"""Tests of wsdet.data.synthetic: 2D phantoms and 3D lesion volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch.utils.data import DataLoader

from wsdet.data import collate_points
from wsdet.data.synthetic import PhantomSet, make_lesion_volumes, make_phantoms_2d

SMALL3D = (16, 40, 40)


def is_local_max(image: np.ndarray, points: np.ndarray) -> bool:
    """Each point's value equals the maximum of its 3^d neighbourhood (8- / 26-nbhd)."""
    peak = ndimage.maximum_filter(image, size=3, mode="nearest")
    idx = tuple(points.astype(int).T)
    return bool(np.all(image[idx] == peak[idx]))


def top_intensity_target_fraction(ds: PhantomSet) -> float:
    """Share of target voxels among the K brightest voxels (K = target voxels)."""
    hits, total = 0, 0
    for i in range(len(ds)):
        img = ds.images[i, 0].flatten()
        tm = ds.target_mask[i].flatten()
        k = int(tm.sum())
        if k == 0:
            continue
        hits += int(tm[torch.topk(img, k).indices].sum())
        total += k
    return hits / total


# ------------------------------------------------------------------------ 2D


def test_phantoms_2d_shapes_and_ranges() -> None:
    ds = make_phantoms_2d(12, shape=(48, 56), seed=0)
    assert isinstance(ds, PhantomSet) and len(ds) == 12 and ds.ndim == 2
    assert ds.images.shape == (12, 1, 48, 56) and ds.images.dtype == torch.float32
    assert ds.counts.shape == (12,) and ds.counts.dtype == torch.float32
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert ds.mask is None and ds.spacing == (1.0, 1.0)
    assert ds.target_mask.shape == (12, 48, 56) and ds.target_mask.dtype == torch.bool
    for pts, count in zip(ds.points, ds.counts.tolist(), strict=True):
        assert pts.shape == (count, 2) and pts.dtype == np.float64
    assert set(ds.counts.tolist()) <= set(range(6))


def test_phantoms_2d_counts_equal_placed_targets() -> None:
    ds = make_phantoms_2d(30, noise=0.0, seed=1)
    for i in range(len(ds)):
        labelled, n_components = ndimage.label(ds.target_mask[i].numpy())
        assert n_components == int(ds.counts[i])
        pts = ds.points[i].astype(int)
        # every point in its own footprint component
        assert sorted(labelled[tuple(pts.T)].tolist()) == list(range(1, n_components + 1))


def test_phantoms_2d_points_are_local_maxima_and_separated() -> None:
    ds = make_phantoms_2d(40, noise=0.0, distractors=(2, 4), min_distance=5.0, margin=4, seed=2)
    for i in range(len(ds)):
        pts = ds.points[i]
        assert is_local_max(ds.images[i, 0].numpy(), pts)
        assert np.all(pts >= 4) and np.all(pts <= np.array([63, 63]) - 4)
        if len(pts) > 1:
            d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
            assert d[np.triu_indices(len(pts), 1)].min() >= 5.0


def test_phantoms_2d_without_distractors_peaks_are_the_targets() -> None:
    # With no distractors and no noise, the local maxima above half the target height are
    # exactly the targets (an independent count of the placed blobs).
    ds = make_phantoms_2d(20, distractors=0, noise=0.0, background=0.1, seed=3)
    for i in range(len(ds)):
        img = ds.images[i, 0].numpy()
        peaks = (img == ndimage.maximum_filter(img, size=3)) & (img > 0.1 + 0.4)
        found = np.argwhere(peaks)
        assert len(found) == int(ds.counts[i])
        np.testing.assert_array_equal(
            found[np.lexsort(found.T[::-1])],
            ds.points[i][np.lexsort(ds.points[i].T[::-1])].astype(int),
        )


def test_phantoms_2d_target_size_matches_sigma() -> None:
    sigma = 1.5
    ds = make_phantoms_2d(
        10,
        distractors=0,
        noise=0.0,
        background=0.0,
        target_sigma=sigma,
        min_distance=12,
        max_targets=3,
        min_targets=1,
        seed=4,
    )
    yy, xx = np.mgrid[-6:7, -6:7]
    for i in range(len(ds)):
        img = ds.images[i, 0].numpy()
        for r, c in ds.points[i].astype(int):
            patch = np.pad(img, 6)[r : r + 13, c : c + 13]
            var = (patch * (yy**2 + xx**2)).sum() / patch.sum() / 2  # per-axis variance
            assert abs(math.sqrt(var) - sigma) < 0.1 * sigma


def test_phantoms_2d_determinism_prefix_and_noise_independence() -> None:
    a = make_phantoms_2d(6, seed=5)
    b = make_phantoms_2d(6, seed=5)
    assert torch.equal(a.images, b.images)
    prefix = make_phantoms_2d(3, seed=5)
    assert torch.equal(prefix.images, a.images[:3])
    c = make_phantoms_2d(6, seed=6)
    assert not torch.equal(a.images, c.images)
    clean = make_phantoms_2d(6, seed=5, noise=0.0)
    assert all(np.array_equal(p, q) for p, q in zip(a.points, clean.points, strict=True))
    assert torch.equal(a.target_mask, clean.target_mask)
    residual = (a.images - clean.images).numpy()
    interior = (clean.images > 0.2).numpy() & (clean.images < 0.8).numpy()
    assert abs(residual[interior].std() - 0.05) < 0.01  # the requested noise level


def test_phantoms_2d_intensity_is_not_enough() -> None:
    # distractors can be brighter than the targets
    ds = make_phantoms_2d(40, distractors=(2, 3), noise=0.0, seed=7)
    assert top_intensity_target_fraction(ds) < 0.7


def test_phantoms_2d_errors() -> None:
    with pytest.raises(ValueError, match="min_targets"):
        make_phantoms_2d(2, min_targets=4, max_targets=2)
    with pytest.raises(ValueError, match="target_sigma"):
        make_phantoms_2d(2, target_sigma=0)
    with pytest.raises(ValueError, match="distractors"):
        make_phantoms_2d(2, distractors=(3, 1))
    with pytest.raises(ValueError, match="distractor_kinds"):
        make_phantoms_2d(2, distractor_kinds=("cube",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        make_phantoms_2d(2, shape=(64,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_targets"):
        make_phantoms_2d(1, shape=(12, 12), max_targets=9, min_targets=9, min_distance=6)
    with pytest.raises(TypeError, match="n must be an int"):
        make_phantoms_2d(2.0)  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(
    n_targets=st.integers(0, 6),
    sigma=st.floats(0.8, 2.0),
    seed=st.integers(0, 10_000),
)
def test_phantoms_2d_property(n_targets: int, sigma: float, seed: int) -> None:
    ds = make_phantoms_2d(
        2,
        min_targets=n_targets,
        max_targets=n_targets,
        target_sigma=sigma,
        noise=0.0,
        seed=seed,
    )
    assert ds.counts.tolist() == [n_targets, n_targets]
    for i in range(2):
        assert is_local_max(ds.images[i, 0].numpy(), ds.points[i])


# ------------------------------------------------------------------------ 3D


def test_lesion_volumes_shapes_mask_and_spacing() -> None:
    ds = make_lesion_volumes(4, shape=SMALL3D, spacing=(2.0, 1.0, 1.0), mean_count=3, seed=0)
    assert ds.images.shape == (4, 1, *SMALL3D) and ds.images.dtype == torch.float32
    assert ds.ndim == 3 and ds.spacing == (2.0, 1.0, 1.0)
    assert ds.mask is not None and ds.mask.shape == (4, *SMALL3D) and ds.mask.dtype == torch.bool
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    assert bool((ds.images[:, 0][~ds.mask] == 0).all())  # zero outside the region
    for i, pts in enumerate(ds.points):
        assert pts.shape == (int(ds.counts[i]), 3)
        assert bool(ds.mask[i][tuple(pts.astype(int).T)].all())
    item = ds[0]
    assert set(item) == {"image", "count", "points", "mask", "annotated_slice", "slice_points"}


@pytest.mark.parametrize("distractors", ["none", "csf+blobs"])
@pytest.mark.parametrize("kind", ["ellipsoid", "tube", "mixed"])
def test_lesion_counts_and_local_maxima(distractors: str, kind: str) -> None:
    ds = make_lesion_volumes(
        6,
        shape=SMALL3D,
        mean_count=4,
        target_kind=kind,  # type: ignore[arg-type]
        distractors=distractors,  # type: ignore[arg-type]
        noise=0.0,
        seed=1,
    )
    for i in range(len(ds)):
        vol = ds.images[i, 0].numpy()
        pts = ds.points[i]
        assert is_local_max(vol, pts)
        labelled, n_components = ndimage.label(ds.target_mask[i].numpy(), np.ones((3, 3, 3)))
        assert n_components == int(ds.counts[i]) == len(pts)
        assert sorted(labelled[tuple(pts.astype(int).T)].tolist()) == list(
            range(1, n_components + 1)
        )
        kinds = set(ds.target_kinds[i].tolist())
        assert kinds <= ({"ellipsoid", "tube"} if kind == "mixed" else {kind})


def test_lesion_distractors_defeat_raw_intensity() -> None:
    common = {"shape": (20, 48, 48), "mean_count": 5, "noise": 0.0, "seed": 2}
    plain = make_lesion_volumes(8, distractors="none", **common)  # type: ignore[arg-type]
    hard = make_lesion_volumes(8, distractors="csf+blobs", **common)  # type: ignore[arg-type]
    # midbrain-like: the brightest voxels are the lesions ...
    assert top_intensity_target_fraction(plain) > 0.7
    # ... hippocampus-like: they are mostly CSF / large blobs.
    assert top_intensity_target_fraction(hard) < 0.3
    # identical geometry otherwise: same seed, same counts
    assert torch.equal(plain.counts, hard.counts)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_lesion_targets_are_round_in_mm(spacing: tuple[float, float, float]) -> None:
    # Footprint (half maximum) of an ellipsoid of radii r, r, a*r (HWHM, a ~ U(1, 1.5)):
    # expected volume 4/3 pi r^3 E[a] mm^3, whatever the voxel spacing.
    r = 2.0
    ds = make_lesion_volumes(
        12,
        shape=(24, 40, 40),
        spacing=spacing,
        target_kind="ellipsoid",
        target_radius=r,
        mean_count=4,
        noise=0.0,
        seed=3,
    )
    volumes = []
    for i in range(len(ds)):
        labelled, _ = ndimage.label(ds.target_mask[i].numpy(), np.ones((3, 3, 3)))
        sizes = np.bincount(labelled.ravel())[1:]
        volumes.extend((sizes * np.prod(spacing)).tolist())
    expected = 4 / 3 * math.pi * r**3 * 1.25
    assert len(volumes) > 20
    assert abs(np.mean(volumes) / expected - 1) < 0.15


def test_lesion_single_slice_annotation() -> None:
    kw = {"shape": (16, 48, 48), "mean_count": 10, "target_kind": "ellipsoid", "seed": 4}
    full = make_lesion_volumes(6, **kw)  # type: ignore[arg-type]
    sliced = make_lesion_volumes(6, annotation="slice", **kw)  # type: ignore[arg-type]
    assert torch.equal(full.images, sliced.images)
    assert full.slice_axis == 0 and full.annotated_slice is not None
    assert full.slice_points is not None and full.slice_counts is not None
    for i in range(6):
        s = int(full.annotated_slice[i])
        assert 0 <= s < 16
        every = full.target_points[i]
        in_slice = every[every[:, 0] == s]
        np.testing.assert_array_equal(full.slice_points[i], in_slice[:, 1:])
        np.testing.assert_array_equal(sliced.points[i], in_slice)
        assert float(sliced.counts[i]) == len(in_slice) == float(full.slice_counts[i])
        np.testing.assert_array_equal(sliced.target_points[i], every)
        assert float(full.counts[i]) == len(every)
    assert float(full.slice_counts.sum()) >= 3  # the check above is not vacuous
    # the annotated slice passes through the region's centre (the widest cross-section)
    assert full.mask is not None
    for i in range(6):
        area = full.mask[i].sum(dim=(1, 2)).numpy()
        assert area[int(full.annotated_slice[i])] >= 0.8 * area.max()
    other_axis = make_lesion_volumes(8, slice_axis=2, **kw)  # type: ignore[arg-type]
    assert other_axis.slice_points is not None and other_axis.annotated_slice is not None
    assert other_axis.slice_counts is not None and float(other_axis.slice_counts.sum()) >= 1
    for i in range(8):
        every = other_axis.target_points[i]
        s = int(other_axis.annotated_slice[i])
        assert abs(s - 47 / 2) <= 0.05 * 48 + 1  # the region centre is jittered by <= 5 %
        np.testing.assert_array_equal(other_axis.slice_points[i], every[every[:, 2] == s][:, :2])


def test_lesion_determinism_prefix_and_noise() -> None:
    kw = {"shape": SMALL3D, "mean_count": 3, "distractors": "csf"}
    a = make_lesion_volumes(4, seed=7, **kw)  # type: ignore[arg-type]
    b = make_lesion_volumes(4, seed=7, **kw)  # type: ignore[arg-type]
    assert torch.equal(a.images, b.images)
    assert torch.equal(make_lesion_volumes(2, seed=7, **kw).images, a.images[:2])  # type: ignore[arg-type]
    assert not torch.equal(make_lesion_volumes(4, seed=8, **kw).images, a.images)  # type: ignore[arg-type]
    clean = make_lesion_volumes(4, seed=7, noise=0.0, **kw)  # type: ignore[arg-type]
    assert all(np.array_equal(p, q) for p, q in zip(a.points, clean.points, strict=True))
    assert torch.equal(a.mask, clean.mask)  # type: ignore[arg-type]


def test_lesion_count_distributions() -> None:
    ds = make_lesion_volumes(150, shape=(12, 24, 24), mean_count=2.0, target_radius=1.0, seed=5)
    counts = ds.counts.numpy()
    assert abs(counts.mean() - 2.0) < 4 * math.sqrt(2.0 / 150)
    assert abs(counts.var() - 2.0) < 0.8  # Poisson: variance = mean
    uniform = make_lesion_volumes(
        60,
        shape=(12, 24, 24),
        count_distribution="uniform",
        mean_count=1.5,
        target_radius=1.0,
        seed=5,
    )
    assert set(uniform.counts.int().tolist()) == {0, 1, 2, 3}
    fixed = make_lesion_volumes(3, shape=SMALL3D, count_distribution=lambda rng: 2, seed=0)
    assert fixed.counts.tolist() == [2.0, 2.0, 2.0]


def test_lesion_full_region_and_dataloader() -> None:
    ds = make_lesion_volumes(4, shape=SMALL3D, region="full", mean_count=3, seed=6)
    assert ds.mask is not None and bool(ds.mask.all())
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_points)))
    assert batch["image"].shape == (4, 1, *SMALL3D)
    assert [len(p) for p in batch["points"]] == ds.counts.int().tolist()
    assert batch["annotated_slice"] == ds.annotated_slice.tolist()  # type: ignore[union-attr]


def test_lesion_errors() -> None:
    with pytest.raises(ValueError, match="spacing"):
        make_lesion_volumes(1, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        make_lesion_volumes(1, shape=(32, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count_distribution"):
        make_lesion_volumes(1, count_distribution="binomial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count_distribution returned"):
        make_lesion_volumes(1, count_distribution=lambda rng: -1)
    with pytest.raises(ValueError, match="target_kind"):
        make_lesion_volumes(1, target_kind="sphere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distractors"):
        make_lesion_volumes(1, distractors="vessels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_radius"):
        make_lesion_volumes(1, target_radius=(2.0, 1.0))
    with pytest.raises(ValueError, match="slice_axis"):
        make_lesion_volumes(1, slice_axis=3)
    with pytest.raises(ValueError, match="could not place"):
        make_lesion_volumes(1, shape=(8, 16, 16), count_distribution=lambda rng: 200)


# ------------------------------------------------------------------ the package


def test_synthetic_is_the_phantoms_package() -> None:
    import wsdet.data
    import wsdet.data.phantoms as phantoms
    import wsdet.data.synthetic as synthetic

    assert synthetic.__all__ == phantoms.__all__
    for name in phantoms.__all__:
        assert getattr(synthetic, name) is getattr(phantoms, name)
        assert getattr(wsdet.data, name) is getattr(phantoms, name)
    # the type aliases the old module defined still import from it
    from wsdet.data.synthetic import CountDistribution, Distractors3D, TargetKind  # noqa: F401


def test_phantom_set_indexing() -> None:
    ds = make_phantoms_2d(4, shape=(24, 24), seed=1)
    assert torch.equal(ds[-1]["image"], ds.images[3])
    assert torch.equal(ds[np.int64(2)]["image"], ds.images[2])  # type: ignore[index]
    np.testing.assert_array_equal(ds[-4]["points"], ds.points[0])
    with pytest.raises(IndexError, match="index 4 out of range for 4 images"):
        ds[4]
    with pytest.raises(IndexError, match="index -5 out of range"):
        ds[-5]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[True]  # type: ignore[index]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[1.0]  # type: ignore[index]


def test_range_and_scalar_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match=r"distractors\[1\] must be an int"):
        make_phantoms_2d(1, distractors=(0, 2.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"distractors must be an int or a \(min, max\) pair"):
        make_phantoms_2d(1, distractors=(0, 1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"target_amplitude\[1\] must be a finite number"):
        make_phantoms_2d(1, target_amplitude=(0.5, math.nan))
    with pytest.raises(ValueError, match="background must be a finite number"):
        make_phantoms_2d(1, background=math.inf)
    with pytest.raises(TypeError, match="slice_axis must be an int"):
        make_lesion_volumes(1, slice_axis=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tissue must be a finite number"):
        make_lesion_volumes(1, tissue=math.nan)
    with pytest.raises(ValueError, match="annotation must be one of"):
        make_lesion_volumes(1, annotation="voxel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean_count must be a finite number >= 0"):
        make_lesion_volumes(1, mean_count=-1.0)
