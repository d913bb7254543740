"""Claims logic of ``lazy-vs-hasty``: group gaps at equal training progress."""

from __future__ import annotations

import pytest

from tangentlab.studies.lazy_vs_hasty.claims import gap_comparison, quadratic_claims


def test_gap_comparison_at_equal_progress():
    nl = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.5, "e": 0.2, "h": 1.2},
          {"train/loss": 0.2, "e": 0.05, "h": 0.6}]
    lin = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.45, "e": 0.4, "h": 0.5},
           {"train/loss": 0.25, "e": 0.2, "h": 0.3}]
    rows = gap_comparison(nl, lin, "train/loss", "e", "h", n=3)
    assert rows[0]["threshold"] > rows[-1]["threshold"]
    assert all(r["gap_nl"] > r["gap_lin"] for r in rows)
    assert rows[-1]["gap_nl"] == pytest.approx(0.55) and rows[-1]["gap_lin"] == pytest.approx(0.1)




def _checks(gaps_by_seed, source="closed_form", order=("43210", "01234")):
    rows = [{"example": "ex1", "seed": "0", "source": source, "metric": f"order_{r}", "threshold": "", "value": o}
            for r, o in zip(("nonlinear", "linear"), order)]
    for seed, gaps in gaps_by_seed.items():
        rows += [{"example": "ex2", "seed": str(seed), "source": source, "metric": "noisy_gap", "threshold": str(th),
                  "value": str(g)} for th, g in zip((0.5, 0.3, 0.2), gaps)]
    return rows


def test_quadratic_claims_kinds_intervals_and_verdicts():
    gaps = {0: (0.2, 0.3, 0.1), 1: (0.25, 0.35, 0.2), 2: (0.3, 0.2, 0.15)}
    ok = {c.topic: c for c in quadratic_claims(_checks(gaps))}
    order, ex2 = ok["quadratic model: example 1 learning order"], ok["quadratic model: example 2 (label noise)"]
    assert order.kind == "identity" and order.verdict == "yes"
    # per seed the minimum over the thresholds (0.1, 0.2, 0.15), Student t over the 3 seeds
    assert ex2.kind == "finding" and ex2.value == pytest.approx(0.15) and ex2.low < 0.15 < ex2.high
    assert ex2.verdict == "yes"
    bad = {c.topic: c for c in quadratic_claims(_checks({0: (0.2, -0.1, 0.1), 1: (0.3, 0.3, 0.3)},
                                                        order=("43201", "01234")))}
    assert bad["quadratic model: example 1 learning order"].verdict == "NO"
    assert bad["quadratic model: example 2 (label noise)"].verdict == "inconclusive"
    two = {c.topic: c for c in quadratic_claims(_checks({0: (-0.2, -0.1, -0.3)}, source="two_layer"))}
    assert two["2-layer linear network: example 1 learning order (Fig. C.9)"].kind == "finding"
    assert two["2-layer linear network: example 2 (label noise)"].verdict == "NO"
