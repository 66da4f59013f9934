"""Reliability of detection: bad scalars refused by name, huge NMS windows clamped, clear
errors for inputs the model cannot take (dtype, device, too small)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import wsdet
from wsdet.detection import detect_maps, find_peaks, find_peaks_batch


def brute_force_peaks(a: np.ndarray, size: int | tuple, min_value: float | None = None) -> list:
    """The NMS of the module docstring, written out voxel by voxel: window
    ``[i - s//2, i + (s-1)//2]`` truncated at the border, strict ``> min_value``, fully
    connected components reduced to their lowest raster index, value-descending order."""
    shape = a.shape
    sizes = size if isinstance(size, tuple) else (size,) * a.ndim
    low = a.min() if min_value is None else min_value
    cand = set()
    for idx in itertools.product(*(range(n) for n in shape)):
        window = tuple(
            slice(max(0, i - s // 2), min(n, i + (s - 1) // 2 + 1))
            for i, n, s in zip(idx, shape, sizes, strict=True)
        )
        if a[idx] == a[window].max() and a[idx] > low:
            cand.add(idx)
    kept, seen = [], set()
    for idx in sorted(cand):  # raster order: the first of a component is met first
        if idx in seen:
            continue
        kept.append(idx)
        todo = [idx]
        seen.add(idx)
        while todo:
            p = todo.pop()
            for d in itertools.product((-1, 0, 1), repeat=len(shape)):
                q = tuple(pi + di for pi, di in zip(p, d, strict=True))
                if q in cand and q not in seen:
                    seen.add(q)
                    todo.append(q)
    kept.sort(key=lambda p: -a[p])  # stable: raster order within ties
    return kept


# ------------------------------------------------------------------------- min_value
@pytest.mark.parametrize("bad", [float("nan"), np.float32("nan")])
def test_nan_min_value_is_refused_everywhere(bad):
    a = np.random.default_rng(0).random((2, 6, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="min_value"):
        find_peaks(a[0], min_value=bad)
    for backend in ("scipy", "torch"):
        with pytest.raises(ValueError, match="min_value"):
            find_peaks_batch(torch.from_numpy(a), min_value=bad, backend=backend)
    with pytest.raises(ValueError, match="min_value"):
        detect_maps(a, n="all", min_value=bad)


def test_min_value_type_and_infinities():
    a = np.zeros((5, 5))
    a[2, 2] = 1.0
    with pytest.raises(TypeError, match="min_value"):
        find_peaks(a, min_value="0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="min_value"):
        find_peaks(a, min_value=True)  # type: ignore[arg-type]
    # -inf: every window maximum is a candidate (the zero plateau's first voxel too)
    coords, _ = find_peaks(a, size=3, min_value=-np.inf)
    assert [tuple(c) for c in coords] == brute_force_peaks(a, 3, -np.inf)
    assert len(find_peaks(a, size=3, min_value=np.inf)[0]) == 0


def test_detector_refuses_bad_options_before_the_model_runs():
    calls = []
    net = pooled_net()
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    det = wsdet.Detector(net)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="min_value"):
        det.detect(x, n=1, min_value=float("nan"))
    with pytest.raises(ValueError, match="size"):
        det.detect(x, n=1, size=0)
    with pytest.raises(ValueError, match="negatives"):
        det.detect(x, n=1, negatives="relu")  # type: ignore[arg-type]
    assert calls == []


# ------------------------------------------------------------------------- huge windows
def test_huge_window_equals_the_whole_map_window_and_brute_force(monkeypatch):
    a = np.random.default_rng(1).random((12, 12))
    a[3, 4] = a[3, 5] = 2.0  # a plateau of maxima: one detection, the first voxel
    # (s-1)//2 >= L-1 covers the axis from every voxel: s = 2L - 1 = 23 is the smallest
    whole = find_peaks(a, size=23)
    assert [tuple(c) for c in whole[0]] == brute_force_peaks(a, 23) == [(3, 4)]
    assert [tuple(c) for c in find_peaks(a, size=22)[0]] == brute_force_peaks(a, 22)
    seen = []
    real = ndimage.maximum_filter

    def spy(x, size, **kw):
        seen.append(tuple(size))
        return real(x, size=size, **kw)

    monkeypatch.setattr("wsdet.detection.ndi.maximum_filter", spy)
    for big in (8000, 10**6):
        huge = find_peaks(a, size=big)
        np.testing.assert_array_equal(huge[0], whole[0])
        np.testing.assert_array_equal(huge[1], whole[1])
    # the filter never sees the huge window: its cost is bounded by the map's size
    assert seen == [(1, 23, 23), (1, 23, 23)]


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_huge_window_per_axis_3d(backend):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, size=(3, 5, 4)).astype(np.float32)  # ties: plateaus
    ((c_big, s_big),) = find_peaks_batch(
        torch.from_numpy(a)[None], size=(10**6, 3, 10**6), backend=backend
    )
    ((c_cl, s_cl),) = find_peaks_batch(torch.from_numpy(a)[None], size=(5, 3, 7), backend=backend)
    assert torch.equal(c_big, c_cl) and torch.equal(s_big, s_cl)
    # brute force with the huge per-axis window itself (a slice needs no allocation)
    assert [tuple(c) for c in c_big.tolist()] == brute_force_peaks(a, (10**6, 3, 10**6))


def test_huge_window_through_detect_maps_and_detector():
    maps = torch.rand(2, 12, 12)
    big = detect_maps(maps, n="all", size=10**6)
    ref = detect_maps(maps, n="all", size=23)
    for d, r in zip(big, ref, strict=True):
        np.testing.assert_array_equal(d.points, r.points)
        assert len(d) == 1  # the whole-map window keeps only the global maximum


# ------------------------------------------------------------------------- bool options
@pytest.mark.parametrize("bad", ["no", "False", 0, 1, None])
def test_eval_mode_must_be_a_bool(bad):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    with pytest.raises(TypeError, match="eval_mode must be a bool"):
        wsdet.Detector(net, eval_mode=bad)
    assert wsdet.Detector(net, eval_mode=np.bool_(False)).eval_mode is False


def test_batch_size_is_checked():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    det = wsdet.Detector(net)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        det.attention(torch.rand(2, 1, 8, 8), batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        det.attention(torch.rand(2, 1, 8, 8), batch_size=1.0)  # type: ignore[typeddict-item]


# ------------------------------------------------------------------------- clear errors
def pooled_net() -> nn.Module:
    """conv3 (valid) -> pool2 -> conv3 -> pool2: a side ``s`` needs ``s >= 10``:
    ``floor((floor((s - 2) / 2) - 2) / 2) >= 1`` (hand-computed)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )


