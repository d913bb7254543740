"""The statistics the alignment study's claims test (paper 000).

* :func:`scaled_k`: the CPU-scale analogue of the paper's "top 40 of 1000 eigenvalues": the same
  fraction ``40/1000`` of the ``N·C`` eigenvalues of our kernel (``k = 40`` at ``N·C = 1000``).
* :func:`top_share`: ``T_k = Σ_{j≤k} λ_j / Σ_j λ_j`` (negative eigenvalues clipped to 0).
* :func:`spectrum_distance`: how far two kernels' *normalized* spectra are: the Kolmogorov–Smirnov
  distance ``max_k |T_k(a) − T_k(b)|`` between their cumulative normalized spectra (the trace-ratio
  curves of Fig. 2), 0 for identical normalized spectra, ≤ 1.
* :func:`drop_step`: the first step at which a decreasing curve has made half of its total drop
  (``v_0 − (v_0 − min v)/2``), to say whether a drop is *early*.
Per-seed values become claims through :func:`tangentlab.studies.framework.claims.seed_claim`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the paper's "top 40 eigenvalues, over 1000 in total" (paper 000 §3.2, Fig. 2)
PAPER_K, PAPER_R = 40, 1000


def scaled_k(r: int, k: int = PAPER_K, of: int = PAPER_R) -> int:
    """The number of top eigenvalues out of ``r`` that is the same fraction ``k/of`` of the
    spectrum as the paper's (at least 1)."""
    return max(1, int(round(r * k / of)))


def _normalized(eigs: Sequence[float] | np.ndarray) -> np.ndarray:
    e = np.sort(np.clip(np.asarray(eigs, dtype=float), 0.0, None))[::-1]
    total = e.sum()
    return e / total if total > 0 else np.zeros_like(e)


def top_share(eigs: Sequence[float] | np.ndarray, k: int) -> float:
    """``T_k``: the share of the trace held by the ``k`` largest eigenvalues (``nan`` when empty)."""
    p = _normalized(eigs)
    return float(p[:k].sum()) if p.size else math.nan


def spectrum_distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """``max_k |T_k(a) − T_k(b)|`` over ``k = 1..max(len)`` (the shorter spectrum padded with zeros):
    the Kolmogorov–Smirnov distance between the two normalized spectra sorted in decreasing order."""
    p, q = _normalized(a), _normalized(b)
    if not (p.size and q.size):
        return math.nan
    n = max(p.size, q.size)
    p, q = np.pad(p, (0, n - p.size)), np.pad(q, (0, n - q.size))
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).max())


def drop_step(steps: np.ndarray, values: np.ndarray) -> float:
    """The first step where ``values`` is at or below ``v_0 − (v_0 − min v)/2`` (``nan`` when empty,
    ``inf`` when the curve never falls below its start)."""
    if values.size == 0:
        return math.nan
    if values.min() >= values[0]:
        return math.inf
    target = values[0] - 0.5 * (values[0] - values.min())
    return float(steps[np.argmax(values <= target)])


def half_rise_step(steps: np.ndarray, values: np.ndarray) -> float:
    """First step where ``values`` reaches ``v_0 + (max − v_0)/2`` (``nan`` when empty)."""
    if values.size == 0:
        return math.nan
    if values.max() <= values[0]:
        return math.inf  # never rises
    target = values[0] + 0.5 * (values.max() - values[0])
    return float(steps[np.argmax(values >= target)])


