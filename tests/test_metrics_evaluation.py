"""Evaluation: one matching and one event table per evaluation, streaming updates, specs,
report.matches for paired tests, empty inputs."""

from __future__ import annotations

import subprocess
import sys
import warnings
from functools import partial

import numpy as np
import pytest

import wsdet.metrics.evaluation as evaluation_module
from wsdet.metrics import (
    Evaluation,
    FROCSpec,
    MatchSpec,
    bootstrap,
    bootstrap_weights,
    evaluate,
    fauc,
    froc_curve,
    froc_score,
    match_images,
    paired_bootstrap,
)
from wsdet.metrics.events import EventTable


def make_data(seed, n_images=12, ndim=2, counts=True):
    """Per image (points, scores, count) and target points; some images without targets."""
    rng = np.random.default_rng(seed)
    dets, targets = [], []
    for n in range(n_images):
        m = int(rng.integers(0, 4)) if n % 5 else 0
        gt = rng.uniform(0, 40, (m, ndim))
        near = gt[: max(m - 1, 0)] + rng.normal(0, 2, (max(m - 1, 0), ndim))
        pts = np.concatenate([near, rng.uniform(0, 40, (int(rng.integers(0, 6)), ndim))])
        sc = rng.random(pts.shape[0])
        sc[: near.shape[0]] += 0.5
        count = m + rng.normal(0, 0.6) if counts else float("nan")
        dets.append((pts, sc, count))
        targets.append(gt)
    return dets, targets


def resampled(results, w):
    """Image i repeated w[i] times (the explicit bootstrap sample)."""
    return [r for r, c in zip(results, w, strict=True) for _ in range(int(c))]


