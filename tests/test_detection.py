"""NMS equals an independent scipy.ndimage reference, and its SciPy (CPU) and torch (GPU)
implementations agree exactly; top-n and rounding rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

import wsdet.metrics
from wsdet.detection import (
    apply_negatives,
    find_peaks,
    find_peaks_batch,
    round_half_up,
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


def test_round_half_up_is_the_one_rule():
    assert [round_half_up(v) for v in (0.5, 1.5, 2.5, 2.49, -0.7, 0.0)] == [1, 2, 3, 2, 0, 0]
    assert round(2.5) == 2  # the trap round_half_up avoids
    assert round_half_up(np.float32(3.5)) == 4 and round_half_up(7) == 7
    with pytest.raises(ValueError, match="finite"):
        round_half_up(float("nan"))
    # one definition, shared by detection and metrics (which stays torch-free)
    assert round_half_up is wsdet.metrics.round_half_up
    c = np.arange(10).reshape(5, 2)
    s = np.array([5.0, 4, 3, 2, 1])
    cc, ss = wsdet.metrics.top_n(c, s, 2.5)
    assert cc.tolist() == [[0, 1], [2, 3], [4, 5]] and ss.tolist() == [5, 4, 3]


def test_negatives_policy():
    m = torch.tensor([[-2.0, 1.0]])
    assert apply_negatives(m, "clip").tolist() == [[0.0, 1.0]]
    assert apply_negatives(m, "abs").tolist() == [[2.0, 1.0]]
    assert apply_negatives(m, "keep").tolist() == [[-2.0, 1.0]]
    with pytest.raises(ValueError, match="negatives"):
        apply_negatives(m, "relu")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# the SciPy (CPU) and torch (GPU) implementations return identical candidates


def both_backends(maps: torch.Tensor, **kw):
    a = find_peaks_batch(maps, backend="scipy", **kw)
    b = find_peaks_batch(maps, backend="torch", **kw)
    assert len(a) == len(b) == maps.shape[0]
    for (ca, sa), (cb, sb) in zip(a, b, strict=True):
        assert ca.dtype == cb.dtype == torch.int64
        assert sa.dtype == sb.dtype == maps.dtype
        assert torch.equal(ca, cb), (ca.tolist(), cb.tolist())
        assert torch.equal(sa, sb)
    return a


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_scipy_and_torch_backends_agree(data):
    nd = data.draw(st.integers(1, 3), label="ndim")
    hi = {1: 40, 2: 12, 3: 7}[nd]
    shape = tuple(data.draw(st.integers(1, hi), label=f"S{j}") for j in range(nd))
    batch = data.draw(st.integers(1, 3), label="batch")
    if data.draw(st.booleans(), label="per-axis size"):
        size = tuple(data.draw(st.integers(1, 7), label=f"size{j}") for j in range(nd))
    else:
        size = data.draw(st.integers(1, 7), label="size")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    levels = data.draw(st.integers(1, 5), label="levels")
    if data.draw(st.booleans(), label="ties"):
        # integer-valued maps from a small range: many ties and plateaus
        a = rng.integers(-1, levels, size=(batch, *shape)).astype(dtype)
    else:
        a = rng.normal(size=(batch, *shape)).astype(dtype)
    min_value = data.draw(st.sampled_from([None, -0.5, 0.0, 1.0, 2.5]), label="min_value")
    if data.draw(st.booleans(), label="per-axis border"):
        border = tuple(data.draw(st.integers(0, 3), label=f"border{j}") for j in range(nd))
    else:
        border = data.draw(st.integers(0, 2), label="border")
    maps = torch.from_numpy(a)
    both_backends(maps, size=size, min_value=min_value, exclude_border=border)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 6])
def test_backends_agree_on_long_plateaus(nd, size):
    # snakes and diagonals of equal maxima, V shapes whose two arms meet late in raster
    # order, touching plateaus of different heights
    shape = {1: (30,), 2: (11, 13), 3: (6, 7, 8)}[nd]
    a = np.zeros((2, *shape), dtype=np.float32)
    a[0][(slice(1, -1),) * nd] = 1.0
    rng = np.random.default_rng(nd * 10 + size)
    a[1] = rng.integers(0, 2, size=shape)
    if nd >= 2:
        for j in range(min(shape[:2])):
            a[0][(j, j) + (0,) * (nd - 2)] = 3.0  # diagonal, fully connected
            a[0][(j, shape[1] - 1 - j) + (0,) * (nd - 2)] = 3.0  # the other diagonal
    both_backends(torch.from_numpy(a), size=size)
    both_backends(torch.from_numpy(a), size=size, min_value=0.5, exclude_border=1)


def test_scipy_path_matches_the_reference_and_keeps_low_precision_dtypes():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, size=(9, 10, 11)).astype(np.float16)
    ref_c, ref_s = scipy_peaks(a.astype(np.float32), 4)
    ((c, s),) = find_peaks_batch(torch.from_numpy(a)[None], size=4)
    assert s.dtype == torch.float16
    np.testing.assert_array_equal(c.numpy(), ref_c)
    np.testing.assert_array_equal(s.float().numpy(), ref_s)
    ((c2, s2),) = find_peaks_batch(torch.from_numpy(a)[None].bfloat16(), size=4)
    assert torch.equal(c2, c) and s2.dtype == torch.bfloat16
    # integer maps are read as float32; non-contiguous numpy views are fine
    c3, s3 = find_peaks(a.astype(np.int64)[:, ::-1], size=4)
    rc, rs = scipy_peaks(a.astype(np.float32)[:, ::-1].copy(), 4)
    np.testing.assert_array_equal(c3, rc)
    assert s3.dtype == np.float32 and s3.tolist() == rs.tolist()


def test_min_value_is_compared_in_the_maps_dtype():
    a = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.0]], dtype=torch.float32)
    for backend in ("scipy", "torch"):
        ((c, _),) = find_peaks_batch(a, size=3, min_value=0.1, backend=backend)
        assert c[:, 0].tolist() == [3], backend  # float32(0.1) is not > float32(0.1)


def test_backend_errors_and_nan_on_the_scipy_path():
    with pytest.raises(ValueError, match="backend"):
        find_peaks_batch(torch.zeros(1, 4), backend="numpy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maps"):
        find_peaks_batch(np.zeros((1, 4)))  # type: ignore[arg-type]
    for bad in (np.nan, np.inf, -np.inf):
        m = torch.zeros(2, 3, 3)
        m[1, 1, 2] = bad
        for backend in ("scipy", "torch"):
            with pytest.raises(ValueError, match="NaN or infinite"):
                find_peaks_batch(m, backend=backend)
    with pytest.raises(ValueError, match="exclude_border"):
        find_peaks(np.zeros((4, 4)), exclude_border=(1, 2, 3))
    with pytest.raises(ValueError, match="exclude_border"):
        find_peaks(np.zeros((4, 4)), exclude_border=-1)
    assert find_peaks_batch(torch.zeros(0, 4, 4)) == []
