"""Two-way (image x object) bootstrap: against the image bootstrap, a brute-force
expansion of the resampled data, and the variance it is meant to capture."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdet.metrics import bootstrap, fauc, froc_curve, match_points, sensitivity_at_fp
from wsdet.metrics.events import EventTable
from wsdet.metrics.matchers import MatchResult
from wsdet.metrics.two_way import (
    _checked,
    _curves,
    _distinct,
    _events,
    two_way_bootstrap,
    two_way_paired_bootstrap,
    two_way_weights,
)


def _random_data(rng: np.random.Generator, n_images: int, n_clusters: int):
    """Per image: random detections (scores on a coarse grid, so ties occur), targets
    (some ignored), each target's object label, and each detection's (-1: none)."""
    results, clusters, fp_clusters = [], [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 4))
        k = int(rng.integers(0, 6))
        gt = rng.uniform(0, 40, size=(m, 2))
        det = np.concatenate(
            [
                gt[: k // 2] + rng.normal(0, 2, size=(min(k // 2, m), 2)),
                rng.uniform(0, 40, size=(k - min(k // 2, m), 2)),
            ]
        )
        scores = np.round(rng.uniform(0.05, 1, size=det.shape[0]), 1)
        ignore = rng.random(m) < 0.15
        results.append(match_points(det, scores, gt, 4.0, ignore_gt=ignore))
        clusters.append(rng.integers(0, n_clusters, size=m))
        fp_clusters.append(rng.integers(-1, n_clusters + 2, size=det.shape[0]))
    if sum(r.n_targets for r in results) == 0:  # at least one counted target
        results[0] = match_points([[0.0, 0.0]], [0.5], [[0.0, 1.0]], 4.0)
        clusters[0] = np.array([0])
        fp_clusters[0] = np.array([-1])
    return results, clusters, fp_clusters


def _prepared(results, clusters, fp_clusters=None):
    targets, dets = _checked(results, clusters, fp_clusters)
    distinct = _distinct(targets, dets)
    return _events(results, targets, dets, distinct), distinct


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_unit_cluster_weights_give_the_image_bootstrap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    results, clusters, fp_clusters = _random_data(rng, int(rng.integers(1, 12)), 4)
    ev, distinct = _prepared(results, clusters, fp_clusters)
    w, _ = two_way_weights(len(results), distinct.size, B=7, seed=seed)
    ours = _curves(ev, w, np.ones((7, distinct.size), dtype=np.int64))
    table = EventTable(results)
    ref = table.weighted(w, table.n_groups)
    np.testing.assert_array_equal(ours.thresholds, ref.thresholds)
    np.testing.assert_array_equal(ours.tp, ref.tp)
    np.testing.assert_array_equal(ours.fp, ref.fp)
    np.testing.assert_allclose(ours.fp_avg, ref.fp_avg, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ours.sensitivity, ref.sensitivity, rtol=0, atol=1e-15)


def _expand(results, clusters, fp_clusters, distinct, w, v) -> list[MatchResult]:
    """The replicate written out: image g copied w[g] times, each counted target of object
    c copied v[c] times (found copies credited to copies of its detection), each false
    positive on object c copied v[c] times (once when on no object)."""

    def mult(labels):
        labels = np.asarray(labels, dtype=np.int64)
        on = labels >= 0
        out = np.ones(labels.size, dtype=np.int64)
        out[on] = v[np.searchsorted(distinct, labels[on])]
        return out

    out = []
    for r, c, f, copies in zip(results, clusters, fp_clusters, w, strict=True):
        keep = ~r.gt_ignored
        t_mult = mult(np.asarray(c)[keep])
        hit = np.repeat(r.gt_hit[keep], t_mult)
        gt_score = np.repeat(r.gt_score[keep], t_mult)
        is_fp = r.det_label == 0
        fp_scores = np.repeat(r.scores[is_fp], mult(np.asarray(f)[is_fp]))
        tp_scores = gt_score[hit]
        scores = np.concatenate([tp_scores, fp_scores])
        label = np.concatenate([np.ones(tp_scores.size), np.zeros(fp_scores.size)]).astype(np.int8)
        to_gt = np.concatenate([np.flatnonzero(hit), -np.ones(fp_scores.size, dtype=np.intp)])
        res = MatchResult(
            det_label=label,
            det_to_gt=to_gt.astype(np.intp),
            gt_hit=hit,
            scores=scores,
            n_targets=int(hit.size),
            gt_score=gt_score,
            gt_ignored=np.zeros(hit.size, dtype=bool),
        )
        out += [res] * int(copies)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_replicate_equals_the_expanded_data(seed: int, on_objects: bool) -> None:
    rng = np.random.default_rng(seed)
    results, clusters, fp_clusters = _random_data(rng, int(rng.integers(1, 10)), 3)
    if not on_objects:  # false positives weigh W[g] only
        fp_clusters = [np.full(len(f), -1) for f in fp_clusters]
    ev, distinct = _prepared(results, clusters, fp_clusters)
    w, v = two_way_weights(len(results), distinct.size, B=5, seed=seed)
    curves = _curves(ev, w, v)
    for b in range(5):
        expanded = _expand(results, clusters, fp_clusters, distinct, w[b], v[b])
        if sum(r.n_targets for r in expanded) == 0:
            assert np.isnan(curves.sensitivity[b]).all()
            continue
        ref = froc_curve(expanded, n_images=int(w[b].sum()))
        # the replicate curve has every full-data threshold; the expansion only those of
        # events it kept: compare at the expansion's thresholds
        idx = np.searchsorted(-curves.thresholds, -ref.thresholds)
        np.testing.assert_allclose(curves.sensitivity[b, idx], ref.sensitivity, atol=1e-12)
        np.testing.assert_allclose(curves.fp_avg[b, idx], ref.fp_avg, atol=1e-12)


def test_repeated_objects_widen_the_interval() -> None:
    """60 images x 2 targets showing 6 objects; objects 0-1 are always found, 2-5 never
    (what is hard is the object, not the image). Resampling images alone sees 120
    nearly independent targets; the object-level variance is much larger."""
    rng = np.random.default_rng(0)
    results, clusters = [], []
    for _ in range(60):
        objs = rng.integers(0, 6, size=2)
        gt = np.array([[10.0, 10.0], [30.0, 30.0]])
        found = objs < 2
        det = gt[found]
        results.append(match_points(det, np.full(det.shape[0], 0.9), gt, 3.0))
        clusters.append(objs)
    fn = partial(sensitivity_at_fp, fp=1.0)
    one = bootstrap(fn, results, B=1000, seed=1)
    two = two_way_bootstrap(fn, results, clusters, B=1000, seed=1)
    assert two.estimate == one.estimate
    # object-level sd of a proportion of 6 objects (p ~ 1/3): sqrt(p(1-p)/6) ~ 0.19;
    # image-level ~ sqrt(p(1-p)/120) ~ 0.04
    assert 0.12 < two.sd < 0.26
    assert one.sd < 0.07
    assert two.sd > 2.5 * one.sd


def test_false_positives_on_repeated_look_alikes_widen_the_interval() -> None:
    """60 images, each with one found target (its own object) and one look-alike drawn
    from 6 objects; only look-alikes 0-1 fool the method (a false positive). The false
    positives per image then vary at the object level, which only fp_clusters models."""
    rng = np.random.default_rng(0)
    results, clusters, fp_clusters = [], [], []
    for g in range(60):
        look = int(rng.integers(0, 6))
        det = [[10.0, 10.0]] + ([[30.0, 30.0]] if look < 2 else [])
        results.append(match_points(det, [0.9, 0.5][: len(det)], [[10.0, 10.0]], 3.0))
        clusters.append([100 + g])  # every target a different object
        fp_clusters.append([-1, look][: len(det)])

    def fp_end(curve):
        return curve.fp_avg[..., -1]

    one = bootstrap(fp_end, results, B=1000, seed=1)
    plain = two_way_bootstrap(fp_end, results, clusters, B=1000, seed=1)
    objects = two_way_bootstrap(fp_end, results, clusters, B=1000, seed=1, fp_clusters=fp_clusters)
    # image level: sqrt(p (1 - p) / 60) ~ 0.06 for p ~ 1/3; object level ~ sqrt(p(1-p)/6)
    assert plain.sd == pytest.approx(one.sd, rel=1e-12)  # targets unique: same W, FP by W
    assert one.sd < 0.08 and 0.12 < objects.sd < 0.26


def test_paired_is_the_difference_of_shared_replicates() -> None:
    rng = np.random.default_rng(4)
    a, clusters, _ = _random_data(rng, 20, 5)
    b = [
        match_points(
            np.zeros((0, 2)), np.zeros(0), np.zeros((r.gt_hit.size, 2)), 4.0, ignore_gt=r.gt_ignored
        )
        for r in a
    ]
    fn = partial(fauc, max_fp=1.0)
    d = two_way_paired_bootstrap(fn, a, b, clusters, B=200, seed=9, ci=0.95)
    ra = two_way_bootstrap(fn, a, clusters, B=200, seed=9)
    rb = two_way_bootstrap(fn, b, clusters, B=200, seed=9)
    np.testing.assert_array_equal(d.replicates, ra.replicates - rb.replicates)
    assert d.difference == ra.estimate - rb.estimate
    same = two_way_paired_bootstrap(fn, a, a, clusters, B=50, seed=0)
    assert same.difference == 0 and same.sd == 0


def test_bad_arguments() -> None:
    res = [match_points([[0, 0]], [0.9], [[0, 1]])]
    fn = partial(fauc, max_fp=1.0)
    with pytest.raises(ValueError, match="one array per image"):
        two_way_bootstrap(fn, res, [[1], [2]])
    with pytest.raises(ValueError, match=r"clusters\[0\]"):
        two_way_bootstrap(fn, res, [[1, 2]])
    with pytest.raises(ValueError, match="non-negative"):
        two_way_bootstrap(fn, res, [[-3]])
    with pytest.raises(ValueError, match=r"fp_clusters\[0\]"):
        two_way_bootstrap(fn, res, [[1]], fp_clusters=[[1, 2]])
    with pytest.raises(ValueError, match="-1 for no object"):
        two_way_bootstrap(fn, res, [[1]], fp_clusters=[[-2]])
    with pytest.raises(ValueError, match="no counted targets"):
        two_way_bootstrap(fn, [match_points([[0, 0]], [0.9], np.zeros((0, 2)))], [[]])
    with pytest.raises(TypeError, match="metric_fn"):
        two_way_bootstrap("fauc", res, [[1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="B must be >= 1"):
        two_way_bootstrap(fn, res, [[1]], B=0)
    with pytest.raises(ValueError, match="same images"):
        two_way_paired_bootstrap(fn, res, res + res, [[1]])
