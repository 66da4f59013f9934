"""detect_maps: the maps -> detections pipeline for anyone's maps (Captum's here), equal to
Detector.detect; n parsing; input validation; evaluation warns on top-n detections."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import wsdet
from wsdet.detection import Detections, detect_maps, find_peaks_batch, parse_n
from wsdet.metrics import TruncatedDetectionsWarning, evaluate


class MeanHead(nn.Module):
    """conv -> ReLU -> mean over the spatial dims -> Linear(., 1): a counting network."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.conv = conv(1, 5, 3, padding=1)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        return self.head(f.mean(dim=tuple(range(2, f.ndim))))


def model_and_input(dim: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(dim)
    model = MeanHead(dim).eval()
    with torch.no_grad():
        model.head.bias.fill_(2.3)  # counts near 2-3: n=None keeps a few detections
    shape = (3, 1, 18, 20) if dim == 2 else (2, 1, 7, 9, 8)
    return model, torch.rand(shape)


def assert_same(a: list[Detections], b: list[Detections]) -> None:
    assert len(a) == len(b)
    for d, e in zip(a, b, strict=True):
        assert d.points.dtype == e.points.dtype == np.int64
        assert d.scores.dtype == e.scores.dtype
        np.testing.assert_array_equal(d.points, e.points)
        np.testing.assert_array_equal(d.scores, e.scores)
        assert d.n_candidates == e.n_candidates
        assert (np.isnan(d.count) and np.isnan(e.count)) or d.count == e.count


@pytest.mark.parametrize("dim", [2, 3])
def test_captum_saliency_maps_give_the_detectors_detections(dim):
    captum_attr = pytest.importorskip("captum.attr")
    model, x = model_and_input(dim)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*required_grads has been set.*")
        sal = captum_attr.Saliency(model).attribute(x, target=0, abs=False)
    maps = sal[:, 0]  # one channel: the input gradient itself
    with torch.no_grad():
        counts = model(x)[:, 0]
    det = wsdet.Detector(model, method="grad")
    torch.testing.assert_close(det.attention(x), maps, rtol=0, atol=0)
    for n in (2, "all"):
        ours = detect_maps(maps, n=n, counts=counts)
        assert_same(ours, det.detect(x, n=n))
        assert all(len(d) == (2 if n == 2 else d.n_candidates) for d in ours)
    ours = detect_maps(maps, counts=counts)  # n=None: the rounded predicted count
    assert_same(ours, det.detect(x))
    for d, c in zip(ours, counts.tolist(), strict=True):
        assert len(d) == min(int(np.floor(c + 0.5)), d.n_candidates)
    # numpy maps (e.g. from another library) give the same detections
    assert_same(detect_maps(maps.numpy(), counts=counts.numpy()), ours)
    # the negatives policy and min_value are passed through
    for negatives in ("abs", "keep"):
        assert_same(
            detect_maps(maps, n="all", counts=counts, negatives=negatives, min_value=0.0),
            det.detect(x, n="all", negatives=negatives, min_value=0.0),
        )


def test_detect_maps_pipeline_by_hand():
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 2], maps[0, 7, 7], maps[0, 2, 7] = 3.0, 2.0, -5.0
    maps[1, 5, 5] = 1.0
    dets = detect_maps(maps, n=[1, 2.5, 0], counts=[1.0, float("nan"), 4.0], size=3)
    assert dets[0].points.tolist() == [[2, 2]] and dets[0].n_candidates == 2
    assert dets[0].scores.dtype == np.float32 and dets[0].count == 1.0
    assert dets[1].points.tolist() == [[5, 5]] and np.isnan(dets[1].count)
    assert len(dets[2]) == 0 and dets[2].n_candidates == 0
    # clipping removed the negative dip; "abs" makes it the strongest peak
    d = detect_maps(maps[:1], n="all", negatives="abs", size=3)[0]
    assert d.points.tolist() == [[2, 7], [2, 2], [7, 7]] and d.scores.tolist() == [5, 3, 2]
    # counts: rounded half up; non-finite counts keep nothing
    counts = torch.tensor([2.5, float("nan"), 0.49])
    assert [len(d) for d in detect_maps(maps, counts=counts, size=3)] == [2, 0, 0]
    assert [len(d) for d in detect_maps(maps, counts=counts[:, None], size=3)] == [2, 0, 0]
    # no counts: nan, and n numbers still work
    assert all(np.isnan(d.count) for d in detect_maps(maps, n=1, size=3))
    # 1D maps, and an empty batch
    d1 = detect_maps(np.array([[0.0, 1.0, 0.0, 2.0, 0.0]]), n="all", size=3)[0]
    assert d1.points.tolist() == [[3], [1]]
    assert detect_maps(torch.zeros(0, 4, 4), n="all") == []


