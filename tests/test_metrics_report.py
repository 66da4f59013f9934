"""evaluate() and its report, top-n operating point, annotated-slice helper."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsdet.metrics import (
    PAPER_MAX_FP,
    TruncatedDetectionsWarning,
    bootstrap,
    detect_on_slice,
    evaluate,
    fauc,
    froc_curve,
    froc_score,
    match_images,
    middle_slice,
    operating_point,
    round_half_up,
    top_n,
)


@dataclass
class Dets:
    """Duck-typed detections, like wsdet.Detections."""

    points: np.ndarray
    scores: np.ndarray
    count: float = float("nan")


def make_data(seed, n_images=12, counts=True):
    rng = np.random.default_rng(seed)
    dets, targets = [], []
    for n in range(n_images):
        m = int(rng.integers(0, 4)) if n % 5 else 0
        gt = rng.uniform(0, 40, (m, 2))
        near = gt[: max(m - 1, 0)] + rng.normal(0, 2, (max(m - 1, 0), 2))
        pts = np.concatenate([near, rng.uniform(0, 40, (int(rng.integers(0, 6)), 2))])
        sc = rng.random(pts.shape[0])
        sc[: near.shape[0]] += 0.5
        count = m + rng.normal(0, 0.6) if counts else float("nan")
        dets.append(Dets(pts, sc, count))
        targets.append(gt)
    return dets, targets


def test_evaluate_matches_the_manual_pipeline():
    dets, targets = make_data(0)
    rep = evaluate(dets, targets, max_fp=2.0, n_bootstrap=200, seed=4)
    res = match_images([d.points for d in dets], [d.scores for d in dets], targets)
    curve = froc_curve(res)
    assert rep.fauc.estimate == fauc(curve, 2.0)
    bs = bootstrap(partial(fauc, max_fp=2.0), res, B=200, seed=4, ci=0.95, max_fp=2.0)
    np.testing.assert_array_equal(rep.fauc.replicates, bs.replicates)
    assert rep.fauc.sd == bs.sd and rep.fauc.ci == bs.ci
    assert rep.froc_score.estimate == froc_score(curve)
    assert rep.n_images == 12 and rep.n_targets == curve.n_targets
    assert rep.n_detections == sum(len(d.scores) for d in dets)
    assert rep.n_tp == curve.tp[-1] and rep.n_fp == curve.fp[-1]
    np.testing.assert_array_equal(rep.curve.fp_avg, curve.fp_avg)


def test_operating_point_takes_top_round_half_up_count():
    # image 0: count 2.5 -> top 3 (not 2 as round() would give); image 1: 0.49 -> none
    pts0 = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], dtype=float)
    d0 = Dets(pts0, np.array([0.9, 0.8, 0.7, 0.6]), 2.5)
    d1 = Dets(np.array([[5.0, 5.0]]), np.array([0.95]), 0.49)
    gts = [np.array([[0, 1], [20, 21], [30, 31]]), np.zeros((0, 2))]
    rep = evaluate([d0, d1], gts, n_bootstrap=0)
    # top 3 of image 0: TP, FP, TP; image 1: nothing
    assert (rep.op_tp, rep.op_fp) == (2, 1)
    assert rep.op_sensitivity.estimate == pytest.approx(2 / 3)
    assert rep.op_fp_avg.estimate == pytest.approx(0.5)
    # the same by hand
    p, s = top_n(pts0, d0.scores, 2.5)
    assert p.shape[0] == 3
    op = operating_point(match_images([p, np.zeros((0, 2))], [s, []], gts))
    assert (op.tp, op.fp) == (2, 1)
    assert top_n(pts0, d0.scores, 0.49)[0].shape == (0, 2)
    assert top_n(pts0, d0.scores, -3.0)[0].shape == (0, 2)
    # ties at the cut keep the input order
    p, _ = top_n(pts0, np.array([0.5, 0.5, 0.5, 0.5]), 2)
    np.testing.assert_array_equal(p, pts0[:2])


def test_operating_point_omitted_without_counts_and_tuples_accepted():
    dets, targets = make_data(1, counts=False)
    as_tuples = [(d.points, d.scores) for d in dets]
    rep = evaluate(as_tuples, targets, n_bootstrap=20)
    assert rep.op_sensitivity is None and rep.op_tp is None
    assert "Operating point" not in str(rep)
    rep2 = evaluate(dets, targets, n_bootstrap=20)
    assert rep2.fauc.estimate == rep.fauc.estimate
    with_counts = [(d.points, d.scores, 1.0) for d in dets]
    assert evaluate(with_counts, targets, n_bootstrap=0).op_tp is not None
    mixed = [Dets(d.points, d.scores, 1.0 if i else float("nan")) for i, d in enumerate(dets)]
    with pytest.raises(ValueError, match=r"detections\[0\] has no predicted count"):
        evaluate(mixed, targets, n_bootstrap=0)


def test_report_formats():
    dets, targets = make_data(2)
    rep = evaluate(dets, targets, n_bootstrap=50)
    text = str(rep)
    assert "FAUC (0-15 FP/image)" in text and "95% CI" in text
    assert f"{rep.fauc.estimate:.4f}" in text and f"{rep.fauc.sd:.4f}" in text
    md = rep.to_markdown()
    assert "| metric | value | sd | 95% CI |" in md
    assert md.count("\n|") >= 8
    d = rep.to_dict(include_curve=True)
    again = json.loads(json.dumps(d))
    assert again["fauc"]["estimate"] == rep.fauc.estimate
    assert again["max_fp"] == PAPER_MAX_FP["points"] == 15.0
    assert again["curve"]["thresholds"][0] is None  # +inf
    assert len(again["curve"]["fp_avg"]) == len(rep.curve)
    assert again["settings"]["radius"] == 6.0


def test_evaluate_boxes_uses_the_mnist_range():
    lo = np.array([[0, 0], [0, 28]], dtype=float)
    targets = [(lo, lo + 28), (lo[:1], lo[:1] + 28)]
    dets = [
        (np.array([[5.0, 5.0], [5.0, 40.0], [60.0, 60.0]]), np.array([0.9, 0.8, 0.3])),
        (np.array([[30.0, 5.0]]), np.array([0.6])),
    ]
    rep = evaluate(dets, targets, match="boxes", n_bootstrap=0)
    assert rep.max_fp == 2.0
    # thresholds 0.9 (TP), 0.8 (TP), 0.6 (FP), 0.3 (FP): L = 3, N = 2
    curve = rep.curve
    assert curve.tp.tolist() == [0, 1, 2, 2, 2] and curve.fp.tolist() == [0, 0, 0, 1, 2]
    assert rep.fauc.estimate == pytest.approx(2 / 3)  # flat at 2/3 from 0 FP onwards
    stacked = [np.stack([a, b], axis=1) for a, b in targets]
    assert evaluate(dets, stacked, match="boxes", n_bootstrap=0).fauc.estimate == rep.fauc.estimate


def test_evaluate_compat_luna16_uses_the_cpm_budgets():
    dets, targets = make_data(3)
    rep = evaluate(dets, targets, compat="luna16", n_bootstrap=0)
    assert rep.fps == (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert "compat=luna16" in str(rep)


def test_evaluate_validation():
    dets, targets = make_data(4)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate(dets, targets[:-1])
    with pytest.raises(ValueError, match="empty"):
        evaluate([], [])
    with pytest.raises(TypeError, match=r"detections\[0\]"):
        evaluate([np.zeros((2, 2))], [np.zeros((0, 2))])
    with pytest.raises(ValueError, match="match"):
        evaluate(dets, targets, match="masks")
    with pytest.raises(ValueError, match="max_fp"):
        evaluate(dets, targets, max_fp=0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        evaluate(dets, targets, n_bootstrap=-1)
    with pytest.raises(ValueError, match="targets"):
        evaluate(dets[:1], [np.zeros((2, 2, 2))], match="boxes")
    with pytest.raises(ValueError, match="count must be finite"):
        top_n([[0, 0]], [1.0], float("inf"))
    with pytest.raises(ValueError, match="n must be finite"):
        round_half_up(float("nan"))


def test_top_n_uses_the_one_rounding_rule():
    sc = np.linspace(1.0, 0.0, 12)
    pts = np.arange(24.0).reshape(12, 2)
    for c in (0.0, 0.5, 1.49999, 2.5, 3.5, 4.5, 11.7, -2.0, 40.0):
        assert top_n(pts, sc, c)[0].shape[0] == min(round_half_up(c), 12)


# ---------------------------------------------------------------------------------------
# where the curve ends: extrapolated readings, truncated detections


@dataclass
class TopN:
    """Duck-typed detections that know how many NMS candidates they were cut from."""

    points: np.ndarray
    scores: np.ndarray
    count: float
    n_candidates: int


def hand_example():
    # image 0: TP (0.9), FP (0.5); image 1: FP (0.4). N = 2, L = 1.
    # curve: fp_avg 0, 0, 0.5, 1.0; sensitivity 0, 1, 1, 1 -> it ends at 1 FP/image
    dets = [([[0, 0], [20, 20]], [0.9, 0.5], 1.0), ([[5, 5]], [0.4], 0.3)]
    return dets, [np.array([[0.0, 1.0]]), np.zeros((0, 2))]


def test_report_marks_readings_beyond_the_end_of_the_curve():
    dets, gts = hand_example()
    rep = evaluate(dets, gts, n_bootstrap=0)  # FAUC 0-15, budgets 0.25 ... 8
    assert rep.end_fp_avg == 1.0 and rep.curve.fp_avg.tolist() == [0, 0, 0.5, 1.0]
    assert rep.extrapolated(2.0) and not rep.extrapolated(1.0)
    text = str(rep)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "FAUC (0-15 FP/image)*" in lines
    assert "FROC score (0.25, 0.5, 1, 2*, 4*, 8*)" in lines
    for f in ("0.25", "0.5", "1"):
        assert f"Sensitivity @ {f} FP/image" in lines
    for f in ("2", "4", "8"):
        assert f"Sensitivity @ {f} FP/image*" in lines
    assert lines["FROC curve ends at (FP/image)"].endswith("1.0000")
    assert text.splitlines()[-1].startswith(
        "* extrapolated: the FROC curve ends at 1 FP/image (sensitivity 1.0000)"
    )
    md = rep.to_markdown()
    assert "| FAUC (0-15 FP/image)* |" in md and "\\* extrapolated" in md
    d = rep.to_dict()
    assert d["end_fp_avg"] == 1.0 and d["n_truncated"] == 0
    assert d["extrapolated"] == {"fauc": True, "fps": [2.0, 4.0, 8.0]}
    # within the curve: nothing marked, no note
    inside = evaluate(dets, gts, n_bootstrap=0, max_fp=1.0, fps=(0.5, 1.0))
    assert "*" not in str(inside)
    assert not any("*" in line for line in inside.to_markdown().splitlines()[1:])
    assert inside.to_dict()["extrapolated"] == {"fauc": False, "fps": []}


def test_evaluate_warns_when_detections_were_cut_to_top_n():
    dets, gts = hand_example()
    cut = [TopN(np.asarray(p, float), np.asarray(s), c, 3) for p, s, c in dets]
    with pytest.warns(TruncatedDetectionsWarning, match="2 of 2 images") as rec:
        rep = evaluate(cut, gts, n_bootstrap=0)
    msg = str(rec[0].message)
    assert "detections[0]: 2 of 3" in msg and "ends early, at 1 FP/image" in msg
    assert 'detect(x, n="all")' in msg and 'detect_maps(maps, n="all")' in msg
    assert "operating point still uses the predicted counts" in msg
    assert issubclass(TruncatedDetectionsWarning, UserWarning)
    assert rep.n_truncated == 2 and rep.to_dict()["n_truncated"] == 2
    assert "2 of 2 images were cut to their top-n" in str(rep)
    assert "Images cut to top-n detections" in str(rep)
    # every candidate kept, unknown (-1) or absent n_candidates: no warning
    full = [TopN(d.points, d.scores, d.count, len(d.scores)) for d in cut]
    unknown = [TopN(d.points, d.scores, d.count, -1) for d in cut]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedDetectionsWarning)
        for ok in (full, unknown, dets, [Dets(d.points, d.scores, d.count) for d in cut]):
            assert evaluate(ok, gts, n_bootstrap=0).n_truncated == 0
    # only the image that was cut counts
    one = [cut[0], full[1]]
    with pytest.warns(TruncatedDetectionsWarning, match="1 of 2 images"):
        assert evaluate(one, gts, n_bootstrap=0).n_truncated == 1


# ---------------------------------------------------------------------------------------
# 3D map evaluated on its annotated slice


def maxfilter_peaks(map2d, size=3):
    """A small reference peak finder: local maxima of a 3x3 maximum filter, by value."""
    mx = ndi.maximum_filter(map2d, size=size, mode="nearest")
    peaks = np.argwhere((map2d == mx) & (map2d > map2d.min()))
    values = map2d[tuple(peaks.T)]
    order = np.argsort(-values, kind="stable")
    return peaks[order], values[order]


def test_annotated_slice_is_taken_before_peak_finding():
    vol = np.zeros((7, 16, 16))
    vol[3, 4, 4] = 1.0
    vol[3, 10, 12] = 0.5
    # a strong blob centred on the next slice: 3D NMS would suppress the peak at (3, 4, 5)
    vol[4, 4, 5] = 2.0
    vol[3, 4, 5] = 1.5
    s = detect_on_slice(vol, np.array([[3, 4, 5], [3, 10, 11]]), maxfilter_peaks)
    assert s.index == 3 and s.axis == 0
    np.testing.assert_array_equal(s.targets, [[4, 5], [10, 11]])
    assert s.points.tolist() == [[4.0, 5.0], [10.0, 12.0]]
    assert s.scores.tolist() == [1.5, 0.5]
    rep = evaluate([s], [s.targets], radius=1.5, n_bootstrap=0)
    assert rep.n_tp == 2 and rep.n_fp == 0


def test_slice_rules():
    vol = np.random.default_rng(0).random((9, 6, 8))
    # no lesion annotated: the middle slice
    s = detect_on_slice(vol, np.zeros((0, 3)), maxfilter_peaks)
    assert s.index == middle_slice(9) == 4
    np.testing.assert_array_equal(s.points, maxfilter_peaks(vol[4])[0])
    assert middle_slice(10) == 5
    # along another axis, with in-plane targets and an explicit slice
    s = detect_on_slice(vol, np.array([[1, 2]]), maxfilter_peaks, axis=2, slice_index=3, count=2.0)
    assert s.index == 3 and s.axis == 2 and s.count == 2.0
    np.testing.assert_array_equal(s.points, maxfilter_peaks(vol[:, :, 3])[0])
    s = detect_on_slice(vol, np.array([[0, 2, 7]]), maxfilter_peaks, axis=-1)
    assert s.index == 7 and s.targets.tolist() == [[0.0, 2.0]]
    with pytest.raises(ValueError, match="several slices"):
        detect_on_slice(vol, np.array([[1, 0, 0], [2, 0, 0]]), maxfilter_peaks)
    with pytest.raises(ValueError, match="do not lie on slice"):
        detect_on_slice(vol, np.array([[1, 0, 0]]), maxfilter_peaks, slice_index=2)
    with pytest.raises(ValueError, match="need slice_index"):
        detect_on_slice(vol, np.array([[1, 0]]), maxfilter_peaks)
    with pytest.raises(ValueError, match="3-D"):
        detect_on_slice(vol[0], np.zeros((0, 3)), maxfilter_peaks)
    with pytest.raises(ValueError, match="out of range"):
        detect_on_slice(vol, np.zeros((0, 3)), maxfilter_peaks, slice_index=9)
    with pytest.raises(ValueError, match="not a slice"):
        detect_on_slice(vol, np.array([[1.5, 0, 0]]), maxfilter_peaks)
    with pytest.raises(TypeError, match="peak_finder"):
        detect_on_slice(vol, np.zeros((0, 3)), lambda m: np.zeros((0, 2)))
    with pytest.raises(ValueError, match="peak_finder coords"):
        detect_on_slice(vol, np.zeros((0, 3)), lambda m: (np.zeros((1, 3)), np.ones(1)))