def test_float64_input_on_a_float32_model_names_both_and_the_fix():
    det = wsdet.Detector(pooled_net())
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"float64.*float32.*x\.float\(\).*model\.double\(\)"):
        det.attention(x)
    with pytest.raises(TypeError, match="float64"):
        det.count(x)
    assert det.attention(x.float()).shape == (1, 16, 16)  # the fix works


def test_too_small_input_names_its_shape_and_the_smallest_accepted():
    det = wsdet.Detector(pooled_net())
    assert det.count(torch.rand(1, 1, 10, 10)).shape == (1,)  # the boundary: 10 runs
    with pytest.raises(ValueError, match=r"\(1, 1, 9, 9\) is too small") as err:
        det.detect(torch.rand(1, 1, 9, 9), n=1)
    assert "smallest input it accepts is (B, 1, 10, 10)" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    # only the short axis grows: a 5 x 40 input needs 10 rows
    with pytest.raises(ValueError, match=r"accepts is \(B, 1, 10, 40\)"):
        det.attention(torch.rand(2, 1, 5, 40))


def test_unrelated_runtime_errors_pass_through():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = pooled_net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        wsdet.Detector(Boom(), method="intensity").count(torch.rand(1, 1, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_input_on_another_device_names_both_devices():
    det = wsdet.Detector(pooled_net().cuda())
    with pytest.raises(TypeError, match=r"x is on cpu but the model's parameters are on cuda"):
        det.count(torch.rand(1, 1, 16, 16))


def test_per_axis_arguments_accept_arrays_and_integral_floats() -> None:
    """Sizes and borders per axis as a NumPy array or integral floats, as before."""
    from wsdet.detection import find_peaks_batch

    maps = torch.rand(2, 9, 8, generator=torch.Generator().manual_seed(0))
    ref = find_peaks_batch(maps, size=3, exclude_border=1)
    for kw in (
        {"size": np.array([3, 3]), "exclude_border": np.array([1, 1])},
        {"size": (3.0, 3.0), "exclude_border": 1.0},
    ):
        got = find_peaks_batch(maps, **kw)
        for (p, s), (rp, rs) in zip(got, ref, strict=True):
            assert np.array_equal(np.asarray(p), np.asarray(rp))
            assert np.array_equal(np.asarray(s), np.asarray(rs))
    with pytest.raises(TypeError, match="size must be an int"):
        find_peaks_batch(maps, size=2.5)
