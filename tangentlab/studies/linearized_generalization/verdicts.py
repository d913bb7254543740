"""The reader of a ``linearized-generalization`` run's tables and the verdict helpers its claims share.

Replicates: a setting ``base`` is seed 0, ``base_s{k}`` seed ``k`` (:func:`seed_of`). Findings are
decided on a per-seed statistic, its mean and 95 % Student-t interval (:func:`stat`); conditions that
are yes/no per seed by :func:`every_seed`; several conditions by :func:`combine`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..framework.claims import decide, mean_interval
from ..framework.report import Claim
from ..framework.store import to_number

#: ``(part, setting, index, model) → {metric: value}`` from ``tables/results.csv``.
Results = dict[tuple[str, str, str, str], dict[str, float]]
#: ``(part, setting, index, model, metric) → [(epoch, value)]`` from ``tables/curves.csv``.
Curves = dict[tuple[str, str, str, str, str], list[tuple[int, float]]]
#: ``name → {(row, col): value}`` from ``tables/arrays.csv``.
Arrays = dict[str, dict[tuple[int, int], float]]


def load_results(store) -> tuple[Results, Curves, Arrays]:
    """The three tables of a run, keyed for lookup (see :data:`Results`, :data:`Curves`, :data:`Arrays`)."""
    R: Results = defaultdict(dict)
    for r in store.read("results"):
        R[(r["part"], r["setting"], r["index"], r["model"])][r["metric"]] = to_number(r["value"])
    C: Curves = defaultdict(list)
    for r in store.read("curves"):
        key = (r["part"], r["setting"], r["index"], r["model"], r["metric"])
        C[key].append((int(r["epoch"]), to_number(r["value"])))
    A: Arrays = defaultdict(dict)
    for r in store.read("arrays"):
        A[r["name"]][(int(r["row"]), int(r["col"]))] = to_number(r["value"])
    return R, C, A


def series(R: Results, part: str, setting: str, model: str, metric: str) -> tuple[list[int], list[float]]:
    """``metric`` of the units ``(part, setting, ·, model)`` with an integer index, sorted by that index."""
    pts = sorted((int(k[2]), v[metric]) for k, v in R.items()
                 if k[0] == part and k[1] == setting and k[3] == model and metric in v and k[2].lstrip("-").isdigit())
    return [p[0] for p in pts], [p[1] for p in pts]


def fmt_num(v: float, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def seed_of(setting: str, base: str) -> int | None:
    """The seed of a replicate's setting name: ``base`` is seed 0, ``base_s{k}`` seed ``k``."""
    if setting == base:
        return 0
    rest = setting[len(base) + 2:] if setting.startswith(base + "_s") else ""
    return int(rest) if rest.isdigit() else None


def settings_by_seed(R: Results, part: str, base: str) -> dict[int, str]:
    """``{seed: setting}`` of the replicates of ``(part, base)`` present in ``R``."""
    out = {}
    for k in R:
        if k[0] == part:
            s = seed_of(k[1], base)
            if s is not None:
                out[s] = k[1]
    return dict(sorted(out.items()))


def by_seed(R: Results, part: str, base: str, model: str, metric: str) -> dict[int, tuple[list[int], list[float]]]:
    """:func:`series` of every replicate of ``(part, base)``, keyed by seed."""
    return {s: series(R, part, st, model, metric) for s, st in settings_by_seed(R, part, base).items()}


def stat(values, op: str, threshold: float) -> tuple[float, float, float, str]:
    """``(mean, low, high, verdict)`` of per-seed ``values`` against ``mean OP threshold`` on the 95 %
    Student-t interval (a single seed: its value, no interval). Non-finite values make it ``n/a``."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0 or not np.all(np.isfinite(x)):
        return (float(x.mean()) if x.size else math.nan), math.nan, math.nan, "n/a"
    m, lo, hi = mean_interval(x)
    return m, lo, hi, decide(m, op, threshold, lo, hi)








def finding(topic: str, paper: str, criterion: str, measured: str, verdict: str, m: float, lo: float, hi: float,
            part: str) -> Claim:
    """A finding with its verdict and the interval of its main statistic."""
    return Claim(topic, paper, measured, kind="finding", criterion=criterion, value=m, low=lo, high=hi, part=part,
                 verdict=verdict)


def seeds_text(seeds) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
