"""Claims of a paper next to what a run measured, and how a verdict is reached.

A :class:`Claim` carries the paper's statement (with its figure or equation), the
*criterion* the run actually tests (numbers and thresholds, fixed before the run; where it
differs from the paper's, why), the measured value with, where the study has several seeds
or realizations, an interval, and a verdict among

- ``yes``: the criterion holds (for the whole interval when there is one),
- ``NO``: it fails (for the whole interval),
- ``inconclusive``: the interval straddles the threshold, so the run cannot decide,
- ``n/a``: the run could not measure it.

Claims are of two kinds: an ``identity`` (a theorem, a closed form, a solver property: it
must hold to a stated tolerance) and a ``finding`` (an empirical statement). Summaries count
them apart (:func:`claims_summary`), e.g. ``findings 14/19 held, 2 inconclusive; identities
7/7 held``.

Intervals come from :func:`mean_interval` (Student t over independent seeds) or
:func:`bootstrap_interval` (percentile bootstrap of any statistic, resampling each group of
values independently, e.g. the seeds at each width of a log-log fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The kinds of claims: a theorem / identity, or an empirical finding.
KINDS = ("identity", "finding")
#: The verdicts, in report order.
VERDICTS = ("yes", "NO", "inconclusive", "n/a")
#: Columns of ``tables/claims.csv``.
CLAIM_COLUMNS = ("study", "part", "topic", "kind", "paper", "criterion", "measured", "value", "low", "high",
                 "verdict")

_LEGACY_KINDS = {"deterministic": "identity", "statistical": "finding"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Claim:
    """One claim of a paper next to what the run measured.

    Parameters
    ----------
    topic : str
        Short name (figure / item of the paper and what is compared).
    paper : str
        The paper's statement, with its figure or equation.
    measured : str
        What the run measured, in words and numbers.
    held : bool or None
        The verdict as a boolean (``None``: not measured) when ``verdict`` is not given.
    kind : str
        ``"identity"`` (theorem, closed form, solver property) or ``"finding"`` (empirical).
        The older names ``"deterministic"`` / ``"statistical"`` are accepted.
    criterion : str
        The test actually applied, with its numbers (and why it differs from the paper's).
    value, low, high : float
        The measured statistic and its interval (``nan`` when there is none).
    part : str
        The part of the study the claim belongs to.
    verdict : str
        One of :data:`VERDICTS`; derived from ``held`` when empty.
    """

    topic: str
    paper: str
    measured: str
    held: bool | None = None
    kind: str = "finding"
    criterion: str = ""
    value: float = math.nan
    low: float = math.nan
    high: float = math.nan
    part: str = ""
    verdict: str = ""

    def __post_init__(self) -> None:
        self.kind = _LEGACY_KINDS.get(self.kind, self.kind)
        if self.kind not in KINDS:
            raise ValueError(f"claim kind {self.kind!r}: use one of {KINDS}")
        if not self.verdict:
            self.verdict = {True: "yes", False: "NO", None: "n/a"}[None if self.held is None else bool(self.held)]
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim verdict {self.verdict!r}: use one of {VERDICTS}")
        self.held = {"yes": True, "NO": False}.get(self.verdict)
        self.value, self.low, self.high = _num(self.value), _num(self.low), _num(self.high)

    @classmethod
    def compare(cls, topic: str, paper: str, criterion: str, measured: str, value: float, op: str,
                threshold: float | tuple[float, float], *, low: float | None = None, high: float | None = None,
                kind: str = "finding", part: str = "") -> Claim:
        """A claim decided by ``value OP threshold`` (``op`` one of ``>``, ``>=``, ``<``, ``<=``, or
        ``"in"`` with ``threshold = (lo, hi)``), on the interval ``[low, high]`` when given: ``yes``
        when every point of the interval satisfies it, ``NO`` when none does, ``inconclusive``
        otherwise; ``n/a`` when ``value`` is not finite."""
        v, lo, hi = _num(value), _num(low), _num(high)
        verdict = decide(v, op, threshold, lo, hi)
        return cls(topic, paper, measured, kind=kind, criterion=criterion, value=v, low=lo, high=hi, part=part,
                   verdict=verdict)

    @classmethod
    def identity(cls, topic: str, paper: str, measured: str, error: float, tol: float, *, criterion: str = "",
                 part: str = "") -> Claim:
        """An identity (theorem, closed form, solver property): ``yes`` when ``error <= tol``."""
        e = _num(error)
        crit = criterion or f"error ≤ {tol:.0e}"
        verdict = "n/a" if not math.isfinite(e) else ("yes" if e <= tol else "NO")
        return cls(topic, paper, measured, kind="identity", criterion=crit, value=e, part=part, verdict=verdict)

    @property
    def interval(self) -> str:
        """``[low, high]`` as text, or ``""`` without an interval."""
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"[{self.low:.3g}, {self.high:.3g}]"
        return ""

    def row(self, study: str = "") -> dict[str, Any]:
        """The claim as a row of ``tables/claims.csv``."""
        return {"study": study, "part": self.part, "topic": self.topic, "kind": self.kind, "paper": self.paper,
                "criterion": self.criterion, "measured": self.measured, "value": self.value, "low": self.low,
                "high": self.high, "verdict": self.verdict}


def decide(value: float, op: str, threshold: float | tuple[float, float], low: float = math.nan,
           high: float = math.nan) -> str:
    """The verdict of ``value OP threshold`` given an optional interval ``[low, high]`` (see
    :meth:`Claim.compare`)."""
    if not math.isfinite(value):
        return "n/a"
    if op == "in":
        if not isinstance(threshold, tuple):
            raise ValueError("op 'in' takes threshold = (lo, hi)")
        a, b = threshold

        def inside(x: float) -> bool:
            return a <= x <= b
        if math.isfinite(low) and math.isfinite(high):
            if a <= low and high <= b:
                return "yes"
            if high < a or low > b:
                return "NO"
            return "inconclusive"
        return "yes" if inside(value) else "NO"
    if op not in _OPS or isinstance(threshold, tuple):
        raise ValueError(f"op {op!r} with threshold {threshold!r}: use >, >=, <, <= with a number, or 'in' "
                         "with (lo, hi)")
    test = _OPS[op]
    t = float(threshold)
    if math.isfinite(low) and math.isfinite(high):
        ends = (test(low, t), test(high, t))
        if all(ends):
            return "yes"
        if not any(ends):
            return "NO"
        return "inconclusive"
    return "yes" if test(value, t) else "NO"


def mean_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of independent ``values``
    (``low = high = nan`` with fewer than 2 finite values)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    from scipy.stats import t as student

    half = float(student.ppf(0.5 + level / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def bootstrap_interval(stat: Callable[..., float], *groups: Sequence[Any] | np.ndarray, level: float = 0.95,
                       n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(stat(*groups), low, high)``: percentile bootstrap interval of ``stat``, resampling each
    group (a sequence of independent realizations, e.g. the seeds of one width) with replacement,
    independently of the others. Groups of one element contribute no variability."""
    est = _num(stat(*groups))
    arrays = [np.asarray(g) for g in groups]
    if not math.isfinite(est) or all(len(a) < 2 for a in arrays):
        return est, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        draws.append(_num(stat(*[a[rng.integers(0, len(a), len(a))] for a in arrays])))
    d = np.asarray(draws)
    d = d[np.isfinite(d)]
    if d.size < n_boot // 2:
        return est, math.nan, math.nan
    a = (1 - level) / 2
    return est, float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def interval_text(value: float, low: float = math.nan, high: float = math.nan, fmt: str = ".3g") -> str:
    """``value [low, high]`` for a claim's ``measured`` text (``value`` alone without a finite interval)."""
    v = format(value, fmt) if math.isfinite(value) else "nan"
    if math.isfinite(low) and math.isfinite(high):
        return f"{v} [{format(low, fmt)}, {format(high, fmt)}]"
    return v


def seeds_text(values: Sequence[float] | np.ndarray, fmt: str = ".3g") -> str:
    """``mean [low, high] over n seeds`` (Student t, :func:`mean_interval`), or the single value."""
    m, lo, hi = mean_interval(values)
    n = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    if not math.isfinite(lo):
        return f"{format(m, fmt)} ({n} seed{'s' if n != 1 else ''})"
    return f"{format(m, fmt)} [{format(lo, fmt)}, {format(hi, fmt)}] over {n} seeds"


def seed_claim(topic: str, paper: str, criterion: str, measured: str, values: Sequence[float] | np.ndarray, op: str,
               threshold: float | tuple[float, float], *, part: str = "", kind: str = "finding") -> Claim:
    """:meth:`Claim.compare` of the mean of the per-seed ``values`` on its Student-t interval over
    the seeds (no interval with one seed); ``measured`` is followed by :func:`seeds_text`."""
    m, lo, hi = mean_interval(values)
    return Claim.compare(topic, paper, criterion, f"{measured}; {seeds_text(values)}".lstrip("; "), m, op,
                         threshold, low=lo, high=hi, kind=kind, part=part)


def all_hold(*verdicts: str) -> str:
    """The verdict of a claim whose conditions must all hold, given theirs: ``NO`` if one fails,
    else ``n/a`` if one was not measured, else ``inconclusive`` if one is, else ``yes``."""
    for v in ("NO", "n/a", "inconclusive"):
        if v in verdicts:
            return v
    return "yes"


def every_seed(flags: Sequence[Any]) -> str:
    """The verdict of a yes/no condition checked per seed: ``yes`` when every seed meets it, ``NO``
    when none does, ``inconclusive`` otherwise (``n/a`` without seeds)."""
    f = [bool(x) for x in flags]
    return "n/a" if not f else "yes" if all(f) else "NO" if not any(f) else "inconclusive"


def claim_counts(claims: Sequence[Claim]) -> dict[str, dict[str, int]]:
    """``{kind: {verdict: count, "total": count}}`` for both kinds."""
    out: dict[str, dict[str, int]] = {k: {v: 0 for v in (*VERDICTS, "total")} for k in KINDS}
    for c in claims:
        out[c.kind][c.verdict] += 1
        out[c.kind]["total"] += 1
    return out


def counts_summary(counts: dict[str, dict[str, int]]) -> str:
    """The one-line summary of :func:`claim_counts`, e.g. ``findings 14/19 held, 2 inconclusive,
    3 did not; identities 7/7 held``."""
    parts = []
    for kind, label in (("finding", "findings"), ("identity", "identities")):
        c = counts[kind]
        s = f"{label} {c['yes']}/{c['total']} held"
        extra = [f"{c[v]} {w}" for v, w in (("inconclusive", "inconclusive"), ("NO", "did not"), ("n/a", "n/a"))
                 if c[v]]
        parts.append(", ".join([s, *extra]))
    return "; ".join(parts)


def claims_summary(claims: Sequence[Claim]) -> str:
    """:func:`counts_summary` of ``claims``."""
    return counts_summary(claim_counts(claims))
