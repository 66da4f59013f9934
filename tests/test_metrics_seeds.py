"""Seed-level comparison: against hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from wsdet.metrics.seeds import compare_seeds


def test_hand_computed_example() -> None:
    # differences 0.2, 0.05, 0.05: mean 0.1, sd sqrt(((0.1)^2 + 2 (0.05)^2) / 2)
    r = compare_seeds({"0": 0.9, "1": 0.8, "2": 0.85}, {"0": 0.7, "1": 0.75, "2": 0.8})
    assert r.seeds == ("0", "1", "2")
    assert r.mean == pytest.approx(0.1)
    assert r.sd == pytest.approx(math.sqrt((0.01 + 2 * 0.0025) / 2))
    half = stats.t.ppf(0.975, 2) * r.sd / math.sqrt(3)
    assert r.ci == pytest.approx((0.1 - half, 0.1 + half))
    # all differences positive: only the identity and the all-flipped assignment reach
    # |mean| = 0.1, so p = 2 / 8
    assert r.p_value == 0.25 == r.min_p_value
    assert r.wins == 3


def test_mixed_signs_p_value_by_enumeration() -> None:
    # differences +0.3, -0.1, +0.1, +0.2: |mean| = 0.125; enumerate by hand
    a = {"0": 0.3, "1": 0.0, "2": 0.1, "3": 0.2}
    b = {"0": 0.0, "1": 0.1, "2": 0.0, "3": 0.0}
    r = compare_seeds(a, b)
    d = [0.3, -0.1, 0.1, 0.2]
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) / 4 >= 0.125 - 1e-12
        for signs in itertools.product((1, -1), repeat=4)
    )
    assert r.p_value == hits / 16
    assert r.wins == 3 and r.min_p_value == 2 / 16


# Differences on a dyadic grid: every sign-flip sum is exact, so ties are ties for both
# implementations (they treat near-ties within rounding differently: e.g. [0.75, 4e-15,
# -0.5] is a tie of 0.25 with 0.25 - 8e-15 here, p = 1, but not for scipy, p = 0.75).
_DYADIC = st.integers(-64, 64).map(lambda k: k / 64)


@settings(max_examples=60, deadline=None)
@given(st.lists(_DYADIC, min_size=2, max_size=7), st.integers(0, 2**31 - 1))
def test_matches_scipy_permutation_test(diffs: list[float], seed: int) -> None:
    a = {str(i): x for i, x in enumerate(diffs)}
    b = {str(i): 0.0 for i in range(len(diffs))}
    r = compare_seeds(a, b)
    ref = stats.permutation_test(
        (np.array(diffs),),
        np.mean,
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=np.inf,
    )
    if not any(diffs):  # no difference at all: every assignment ties
        assert r.p_value == 1.0
    else:
        assert r.p_value == pytest.approx(min(1.0, ref.pvalue), abs=1e-9)


def test_only_common_seeds_count_and_bad_input() -> None:
    r = compare_seeds({"0": 1.0, "1": 0.5, "7": 0.0}, {"0": 0.5, "1": 0.5})
    assert r.seeds == ("0", "1") and r.differences == (0.5, 0.0)
    one = compare_seeds({"0": 1.0}, {"0": 0.0})
    assert math.isnan(one.sd) and one.p_value == 1.0 and one.min_p_value == 1.0
    with pytest.raises(ValueError, match="no seed in common"):
        compare_seeds({"0": 1.0}, {"1": 1.0})
    with pytest.raises(ValueError, match="finite"):
        compare_seeds({"0": math.nan}, {"0": 1.0})
    with pytest.raises(ValueError, match="level"):
        compare_seeds({"0": 1.0}, {"0": 1.0}, level=1.0)
    with pytest.raises(TypeError, match="mapping"):
        compare_seeds([1.0], {"0": 1.0})  # type: ignore[arg-type]


def test_zero_differences_many_seeds_and_int_keys() -> None:
    # a seed where both methods tie flips to itself: the floor is that of the other two
    r = compare_seeds({0: 0.9, 1: 0.8, 2: 0.5}, {0: 0.7, 1: 0.6, 2: 0.5})
    assert r.seeds == ("0", "1", "2")  # keys as strings
    assert r.min_p_value == 0.5 and r.p_value == 0.5 and r.exact
    # 25 seeds, all a > b: an exact test would enumerate 2**25 flips; the random one
    # gives (1 + hits) / (1 + 100000) with hits = 0 here (only 2 of 2**25 flips reach it)
    many = compare_seeds({i: 1.0 + i for i in range(25)}, {i: 0.0 for i in range(25)})
    assert not many.exact and many.p_value == pytest.approx(1 / 100_001)
    assert many.wins == 25 and many.min_p_value == pytest.approx(2 / 2**25)


def test_rounding_level_differences_tie() -> None:
    # 0.75 + 4e-15 - 0.5 and 0.75 - 4e-15 - 0.5 differ by rounding only: both count as
    # "as extreme" as the observed sum, so every one of the 8 assignments does (p = 1)
    r = compare_seeds({"0": 0.75, "1": 4e-15, "2": -0.5}, {"0": 0.0, "1": 0.0, "2": 0.0})
    assert r.p_value == 1.0
