"""Reliability of the output side: figures, geometry, export, cohort runs and the command
line refuse bad arguments by name, before any work is done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.cli import main
from wsdet.export import points_to_mask
from wsdet.inference import run_detection
from wsdet.io import points_from_mask, voxel_to_world, world_to_voxel

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt

from wsdet.viz import FROCBand, attention_grid, mip, orthogonal_slices, overlay, plot_froc


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------- attention_grid
def test_attention_grid_refuses_a_map_of_another_shape():
    image = np.zeros((5, 7))
    with pytest.raises(ValueError, match=r"maps\['b'\] has shape \(7, 5\).*\(5, 7\)"):
        attention_grid(image, {"a": np.ones((5, 7)), "b": np.ones((7, 5))})
    # a squeezable map of the right shape is fine
    attention_grid(image, {"a": torch.ones(1, 5, 7)})


def test_attention_grid_argument_errors_name_the_argument():
    image, maps = np.zeros((4, 4)), {"a": np.ones((4, 4))}
    with pytest.raises(TypeError, match="maps must be a mapping"):
        attention_grid(image, [np.ones((4, 4))])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="points must be a mapping"):
        attention_grid(image, maps, points=[[1, 1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"points names maps not in maps: \['b'\]"):
        attention_grid(image, maps, points={"b": [[1, 1]]})
    with pytest.raises(ValueError, match="ncols must be >= 1"):
        attention_grid(image, maps, ncols=0)
    with pytest.raises(TypeError, match="ncols must be an int"):
        attention_grid(image, maps, ncols=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="panel_size"):
        attention_grid(image, maps, panel_size=-1.0)
    with pytest.raises(TypeError, match="colorbar must be a bool"):
        attention_grid(image, maps, colorbar="no")  # type: ignore[arg-type]
    assert plt.get_fignums() == []  # nothing drawn before the checks


def test_overlay_argument_errors():
    img = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\]"):
        overlay(img, img, alpha=1.5)
    with pytest.raises(TypeError, match="colorbar must be a bool"):
        overlay(img, img, colorbar="False")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="title must be a str"):
        overlay(img, title=3)  # type: ignore[arg-type]


def test_3d_views_argument_errors():
    vol = np.zeros((4, 5, 6))
    with pytest.raises(ValueError, match="slab"):
        orthogonal_slices(vol, slab=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        mip(vol, vol, alpha=2.0)
    with pytest.raises(ValueError, match="panel_size"):
        mip(vol, panel_size=0.0)


# ------------------------------------------------------------------------- plot_froc
def test_plot_froc_argument_errors_name_the_argument():
    good = {"a": ([0.0, 1.0], [0.2, 0.8])}
    with pytest.raises(TypeError, match="curves must be a mapping"):
        plot_froc([([0.0, 1.0], [0.2, 0.8])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"curves\['a'\] must be a FROC"):
        plot_froc({"a": ([0.0, 1.0, 2.0], [0.2, 0.8])})
    with pytest.raises(ValueError, match=r"curves\['a'\] must be a FROC"):
        plot_froc({"a": 3.0})
    with pytest.raises(ValueError, match="max_fp"):
        plot_froc(good, max_fp=0.0)
    with pytest.raises(ValueError, match="max_fp"):
        plot_froc(good, max_fp=float("nan"))
    with pytest.raises(ValueError, match="min_fp"):
        plot_froc(good, log_x=True, min_fp=-1.0)
    with pytest.raises(ValueError, match="max_fp must exceed min_fp"):
        plot_froc(good, log_x=True, min_fp=1.0, max_fp=0.5)
    with pytest.raises(TypeError, match="log_x must be a bool"):
        plot_froc(good, log_x="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="legend must be one of"):
        plot_froc(good, legend="top")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"operating_points names curves not in curves: \['b'\]"):
        plot_froc(good, operating_points={"b": (0.5, 0.5)})
    with pytest.raises(ValueError, match=r"operating_points\['a'\] must be two numbers"):
        plot_froc(good, operating_points={"a": (0.5,)})
    with pytest.raises(TypeError, match=r"bands\['a'\] must be a FROCBand"):
        plot_froc(good, bands={"a": (0, 1)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"bands names curves not in curves"):
        band = FROCBand(np.zeros(2), np.zeros(2), np.ones(2), 0.95)
        plot_froc(good, bands={"z": band})
    with pytest.raises(TypeError, match="fp_unit must be a str"):
        plot_froc(good, fp_unit=None)  # type: ignore[arg-type]
    assert plt.get_fignums() == []


# ------------------------------------------------------------------------- geometry, export
def test_geometry_and_export_errors_name_the_argument():
    aff = np.eye(4)
    with pytest.raises(ValueError, match="ndim must be <= 3"):
        voxel_to_world([[1, 2, 3, 4]], aff, ndim=4)
    with pytest.raises(TypeError, match="ndim must be an int"):
        world_to_voxel([[1, 2, 3]], aff, ndim=2.0)  # type: ignore[arg-type]
    assert world_to_voxel([], aff, ndim=2).shape == (0, 2)
    with pytest.raises(ValueError, match="radius_mm must be a finite number >= 0"):
        points_to_mask([[1, 1]], (3, 3), radius_mm=float("nan"))
    with pytest.raises(ValueError, match="spacing must be one positive voxel size"):
        points_to_mask([[1, 1]], (3, 3), spacing=(1.0, 0.0), radius_mm=1.0)
    with pytest.raises(ValueError, match=r"points must have shape \(k, 2\)"):
        points_to_mask([[1, 1, 1]], (3, 3))
    with pytest.raises(ValueError, match="min_size"):
        points_from_mask(np.ones((3, 3), bool), min_size=-1.0)
    with pytest.raises(ValueError, match="connectivity must be <= 2"):
        points_from_mask(np.ones((3, 3), bool), connectivity=3)


# ------------------------------------------------------------------------- cohort runs, CLI
def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1)
    )


def test_run_detection_refuses_bad_options_before_writing_its_folder(tmp_path: Path):
    det = wsdet.Detector(small_net())
    volumes = [torch.rand(1, 8, 8)]
    with pytest.raises(ValueError, match="min_value"):
        run_detection(volumes, det, tmp_path / "run", n=1, min_value=float("nan"))
    with pytest.raises(ValueError, match="size"):
        run_detection(volumes, det, tmp_path / "run", n=1, size=0)
    assert not (tmp_path / "run").exists()  # no run.json with bad settings to block a rerun
    out = run_detection(volumes, det, tmp_path / "run", n=1, size=3)
    assert len(out) == 1 and json.loads((tmp_path / "run" / "run.json").read_text())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "-1"], "--n must be >= 0"),
        (["--markups-n", "some"], "--markups-n must be all, count or a number"),
        (["--size", "0"], "--size must be >= 1"),
        (["--size-mm", "-2"], "--size-mm must be a positive length"),
    ],
)
def test_cli_detect_checks_its_options_before_building_the_model(
    tmp_path: Path, capsys, extra, message
):
    np.save(tmp_path / "a.npy", np.zeros((8, 8), np.float32))
    # --weights names a file that does not exist: the option error must come first
    model = ["--arch", "gpunet", "--dim", "2", "--weights", str(tmp_path / "missing.pt")]
    code = main(["detect", str(tmp_path / "a.npy"), *model, "--out", str(tmp_path / "o"), *extra])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
