"""Seed-level comparison of two methods: is a difference larger than the seed-to-seed spread?

A bootstrap over test images says how sure we are about *these two networks*; whether one
*method* beats another needs networks trained from several initialisation seeds. With the
FAUCs of both methods per seed, paired by seed (same data, same seed), this module gives the
mean difference, its standard deviation across seeds, a t-interval, and an exact
permutation p-value (every sign flip of the paired differences: ``2**k`` of them for ``k``
seeds that differ, so with 3 seeds the smallest possible two-sided p is 0.25: three seeds
can show consistency, never significance; beyond 16 differing seeds, 100,000 random sign
flips). No torch, no SciPy beyond ``scipy.stats.t``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from wsdet._checks import check_float

__all__ = ["SeedComparison", "compare_seeds"]


@dataclass(frozen=True)
class SeedComparison:
    """Paired comparison of two methods across seeds.

    Attributes
    ----------
    seeds : tuple of str
        The seeds both methods have, in sorted order.
    differences : tuple of float
        ``a - b`` per seed.
    mean, sd : float
        Mean difference and its sample standard deviation (``ddof=1``; nan for one seed).
    ci : (float, float)
        Two-sided t-interval of the mean difference at ``level`` (nan for one seed).
    level : float
        Its level.
    p_value : float
        Exact two-sided sign-flip permutation p-value of "no difference": the fraction of
        the ``2**k`` sign assignments whose ``|mean|`` is at least the observed one.
    min_p_value : float
        The smallest p-value these seeds can give (``2 / 2**m`` for the ``m`` seeds whose
        difference is not 0; 1 when all are 0).
    wins : int
        Seeds where ``a > b``.
    exact : bool
        Whether the p-value enumerates every sign flip (up to 16 differing seeds) or
        estimates it from 100,000 random ones (seeded).
    """

    seeds: tuple[str, ...]
    differences: tuple[float, ...]
    mean: float
    sd: float
    ci: tuple[float, float]
    level: float
    p_value: float
    min_p_value: float
    wins: int
    exact: bool = True

    def __str__(self) -> str:
        k = len(self.seeds)
        return (
            f"{self.mean:+.4f} ± {self.sd:.4f} over {k} seeds "
            f"({100 * self.level:g}% CI {self.ci[0]:+.4f} to {self.ci[1]:+.4f}), "
            f"a > b in {self.wins} of {k}, permutation p = {self.p_value:.3g} "
            f"(smallest possible {self.min_p_value:.3g})"
        )


def compare_seeds(
    a: Mapping[str, float], b: Mapping[str, float], level: float = 0.95
) -> SeedComparison:
    """Compare methods ``a`` and ``b`` from their metric per seed (paired by seed).

    Parameters
    ----------
    a, b : mapping of seed to float
        The metric of each method per training seed (e.g. ``{"0": 0.91, "1": 0.84}``);
        seeds present in only one are left out. Non-finite values are refused.
    level : float
        Level of the t-interval, in (0, 1).

    Returns
    -------
    SeedComparison

    Examples
    --------
    >>> r = compare_seeds({"0": 0.9, "1": 0.8, "2": 0.85}, {"0": 0.7, "1": 0.75, "2": 0.8})
    >>> round(r.mean, 4), r.wins, r.p_value, r.min_p_value
    (0.1, 3, 0.25, 0.25)
    """
    level = check_float("level", level, level=True)
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name} must be a mapping of seed to value; got {type(m).__name__}")
    common = {str(k): k for k in a if k in b}
    seeds = tuple(sorted(common))
    if not seeds:
        raise ValueError("a and b have no seed in common")
    d = np.array([float(a[common[s]]) - float(b[common[s]]) for s in seeds])
    if not np.isfinite(d).all():
        raise ValueError("the values of a and b must be finite")
    k = d.size
    mean = float(d.mean())
    if k > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k)
        ci = (mean - half, mean + half)
    else:
        sd, ci = math.nan, (math.nan, math.nan)
    p_value, exact = _sign_flip_p(d[d != 0])
    return SeedComparison(
        seeds=seeds,
        differences=tuple(float(x) for x in d),
        mean=mean,
        sd=sd,
        ci=ci,
        level=level,
        p_value=p_value,
        min_p_value=min(1.0, 2.0 / 2 ** int(np.count_nonzero(d))),
        wins=int(np.count_nonzero(d > 0)),
        exact=exact,
    )


#: Differing seeds up to which every sign flip is enumerated (2**16 rows).
_EXACT_UP_TO = 16
_RANDOM_FLIPS = 100_000


def _sign_flip_p(d: np.ndarray) -> tuple[float, bool]:
    """Two-sided sign-flip p-value of the nonzero differences ``d`` (seeds whose difference
    is 0 flip to themselves, so they leave every assignment's sum unchanged)."""
    if d.size == 0:
        return 1.0, True
    observed = abs(float(d.sum())) * (1 - 1e-12)  # the observed assignment counts itself
    if d.size <= _EXACT_UP_TO:
        flips = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(flips @ d) >= observed)), True
    rng = np.random.default_rng(0)
    flips = rng.choice((1.0, -1.0), size=(_RANDOM_FLIPS, d.size))
    hits = int(np.count_nonzero(np.abs(flips @ d) >= observed))
    return (1 + hits) / (1 + _RANDOM_FLIPS), False
