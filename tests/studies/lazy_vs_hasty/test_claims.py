"""Claims logic of ``lazy-vs-hasty``: group gaps at equal training progress."""

from __future__ import annotations

import pytest

from tangentlab.studies.lazy_vs_hasty.claims import gap_comparison


def test_gap_comparison_at_equal_progress():
    nl = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.5, "e": 0.2, "h": 1.2},
          {"train/loss": 0.2, "e": 0.05, "h": 0.6}]
    lin = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.45, "e": 0.4, "h": 0.5},
           {"train/loss": 0.25, "e": 0.2, "h": 0.3}]
    rows = gap_comparison(nl, lin, "train/loss", "e", "h", n=3)
    assert rows[0]["threshold"] > rows[-1]["threshold"]
    assert all(r["gap_nl"] > r["gap_lin"] for r in rows)
    assert rows[-1]["gap_nl"] == pytest.approx(0.55) and rows[-1]["gap_lin"] == pytest.approx(0.1)


