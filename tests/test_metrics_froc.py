"""FROC curve, FAUC and readings: hand-computed values and properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdet.metrics import (
    FROC,
    fauc,
    froc_curve,
    froc_score,
    match_images,
    match_points,
    operating_point,
    sensitivity_at_fp,
    weighted_froc_curves,
)


def random_results(seed, n_images=6, tie_levels=4, max_det=8, max_gt=4):
    """Random 2D images matched with radius 2; scores on a coarse grid force ties."""
    rng = np.random.default_rng(seed)
    points, scores, targets = [], [], []
    for _ in range(n_images):
        k, m = rng.integers(0, max_det + 1), rng.integers(0, max_gt + 1)
        points.append(rng.integers(0, 8, (k, 2)).astype(float))
        if tie_levels:
            scores.append(rng.integers(1, tie_levels + 1, k) / tie_levels)
        else:
            scores.append(rng.random(k))
        targets.append(rng.integers(0, 8, (m, 2)).astype(float))
    return match_images(points, scores, targets, radius=2.0)


# ---------------------------------------------------------------------------------------
# hand-computed curves


def test_curve_by_hand_with_empty_images():
    # image a: TP at 0.9 (target (0,1)), FP at 0.5; image b: TP at 0.7, a missed target;
    # image c: no targets, no detections; image d: no targets, FP at 0.7 (tied with b's TP)
    a = match_points([[0, 0], [9, 9]], [0.9, 0.5], [[0, 1]])
    b = match_points([[5, 5]], [0.7], [[5, 6], [20, 20]])
    c = match_points([], [], [])
    d = match_points([[3, 3]], [0.7], [])
    curve = froc_curve([a, b, c, d])
    assert curve.thresholds.tolist() == [np.inf, 0.9, 0.7, 0.5]
    assert curve.tp.tolist() == [0, 1, 2, 2]
    assert curve.fp.tolist() == [0, 0, 1, 2]
    assert curve.n_images == 4 and curve.n_targets == 3
    np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curve.fp_avg, [0, 0, 0.25, 0.5])
    # N can count images left out of the list
    assert froc_curve([a, b, c, d], n_images=8).fp_avg.tolist() == [0, 0, 0.125, 0.25]
    # FAUC up to 1 FP/image, linear: 0 on [0,0] (vertical), the tie is a diagonal from
    # (0, 1/3) to (0.25, 2/3), then flat at 2/3 to 0.5 and beyond (flat extrapolation)
    expected = (0.25 * (1 / 3 + 2 / 3) / 2 + 0.25 * 2 / 3 + 0.5 * 2 / 3) / 1.0
    assert fauc(curve, 1.0) == pytest.approx(expected)
    # step: 1/3 on [0, 0.25), 2/3 on [0.25, 1]
    assert fauc(curve, 1.0, "step") == pytest.approx(0.25 / 3 + 0.75 * 2 / 3)
    assert fauc(curve, 1.0, normalize=False) == pytest.approx(expected)
    assert fauc(curve, 2.0, normalize=False) == pytest.approx(expected + 2 / 3)
    assert np.isnan(fauc(curve, 1.0, extrapolate="nan"))
    assert fauc(curve, 0.5, extrapolate="nan") == pytest.approx((0.25 * 0.5 + 0.25 * 2 / 3) / 0.5)
    # readings
    assert sensitivity_at_fp(curve, 0.125) == pytest.approx(0.5)
    assert sensitivity_at_fp(curve, 0.125, "step") == pytest.approx(1 / 3)
    assert sensitivity_at_fp(curve, 0.0) == pytest.approx(1 / 3)
    assert sensitivity_at_fp(curve, 5.0) == pytest.approx(2 / 3)
    assert froc_score(curve, fps=(0.125, 8.0)) == pytest.approx((0.5 + 2 / 3) / 2)
    op = operating_point(curve, threshold=0.7)
    assert (op.tp, op.fp, op.threshold) == (2, 1, 0.7)
    assert operating_point(curve, threshold=0.95).threshold == np.inf
    end = operating_point([a, b, c, d])
    assert (end.sensitivity, end.fp_avg, end.tp, end.fp) == (pytest.approx(2 / 3), 0.5, 2, 2)


def test_ties_step_versus_linear():
    # one target; a TP and a FP with the same score: one point, reached diagonally
    curve = froc_curve([match_points([[0, 0], [9, 9]], [0.5, 0.5], [[0, 1]])])
    assert curve.tp.tolist() == [0, 1] and curve.fp.tolist() == [0, 1]
    assert fauc(curve, 1.0) == pytest.approx(0.5)
    assert fauc(curve, 1.0, "step") == pytest.approx(0.0)
    assert sensitivity_at_fp(curve, 0.25) == pytest.approx(0.25)
    assert sensitivity_at_fp(curve, 0.25, "step") == 0.0


def test_duplicates_shift_the_false_positives():
    det = [[0, 0], [0, 1], [0, 2], [30, 30]]
    fp_rule = froc_curve([match_points(det, [0.9, 0.8, 0.7, 0.6], [[0, 1]])])
    ignore = froc_curve([match_points(det, [0.9, 0.8, 0.7, 0.6], [[0, 1]], duplicates="ignore")])
    assert fp_rule.fp.tolist() == [0, 0, 1, 2, 3]
    assert ignore.fp.tolist() == [0, 0, 1]
    assert ignore.thresholds.tolist() == [np.inf, 0.9, 0.6]


def test_macro_versus_micro_sensitivity():
    a = match_points([[0, 0]], [0.9], [[0, 0]])
    b = match_points([[50, 50]], [0.8], np.arange(9 * 2).reshape(9, 2) * 10.0 + 100)
    micro = froc_curve([a, b])
    macro = froc_curve([a, b], sensitivity="macro")
    assert micro.sensitivity[-1] == pytest.approx(0.1)
    assert macro.sensitivity[-1] == pytest.approx(0.5)
    assert macro.tp.tolist() == micro.tp.tolist()


def test_monai_drops_a_real_threshold_when_every_target_is_found():
    # three targets found at 0.9, 0.8 and 0.3: the lowest unique value is a real threshold
    res = [
        match_points([[0, 0], [10, 10], [20, 20]], [0.9, 0.8, 0.3], [[0, 0], [10, 10], [20, 20]])
    ]
    ours = froc_curve(res)
    monai = froc_curve(res, compat="monai")
    assert sensitivity_at_fp(ours, 1.0) == 1.0
    assert sensitivity_at_fp(monai, 1.0) == pytest.approx(2 / 3)
    # with a missed target MONAI's 0 entry is dropped instead, and nothing real is lost
    res2 = [match_points([[0, 0], [10, 10]], [0.9, 0.8], [[0, 0], [10, 10], [20, 20]])]
    np.testing.assert_array_equal(froc_curve(res2, compat="monai").tp, froc_curve(res2).tp)


def test_no_targets_warns_and_gives_nan():
    with pytest.warns(RuntimeWarning, match="no targets"):
        curve = froc_curve([match_points([[0, 0]], [0.5], [])])
    assert np.isnan(curve.sensitivity).all()
    assert curve.fp.tolist() == [0, 1]


def test_no_detections_gives_the_origin_only():
    curve = froc_curve([match_points([], [], [[1, 1]]), match_points([], [], [])])
    assert curve.thresholds.tolist() == [np.inf]
    assert curve.sensitivity.tolist() == [0.0] and curve.fp_avg.tolist() == [0.0]
    assert fauc(curve, 2.0) == 0.0 and froc_score(curve) == 0.0


def test_validation_messages():
    res = [match_points([[0, 0]], [0.5], [[0, 0]])]
    curve = froc_curve(res)
    with pytest.raises(ValueError, match="max_fp"):
        fauc(curve, 0.0)
    with pytest.raises(ValueError, match="max_fp"):
        fauc(curve, -1.0)
    with pytest.raises(ValueError, match="interpolation"):
        fauc(curve, 1.0, "cubic")
    with pytest.raises(ValueError, match="extrapolate"):
        fauc(curve, 1.0, extrapolate="zero")
    with pytest.raises(ValueError, match="fp"):
        sensitivity_at_fp(curve, -0.5)
    with pytest.raises(ValueError, match="fps"):
        froc_score(curve, fps=())
    with pytest.raises(TypeError, match="curve must be a FROC"):
        fauc(res, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="results"):
        froc_curve(res[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"results\[1\]"):
        froc_curve([res[0], "x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="n_images"):
        froc_curve(res + res, n_images=1)
    with pytest.raises(ValueError, match="sensitivity"):
        froc_curve(res, sensitivity="weighted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        weighted_froc_curves(res, [[1, 1]])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_froc_curves(res, [[-1]])
    with pytest.raises(ValueError, match="NaN"):
        operating_point(curve, threshold=float("nan"))


# ---------------------------------------------------------------------------------------
# properties


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 2, 4]))
def test_curve_is_monotone_and_complete(seed, tie_levels):
    res = random_results(seed, tie_levels=tie_levels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = froc_curve(res)
    assert curve.thresholds[0] == np.inf and curve.tp[0] == 0 and curve.fp[0] == 0
    assert (np.diff(curve.thresholds) < 0).all()
    assert (np.diff(curve.tp) >= 0).all() and (np.diff(curve.fp) >= 0).all()
    # every counted score is a threshold: none dropped
    events = np.concatenate(
        [np.concatenate([r.gt_score[r.gt_hit], r.scores[r.det_label == 0]]) for r in res]
    )
    np.testing.assert_array_equal(curve.thresholds[1:], np.unique(events)[::-1])
    assert curve.tp[-1] == sum(r.n_tp for r in res)
    assert curve.fp[-1] == sum(r.n_fp for r in res)
    # TP/FP at each threshold counted directly
    for g, t in enumerate(curve.thresholds):
        tp = sum(int(np.sum(r.gt_score[r.gt_hit] >= t)) for r in res)
        fp = sum(int(np.sum(r.scores[r.det_label == 0] >= t)) for r in res)
        assert (curve.tp[g], curve.fp[g]) == (tp, fp)
    if curve.n_targets:
        for f in (0.1, 0.5, 2.0):
            for interp in ("linear", "step"):
                assert 0.0 <= fauc(curve, f, interp) <= 1.0


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 2, 3]))
def test_linear_area_equals_wilcoxon_statistic(seed, tie_levels):
    # area under the polyline up to the end-point = sum over (FP, TP) pairs of
    # psi = 1 if the TP outranks the FP, 1/2 if tied, over N * L
    res = random_results(seed, tie_levels=tie_levels)
    curve = froc_curve(res) if sum(r.n_targets for r in res) else None
    if curve is None or curve.fp[-1] == 0:
        return
    tp_scores = np.concatenate([r.gt_score[r.gt_hit] for r in res])
    fp_scores = np.concatenate([r.scores[r.det_label == 0] for r in res])
    psi = (tp_scores[None, :] > fp_scores[:, None]) + 0.5 * (
        tp_scores[None, :] == fp_scores[:, None]
    )
    oracle = psi.sum() / (curve.n_images * curve.n_targets)
    area = fauc(curve, float(curve.fp_avg[-1]), normalize=False)
    assert area == pytest.approx(oracle, rel=1e-12, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_invariant_to_image_order(seed, rnd):
    res = random_results(seed, n_images=7)
    if not sum(r.n_targets for r in res):
        return
    shuffled = list(res)
    rnd.shuffle(shuffled)
    a, b = froc_curve(res), froc_curve(shuffled)
    for name in ("thresholds", "tp", "fp", "fp_avg", "sensitivity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert fauc(a, 1.5) == fauc(b, 1.5)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_linear_and_step_agree_without_ties(seed):
    res = random_results(seed, tie_levels=0)  # continuous scores: no ties
    if not sum(r.n_targets for r in res):
        return
    curve = froc_curve(res)
    for f in (0.0, 0.3, 1.0, 1.7, 10.0):
        assert sensitivity_at_fp(curve, f) == sensitivity_at_fp(curve, f, "step")
        assert fauc(curve, max(f, 0.1)) == pytest.approx(fauc(curve, max(f, 0.1), "step"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=11),
    st.lists(st.floats(0, 1), min_size=12, max_size=12),
    st.floats(0, 7),
)
def test_linear_reading_is_numpy_interp_bit_for_bit(steps, ys, x):
    # non-decreasing x with repeated values (vertical segments), as in FROC curves
    xp = np.concatenate([[0.0], np.cumsum(steps) / 3.0])
    fp = np.sort(np.array(ys[: xp.size]))
    curve = FROC(
        np.arange(xp.size, dtype=float)[::-1],
        xp,
        fp,
        np.zeros(xp.size, dtype=np.int64),
        np.zeros(xp.size, dtype=np.int64),
        1,
        1,
    )
    assert sensitivity_at_fp(curve, x) == np.interp(x, xp, fp)
    # and stacks give the same as single curves
    stack = FROC(
        curve.thresholds, np.stack([xp, xp]), np.stack([fp, fp[::-1]]), curve.tp, curve.fp, 1, 1
    )
    out = sensitivity_at_fp(stack, x)
    assert out[0] == np.interp(x, xp, fp) and out[1] == np.interp(x, xp, fp[::-1])
