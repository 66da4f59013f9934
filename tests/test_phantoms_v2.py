"""Phantom settings v2: CNR, spacing and blur, count distribution, look-alikes, seeds."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage, stats

from wsdet.data.phantoms import PhantomSet
from wsdet.data.phantoms.v2 import (
    SETTINGS_V2,
    PhantomSettingV2,
    hit_radius_mm,
    make_phantoms_v2,
    negative_binomial_counts,
    nms_size,
    render_phantoms_v2,
)

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
HWHM_TO_SIGMA = 1.0 / math.sqrt(2.0 * math.log(2.0))


def _isolated(volume, k: int, gap: int = 3) -> bool:
    """Whether lesion ``k``'s neighbourhood holds no other lesion or look-alike."""
    p = volume.points[k]
    box = tuple(
        slice(max(int(c) - g, 0), int(c) + g + 1) for c, g in zip(p, (1, gap, gap), strict=True)
    )
    others = np.delete(volume.points, k, axis=0)
    near = np.all(np.abs(others - p) <= np.array([2, 3 * gap, 3 * gap]), axis=1).any()
    return not near and not volume.lookalike_labels[box].any()


def test_measured_cnr_matches_the_setting() -> None:
    s = SETTINGS_V2["midbrain"]
    noisy = render_phantoms_v2(6, s, seed=3)
    clean = render_phantoms_v2(6, s, seed=3, noise=False)
    residual = np.concatenate(
        [(v.image - c.image)[v.inside] for v, c in zip(noisy, clean, strict=True)]
    )
    sd = residual.std()
    assert sd == pytest.approx(s.noise_sd, rel=0.02)  # about 500k voxels: sd known to 0.1 %
    peaks = np.concatenate([(v.clean - v.background)[tuple(v.points.T)] for v in noisy])
    lo, hi = s.contrast
    assert len(peaks) >= 10 and peaks.min() >= lo - 1e-9  # neighbours only add
    # mean of uniform(lo, hi) contrasts: sd (hi - lo) / sqrt(12 m); 4 sd of slack
    slack = 4 * (hi - lo) / math.sqrt(12 * len(peaks)) / (0.5 * (lo + hi))
    assert peaks.mean() / sd == pytest.approx(s.cnr, rel=slack + 0.03)
    isolated = [
        (v.clean - v.background)[tuple(v.points[k])]
        for v in noisy
        for k in range(len(v.points))
        if _isolated(v, k)
    ]
    assert len(isolated) >= 5 and max(isolated) <= hi + 1e-9  # exactly the drawn contrast


def test_spacing_geometry_and_partial_volume_blur() -> None:
    ds = make_phantoms_v2(2, "midbrain", seed=0)
    assert ds.spacing == (3.0, 0.5, 0.5) and tuple(ds.images.shape[2:]) == (11, 88, 88)
    assert hit_radius_mm(ds.spacing) == 3.0 and nms_size(ds.spacing) == (3, 6, 6)
    # round lesions of fixed width: after the blur, Gaussians with sd^2 = r^2 + blur^2;
    # sampled at k * s, g(-1) g(+1) / g(0)^2 = exp(-s^2 / sd^2) whatever the offset
    s = dataclasses.replace(
        SETTINGS_V2["midbrain"],
        lesion_radius=(1.0, 1.0),
        lesion_elongation=(1.0, 1.0),
        min_distance=12.0,
        mean_count=3.0,
        slice_fwhm=4.0,
        psf_fwhm=0.8,
    )
    r_sd = 1.0 * HWHM_TO_SIGMA
    expected = {
        0: math.exp(-(3.0**2) / (r_sd**2 + (4.0 * FWHM_TO_SIGMA) ** 2)),
        1: math.exp(-(0.5**2) / (r_sd**2 + (0.8 * FWHM_TO_SIGMA) ** 2)),
    }
    checked = 0
    for v in render_phantoms_v2(6, s, seed=1, noise=False):
        lesion = v.clean - v.background
        for p in v.points:
            if not 1 <= p[0] <= s.shape[0] - 2:
                continue
            for axis, ratio in expected.items():
                lo, hi = p.copy(), p.copy()
                lo[axis] -= 1
                hi[axis] += 1
                got = lesion[tuple(lo)] * lesion[tuple(hi)] / lesion[tuple(p)] ** 2
                assert got == pytest.approx(ratio, rel=1e-6)
            checked += 1
    assert checked >= 5


