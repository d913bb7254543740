"""The statistics behind the alignment claims (:mod:`tangentlab.studies.alignment.criteria`)
against direct numpy computations (the tiny preset's claims: test_alignment.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tangentlab.studies.alignment.criteria import drop_step, scaled_k, spectrum_distance, top_share
from tangentlab.studies.framework.claims import all_hold, seed_claim


def _ks_oracle(a, b):
    """Direct computation: sort, normalize, pad, cumulate, largest absolute gap, one k at a time."""
    a = sorted((max(float(v), 0.0) for v in a), reverse=True)
    b = sorted((max(float(v), 0.0) for v in b), reverse=True)
    n = max(len(a), len(b))
    a += [0.0] * (n - len(a))
    b += [0.0] * (n - len(b))
    sa, sb = sum(a), sum(b)
    best = 0.0
    for k in range(1, n + 1):
        best = max(best, abs(sum(a[:k]) / sa - sum(b[:k]) / sb))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectrum_distance_matches_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((30, 12)), rng.standard_normal((30, 9))
    a = np.linalg.eigvalsh(X @ X.T)  # 30 eigenvalues, 18 of them ~0 (some slightly negative)
    b = np.linalg.eigvalsh(Y @ Y.T)[5:]  # a shorter spectrum: padded with zeros
    assert spectrum_distance(a, b) == pytest.approx(_ks_oracle(a, b), abs=1e-12)
    assert spectrum_distance(a, 7.0 * a) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert spectrum_distance(a[::-1], a) == pytest.approx(0.0, abs=1e-12)  # order-free
    # the extreme: all mass on one eigenvalue vs spread evenly over n
    assert spectrum_distance([1, 0, 0, 0], [1, 1, 1, 1]) == pytest.approx(0.75)


def test_top_share_and_scaled_k():
    rng = np.random.default_rng(3)
    lam = rng.exponential(size=200)
    for k in (1, 8, 40, 200):
        assert top_share(lam, k) == pytest.approx(np.sort(lam)[::-1][:k].sum() / lam.sum())
    assert top_share([-1.0, 3.0, 1.0], 1) == pytest.approx(0.75)  # negative eigenvalues clipped
    # the paper's 40 of 1000 at our N·C
    assert scaled_k(1000) == 40 and scaled_k(120) == 5 and scaled_k(500) == 20 and scaled_k(10) == 1


def test_drop_step():
    s = np.array([0, 5, 10, 20, 40])
    assert drop_step(s, np.array([10.0, 9.0, 6.0, 2.0, 3.0])) == 10  # half of the drop 10 → 2 is 6
    assert drop_step(s, np.array([10.0, 4.0, 6.0, 2.0, 3.0])) == 5
    assert drop_step(s, np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == math.inf
    assert math.isnan(drop_step(s[:0], np.array([])))


def test_all_verdicts_and_seed_claim():
    assert all_hold("yes", "yes") == "yes"
    assert all_hold("yes", "inconclusive") == "inconclusive"
    assert all_hold("inconclusive", "NO") == "NO"
    assert all_hold("yes", "n/a") == "n/a"
    v = [1.0, 1.2, 1.4]
    c = seed_claim("t", "p", "crit", "m", v, ">", 0.5, part="x")
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert (c.value, c.low, c.high) == pytest.approx((1.2, 1.2 - half, 1.2 + half))
    assert c.verdict == "yes" and c.kind == "finding" and c.criterion == "crit" and "over 3 seeds" in c.measured
    assert seed_claim("t", "p", "c", "m", v, ">", 1.1).verdict == "inconclusive"
    assert seed_claim("t", "p", "c", "m", v, ">", 2.0).verdict == "NO"
    one = seed_claim("t", "p", "c", "m", [1.3], ">", 1.1)
    assert one.verdict == "yes" and math.isnan(one.low)
