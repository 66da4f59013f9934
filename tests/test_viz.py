"""wsdet.viz: what is drawn where, input errors, and atomic figure files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt

from wsdet.viz import attention_grid, overlay, plot_froc, save_figure


def test_overlay_draws_image_map_and_points_in_row_col_order() -> None:
    image = np.arange(12.0).reshape(3, 4)
    amap = torch.ones(1, 3, 4)  # squeezed to 2D, tensors accepted
    fig = overlay(image, amap, points=[[0, 3], [2, 1]], gt=[[1, 2]], title="t")
    ax = fig.axes[0]
    images = ax.get_images()
    assert len(images) == 2
    np.testing.assert_array_equal(images[0].get_array(), image)
    assert images[1].get_alpha() == 0.5
    gt, det = ax.collections  # gt drawn first, detections on top
    # scatter takes (x, y) = (col, row)
    np.testing.assert_array_equal(gt.get_offsets(), [[2, 1]])
    np.testing.assert_array_equal(det.get_offsets(), [[3, 0], [1, 2]])
    assert ax.get_title() == "t"
    plt.close(fig)


def test_overlay_rejects_bad_input_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="image must be a 2D image"):
        overlay(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="amap has shape"):
        overlay(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="points must be"):
        overlay(np.zeros((3, 4)), points=np.zeros((2, 3, 2)))
    plt.close("all")


def test_attention_grid_one_panel_per_map() -> None:
    image = np.zeros((5, 7))
    maps = {"a": np.ones((5, 7)), "b": torch.zeros(5, 7), "c": np.eye(5, 7)}
    fig = attention_grid(image, maps, points={"b": [[1, 1]]}, ncols=2)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["image", "a", "b", "c"]
    assert len(fig.axes) - len(panels) == 3  # one colour bar per map
    b = panels[2]
    np.testing.assert_array_equal(b.collections[0].get_offsets(), [[1, 1]])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"maps\['x'\]"):
        attention_grid(image, {"x": np.zeros((2, 2, 2))})
    plt.close("all")


def test_plot_froc_extends_flat_to_max_fp_and_marks_operating_points() -> None:
    class Curve:
        fp_avg = np.array([0.0, 0.5, 1.0])
        sensitivity = np.array([0.0, 0.5, 0.75])

    fig = plot_froc(
        {"obj": Curve(), "tuple": ([0.0, 3.0], [0.1, 0.9])},
        max_fp=2.0,
        operating_points={"obj": (0.5, 0.5)},
    )
    ax = fig.axes[0]
    lines = ax.get_lines()
    obj, marker, tup = lines
    np.testing.assert_array_equal(obj.get_xdata(), [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(obj.get_ydata(), [0.0, 0.5, 0.75, 0.75])
    np.testing.assert_array_equal(marker.get_xdata(), [0.5])
    np.testing.assert_array_equal(tup.get_xdata(), [0.0, 3.0])  # already past max_fp
    assert ax.get_xlim() == (0.0, 2.0)
    assert ax.get_xlabel() == "average false positives per image"
    plt.close(fig)
    fig = plot_froc({"obj": Curve()}, fp_unit="volume")
    assert fig.axes[0].get_xlabel() == "average false positives per volume"
    plt.close(fig)


def test_save_figure_is_atomic_closes_and_respects_umask(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "fig.png"
    fig = overlay(np.zeros((4, 4)))
    save_figure(fig, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    first = path.read_bytes()
    save_figure(overlay(np.ones((8, 2))), str(path))  # replaces
    assert path.read_bytes() != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["fig.png"]  # no temp left


def test_save_figure_failure_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "fig.png"
    save_figure(overlay(np.zeros((4, 4))), str(path))
    before = path.read_bytes()
    fig = overlay(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        save_figure(fig, str(tmp_path / "fig.unknownformat"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
