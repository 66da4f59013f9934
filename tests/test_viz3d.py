"""wsdet.viz: 3D views (planes, aspect, markers), signed-map colours, FROC bands and log-x."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt

from wsdet.metrics import bootstrap_weights, froc_curve, match_images
from wsdet.viz import froc_band, map_style, mip, orthogonal_slices, overlay, plot_froc


def volume() -> np.ndarray:
    return np.random.default_rng(0).random((6, 8, 10))


def panels(fig: object) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]  # type: ignore[attr-defined]


def test_signed_maps_get_a_zero_centred_diverging_colormap_and_a_colour_bar() -> None:
    img = np.zeros((4, 5))
    signed = np.linspace(-1, 3, 20).reshape(4, 5)
    fig = overlay(img, signed)
    im = fig.axes[0].get_images()[1]
    assert im.get_cmap().name == "RdBu_r"
    assert im.get_clim() == (-3.0, 3.0)
    assert len(fig.axes) == 2 and fig.axes[1].get_label() == "<colorbar>"
    plt.close(fig)
    fig = overlay(img, np.abs(signed), colorbar=False)
    im = fig.axes[0].get_images()[1]
    assert im.get_cmap().name == "magma" and im.get_clim() == (0.0, 3.0) and len(fig.axes) == 1
    plt.close(fig)
    assert map_style(np.zeros(3))["vmax"] == 1.0  # a constant map still has a scale


def test_orthogonal_slices_planes_aspect_and_markers() -> None:
    vol = volume()
    aff = np.diag([1.0, 2.0, 3.0, 1.0])  # axis 0 = x (R-L), 1 = y (A-P), 2 = z (S-I)
    det = [[2, 3, 4], [5, 7, 9]]
    fig = orthogonal_slices(vol, points=det, targets=[[2, 3, 5]], affine=aff, point=(2, 3, 4))
    axial, coronal, sagittal = panels(fig)
    assert axial.get_title().startswith("axial (index 4 on axis 2)")
    assert coronal.get_title().startswith("coronal (index 3 on axis 1)")
    assert sagittal.get_title().startswith("sagittal (index 2 on axis 0)")
    # axial: axes 0 (horizontal) and 1 (vertical), origin lower, true aspect 2 mm / 1 mm
    np.testing.assert_array_equal(axial.get_images()[0].get_array(), vol[:, :, 4].T)
    assert axial.get_aspect() == 2.0 and coronal.get_aspect() == 3.0
    assert sagittal.get_aspect() == 1.5
    targets, dets = axial.collections
    np.testing.assert_array_equal(dets.get_offsets(), [[2, 3]])  # (5, 7, 9) is 5 slices away
    np.testing.assert_array_equal(targets.get_offsets(), [[2, 3]])  # 1 slice away: in the slab
    np.testing.assert_array_equal(coronal.collections[-1].get_offsets(), [[2, 4]])
    np.testing.assert_array_equal(sagittal.collections[-1].get_offsets(), [[3, 4]])
    plt.close(fig)


def test_orthogonal_slices_name_planes_from_a_permuted_affine_and_default_to_top_detection() -> (
    None
):
    # array axis 0 runs along world z, axis 2 along world x: slicing axis 0 is axial
    aff = np.array([[0, 0, 0.5, 0], [0, 2.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    vol = volume()
    amap = vol - 0.5
    fig = orthogonal_slices(vol, amap, points=[[1, 6, 9]], affine=aff)
    axial = panels(fig)[0]
    assert axial.get_title().startswith("axial (index 1 on axis 0)")  # the top detection
    img, over = axial.get_images()
    np.testing.assert_array_equal(img.get_array(), vol[1].T)
    assert over.get_cmap().name == "RdBu_r"  # a signed map
    assert axial.get_aspect() == pytest.approx(0.5 / 2.0)  # vertical axis 2, horizontal 1
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    plt.close(fig)
    with pytest.raises(ValueError, match="amap has shape"):
        orthogonal_slices(vol, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="image must be a 3D volume"):
        orthogonal_slices(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"points must be \(k, 3\)"):
        orthogonal_slices(vol, points=[[1, 2]])


def test_mip_projects_every_axis_and_marks_every_point() -> None:
    vol = volume()
    amap = np.zeros_like(vol)
    amap[2, 3, 4] = -5.0
    amap[2, 3, 6] = 1.0
    det = [[2, 3, 4], [5, 7, 9]]
    fig = mip(vol, amap, points=det, spacing=(1.0, 1.0, 2.0))
    axial, coronal, sagittal = panels(fig)
    assert axial.get_title().startswith("axial (MIP")
    np.testing.assert_array_equal(axial.get_images()[0].get_array(), vol.max(axis=2).T)
    np.testing.assert_array_equal(sagittal.get_images()[0].get_array(), vol.max(axis=0).T)
    # the map's value of largest magnitude along the ray keeps its sign
    assert axial.get_images()[1].get_array()[3, 2] == -5.0
    np.testing.assert_array_equal(axial.collections[-1].get_offsets(), [[2, 3], [5, 7]])
    np.testing.assert_array_equal(coronal.collections[-1].get_offsets(), [[2, 4], [5, 9]])
    assert coronal.get_aspect() == 2.0
    plt.close(fig)


def results() -> list:
    rng = np.random.default_rng(3)
    pts, scs, tgs = [], [], []
    for _ in range(12):
        tg = rng.uniform(0, 50, (rng.integers(0, 4), 2))
        det = np.concatenate([tg + rng.normal(0, 2, tg.shape), rng.uniform(0, 50, (3, 2))])
        pts.append(det)
        scs.append(rng.random(len(det)))
        tgs.append(tg)
    return match_images(pts, scs, tgs, radius=4.0)


def test_froc_band_equals_replicate_curves_built_by_hand() -> None:
    res = results()
    grid = [0.0, 0.5, 1.0, 2.0]
    band = froc_band(res, fp=grid, n_bootstrap=40, seed=5, level=0.8)
    w = bootstrap_weights(len(res), B=40, seed=5)
    sens = []
    for row in w:  # each replicate as the list of images repeated by their weights
        rep = [r for r, k in zip(res, row, strict=True) for _ in range(k)]
        c = froc_curve(rep)
        if c.n_targets:
            sens.append(np.interp(grid, c.fp_avg, c.sensitivity))
    lo, hi = np.percentile(np.array(sens), [10, 90], axis=0)
    np.testing.assert_allclose(band.lower, lo, atol=1e-12)
    np.testing.assert_allclose(band.upper, hi, atol=1e-12)
    assert band.level == 0.8 and (band.lower <= band.upper).all()


def test_plot_froc_bands_legend_outside_and_log_x() -> None:
    res = results()
    curve = froc_curve(res)
    band = froc_band(res, max_fp=8.0, n_bootstrap=30)
    fig = plot_froc({"A": curve, "B": (curve.fp_avg, curve.sensitivity * 0.5)}, bands={"A": band})
    ax = fig.axes[0]
    (poly,) = ax.collections  # one band, for A only
    xy = poly.get_paths()[0].vertices
    assert xy[:, 0].min() == 0.0 and xy[:, 0].max() == pytest.approx(8.0)
    fig.canvas.draw()
    leg = ax.get_legend()
    assert [t.get_text() for t in leg.get_texts()] == ["A", "A 95% band", "B"]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    assert leg.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # outside
    plt.close(fig)
    fig = plot_froc({"A": curve}, max_fp=8.0, log_x=True, legend="inside")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((0.125, 8.0))
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "0.125",
        "0.25",
        "0.5",
        "1",
        "2",
        "4",
        "8",
    ]
    assert (ax.get_lines()[0].get_xdata() > 0).all()  # fp = 0 cannot be drawn on a log axis
    plt.close(fig)
    with pytest.raises(ValueError, match="legend must be"):
        plot_froc({"A": curve}, legend="left")
