"""Shared plumbing of the alignment study's appendix parts (items 8-11: :mod:`.appendix_hierarchy`,
:mod:`.spectral_bias`, :mod:`.norm_capacity`, :mod:`.channel_sweep`): numeric table rows, the seeds
already stored (resume), and per-seed statistics turned into claims."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..framework.claims import mean_interval
from ..framework.report import Claim
from ..framework.store import RunStore, to_number


def numeric_rows(store: RunStore, table: str, text: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of ``table`` with every column but those of ``text`` as floats."""
    return [{k: (v if k in text else to_number(v)) for k, v in r.items()} for r in store.read(table)]


def done_seeds(store: RunStore, table: str) -> set[int]:
    """The seeds of ``table`` (its rows carry a ``seed`` column): a seed is written in one append,
    so a stored seed is complete."""
    return {int(to_number(r["seed"])) for r in store.read(table)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (average ranks for ties; NaN when either side is constant)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def seed_claim(topic: str, paper: str, criterion: str, what: str, values: Sequence[float], op: str,
               threshold: float, part: str, fmt: str = "{:.3g}") -> Claim:
    """A finding decided on the Student-t interval of the mean of per-seed ``values``
    (the point value alone with one seed)."""
    m, lo, hi = mean_interval(values)
    per = ", ".join(fmt.format(v) for v in values)
    itv = f" (95% t-interval [{fmt.format(lo)}, {fmt.format(hi)}])" if math.isfinite(lo) else ""
    measured = f"{what} = {fmt.format(m)} mean over {len(values)} seed(s){itv}; per seed: {per}"
    return Claim.compare(topic, paper, criterion, measured, m, op, threshold, low=lo, high=hi, part=part)


def missing(topic: str, paper: str, part: str) -> Claim:
    """The claim of a part the run holds no data of (verdict n/a)."""
    return Claim(topic, paper, "not measured: no rows stored", None, part=part)