def test_negative_binomial_counts_mean_variance_and_zero_mass() -> None:
    mean, r, n = 10.0, 2.0, 2000
    k = negative_binomial_counts(np.random.default_rng(12), mean, r, n)
    var = mean + mean**2 / r
    p = r / (r + mean)
    assert abs(k.mean() - mean) <= 4 * math.sqrt(var / n)
    excess_kurtosis = 6 / r + p**2 / (r * (1 - p))
    sd_of_var = var * math.sqrt(2 / (n - 1) + excess_kurtosis / n)
    assert abs(k.var(ddof=1) - var) <= 4 * sd_of_var
    p0 = stats.nbinom.pmf(0, r, p)  # independent: scipy's pmf
    assert abs((k == 0).mean() - p0) <= 4 * math.sqrt(p0 * (1 - p0) / n)
    assert SETTINGS_V2["midbrain"].count_variance == pytest.approx(5 + 25 / 2)


def test_lookalikes_present_and_touching_in_the_stated_fraction() -> None:
    s = SETTINGS_V2["basal_ganglia"]
    volumes = render_phantoms_v2(6, s, seed=4, noise=False)
    flags = []
    for v in volumes:
        assert s.lookalikes[0] - 2 <= len(v.lookalike_touching) <= s.lookalikes[1]
        near = ndimage.binary_dilation(v.footprint, iterations=1)
        for j, touching in enumerate(v.lookalike_touching):
            own = v.lookalike_labels == j + 1
            assert own.any()
            if touching:
                assert (own & near).any()
            else:  # apart: no look-alike voxel within 2 voxels of a lesion footprint
                assert not (ndimage.binary_dilation(own, iterations=2) & v.footprint).any()
            flags.append(bool(touching))
    f, m = float(np.mean(flags)), len(flags)
    q = s.touching_fraction
    assert abs(f - q) <= 4 * math.sqrt(q * (1 - q) / m)
    # look-alikes are as bright as lesions: their peaks lie in the lesion contrast range
    v = volumes[0]
    peaks = [(v.clean - v.background)[v.lookalike_labels == j + 1].max() for j in range(3)]
    assert all(s.contrast[0] - 1e-9 <= x for x in peaks)
    assert render_phantoms_v2(1, "midbrain", seed=0)[0].lookalike_touching.size == 0


def test_slice_annotation_and_phantom_set_fields() -> None:
    ds = make_phantoms_v2(3, "basal_ganglia", seed=2)
    assert isinstance(ds, PhantomSet) and ds.slice_points is not None
    assert ds.annotated_slice is not None and ds.slice_counts is not None
    for i in range(3):
        z = int(ds.annotated_slice[i])
        assert np.all(ds.points[i][:, 0] == z)
        assert np.array_equal(ds.slice_points[i], ds.points[i][:, 1:])
        on_slice = ds.target_points[i][ds.target_points[i][:, 0] == z]
        assert len(on_slice) == len(ds.points[i]) == int(ds.slice_counts[i])
        assert ds.target_mask[i][tuple(ds.target_points[i].astype(int).T)].all()
    assert set(np.concatenate(ds.target_kinds)) <= {"tube", "ellipsoid"}
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    assert bool((ds.images[:, 0][~ds.mask] == 0).all())