def assert_same_matches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("det_label", "det_to_gt", "gt_hit", "scores", "gt_score", "gt_ignored"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        assert x.n_targets == y.n_targets


def test_report_keeps_the_matches_of_match_images():
    dets, targets = make_data(0)
    rep = evaluate(dets, targets, radius=4.0, n_bootstrap=20)
    expected = match_images([d[0] for d in dets], [d[1] for d in dets], targets, radius=4.0)
    assert_same_matches(rep.matches, expected)
    # the operating point's matches: the top round-half-up(count) detections per image
    assert rep.op_matches is not None
    assert [r.det_label.size for r in rep.op_matches] == [
        min(len(d[1]), max(0, int(np.floor(d[2] + 0.5)))) for d in dets
    ]
    assert sum(r.n_tp for r in rep.op_matches) == rep.op_tp
    assert evaluate(make_data(0, counts=False)[0], targets, n_bootstrap=0).op_matches is None


def test_evaluate_matches_once_and_builds_one_table_per_set_of_matches(monkeypatch):
    calls = {"match": 0, "table": 0}
    real_match, real_table = evaluation_module.match_images, evaluation_module.EventTable

    def counting_match(*args, **kwargs):
        calls["match"] += 1
        return real_match(*args, **kwargs)

    def counting_table(*args, **kwargs):
        calls["table"] += 1
        return real_table(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "match_images", counting_match)
    monkeypatch.setattr(evaluation_module, "EventTable", counting_table)
    dets, targets = make_data(1, n_images=10)
    evaluate(dets, targets, n_bootstrap=30)
    # all candidates, and the top-n of the operating point (a different set of detections)
    assert calls == {"match": 2, "table": 2}
    calls.update(match=0, table=0)
    evaluate(make_data(1, n_images=10, counts=False)[0], targets, n_bootstrap=30)
    assert calls == {"match": 1, "table": 1}


def test_every_statistic_uses_the_same_replicate_images():
    dets, targets = make_data(2, n_images=9)
    # a Generator seed is drawn from once: the same weights serve every statistic
    ev = Evaluation(froc_spec=FROCSpec(max_fp=1.0), n_bootstrap=40, seed=np.random.default_rng(7))
    ev.update(dets, targets)
    weights = bootstrap_weights(9, 40, np.random.default_rng(7))
    np.testing.assert_array_equal(ev.weights, weights)
    res = ev.matches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        naive_fauc = [fauc(froc_curve(resampled(res, w)), 1.0) for w in weights]
        naive_score = [froc_score(froc_curve(resampled(res, w))) for w in weights]
        ops = ev.op_matches
        naive_sens = [froc_curve(resampled(ops, w)).sensitivity[-1] for w in weights]
    np.testing.assert_allclose(ev.fauc.replicates, naive_fauc, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ev.froc_score.replicates, naive_score, rtol=1e-12, equal_nan=True)
    op = ev.operating_point
    assert op is not None
    np.testing.assert_allclose(op.sensitivity.replicates, naive_sens, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(op.fp_avg.replicates, (weights @ [r.n_fp for r in ops]) / 9)


def test_statistics_are_cached_until_the_next_update():
    dets, targets = make_data(3)
    ev = Evaluation(n_bootstrap=10).update(dets[:6], targets[:6])
    table, result = ev.table, ev.fauc
    assert ev.table is table and ev.fauc is result and ev.n_images == 6
    ev.update(dets[6:], targets[6:])
    assert ev.table is not table and ev.n_images == 12 and ev.table.n_images == 12


@pytest.mark.parametrize("counts", [True, False])
def test_three_batches_equal_one_call(counts):
    dets, targets = make_data(4, n_images=14, ndim=3, counts=counts)
    rng = np.random.default_rng(0)
    spacing = rng.uniform(0.5, 2.0, (14, 3))
    ignore = [rng.random(len(t)) < 0.3 for t in targets]
    spec = MatchSpec(radius_mm=3.0, spacing=spacing)
    froc = FROCSpec(max_fp=2.0, sensitivity="macro")
    one = Evaluation(spec, froc, n_bootstrap=50, seed=3).update(dets, targets, ignore=ignore)
    batched = Evaluation(spec, froc, n_bootstrap=50, seed=3)
    for a, b in [(0, 5), (5, 6), (6, 14)]:  # the spec's spacing rows are read in order
        batched.update(dets[a:b], targets[a:b], ignore=ignore[a:b])
    r1, r3 = one.report(), batched.report()
    assert r1.to_dict(include_curve=True) == r3.to_dict(include_curve=True)
    np.testing.assert_array_equal(r1.fauc.replicates, r3.fauc.replicates)
    assert_same_matches(r1.matches, r3.matches)
    # and both equal evaluate() with the loose keywords
    loose = evaluate(
        dets,
        targets,
        radius_mm=3.0,
        spacing=spacing,
        ignore=ignore,
        max_fp=2.0,
        sensitivity="macro",
        n_bootstrap=50,
        seed=3,
    )
    assert loose.to_dict(include_curve=True) == r1.to_dict(include_curve=True)
    assert str(loose) == str(r1)


def test_update_validates_its_batch():
    dets, targets = make_data(5, n_images=4)
    ev = Evaluation(n_bootstrap=0)
    with pytest.raises(ValueError, match="one entry per image"):
        ev.update(dets, targets[:3])
    mixed = [dets[0], (dets[1][0], dets[1][1])]
    with pytest.raises(ValueError, match=r"detections\[1\] has no predicted count"):
        ev.update(mixed, targets[:2])
    assert ev.n_images == 0  # a refused batch adds nothing
    ev.update(dets[:2], targets[:2]).update([(dets[2][0], dets[2][1])], targets[2:3])
    with pytest.raises(ValueError, match=r"detections\[2\] has no predicted count"):
        ev.report()
    per_image = Evaluation(MatchSpec(spacing=np.ones((2, 2))), n_bootstrap=0)
    per_image.update(dets[:2], targets[:2])
    with pytest.raises(ValueError, match="one row per image for 2 images"):
        per_image.update(dets[2:3], targets[2:3])


def test_paired_bootstrap_takes_two_reports():
    dets, targets = make_data(6, n_images=15)
    rep_a = evaluate(dets, targets, radius=6.0, max_fp=1.0, n_bootstrap=0)
    rep_b = evaluate(dets, targets, radius=2.0, max_fp=1.0, n_bootstrap=0)
    by_reports = paired_bootstrap(rep_a, rep_b, B=200, seed=5, ci=0.95)
    metric = partial(fauc, max_fp=1.0)
    by_matches = paired_bootstrap(
        metric, rep_a.matches, rep_b.matches, B=200, seed=5, ci=0.95, max_fp=1.0
    )
    np.testing.assert_array_equal(by_reports.replicates, by_matches.replicates)
    assert by_reports.difference == by_matches.difference and by_reports.ci == by_matches.ci
    assert by_reports.p_value == by_matches.p_value
    # the difference is the one of two independent bootstraps on the same seed
    ba = bootstrap(metric, rep_a.matches, B=200, seed=5)
    bb = bootstrap(metric, rep_b.matches, B=200, seed=5)
    np.testing.assert_allclose(by_reports.replicates, ba.replicates - bb.replicates)
    # another metric, and Evaluation objects work too
    ev_a = Evaluation(MatchSpec(radius=6.0), FROCSpec(max_fp=1.0)).update(dets, targets)
    ev_b = Evaluation(MatchSpec(radius=2.0), FROCSpec(max_fp=1.0)).update(dets, targets)
    score = paired_bootstrap(ev_a, ev_b, froc_score, B=50, seed=1)
    expected = paired_bootstrap(froc_score, rep_a.matches, rep_b.matches, B=50, seed=1)
    np.testing.assert_array_equal(score.replicates, expected.replicates)
    assert score.estimate_a == froc_score(froc_curve(rep_a.matches))


def test_paired_bootstrap_refuses_incompatible_reports():
    dets, targets = make_data(7, n_images=6)
    rep = evaluate(dets, targets, max_fp=1.0, n_bootstrap=0)
    with pytest.raises(ValueError, match="FAUC ranges"):
        paired_bootstrap(rep, evaluate(dets, targets, max_fp=2.0, n_bootstrap=0))
    with pytest.raises(ValueError, match="sensitivity"):
        paired_bootstrap(
            rep, evaluate(dets, targets, max_fp=1.0, sensitivity="macro", n_bootstrap=0)
        )
    with pytest.raises(TypeError, match="report_b"):
        paired_bootstrap(rep, rep.matches)
    with pytest.raises(TypeError, match="come from the reports"):
        paired_bootstrap(rep, rep, compat="monai")
    with pytest.raises(TypeError, match="results_b"):
        paired_bootstrap(partial(fauc, max_fp=1.0), rep.matches)


def test_specs_validate_and_group_the_keywords():
    with pytest.raises(ValueError, match="radius must be"):
        MatchSpec(radius=-1.0)
    with pytest.raises(ValueError, match="match must be one of"):
        MatchSpec(match="regions")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inclusive must be a bool"):
        MatchSpec(inclusive="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        MatchSpec(radius=3.0, radius_mm=4.0, spacing=1.0)
    with pytest.raises(ValueError, match="radius_mm needs spacing"):
        MatchSpec(radius_mm=4.0)
    with pytest.raises(ValueError, match="max_fp must be"):
        FROCSpec(max_fp=0.0)
    with pytest.raises(ValueError, match="fps must contain"):
        FROCSpec(fps=())
    with pytest.raises(ValueError, match="compat"):
        FROCSpec(compat="picai")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="match_spec must be a MatchSpec"):
        Evaluation(FROCSpec())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ci must be a finite number in \(0, 1\)"):
        Evaluation(ci=95)
    spec = MatchSpec(spacing=np.array([1.0, 2.0]))
    assert spec.spacing == (1.0, 2.0) and hash(spec) == hash(MatchSpec(spacing=[1.0, 2.0]))
    assert FROCSpec(fps=[1, 2]).fps == (1.0, 2.0)
    dets, targets = make_data(8)
    by_specs = evaluate(
        dets,
        targets,
        match_spec=MatchSpec(radius=3.0, duplicates="ignore"),
        froc_spec=FROCSpec(max_fp=1.0, interpolation="step", fps=(0.5, 1.0)),
        n_bootstrap=20,
    )
    by_keywords = evaluate(
        dets,
        targets,
        radius=3.0,
        duplicates="ignore",
        max_fp=1.0,
        interpolation="step",
        fps=(0.5, 1.0),
        n_bootstrap=20,
    )
    assert by_specs.to_dict() == by_keywords.to_dict()


def test_empty_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="results is empty"):
        froc_curve([])
    with pytest.raises(ValueError, match="results is empty"):
        bootstrap(partial(fauc, max_fp=1.0), [])
    with pytest.raises(ValueError, match="results is empty"):
        EventTable([])
    # images left out of results (neither targets nor detections): the origin, no targets
    with pytest.warns(RuntimeWarning, match="no targets"):
        curve = froc_curve([], n_images=3)
    assert curve.fp_avg.tolist() == [0.0] and curve.n_images == 3
    assert match_images([], [], []) == []
    with pytest.raises(ValueError, match="detections is empty"):
        evaluate([], [])
    ev = Evaluation()
    with pytest.raises(ValueError, match="holds no images yet"):
        ev.fauc  # noqa: B018
    with pytest.raises(ValueError, match="holds no images yet"):
        ev.report()


def test_importing_the_metrics_leaves_torch_out():
    code = "import sys, wsdet.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_spec_and_a_keyword_it_replaces_are_refused() -> None:
    """A loose keyword beside the spec that replaces it would be silently ignored."""
    dets = [([[1, 1]], [0.9])]
    gts = [[[1, 1]]]
    with pytest.raises(TypeError, match="froc_spec replaces max_fp"):
        evaluate(dets, gts, max_fp=1.0, froc_spec=FROCSpec(), n_bootstrap=0)
    with pytest.raises(TypeError, match="match_spec replaces radius, duplicates"):
        evaluate(dets, gts, radius=3.0, duplicates="ignore", match_spec=MatchSpec(), n_bootstrap=0)
    # keywords left at their defaults (6 == 6.0) are fine; the spec's values rule
    rep = evaluate(dets, gts, radius=6, froc_spec=FROCSpec(max_fp=2.0), n_bootstrap=0)
    assert rep.max_fp == 2.0
