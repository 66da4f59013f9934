"""The training-free LoG baseline against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsdet.baselines import (
    choose_sigma,
    log_detections,
    log_maps,
    set_detections,
    set_fauc,
    smooth_maps,
)
from wsdet.data.phantoms import PhantomSet
from wsdet.detection import detect_maps


def _blob(shape: tuple[int, ...], center: tuple[float, ...], sd_mm: float, spacing, amp=1.0):
    grids = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    d2 = sum((g - c * s) ** 2 for g, c, s in zip(grids, center, spacing, strict=True))
    return amp * np.exp(-0.5 * d2 / sd_mm**2)


def _smooth_random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)


def test_isotropic_log_equals_scipy_gaussian_laplace() -> None:
    x = _smooth_random((24, 24, 24), 0)
    sigma = 3.0
    expected = -(sigma**2) * ndimage.gaussian_laplace(x, sigma)
    got = log_maps(x[None], sigma)[0]
    # central differences vs the sampled second-derivative kernel: O(1 / (12 sigma^2))
    assert np.abs(got - expected).max() <= 0.03 * np.abs(expected).max()


def test_anisotropic_spacing_weights_each_axis_in_mm() -> None:
    x = _smooth_random((20, 28, 28), 1)
    spacing, sigma = (2.0, 1.0, 1.0), 4.0
    vox = [sigma / s for s in spacing]
    expected = -sum(
        v**2 * ndimage.gaussian_filter(x, vox, order=[2 if a == i else 0 for a in range(3)])
        for i, v in enumerate(vox)
    )
    got = log_maps(torch.from_numpy(x)[None, None], sigma, spacing)[0]
    assert got.shape == x.shape
    assert np.abs(got - expected).max() <= 0.03 * np.abs(expected).max()


def test_gaussian_blob_response_and_best_sigma_match_the_closed_form() -> None:
    # A blob exp(-r^2 / 2 s0^2) gives -sigma^2 lap(G_sigma * f)(0)
    # = 3 sigma^2 s0^3 / (s0^2 + sigma^2)^(5/2), largest at sigma = s0 sqrt(2/3).
    s0, shape, c = 3.0, (33, 33, 33), (16, 16, 16)
    x = _blob(shape, c, s0, (1.0, 1.0, 1.0))
    sigmas = np.arange(1.5, 4.01, 0.25)
    got = np.array([log_maps(x[None], s)[0][c] for s in sigmas])
    closed = 3 * sigmas**2 * s0**3 / (s0**2 + sigmas**2) ** 2.5
    assert got == pytest.approx(closed, rel=0.03)
    assert sigmas[int(np.argmax(got))] == pytest.approx(s0 * math.sqrt(2 / 3), abs=0.13)
    # the strongest response of the map is at the blob's centre
    m = log_maps(x[None], 2.5)[0]
    assert np.unravel_index(int(m.argmax()), m.shape) == c


def test_masked_region_has_no_border_response() -> None:
    mask = np.zeros((1, 20, 20), dtype=bool)
    mask[0, 4:16, 3:17] = True
    flat = np.where(mask, 0.3, 0.0)
    assert np.abs(log_maps(flat, 1.5)).max() > 0.05  # the border is an edge without masks
    assert np.array_equal(log_maps(flat, 1.5, masks=mask), np.zeros_like(flat))
    assert smooth_maps(flat, 1.5, masks=mask)[mask] == pytest.approx(0.3, abs=1e-7)


def test_log_detections_is_detect_maps_of_the_log_map() -> None:
    x = np.zeros((2, 16, 16))
    x[0] = _blob((16, 16), (4, 5), 1.0, (1, 1)) + _blob((16, 16), (11, 10), 1.0, (1, 1), 0.5)
    x[1] = _blob((16, 16), (8, 8), 1.0, (1, 1))
    dets = log_detections(x, 1.0, size=3)
    ref = detect_maps(log_maps(x, 1.0), n="all", size=3)
    assert [d.points.tolist() for d in dets] == [d.points.tolist() for d in ref]
    assert dets[0].points[:2].tolist() == [[4, 5], [11, 10]]
    assert dets[1].points[0].tolist() == [8, 8]


def _set(images: np.ndarray, points: list[np.ndarray], **extra) -> PhantomSet:
    return PhantomSet(
        images=torch.from_numpy(images.astype(np.float32))[:, None],
        points=points,
        spacing=(1.0,) * (images.ndim - 1),
        target_mask=torch.zeros(images.shape, dtype=torch.bool),
        target_points=extra.pop("target_points", points),
        target_kinds=[np.array(["blob"] * len(p)) for p in points],
        mask=torch.ones(images.shape, dtype=torch.bool),
        **extra,
    )


def test_choose_sigma_prefers_the_scale_of_the_targets() -> None:
    # small targets (sd 1) and brighter large non-targets (sd 4): a small sigma ranks the
    # targets first, a large one the non-targets (closed form above, in 2D)
    rng = np.random.default_rng(0)
    images, points = [], []
    for _ in range(4):
        img = np.zeros((40, 40))
        t = rng.integers(5, 15, size=(2, 2)) + np.array([[0, 0], [20, 20]])
        for p in t:
            img += _blob((40, 40), tuple(p), 1.0, (1, 1))
        img += _blob((40, 40), (30, 8), 4.0, (1, 1), 3.0)
        images.append(img)
        points.append(t.astype(np.float64))
    ds = _set(np.stack(images), points)
    choice = choose_sigma(ds, [0.8, 4.0], radius_mm=3.0, max_fp=1.0, size=5)
    assert choice.sigma_mm == 0.8 and choice.fauc == 1.0
    assert choice.scores[4.0] < 1.0
    assert set_fauc(log_maps(ds.images, 0.8), ds, radius_mm=3.0, max_fps=(1.0,), size=5) == [1.0]


def test_slice_sets_are_evaluated_on_the_annotated_slice() -> None:
    x = np.zeros((1, 6, 16, 16))
    x[0, 2] = _blob((16, 16), (4, 4), 1.0, (1, 1))
    x[0, 5] = _blob((16, 16), (11, 11), 1.0, (1, 1))
    target_points = [np.array([[2.0, 4.0, 4.0], [5.0, 11.0, 11.0]])]
    ds = _set(
        x,
        [target_points[0][:1]],
        target_points=target_points,
        slice_axis=0,
        annotated_slice=np.array([2]),
        slice_points=[np.array([[4.0, 4.0]])],
    )
    dets, targets, spacing = set_detections(log_maps(x, 1.0), ds, size=(3, 3, 3))
    assert dets[0].points[0].tolist() == [4, 4] and dets[0].points.shape[1] == 2
    assert targets[0].tolist() == [[4.0, 4.0]] and spacing == (1.0, 1.0)
    assert all(p.tolist() != [11, 11] for p in dets[0].points)  # the other slice is not read


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma_mm": -1.0}, ValueError, "sigma_mm must be a finite number >= 0"),
        ({"sigma_mm": (0.0, 0.0)}, ValueError, "sigma_mm must be > 0 along some axis"),
        ({"sigma_mm": (1.0, 1.0, 1.0)}, ValueError, "sigma_mm must be a number or 2 numbers"),
        ({"sigma_mm": 1.0, "spacing": 0.0}, ValueError, "spacing must be a finite number > 0"),
        ({"sigma_mm": "1"}, TypeError, "sigma_mm must be a real number"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        log_maps(np.zeros((1, 8, 8)), **kwargs)  # type: ignore[arg-type]


def test_bad_shapes_and_empty_sigmas() -> None:
    with pytest.raises(ValueError, match="volumes must be"):
        log_maps(np.zeros(8), 1.0)
    ds = _set(np.zeros((1, 8, 8)), [np.zeros((0, 2))])
    with pytest.raises(ValueError, match="sigmas must hold at least one sigma"):
        choose_sigma(ds, [], radius_mm=3.0)
