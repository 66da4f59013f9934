"""NMS equals an independent scipy.ndimage reference; top-n and rounding rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from wsdet.detection import (
    apply_negatives,
    find_peaks,
    find_peaks_batch,
    round_half_up,
    select_top_n,
)


def scipy_peaks(a: np.ndarray, size: int, min_value: float | None = None):
    """Reference: maximum_filter + plateau reduction to the lowest raster index."""
    mx = ndi.maximum_filter(a, size=size, mode="nearest")
    thr = a.min() if min_value is None else min_value
    peak = (a == mx) & (a > thr)
    if peak.all():
        peak[...] = False
    lab, n = ndi.label(peak, structure=np.ones((3,) * a.ndim))
    keep = np.zeros_like(peak)
    for k in range(1, n + 1):
        flat = np.flatnonzero(lab.ravel() == k)
        keep.ravel()[flat.min()] = True
    coords = np.argwhere(keep)
    scores = a[keep]
    raster = np.ravel_multi_index(coords.T, a.shape) if len(coords) else np.zeros(0, int)
    order = np.lexsort((raster, -scores))
    return coords[order], scores[order]


def quantised_map(draw, shape):
    # few distinct values: many ties and plateaus
    levels = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    return rng.integers(0, levels, size=shape).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_nms_equals_scipy_2d(data):
    shape = (data.draw(st.integers(1, 14)), data.draw(st.integers(1, 14)))
    size = data.draw(st.integers(1, 7))
    if data.draw(st.booleans()):
        a = quantised_map(data.draw, shape)
    else:
        a = np.random.default_rng(data.draw(st.integers(0, 999))).normal(size=shape)
        a = a.astype(np.float32)
    c, s = find_peaks(a, size=size)
    rc, rs = scipy_peaks(a, size)
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_array_equal(s, rs)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_nms_equals_scipy_3d(data):
    shape = tuple(data.draw(st.integers(1, 8)) for _ in range(3))
    size = data.draw(st.integers(1, 6))
    a = quantised_map(data.draw, shape)
    c, s = find_peaks(torch.from_numpy(a), size=size)
    rc, rs = scipy_peaks(a, size)
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_array_equal(s, rs)


def test_even_size_window_matches_scipy_offset():
    # size 6 covers [i-3, i+2]: a higher value 3 to the left suppresses, 3 to the right not
    a = np.zeros(12, dtype=np.float32)
    a[5] = 1.0
    a[8] = 2.0  # i+3 from 5: outside the window of 5
    c, _ = find_peaks(a, size=6)
    assert sorted(c[:, 0].tolist()) == [5, 8]
    b = np.zeros(12, dtype=np.float32)
    b[5] = 1.0
    b[2] = 2.0  # i-3 from 5: inside the window
    c, _ = find_peaks(b, size=6)
    assert c[:, 0].tolist() == [2]


def test_plateau_reduced_to_lowest_raster_index():
    a = np.zeros((6, 6), dtype=np.float32)
    a[2:4, 1:4] = 5.0  # one 2x3 plateau
    a[5, 5] = 5.0  # separate, same value: ordered after by raster index
    c, s = find_peaks(a, size=3)
    assert c.tolist() == [[2, 1], [5, 5]]
    assert s.tolist() == [5.0, 5.0]


def test_diagonal_plateau_is_one_component():
    a = np.zeros((5, 5), dtype=np.float32)
    a[1, 1] = a[2, 2] = a[3, 3] = 1.0
    c, _ = find_peaks(a, size=3)
    assert c.tolist() == [[1, 1]]


def test_constant_map_has_no_peaks():
    c, s = find_peaks(np.ones((4, 5)), size=3)
    assert c.shape == (0, 2) and s.shape == (0,)


def test_min_value_and_border_and_max_peaks():
    a = np.zeros((10, 10), dtype=np.float32)
    a[0, 5], a[5, 5], a[7, 2] = 3.0, 2.0, 0.5
    c, _ = find_peaks(a, size=3, min_value=1.0)
    assert c.tolist() == [[0, 5], [5, 5]]
    c, _ = find_peaks(a, size=3, exclude_border=1)
    assert c.tolist() == [[5, 5], [7, 2]]
    c, _ = find_peaks(a, size=3, max_peaks=1)
    assert c.tolist() == [[0, 5]]


def test_batch_equals_single_and_keeps_device_dtype():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.normal(size=(3, 9, 11)).astype(np.float64))
    batch = find_peaks_batch(maps, size=5)
    for i in range(3):
        c, _ = find_peaks(maps[i], size=5)
        np.testing.assert_array_equal(batch[i][0].numpy(), c)
        assert batch[i][1].dtype == torch.float64
        assert batch[i][0].device == maps.device


def test_nms_errors():
    with pytest.raises(ValueError, match="size"):
        find_peaks(np.zeros((4, 4)), size=0)
    with pytest.raises(ValueError, match="NaN"):
        find_peaks(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="amap"):
        find_peaks(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="size"):
        find_peaks(np.zeros((4, 4)), size=(3, 3, 3))


def test_round_half_up_and_top_n():
    assert [round_half_up(v) for v in (0.5, 1.5, 2.5, 2.49, -0.7, 0.0)] == [1, 2, 3, 2, 0, 0]
    assert round(2.5) == 2  # the trap round_half_up avoids
    c = np.arange(10).reshape(5, 2)
    s = np.array([5.0, 4, 3, 2, 1])
    cc, ss = select_top_n(c, s, 2.5)
    assert cc.tolist() == [[0, 1], [2, 3], [4, 5]] and ss.tolist() == [5, 4, 3]
    assert select_top_n(c, s, None)[0].shape == (5, 2)
    with pytest.raises(ValueError, match="finite"):
        round_half_up(float("nan"))


def test_negatives_policy():
    m = torch.tensor([[-2.0, 1.0]])
    assert apply_negatives(m, "clip").tolist() == [[0.0, 1.0]]
    assert apply_negatives(m, "abs").tolist() == [[2.0, 1.0]]
    assert apply_negatives(m, "keep").tolist() == [[-2.0, 1.0]]
    with pytest.raises(ValueError, match="negatives"):
        apply_negatives(m, "relu")  # type: ignore[arg-type]
