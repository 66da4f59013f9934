"""Cross-check with MONAI's FROC (CAMELYON16 code) under ``compat="monai"``: identical numbers."""

from __future__ import annotations

import numpy as np
import pytest

from wsdet.metrics import froc_curve, froc_score, match_boxes, match_points, sensitivity_at_fp

monai_froc = pytest.importorskip("monai.metrics.froc")

SHAPE = (20, 20, 20)
RADIUS = 3


def separated_points(rng, m, min_dist):
    pts: list[np.ndarray] = []
    while len(pts) < m:
        p = rng.integers(0, SHAPE[0], 3)
        if all(np.linalg.norm(p - q) > min_dist for q in pts):
            pts.append(p)
    return np.array(pts, dtype=np.int64).reshape(-1, 3)


def random_scores(rng, k):
    """Positive scores: float64 values (not float32-representable) mixed with tied ones."""
    continuous = rng.uniform(0.01, 1.0, k)
    tied = (rng.integers(1, 9, k) + 0.5) / 10.0
    return np.where(rng.random(k) < 0.5, continuous, tied)


def image_case(rng, *, all_found, exclude, boxes):
    m = int(rng.integers(0, 5))
    grid = np.indices(SHAPE).reshape(3, -1).T
    mask = np.zeros(SHAPE, dtype=np.int64)
    if boxes:
        # non-overlapping 5x5x5 boxes in a 4x4x4 lattice of 5-voxel cells
        cells = rng.choice(64, size=m, replace=False)
        lo = np.stack(np.unravel_index(cells, (4, 4, 4)), axis=1) * 5
        hi = lo + 5
        for j in range(m):
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo[j], hi[j], strict=True))
            mask[sl] = j + 1
        centres = lo + 2
    else:
        gt = separated_points(rng, m, 2 * RADIUS + 1)
        for j, p in enumerate(gt):
            inside = np.sum((grid - p) ** 2, axis=1) <= RADIUS**2
            mask.reshape(-1)[inside] = j + 1
        centres = gt
    k_near = int(rng.integers(0, 3 * m + 1))
    near = centres[rng.integers(0, max(m, 1), k_near)] + rng.integers(-4, 5, (k_near, 3))
    far = rng.integers(0, SHAPE[0], (int(rng.integers(0, 12)), 3))
    coords = np.clip(np.concatenate([near.reshape(-1, 3), far]), 0, SHAPE[0] - 1)
    if all_found and m:
        coords = np.concatenate([coords, centres])
    coords = coords.astype(np.int64).reshape(-1, 3)
    probs = random_scores(rng, coords.shape[0])
    excluded = sorted(
        rng.choice(np.arange(1, m + 1), size=int(exclude and m > 1), replace=False).tolist()
    )
    target = (lo, hi) if boxes else centres
    return coords, probs, mask, excluded, target


def run_both(seed, *, all_found=False, exclude=False, boxes=False, n_images=6):
    rng = np.random.default_rng(seed)
    fp_all, tp_all, n_targets = [], [], 0
    ours = []
    for _ in range(n_images):
        coords, probs, mask, excluded, target = image_case(
            rng, all_found=all_found, exclude=exclude, boxes=boxes
        )
        fp, tp, n = monai_froc.compute_fp_tp_probs_nd(
            probs, coords, mask, labels_to_exclude=excluded
        )
        fp_all.append(fp)
        tp_all.append(tp)
        n_targets += n
        m = int(mask.max())
        ignore = np.isin(np.arange(1, m + 1), excluded)
        if boxes:
            lo, hi = target
            ours.append(match_boxes(coords, probs, lo, hi, ignore_gt=ignore, compat="monai"))
        else:
            ours.append(
                match_points(coords, probs, target, RADIUS, ignore_gt=ignore, compat="monai")
            )
    fp = np.concatenate(fp_all)
    tp = np.concatenate(tp_all).astype(np.float32)
    return fp, tp, n_targets, ours


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("all_found", "exclude", "boxes"),
    [
        (False, False, False),
        (True, False, False),
        (False, True, False),
        (True, False, True),
        (False, True, True),
    ],
)
def test_identical_to_monai(seed, all_found, exclude, boxes):
    fp, tp, n_targets, ours = run_both(seed, all_found=all_found, exclude=exclude, boxes=boxes)
    if n_targets == 0:
        pytest.skip("no targets drawn")
    fps, sens = monai_froc.compute_froc_curve_data(fp, tp, n_targets, len(ours))
    curve = froc_curve(ours, compat="monai")
    assert curve.n_targets == n_targets
    # MONAI lists the curve from the lowest kept threshold up, ending at the origin
    np.testing.assert_array_equal(curve.fp_avg, fps[::-1])
    np.testing.assert_array_equal(curve.sensitivity, sens[::-1])
    assert froc_score(curve) == monai_froc.compute_froc_score(fps, sens)
    budgets = (0.1, 0.3, 1.0, 2.5)
    assert froc_score(curve, budgets) == monai_froc.compute_froc_score(fps, sens, budgets)
    for f in budgets:
        assert sensitivity_at_fp(curve, f) == np.interp(f, fps[::-1], sens[::-1])