def test_detect_maps_equals_find_peaks_then_top_n():
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 4, size=(4, 9, 8, 7)).astype(np.float64)
    peaks = find_peaks_batch(torch.from_numpy(maps), size=3, min_value=0.5)
    dets = detect_maps(maps, n=[0, 1, 3.5, 100], size=3, min_value=0.5, negatives="keep")
    for (c, s), d, k in zip(peaks, dets, [0, 1, 4, 100], strict=True):
        np.testing.assert_array_equal(d.points, c[:k].numpy())
        np.testing.assert_array_equal(d.scores, s[:k].float().numpy())
        assert d.n_candidates == c.shape[0]


def test_detect_maps_validation():
    maps = torch.rand(2, 6, 6)
    with pytest.raises(ValueError, match=r"maps must have shape \(B, \*S\)"):
        detect_maps(torch.rand(6), n=1)
    with pytest.raises(ValueError, match=r"maps must have shape \(B, \*S\)"):
        detect_maps(torch.rand(1, 2, 3, 4, 5), n=1)
    with pytest.raises(TypeError, match=r"maps must be a torch\.Tensor or numpy array"):
        detect_maps([[0.0, 1.0]], n=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maps must hold real numbers"):
        detect_maps(np.array([[object()]]), n=1)
    with pytest.raises(TypeError, match="maps must hold real numbers"):
        detect_maps(torch.zeros(1, 3, dtype=torch.complex64), n=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        detect_maps(np.array([[0.0, np.nan, 1.0]]), n=1)
    with pytest.raises(ValueError, match="counts is required with n=None"):
        detect_maps(maps)
    with pytest.raises(ValueError, match=r"counts must hold one number per image.*\(2,\)"):
        detect_maps(maps, counts=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="counts must hold one number per image"):
        detect_maps(maps, n=1, counts=torch.ones(2, 2))
    with pytest.raises(TypeError, match="counts must be None or 2 numbers"):
        detect_maps(maps, n=1, counts=["a", "b"])
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        detect_maps(maps, n=[1, 2, 3])
    with pytest.raises(ValueError, match="negatives"):
        detect_maps(maps, n=1, negatives="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        detect_maps(maps, n=1, size=(3, 3, 3))


def test_parse_n():
    assert parse_n(None, 2) == [None, None] and parse_n("all", 1) == ["all"]
    assert parse_n(2.5, 3) == [2.5] * 3 and parse_n(np.int64(1), 1) == [1]
    assert parse_n(np.array([1, 2]), 2) == [1, 2] and parse_n(torch.tensor([0, 3]), 2) == [0, 3]
    for bad in (-1, float("nan"), float("inf"), True, "some", [1, -2], [1, True]):
        with pytest.raises(ValueError, match="n must be None, 'all', a non-negative number"):
            parse_n(bad, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="or 3 non-negative numbers"):
        parse_n([1, 2], 3)


def test_evaluate_warns_on_top_n_detections_only():
    maps = np.zeros((2, 30, 30), dtype=np.float32)
    for i, (r, c) in enumerate([(3, 3), (3, 20), (15, 8), (25, 25), (20, 14)]):
        maps[0, r, c] = 5.0 - i
        maps[1, c, r] = 1.0 + i
    targets = [np.array([[3.0, 3.0], [15.0, 8.0]]), np.array([[3.0, 3.0]])]
    counts = [2.0, 1.0]
    top = detect_maps(maps, counts=counts, size=3)
    full = detect_maps(maps, n="all", counts=counts, size=3)
    assert [len(d) for d in top] == [2, 1] and [len(d) for d in full] == [5, 5]
    with pytest.warns(TruncatedDetectionsWarning, match=r"2 of 2 images.*n=\"all\"") as rec:
        rep_top = evaluate(top, targets, n_bootstrap=0)
    assert len(rec) == 1 and "detections[0]: 2 of 5" in str(rec[0].message)
    assert rep_top.n_truncated == 2 and "cut to their top-n" in str(rep_top)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedDetectionsWarning)
        rep_full = evaluate(full, targets, n_bootstrap=0)
        # tuples and objects without n_candidates are never flagged
        evaluate([(d.points[:1], d.scores[:1]) for d in full], targets, n_bootstrap=0)
    assert rep_full.n_truncated == 0 and "cut to" not in str(rep_full)
    # the full curve goes further; the operating point (from the counts) is the same
    assert rep_full.end_fp_avg > rep_top.end_fp_avg
    assert (rep_full.op_tp, rep_full.op_fp) == (rep_top.op_tp, rep_top.op_fp)
    assert rep_full.fauc.estimate >= rep_top.fauc.estimate
