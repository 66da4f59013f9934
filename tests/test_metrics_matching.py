"""Matching: hand-computed cases, brute force at every threshold, validation."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdet.metrics import (
    compare_annotations,
    froc_curve,
    match_boxes,
    match_images,
    match_points,
)

# ---------------------------------------------------------------------------------------
# independent reference: feasibility by plain Python, maximum matching by enumeration


def feasible_points(det, gt, radius, spacing=None, inclusive=True):
    sp = [1.0] * (len(det[0]) if len(det) else 1) if spacing is None else list(spacing)
    out = []
    for p in det:
        row = []
        for q in gt:
            d2 = sum(((a - b) * s) ** 2 for a, b, s in zip(p, q, sp, strict=True))
            row.append(d2 <= radius * radius if inclusive else d2 < radius * radius)
        out.append(row)
    return out


def feasible_boxes(det, lo, hi):
    return [
        [
            all(a <= x < b for x, a, b in zip(p, lo_j, hi_j, strict=True))
            for lo_j, hi_j in zip(lo, hi, strict=True)
        ]
        for p in det
    ]


def max_matching(feas, rows):
    """Size of a maximum one-to-one matching of ``rows`` (brute force over assignments)."""
    n_gt = len(feas[0]) if feas else 0

    def best(k, used):
        if k == len(rows):
            return 0
        out = best(k + 1, used)
        for j in range(n_gt):
            if feas[rows[k]][j] and j not in used:
                out = max(out, 1 + best(k + 1, used | {j}))
        return out

    return best(0, frozenset())


def check_against_brute_force(res, scores, feas, duplicates):
    scores = list(scores)
    n_gt = len(res.gt_hit)
    # a valid one-to-one matching of feasible pairs
    matched = [i for i, lab in enumerate(res.det_label) if lab == 1]
    targets = [int(res.det_to_gt[i]) for i in matched]
    assert len(set(targets)) == len(targets)
    assert all(feas[i][j] for i, j in zip(matched, targets, strict=True))
    assert sorted(targets) == [j for j in range(n_gt) if res.gt_hit[j]]
    for i, j in zip(matched, targets, strict=True):
        assert res.gt_score[j] == scores[i]
    # score-monotone: at every threshold, TP = maximum matching above it
    for t in sorted(set(scores)):
        above = [i for i, s in enumerate(scores) if s >= t]
        n_tp = sum(1 for i in above if res.det_label[i] == 1)
        assert n_tp == max_matching(feas, above), (t, above)
    # unmatched detections: FP, or not counted when near a target and duplicates ignored
    for i, lab in enumerate(res.det_label):
        if lab != 1:
            near = any(feas[i])
            assert lab == (-1 if (duplicates == "ignore" and near) else 0)


# ---------------------------------------------------------------------------------------
# hand-computed cases


def test_boundary_distance_equal_to_radius_is_a_hit():
    # offset (3.6, 4.8) has length exactly 6 (36 = 12.96 + 23.04), but not in floating point
    det = np.array([[10.0 + 3.6, 20.0 + 4.8]])
    res = match_points(det, [1.0], [[10.0, 20.0]], radius=6)
    assert res.det_label.tolist() == [1]
    strict = match_points(det, [1.0], [[10.0, 20.0]], radius=6, inclusive=False)
    assert strict.det_label.tolist() == [0]
    # just outside is a miss either way
    far = match_points([[10.0 + 3.6, 20.0 + 4.81]], [1.0], [[10.0, 20.0]], radius=6)
    assert far.det_label.tolist() == [0]


def test_spacing_turns_radius_into_millimetres():
    # 4 voxels apart along axis 0 with 2 mm voxels = 8 mm
    assert match_points([[4, 0, 0]], [1.0], [[0, 0, 0]], 6, spacing=(2, 1, 1)).n_tp == 0
    assert match_points([[4, 0, 0]], [1.0], [[0, 0, 0]], 8, spacing=(2, 1, 1)).n_tp == 1
    assert match_points([[0, 0, 4]], [1.0], [[0, 0, 0]], 6, spacing=(2, 1, 1)).n_tp == 1


def test_greedy_and_distance_only_matching_lose_a_true_positive():
    # B=(0,0), A=(0,7); d1=(0,1) is 1 from B and exactly 6 from A; d2=(6,0) is 6 from B
    # and 9.2 from A. Greedy-by-score-then-nearest gives d1->B and leaves d2 unmatched;
    # minimum-total-distance gives d1->B (1) + d2->A (9.2, infeasible) < 6 + 6.
    # The only assignment with two true positives is d1->A, d2->B.
    gt = [[0, 7], [0, 0]]
    res = match_points([[0, 1], [6, 0]], [0.9, 0.8], gt, radius=6)
    assert res.det_label.tolist() == [1, 1]
    assert res.det_to_gt.tolist() == [0, 1]
    curve = froc_curve([res])
    assert curve.tp.tolist() == [0, 1, 2]
    assert curve.fp.tolist() == [0, 0, 0]


def test_score_monotone_weights_beat_cardinality_only_matching():
    # one target, two detections in reach: the higher score must be the true positive,
    # otherwise the curve starts with a false positive at the top threshold
    res = match_points([[0, 5], [0, 1]], [0.9, 0.2], [[0, 0]], radius=6)
    assert res.det_label.tolist() == [1, 0]
    # a chain: d1 (0.9) reaches A only, d2 (0.5) reaches A and B -> both matched
    res = match_points([[0, -5], [0, 5], [30, 30]], [0.9, 0.5, 0.7], [[0, 0], [0, 10]], 6)
    assert res.det_label.tolist() == [1, 1, 0]
    assert res.det_to_gt.tolist() == [0, 1, -1]


def test_duplicate_hit_is_false_positive_or_ignored():
    det = [[0, 0], [0, 2], [20, 20]]
    res = match_points(det, [0.9, 0.8, 0.7], [[0, 1]], radius=6)
    assert res.det_label.tolist() == [1, 0, 0]
    assert (res.n_tp, res.n_fp, res.n_ignored) == (1, 2, 0)
    res = match_points(det, [0.9, 0.8, 0.7], [[0, 1]], radius=6, duplicates="ignore")
    assert res.det_label.tolist() == [1, -1, 0]
    assert (res.n_tp, res.n_fp, res.n_ignored) == (1, 1, 1)


def test_ties_prefer_the_closer_detection():
    res = match_points([[0, 5], [0, 1]], [0.5, 0.5], [[0, 0]], radius=6)
    assert res.det_label.tolist() == [0, 1]
    res = match_points([[0, 5], [0, 1]], [0.5, 0.5], [[0, 0]], radius=6, tiebreak="none")
    assert sorted(res.det_label.tolist()) == [0, 1]


def test_image_without_targets_and_image_without_detections():
    empty_gt = match_points([[1, 1], [2, 2]], [0.3, 0.4], np.zeros((0, 2)))
    assert empty_gt.det_label.tolist() == [0, 0]
    assert empty_gt.n_targets == 0 and empty_gt.gt_hit.shape == (0,)
    no_det = match_points(np.zeros((0, 2)), [], [[5, 5], [9, 9]])
    assert no_det.det_label.shape == (0,)
    assert no_det.gt_hit.tolist() == [False, False] and no_det.n_targets == 2
    both_empty = match_points([], [], [])
    assert both_empty.det_label.shape == (0,) and both_empty.n_targets == 0


def test_ignored_targets():
    # detection 0 hits the ignored target only; detection 1 hits both: it must take the
    # counted target; detection 2 is a second hit on the ignored target
    gt = [[0, 0], [0, 8]]
    det = [[0, -3], [0, 4], [0, -1]]
    res = match_points(det, [0.9, 0.8, 0.7], gt, radius=6, ignore_gt=[True, False])
    assert res.det_label.tolist() == [-1, 1, -1]
    assert res.det_to_gt.tolist() == [-1, 1, -1]
    assert res.gt_hit.tolist() == [False, True]
    assert res.n_targets == 1


def test_per_target_radius():
    res = match_points([[0, 4], [10, 4]], [0.9, 0.8], [[0, 0], [10, 0]], radius=[3, 5])
    assert res.det_label.tolist() == [0, 1]


def test_match_boxes_half_open_mnist_cells():
    lo = [[0, 0], [0, 28]]
    hi = [[28, 28], [28, 56]]
    det = [[27, 27], [0, 28], [28, 5], [10, 10]]
    res = match_boxes(det, [0.9, 0.8, 0.7, 0.6], lo, hi)
    # (27, 27) is inside cell 0; (0, 28) is the first pixel of cell 1; (28, 5) is outside
    assert res.det_label.tolist() == [1, 1, 0, 0]
    assert res.det_to_gt.tolist() == [0, 1, -1, -1]
    dup = match_boxes(det, [0.9, 0.8, 0.7, 0.6], lo, hi, duplicates="ignore")
    assert dup.det_label.tolist() == [1, 1, 0, -1]


def test_compat_luna16_strict_many_to_one_and_cap():
    # one candidate exactly between two nodules credits both (many-to-one); strict radius
    gt = [[0, 0], [0, 8]]
    res = match_points([[0, 4], [0, 2], [0, 14]], [0.9, 0.5, 0.4], gt, 4, compat="luna16")
    # (0, 4) is at distance 4 from both: not a hit with the strict rule
    assert res.det_label.tolist() == [0, 1, 0]
    res = match_points([[0, 4]], [0.9], gt, 4.5, compat="luna16")
    assert res.gt_hit.tolist() == [True, True]
    assert res.gt_score.tolist() == [0.9, 0.9]
    assert froc_curve([res]).tp.tolist() == [0, 2]
    # at most 100 candidates, cut strictly above the 101st score
    scores = np.concatenate([np.linspace(1, 2, 99), [0.5, 0.5, 0.5]])
    det = np.column_stack([np.arange(102) * 50.0, np.zeros(102)])
    res = match_points(det, scores, [[0, 0]], 6, compat="luna16")
    assert (res.det_label[:99] >= 0).all()
    assert (res.det_label[99:] == -1).all()  # ties at the cut all removed


def test_compat_monai_requires_positive_scores():
    with pytest.raises(ValueError, match="positive"):
        match_points([[0, 0]], [0.0], [[0, 0]], compat="monai")


def test_compare_annotations_intra_rater():
    first = [np.array([[0, 0], [10, 10], [40, 40]]), np.zeros((0, 2)), np.array([[5, 5]])]
    second = [np.array([[0, 3], [11, 10]]), np.array([[7, 7]]), np.zeros((0, 2))]
    agr = compare_annotations(first, second, radius=6)
    # against `second`: 2 of 3 reference points found, 2 extra points in 3 images
    assert (agr.n_tp, agr.n_fp, agr.n_reference, agr.n_images) == (2, 2, 3, 3)
    assert agr.sensitivity == pytest.approx(2 / 3) and agr.fp_avg == pytest.approx(2 / 3)
    back = compare_annotations(second, first, radius=6)
    assert (back.n_tp, back.n_fp, back.n_reference) == (2, 1, 4)


# ---------------------------------------------------------------------------------------
# properties against brute force

coord = st.integers(0, 6)


@st.composite
def instances(draw, max_det=6, max_gt=4):
    ndim = draw(st.sampled_from([2, 3]))
    k = draw(st.integers(0, max_det))
    m = draw(st.integers(0, max_gt))
    det = [[draw(coord) for _ in range(ndim)] for _ in range(k)]
    gt = [[draw(coord) for _ in range(ndim)] for _ in range(m)]
    scores = [draw(st.sampled_from([0.25, 0.5, 1.0])) for _ in range(k)]  # forced ties
    radius = draw(st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0]))
    spacing = draw(st.sampled_from([None, (0.5,) * ndim, tuple([2.0] + [1.0] * (ndim - 1))]))
    return ndim, det, gt, scores, radius, spacing


@settings(max_examples=300, deadline=None)
@given(
    instances(),
    st.sampled_from(["fp", "ignore"]),
    st.booleans(),
    st.sampled_from(["distance", "none"]),
)
def test_points_equal_brute_force_at_every_threshold(inst, duplicates, inclusive, tiebreak):
    ndim, det, gt, scores, radius, spacing = inst
    res = match_points(
        np.array(det, dtype=float).reshape(-1, ndim),
        scores,
        np.array(gt, dtype=float).reshape(-1, ndim),
        radius,
        spacing=spacing,
        inclusive=inclusive,
        duplicates=duplicates,
        tiebreak=tiebreak,
    )
    feas = feasible_points(det, gt, radius, spacing, inclusive)
    check_against_brute_force(res, scores, feas, duplicates)


@settings(max_examples=150, deadline=None)
@given(instances(), st.sampled_from(["fp", "ignore"]))
def test_boxes_equal_brute_force_at_every_threshold(inst, duplicates):
    ndim, det, gt, scores, radius, _ = inst
    size = int(radius) + 1
    lo = [list(q) for q in gt]
    hi = [[c + size for c in q] for q in gt]
    res = match_boxes(
        np.array(det, dtype=float).reshape(-1, ndim),
        scores,
        np.array(lo, dtype=float).reshape(-1, ndim),
        np.array(hi, dtype=float).reshape(-1, ndim),
        duplicates=duplicates,
    )
    check_against_brute_force(res, scores, feasible_boxes(det, lo, hi), duplicates)


@settings(max_examples=100, deadline=None)
@given(instances(max_det=7, max_gt=5))
def test_many_to_one_credits_each_target_its_best_detection(inst):
    ndim, det, gt, scores, radius, _ = inst
    res = match_points(
        np.array(det, dtype=float).reshape(-1, ndim),
        [s + 0.1 for s in scores],
        np.array(gt, dtype=float).reshape(-1, ndim),
        radius,
        compat="monai",
    )
    feas = feasible_points(det, gt, radius)
    for j in range(len(gt)):
        reach = [s + 0.1 for i, s in enumerate(scores) if feas[i][j]]
        assert res.gt_hit[j] == bool(reach)
        if reach:
            assert res.gt_score[j] == max(reach)
    for i, lab in enumerate(res.det_label):
        if lab == 1:
            assert any(feas[i][j] and res.gt_score[j] == scores[i] + 0.1 for j in range(len(gt)))
        else:
            assert lab == (-1 if any(feas[i]) else 0)
    if gt:
        assert froc_curve([res]).tp[-1] == sum(res.gt_hit)


def test_batched_matching_equals_per_image_loop():
    rng = np.random.default_rng(3)
    points, scores, targets = [], [], []
    for n in range(40):
        k, m = rng.integers(0, 30), rng.integers(0, 8)
        if n % 7 == 0:
            k = 0
        points.append(rng.integers(0, 24, (k, 3)).astype(float))
        scores.append(rng.integers(0, 5, k) / 4.0)  # many ties
        targets.append(rng.integers(0, 24, (m, 3)).astype(float))
    batch = match_images(points, scores, targets, radius=4.0)
    for p, s, t, r in zip(points, scores, targets, batch, strict=True):
        single = match_points(p, s, t, 4.0)
        np.testing.assert_array_equal(r.det_label, single.det_label)
        np.testing.assert_array_equal(r.det_to_gt, single.det_to_gt)
        np.testing.assert_array_equal(r.gt_hit, single.gt_hit)
        np.testing.assert_array_equal(r.gt_score, single.gt_score)
        assert r.n_targets == single.n_targets
        # and the batched labels are correct by brute force on small images
        if len(p) <= 9:
            check_against_brute_force(r, s, feasible_points(p.tolist(), t.tolist(), 4.0), "fp")


def test_batched_boxes_equal_per_image_loop():
    rng = np.random.default_rng(5)
    points, scores, targets = [], [], []
    for _ in range(20):
        lo = rng.integers(0, 5, (rng.integers(0, 4), 2)) * 28.0
        points.append(rng.uniform(0, 140, (rng.integers(0, 12), 2)))
        scores.append(rng.random(points[-1].shape[0]))
        targets.append((lo, lo + 28))
    batch = match_images(points, scores, targets, match="boxes")
    for p, s, (lo, hi), r in zip(points, scores, targets, batch, strict=True):
        single = match_boxes(p, s, lo, hi)
        np.testing.assert_array_equal(r.det_label, single.det_label)
        np.testing.assert_array_equal(r.det_to_gt, single.det_to_gt)
    # the (m, 2, ndim) form gives the same
    stacked = [np.stack([lo, hi], axis=1) for lo, hi in targets]
    again = match_images(points, scores, stacked, match="boxes")
    for a, b in zip(batch, again, strict=True):
        np.testing.assert_array_equal(a.det_label, b.det_label)


def test_large_conflicting_component_matches_brute_force_counts():
    # a dense cluster: one connected component solved by the assignment solver
    rng = np.random.default_rng(11)
    det = rng.integers(0, 5, (8, 2)).astype(float)
    gt = rng.integers(0, 5, (6, 2)).astype(float)
    scores = rng.integers(0, 3, 8).astype(float)
    res = match_points(det, scores, gt, 2.0)
    check_against_brute_force(res, scores, feasible_points(det.tolist(), gt.tolist(), 2.0), "fp")


# ---------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"radius": -1.0}, ValueError, "radius"),
        ({"radius": float("nan")}, ValueError, "radius"),
        ({"radius": [1.0, 2.0, 3.0]}, ValueError, "radius"),
        ({"scores": [0.5, float("nan")]}, ValueError, "scores contains NaN"),
        ({"scores": [0.5, float("inf")]}, ValueError, "infinite"),
        ({"scores": [0.5]}, ValueError, "scores has 1 entries but there are 2 detections"),
        ({"gt": [[0, 0, 0]]}, ValueError, "same number of dimensions"),
        ({"det": [0, 1, 2]}, ValueError, "det must be a 2-D"),
        ({"det": [[0, float("nan")], [1, 1]]}, ValueError, "det contains NaN"),
        ({"spacing": (1, 2, 3)}, ValueError, "spacing"),
        ({"spacing": 0}, ValueError, "spacing"),
        ({"duplicates": "drop"}, ValueError, "duplicates"),
        ({"tiebreak": "random"}, ValueError, "tiebreak"),
        ({"compat": "picai"}, ValueError, "compat"),
        ({"ignore_gt": [1]}, TypeError, "ignore_gt"),
        ({"ignore_gt": [True, False]}, ValueError, "ignore_gt"),
        ({"inclusive": "yes"}, TypeError, "inclusive"),
    ],
)
def test_match_points_validation(kwargs, exc, pattern):
    args = {"det": [[0, 0], [1, 1]], "scores": [0.5, 0.4], "gt": [[0, 0]], "radius": 6.0}
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        match_points(args.pop("det"), args.pop("scores"), args.pop("gt"), **args)


def test_match_boxes_and_images_validation():
    with pytest.raises(ValueError, match="greater than"):
        match_boxes([[0, 0]], [1.0], [[0, 0]], [[0, 5]])
    with pytest.raises(ValueError, match="same shape"):
        match_boxes([[0, 0]], [1.0], [[0, 0]], [[5, 5], [6, 6]])
    with pytest.raises(TypeError, match="Wrap a single image"):
        match_images(np.zeros((2, 2)), [[1.0, 1.0]], [np.zeros((1, 2))])
    with pytest.raises(ValueError, match="one entry per image"):
        match_images([np.zeros((1, 2))], [[1.0]], [np.zeros((1, 2))] * 2)
    with pytest.raises(ValueError, match="same number of dimensions"):
        match_images([np.zeros((1, 2)), np.zeros((1, 3))], [[1.0], [1.0]], [[], []])
    with pytest.raises(ValueError, match="match"):
        match_images([np.zeros((1, 2))], [[1.0]], [[]], match="regions")
    with pytest.raises(ValueError, match="single number"):
        match_images([np.zeros((1, 2))], [[1.0]], [[[0, 0]]], radius=[1.0])


def test_metrics_package_never_imports_torch():
    root = Path(__file__).resolve().parents[1] / "wsdet" / "metrics"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path
            assert not any(n in ("wsdet", "wsdet.detection", "wsdet.detector") for n in names), path


def test_brute_force_reference_itself():
    feas = [[True, True, False], [False, True, True], [True, False, False]]
    assert max_matching(feas, [0, 1, 2]) == 3
    assert max_matching(feas, [0, 2]) == 2
    assert max_matching([[True], [True]], [0, 1]) == 1
