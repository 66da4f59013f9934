"""Bootstrap: weighted curves against explicit resampling, truncation exactness, paired test."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdet.metrics import (
    bootstrap,
    bootstrap_weights,
    fauc,
    froc_curve,
    froc_score,
    match_images,
    match_points,
    paired_bootstrap,
    sensitivity_at_fp,
    weighted_froc_curves,
)
from wsdet.metrics.bootstrap import _needed_prefixes
from wsdet.metrics.events import EventTable


def random_results(seed, n_images=8, tie_levels=3, radius=2.0, positive=False):
    rng = np.random.default_rng(seed)
    points, scores, targets = [], [], []
    for _ in range(n_images):
        k, m = rng.integers(0, 10), rng.integers(0, 4)
        points.append(rng.integers(0, 8, (k, 2)).astype(float))
        s = rng.integers(1, tie_levels + 1, k) / tie_levels if tie_levels else rng.random(k)
        scores.append(s + (0.01 if positive else 0.0))
        targets.append(rng.integers(0, 8, (m, 2)).astype(float))
    return match_images(points, scores, targets, radius=radius)


def resampled_curve(results, w, **kwargs):
    """The curve of the explicitly resampled image list (image i repeated w[i] times)."""
    images = [r for r, c in zip(results, w, strict=True) for _ in range(int(c))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return froc_curve(images, **kwargs)


def readings(curve, fps=(0.0, 0.2, 0.5, 1.0, 3.0)):
    out = [fauc(curve, f) for f in fps[1:]] + [fauc(curve, f, "step") for f in fps[1:]]
    out += [sensitivity_at_fp(curve, f) for f in fps] + [
        sensitivity_at_fp(curve, f, "step") for f in fps
    ]
    return np.array(out, dtype=float)


def test_weights_are_multinomial_and_seeded():
    w = bootstrap_weights(50, B=400, seed=7)
    assert w.shape == (400, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, bootstrap_weights(50, B=400, seed=7))
    assert not np.array_equal(w, bootstrap_weights(50, B=400, seed=8))
    # each image is drawn 1 time on average, with binomial(50, 1/50) variance
    assert abs(w.mean() - 1.0) < 1e-12
    assert w.var() == pytest.approx(50 * (1 / 50) * (49 / 50), rel=0.1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["micro", "macro"]))
def test_all_equal_weights_reproduce_the_curve(seed, sensitivity):
    res = random_results(seed)
    if not sum(r.n_targets for r in res):
        return
    full = froc_curve(res, sensitivity=sensitivity)
    stack = weighted_froc_curves(res, np.ones((3, len(res)), dtype=int), sensitivity=sensitivity)
    for name in ("tp", "fp", "fp_avg"):
        np.testing.assert_array_equal(getattr(stack, name)[1], getattr(full, name))
    np.testing.assert_allclose(stack.sensitivity[2], full.sensitivity, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fauc(stack, 1.0), fauc(full, 1.0), rtol=1e-12)
    assert froc_score(stack)[0] == pytest.approx(froc_score(full), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, "monai"]))
def test_weighted_curves_equal_explicit_resampling(seed, compat):
    res = random_results(seed, positive=compat == "monai")
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 3, (6, len(res)))
    weights[:, 0] = np.maximum(weights[:, 0], 1)
    weights[0] = rng.multinomial(len(res), np.full(len(res), 1 / len(res)))
    stack = weighted_froc_curves(res, weights, compat=compat)
    for b, w in enumerate(weights):
        explicit = resampled_curve(res, w, compat=compat)
        # the weighted curve has the thresholds of the full data: compare at the explicit
        # curve's thresholds, and compare every reading
        idx = np.searchsorted(-stack.thresholds, -explicit.thresholds)
        np.testing.assert_array_equal(stack.thresholds[idx], explicit.thresholds)
        np.testing.assert_array_equal(stack.tp[b][idx], explicit.tp * 1)
        np.testing.assert_array_equal(stack.fp[b][idx], explicit.fp)
        single = type(stack)(
            stack.thresholds, stack.fp_avg[b], stack.sensitivity[b], stack.tp[b], stack.fp[b], 1, 1
        )
        np.testing.assert_allclose(readings(single), readings(explicit), rtol=1e-12, atol=1e-12)


def test_bootstrap_replicates_equal_naive_resampling():
    res = random_results(4, n_images=12)
    metric = partial(fauc, max_fp=1.0)
    bs = bootstrap(metric, res, B=200, seed=3, ci=0.9)
    weights = bootstrap_weights(len(res), 200, 3)
    naive = np.array([metric(resampled_curve(res, w)) for w in weights])
    np.testing.assert_allclose(bs.replicates, naive, rtol=1e-12, atol=1e-12, equal_nan=True)
    finite = naive[np.isfinite(naive)]
    assert bs.estimate == metric(froc_curve(res))
    assert bs.sd == pytest.approx(np.std(finite, ddof=1), rel=1e-10)
    assert bs.ci == pytest.approx(tuple(np.percentile(finite, [5, 95])), rel=1e-10)
    assert bs.n_nan == int(np.sum(~np.isfinite(naive)))
    no_targets = int(np.sum(weights @ np.array([r.n_targets for r in res]) == 0))
    assert bs.n_without_targets == no_targets


def test_replicates_without_targets_are_counted_and_excluded():
    # only one image of five has a target: about (4/5)^5 = 33% of replicates have none
    res = [match_points([[0, 0]], [0.9], [[0, 0]])] + [
        match_points([[5, 5]], [0.5], []) for _ in range(4)
    ]
    bs = bootstrap(partial(fauc, max_fp=1.0), res, B=300, seed=0)
    assert 60 < bs.n_without_targets < 140
    assert bs.n_nan == bs.n_without_targets
    assert np.isfinite(bs.sd)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.05, 0.3, 1.0, 4.0]))
def test_prefix_truncation_is_exact(seed, max_fp):
    res = random_results(seed, n_images=10, tie_levels=0)
    for metric in (
        partial(fauc, max_fp=max_fp),
        partial(fauc, max_fp=max_fp, interpolation="step"),
        partial(sensitivity_at_fp, fp=max_fp),
    ):
        fast = bootstrap(metric, res, B=60, seed=seed, max_fp=max_fp).replicates
        full = bootstrap(metric, res, B=60, seed=seed).replicates
        np.testing.assert_allclose(fast, full, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_truncation_is_used_and_exact_on_a_larger_set():
    rng = np.random.default_rng(0)
    points = [rng.uniform(0, 30, (40, 2)) for _ in range(150)]
    scores = [rng.random(40) for _ in range(150)]
    targets = [rng.uniform(0, 30, (4, 2)) for _ in range(150)]
    res = match_images(points, scores, targets, radius=2.0)
    table = EventTable(res)
    weights = bootstrap_weights(len(res), 100, 0)
    need = _needed_prefixes(table, weights, 1.0)
    assert need.max() < 0.2 * table.n_groups  # most of the curve is never computed
    for metric in (partial(fauc, max_fp=1.0), partial(froc_score, fps=(0.25, 0.5, 1.0))):
        fast = bootstrap(metric, res, B=100, seed=0, max_fp=1.0).replicates
        full = bootstrap(metric, res, B=100, seed=0).replicates
        np.testing.assert_allclose(fast, full, rtol=1e-12, atol=1e-14)


def test_unvectorised_metric_gives_the_same():
    res = random_results(9, n_images=10)
    metric = partial(fauc, max_fp=2.0)
    a = bootstrap(metric, res, B=50, seed=1)
    b = bootstrap(lambda c: float(fauc(c, 2.0)), res, B=50, seed=1, vectorized=False)
    np.testing.assert_allclose(a.replicates, b.replicates, rtol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="one value per curve"):
        bootstrap(lambda c: 0.5, res, B=5)


def test_paired_bootstrap():
    res_a = random_results(21, n_images=15)
    # method b: the same images and detections judged with a smaller radius (fewer hits)
    res_b = random_results(21, n_images=15, radius=1.0)
    metric = partial(fauc, max_fp=1.0)
    d = paired_bootstrap(metric, res_a, res_b, B=300, seed=5, ci=0.95)
    ba = bootstrap(metric, res_a, B=300, seed=5)
    bb = bootstrap(metric, res_b, B=300, seed=5)
    np.testing.assert_allclose(d.replicates, ba.replicates - bb.replicates, equal_nan=True)
    assert d.difference == pytest.approx(ba.estimate - bb.estimate)
    assert d.estimate_a == ba.estimate and d.estimate_b == bb.estimate
    finite = d.replicates[np.isfinite(d.replicates)]
    assert d.sd == pytest.approx(np.std(finite, ddof=1))
    low, high = np.sum(finite <= 0), np.sum(finite >= 0)
    assert d.p_value == pytest.approx(min(1.0, 2 * (1 + min(low, high)) / (finite.size + 1)))
    opposite = low if d.difference > 0 else high
    assert d.frac_opposite == pytest.approx(opposite / finite.size)
    # identical methods: no difference at all
    same = paired_bootstrap(metric, res_a, res_a, B=100)
    assert same.difference == 0.0 and same.sd == 0.0 and same.p_value == 1.0
    assert "p =" in str(same)


def test_bootstrap_validation():
    res = random_results(1)
    metric = partial(fauc, max_fp=1.0)
    with pytest.raises(TypeError, match="metric_fn"):
        bootstrap("fauc", res)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ci"):
        bootstrap(metric, res, ci=95)
    with pytest.raises(ValueError, match="B"):
        bootstrap(metric, res, B=0)
    with pytest.raises(TypeError, match="B"):
        bootstrap(metric, res, B=10.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_images"):
        bootstrap(metric, res, n_images=len(res) + 1)
    with pytest.raises(TypeError, match="seed"):
        bootstrap(metric, res, seed="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(metric, res, res[:-1])
    other = list(res)
    other[0] = match_points([], [], np.zeros((res[0].n_targets + 1, 2)))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(metric, res, other)