def test_deterministic_prefix_and_noise_free_geometry() -> None:
    a = make_phantoms_v2(3, "hippocampi", seed=7)
    b = make_phantoms_v2(2, "hippocampi", seed=7)
    assert np.array_equal(a.images[:2].numpy(), b.images.numpy())
    assert all(np.array_equal(p, q) for p, q in zip(a.points[:2], b.points, strict=True))
    c = make_phantoms_v2(2, "hippocampi", seed=7, noise=False)
    assert all(np.array_equal(p, q) for p, q in zip(c.points, b.points, strict=True))
    assert not np.array_equal(c.images.numpy(), b.images.numpy())
    d = make_phantoms_v2(2, "hippocampi", seed=8)
    assert not np.array_equal(d.images.numpy(), b.images.numpy())
    assert len(make_phantoms_v2(0, "midbrain", seed=0)) == 0


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"cnr": 0.0}, ValueError, "cnr must be a finite number > 0"),
        ({"shape": (11, 88)}, ValueError, "shape must be three ints"),
        ({"spacing": (3.0, 0.5, -1.0)}, ValueError, "spacing must be a finite number > 0"),
        (
            {"touching_fraction": 1.5},
            ValueError,
            r"touching_fraction must be a finite number in \[0, 1\]",
        ),
        ({"dispersion": 0}, ValueError, "dispersion must be a finite number > 0"),
        ({"contrast": (0.2, 0.1)}, ValueError, "contrast must satisfy"),
        ({"lookalikes": (2.5, 3)}, TypeError, r"lookalikes\[0\] must be an int"),
        ({"annotation": "slices"}, ValueError, "annotation must be one of"),
        ({"csf": 1}, TypeError, "csf must be a bool"),
    ],
)
def test_bad_setting_fields(change: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        dataclasses.replace(SETTINGS_V2["midbrain"], **change)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="setting must be one of"):
        make_phantoms_v2(1, "thalamus", seed=0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_phantoms_v2(-1, "midbrain", seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        make_phantoms_v2(1, "midbrain", seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="noise must be a bool"):
        make_phantoms_v2(1, "midbrain", seed=0, noise="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dispersion must be a finite number > 0"):
        negative_binomial_counts(np.random.default_rng(0), 5.0, 0.0)
    crowded = dataclasses.replace(SETTINGS_V2["midbrain"], mean_count=400.0, min_distance=10.0)
    with pytest.raises(ValueError, match="could not place"):
        make_phantoms_v2(1, crowded, seed=0)
    assert isinstance(SETTINGS_V2["midbrain"], PhantomSettingV2)


def test_zscored_copy_standardises_inside_the_region() -> None:
    ds = make_phantoms_v2(3, "midbrain", seed=4)
    z = ds.zscored()
    assert z.images.shape == ds.images.shape and z.images.dtype == ds.images.dtype
    assert z.points is ds.points and z.mask is ds.mask and z.spacing == ds.spacing
    assert bool((z.counts == ds.counts).all())
    for i in range(len(ds)):
        m = ds.mask[i].numpy()
        raw = ds.images[i, 0].numpy().astype(np.float64)[m]
        got = z.images[i, 0].numpy()
        np.testing.assert_allclose(got[m], (raw - raw.mean()) / raw.std(), rtol=1e-4, atol=1e-5)
        assert (got[~m] == 0).all()
    no_mask = copy.copy(ds)
    no_mask.mask = None
    with pytest.raises(ValueError, match="region masks"):
        no_mask.zscored()


def test_zscored_with_shared_stats_is_one_affine_map_for_every_volume() -> None:
    ds = make_phantoms_v2(3, "midbrain", seed=4)
    pooled = np.concatenate(
        [ds.images[i, 0].numpy().astype(np.float64)[ds.mask[i].numpy()] for i in range(len(ds))]
    )
    mean, sd = ds.region_stats()
    assert mean == pytest.approx(pooled.mean(), rel=1e-9)
    assert sd == pytest.approx(pooled.std(), rel=1e-9)
    z = ds.zscored((mean, sd))
    for i in range(len(ds)):
        m = ds.mask[i].numpy()
        raw = ds.images[i, 0].numpy().astype(np.float64)
        np.testing.assert_allclose(z.images[i, 0].numpy()[m], (raw[m] - mean) / sd, atol=1e-5)
        assert (z.images[i, 0].numpy()[~m] == 0).all()
    inside = z.images[:, 0][ds.mask].double()
    assert float(inside.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(inside.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    for bad in ((0.3, 0.0), (0.3, -1.0), (0.3, float("nan"))):
        with pytest.raises(ValueError, match="sd > 0"):
            ds.zscored(bad)
    no_mask = copy.copy(ds)
    no_mask.mask = None
    with pytest.raises(ValueError, match="region masks"):
        no_mask.region_stats()


def test_per_volume_zscore_moves_the_tissue_with_the_lesions() -> None:
    """Adding bright voxels to one corner of a volume changes, under per-volume statistics,
    the z-scores of tissue far away from them (and so the height of the region's border)."""
    ds = make_phantoms_v2(1, "midbrain", seed=4)
    brighter = copy.copy(ds)
    images = ds.images.clone()
    inside = np.argwhere(ds.mask[0].numpy())
    corner = inside[: len(inside) // 50]  # 2 % of the region, in its first voxels
    images[0, 0][tuple(corner.T)] += 0.2  # lesion-like contrast above the tissue
    brighter.images = images
    far = ds.mask[0].clone()
    far[tuple(inside[: len(inside) // 10].T)] = False  # tissue well away from the change
    own = ds.zscored().images[0, 0][far], brighter.zscored().images[0, 0][far]
    shift = float((own[1] - own[0]).mean())
    assert shift < -0.05  # the same tissue now lies lower
