"""The claims framework: verdicts from criteria and intervals, identity/finding counts,
intervals over seeds, tables/claims.csv and `tangentlab claims` (STUDIES.md)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from tangentlab.studies.framework.claims import (
    Claim,
    bootstrap_interval,
    claim_counts,
    claims_summary,
    decide,
    mean_interval,
)


@pytest.mark.parametrize("op,thr,value,low,high,want", [
    (">", 0.5, 0.7, math.nan, math.nan, "yes"),
    (">", 0.5, 0.3, math.nan, math.nan, "NO"),
    (">", 0.5, 0.7, 0.55, 0.9, "yes"),
    (">", 0.5, 0.7, 0.45, 0.9, "inconclusive"),
    (">", 0.5, 0.3, 0.1, 0.45, "NO"),
    ("<=", 0.1, 0.05, 0.0, 0.1, "yes"),
    ("<", 0.1, 0.05, 0.0, 0.1, "inconclusive"),
    ("in", (-0.75, -0.25), -0.5, -0.6, -0.4, "yes"),
    ("in", (-0.75, -0.25), -0.3, -0.4, -0.2, "inconclusive"),
    ("in", (-0.75, -0.25), -0.1, -0.2, -0.05, "NO"),
    ("in", (-0.75, -0.25), -0.5, math.nan, math.nan, "yes"),
    (">", 0.5, math.nan, math.nan, math.nan, "n/a"),
])
def test_decide(op, thr, value, low, high, want):
    assert decide(value, op, thr, low, high) == want


def test_decide_rejects_bad_operator():
    with pytest.raises(ValueError, match="op"):
        decide(1.0, "=>", 0.0)
    with pytest.raises(ValueError, match="lo, hi"):
        decide(1.0, "in", 0.0)


def test_claim_kinds_verdicts_and_counts():
    cs = [Claim.compare("a", "p", "x > 1", "2", 2.0, ">", 1.0),
          Claim.compare("b", "p", "x > 1", "1.5 [0.8, 2]", 1.5, ">", 1.0, low=0.8, high=2.0),
          Claim.compare("c", "p", "x > 1", "0.5", 0.5, ">", 1.0),
          Claim("d", "p", "not measured", None),
          Claim.identity("e", "Thm 1", "err 1e-14", 1e-14, 1e-10),
          Claim.identity("f", "Thm 2", "err 1e-3", 1e-3, 1e-10),
          Claim("g", "p", "legacy", True, "deterministic")]
    assert [c.verdict for c in cs] == ["yes", "inconclusive", "NO", "n/a", "yes", "NO", "yes"]
    assert [c.held for c in cs] == [True, None, False, None, True, False, True]
    assert cs[-1].kind == "identity" and cs[0].kind == "finding"
    assert cs[1].interval == "[0.8, 2]" and cs[0].interval == ""
    counts = claim_counts(cs)
    assert counts["finding"] == {"yes": 1, "NO": 1, "inconclusive": 1, "n/a": 1, "total": 4}
    assert counts["identity"]["yes"] == 2 and counts["identity"]["total"] == 3
    assert claims_summary(cs) == ("findings 1/4 held, 1 inconclusive, 1 did not, 1 n/a; identities 2/3 held, "
                                  "1 did not")
    with pytest.raises(ValueError, match="kind"):
        Claim("x", "p", "m", True, "theorem")
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "p", "m", verdict="maybe")


def test_mean_interval_matches_student_t():
    from scipy import stats

    x = np.array([1.0, 2.0, 4.0, 3.0, 2.5])
    m, lo, hi = mean_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert m == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert math.isnan(mean_interval([1.0])[1]) and math.isnan(mean_interval([])[0])


def test_bootstrap_interval_covers_and_is_reproducible():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.1, 8), rng.normal(2.0, 0.1, 8)

    def diff(u: np.ndarray, v: np.ndarray) -> float:
        return float(v.mean() - u.mean())

    est, lo, hi = bootstrap_interval(diff, a, b, seed=3)
    assert lo < est < hi and lo > 0.8 and hi < 1.2
    assert bootstrap_interval(diff, a, b, seed=3) == (est, lo, hi)
    # one realization per group: no interval
    assert math.isnan(bootstrap_interval(diff, a[:1], b[:1])[1])


def test_claims_csv_and_markdown(tmp_path, capsys):
    from tangentlab.cli import main
    from tangentlab.studies.framework.report import write_claims_table
    from tangentlab.studies.framework.store import RunStore

    store = RunStore.create(tmp_path / "run", {"study": "toy", "preset": None, "config": {}, "commit": "abc123"})
    store.write_state(elapsed_s=125.0, cpu_s=61.0, status="finished")
    cs = [Claim.compare("t1", "the paper, Fig. 1", "x > 1, with a comma", "2.0", 2.0, ">", 1.0, part="a"),
          Claim.identity("t2", "Thm 1 | eq. 3", "err 0", 0.0, 1e-12)]
    write_claims_table(store, cs)
    rows = list(csv.DictReader(open(tmp_path / "run" / "tables" / "claims.csv", newline="")))
    assert [r["topic"] for r in rows] == ["t1", "t2"] and rows[0]["criterion"] == "x > 1, with a comma"
    assert rows[0]["study"] == "toy" and rows[0]["part"] == "a" and rows[1]["kind"] == "identity"
    md, agg = tmp_path / "STUDIES.md", tmp_path / "all.csv"
    assert main(["claims", str(tmp_path / "run"), "--markdown", str(md), "--csv", str(agg)]) == 0
    out = capsys.readouterr().out
    assert "findings 1/1 held; identities 1/1 held" in out and "abc123" in out
    page = md.read_text()
    assert "| toy | default | 1/1 | 0 | 0 | 1/1 | 2m05s | 1m01s | `abc123` |" in page
    assert "| yes | identity | t2 | error ≤ 1e-12 | err 0 |  |" in page
    assert [r["commit"] for r in csv.DictReader(open(agg, newline=""))] == ["abc123", "abc123"]
    # a run without claims.csv: one line naming the fix
    RunStore.create(tmp_path / "bare", {"study": "toy", "config": {}})
    assert main(["claims", str(tmp_path / "bare")]) == 2
    assert "tangentlab report" in capsys.readouterr().err


def test_interval_text_all_hold_every_seed():
    from tangentlab.studies.framework.claims import all_hold, every_seed, interval_text

    assert interval_text(0.5, 0.25, 0.75) == "0.5 [0.25, 0.75]" and interval_text(0.5) == "0.5"
    assert interval_text(1 / 3, 0.0, 1.0, ".2f") == "0.33 [0.00, 1.00]" and interval_text(math.nan) == "nan"
    assert all_hold("yes", "yes") == "yes" and all_hold("yes", "inconclusive") == "inconclusive"
    assert all_hold("n/a", "NO") == "NO" and all_hold("yes", "n/a", "inconclusive") == "n/a"
    assert [every_seed(f) for f in ([1, 1], [0, 0], [1, 0], [])] == ["yes", "NO", "inconclusive", "n/a"]
