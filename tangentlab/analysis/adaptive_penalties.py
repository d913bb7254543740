"""Penalties of the adaptive tangent feature model (LeJeune & Alemohammad, "Adaptive tangent
feature perspective of neural networks", CPAL 2024) and their effective and joint forms.

Penalties (:class:`Penalty`) are scalar functions ω of a singular value, strictly
quasi-convex with ``ω(1) = 0`` (``(v−1)²``, ``|v−1|^p``, ``χ_{1}``), plus ``ω(v) = v²``
(minimum at 0, so its minimization runs over ``z > 0``) and user callables. Derived
quantities (all float64 numpy, vectorized over ``v``):

* effective penalty ``ω̃(v) = min_{z ≥ 1} ω(z) + v²/z²`` (:func:`effective_penalty`);
* joint penalty ``(ω1 ⊕ ω2)(v) = min_{1 ≤ z ≤ v} ω1(z) + ω2(v/z)`` for ``v ≥ 1``
  (:func:`joint_penalty`);
* the scalar problem (3) ``min_{s1, s2 ≥ 1} ω1(s1) + ω2(s2) + d²/(s1 s2)²`` whose value is
  ``(ω1 ⊕ ω2)~(d)`` (:func:`pair_solve`);
* the spectral penalty ``Ω̃(B) = Σ_j ω̃(σ_j(B))`` (:func:`effective_spectral_penalty`).

Closed forms are used where they exist (``(v−1)²``: ``z³(z−1) = v²``; both factors
``(v−1)²``: ``s⁵(s−1) = d²``; ``|v−1|``: ``z = max(1, (2v²)^{1/3})``; ``v²``: ``z² = v``);
otherwise a vectorized grid search (log-spaced, endpoint included, bracket found by
doubling) refined by golden-section search to round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError

Array = np.ndarray


# ---------------------------------------------------------------------------------------------
# penalties
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Penalty:
    """A scalar penalty ``ω`` on singular values.

    ``fn`` maps an array (numpy or torch) to ``ω`` elementwise. ``lower`` is the left end
    of the minimization domain of the effective penalty: 1 for the paper's class
    (strictly quasi-convex, ``ω(1) = 0``, so the minimizer is ≥ 1), 0 for ``ω(v) = v²``.
    ``kind`` selects a closed form (``"sq"``, ``"abs"``, ``"fixed"``, ``"square"``) or the
    generic numerics (``"power"``, ``"callable"``); ``p`` is the exponent of ``|v−1|^p``."""

    name: str
    fn: Callable[[Any], Any]
    kind: str = "callable"
    lower: float = 1.0
    p: float = 2.0

    def __call__(self, v: Any) -> Any:
        if self.kind == "fixed":
            if isinstance(v, torch.Tensor):
                return torch.where(v == 1, torch.zeros_like(v), torch.full_like(v, math.inf))
            v = np.asarray(v, dtype=np.float64)
            return np.where(v == 1.0, 0.0, np.inf)
        return self.fn(v)

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"


def squared_deviation() -> Penalty:
    """``ω(v) = (v − 1)²``."""
    return Penalty("(v-1)^2", lambda v: (v - 1) ** 2, "sq", 1.0, 2.0)


def abs_power(p: float = 1.0) -> Penalty:
    """``ω(v) = |v − 1|^p`` (``p > 0``)."""
    if not p > 0:
        raise InvalidInputError(f"abs_power needs p > 0, got {p}")
    if p == 2:
        return squared_deviation()
    kind = "abs" if p == 1 else "power"
    return Penalty(f"|v-1|^{p:g}" if p != 1 else "|v-1|", lambda v: abs(v - 1) ** p, kind, 1.0, float(p))


def fixed_identity() -> Penalty:
    """``ω = χ_{1}``: 0 at 1, +∞ elsewhere (the transformation is fixed to the identity)."""
    return Penalty("chi_{1}", lambda v: v, "fixed", 1.0)


def square() -> Penalty:
    """``ω(v) = v²`` (minimum at 0, outside the paper's class): ``ω̃(v) = 2|v|`` (the
    factorization identity behind the nuclear / ℓ1 norms)."""
    return Penalty("v^2", lambda v: v ** 2, "square", 0.0)


def custom(fn: Callable[[Any], Any], name: str = "custom", lower: float = 1.0) -> Penalty:
    """A user penalty (``fn`` vectorized over numpy arrays; quasi-convex with minimum at
    ``lower`` = 1, or a penalty on ``z > 0`` with ``lower = 0``)."""
    if lower not in (0.0, 1.0):
        raise InvalidInputError(f"custom penalty: lower must be 0 or 1, got {lower}")
    return Penalty(name, fn, "callable", float(lower))


PENALTY_NAMES = ("sq", "abs", "abs:P", "fixed", "square")


def penalty(spec: str | Penalty | Callable[[Any], Any]) -> Penalty:
    """A :class:`Penalty` from a name: ``"sq"`` ((v−1)²), ``"abs"`` (|v−1|), ``"abs:P"``
    (|v−1|^P), ``"fixed"`` (χ_{1}), ``"square"`` (v²); a callable gives :func:`custom`."""
    if isinstance(spec, Penalty):
        return spec
    if callable(spec):
        return custom(spec)
    s = str(spec).strip().lower()
    if s == "sq":
        return squared_deviation()
    if s == "abs":
        return abs_power(1.0)
    if s.startswith("abs:"):
        try:
            p = float(s[4:])
        except ValueError:
            p = -1.0
        if p > 0:
            return abs_power(p)
    if s == "fixed":
        return fixed_identity()
    if s == "square":
        return square()
    raise InvalidInputError(f"unknown penalty {spec!r}; accepted: {', '.join(PENALTY_NAMES)} (P > 0) or a callable")


# ---------------------------------------------------------------------------------------------
# vectorized 1-D minimization
# ---------------------------------------------------------------------------------------------
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0


def minimize_bounded(f: Callable[[Array], Array], lo: Array, hi: Array, n_grid: int = 193,
                     iters: int = 90) -> tuple[Array, Array]:
    """Minimize ``m`` scalar functions at once: ``f`` maps ``(m, k)`` points (row ``i`` for
    problem ``i``) to values; ``lo``, ``hi`` are ``(m,)`` bounds. A grid ``lo + (hi−lo)·u``,
    ``u ∈ {0} ∪ logspace(−13, 0)`` (dense near ``lo``, where the minimizers of these
    problems sit), then golden-section search on the grid minimum's neighbours. Returns
    ``(argmin, min)``, each ``(m,)``."""
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    m = lo.size
    if m == 0:
        return np.zeros(0), np.zeros(0)
    u = np.concatenate([[0.0], np.logspace(-13, 0, n_grid - 1)])
    X = lo[:, None] + (hi - lo)[:, None] * u[None, :]
    with np.errstate(all="ignore"):
        F = np.asarray(f(X), dtype=np.float64)
    F = np.where(np.isnan(F), np.inf, F)
    k = np.argmin(F, axis=1)
    rows = np.arange(m)
    best_x, best_f = X[rows, k], F[rows, k]
    a = X[rows, np.maximum(k - 1, 0)]
    b = X[rows, np.minimum(k + 1, X.shape[1] - 1)]
    c = b - _GOLD * (b - a)
    d = a + _GOLD * (b - a)
    with np.errstate(all="ignore"):
        fc = np.asarray(f(c[:, None]), dtype=np.float64)[:, 0]
        fd = np.asarray(f(d[:, None]), dtype=np.float64)[:, 0]
        for _ in range(iters):
            left = fc < fd
            b = np.where(left, d, b)
            a = np.where(left, a, c)
            new = np.where(left, b - _GOLD * (b - a), a + _GOLD * (b - a))
            fnew = np.asarray(f(new[:, None]), dtype=np.float64)[:, 0]
            fd, fc, d, c = (np.where(left, fc, fnew), np.where(left, fnew, fd), np.where(left, c, new),
                            np.where(left, new, d))
    for x_, f_ in ((c, fc), (d, fd)):
        f_ = np.where(np.isnan(f_), np.inf, f_)
        better = f_ < best_f
        best_x, best_f = np.where(better, x_, best_x), np.where(better, f_, best_f)
    return best_x, best_f


def _upper_bracket(g: Callable[[Array], Array], target: Array, start: float = 2.0) -> Array:
    """Smallest ``hi = start·2^k`` with ``g(hi) ≥ target`` per entry (a bracket for a
    non-decreasing ``g``)."""
    hi = np.full(target.shape, start)
    for _ in range(200):
        with np.errstate(all="ignore"):
            need = ~(np.asarray(g(hi), dtype=np.float64) >= target)
        if not need.any():
            break
        hi = np.where(need, hi * 2.0, hi)
    return hi


def _newton_poly_root(v2: Array, power: int) -> Array:
    """Root ``z ≥ 1`` of ``z^{power}(z − 1) = v2`` (convex increasing on ``z ≥ 1``: Newton
    from above converges monotonically)."""
    z = 1.0 + np.power(v2, 1.0 / (power + 1)) + 1e-3
    for _ in range(200):
        fz = z ** power * (z - 1.0) - v2
        dz = fz / ((power + 1) * z ** power - power * z ** (power - 1))
        z_new = np.maximum(z - dz, 1.0)
        if np.all(np.abs(z_new - z) <= 1e-16 * z):
            z = z_new
            break
        z = z_new
    return z


# ---------------------------------------------------------------------------------------------
# effective and joint penalties
# ---------------------------------------------------------------------------------------------
def _as_array(v: Any) -> tuple[Array, tuple[int, ...]]:
    a = np.asarray(v, dtype=np.float64)
    return np.abs(a.reshape(-1)), a.shape


def effective_argmin(omega: Penalty | str, v: Any) -> Array:
    """``z*(v) = argmin_{z ≥ lower} ω(z) + v²/z²`` (elementwise, ``|v|`` used)."""
    om = penalty(omega)
    x, shape = _as_array(v)
    if om.kind == "fixed":
        z = np.ones_like(x)
    elif om.kind == "sq":
        z = _newton_poly_root(x ** 2, 3)
    elif om.kind == "abs":
        z = np.maximum(1.0, np.cbrt(2.0 * x ** 2))
    elif om.kind == "square":
        z = np.sqrt(x)
    else:
        z = np.ones_like(x)
        pos = x > 0
        if pos.any():
            xv = x[pos]
            v2 = xv[:, None] ** 2
            lo = np.full(xv.shape, om.lower if om.lower > 0 else 0.0)
            if om.lower > 0:
                hi = _upper_bracket(lambda h: om(h), xv ** 2)
            else:
                hi = _upper_bracket(lambda h: om(h), om(np.ones_like(xv)) + xv ** 2, 1.0)
            z[pos], _ = minimize_bounded(lambda Z: om(Z) + v2 / Z ** 2, lo, hi)
        if om.lower == 0:
            z = np.where(x > 0, z, 0.0)
    return z.reshape(shape)


def effective_penalty(omega: Penalty | str, v: Any) -> Array:
    """``ω̃(v) = min_{z ≥ 1} ω(z) + v²/z²`` (``z > 0`` for ``ω = v²``, where ``ω̃ = 2|v|``)."""
    om = penalty(omega)
    x, shape = _as_array(v)
    if om.kind == "square":
        return (2.0 * x).reshape(shape)
    z = effective_argmin(om, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.where(x > 0, np.asarray(om(z), dtype=np.float64) + x ** 2 / z ** 2, 0.0)
    if om.kind == "fixed":
        val = x ** 2
    return val.reshape(shape)


def joint_argmin(omega1: Penalty | str, omega2: Penalty | str, v: Any) -> tuple[Array, Array]:
    """``(z*, value)`` of ``(ω1 ⊕ ω2)(v) = min_{1 ≤ z ≤ v} ω1(z) + ω2(v/z)`` for ``v ≥ 1``."""
    o1, o2 = penalty(omega1), penalty(omega2)
    x = np.asarray(v, dtype=np.float64)
    shape = x.shape
    x = x.reshape(-1)
    if (x < 1).any():
        raise InvalidInputError("the joint penalty is defined for v >= 1")
    if o1.fixed and o2.fixed:
        z = np.ones_like(x)
        return z.reshape(shape), np.where(x == 1, 0.0, np.inf).reshape(shape)
    if o2.fixed:
        return x.reshape(shape), np.asarray(o1(x), dtype=np.float64).reshape(shape)
    if o1.fixed:
        return np.ones(shape), np.asarray(o2(x), dtype=np.float64).reshape(shape)
    xv = x[:, None]
    z, val = minimize_bounded(lambda Z: o1(Z) + o2(xv / Z), np.ones_like(x), x, n_grid=65, iters=50)
    return z.reshape(shape), val.reshape(shape)


def joint_penalty(omega1: Penalty | str, omega2: Penalty | str, v: Any) -> Array:
    """``(ω1 ⊕ ω2)(v)`` for ``v ≥ 1`` (strictly increasing, 0 at 1: Proposition 4)."""
    return joint_argmin(omega1, omega2, v)[1]


@dataclass
class PairSolution:
    """Solution of the scalar problem (3) for each ``d``: ``s1``, ``s2``, ``sigma = d/(s1 s2)``
    and ``cost = ω1(s1) + ω2(s2) + σ² = (ω1 ⊕ ω2)~(d)``."""

    s1: Array
    s2: Array
    sigma: Array
    cost: Array


def pair_solve(omega1: Penalty | str, omega2: Penalty | str, d: Any, scale: float = 1.0) -> PairSolution:
    """Solve eq. (3), ``min_{s1, s2 ≥ 1, σ ≥ 0} λ(ω1(s1) + ω2(s2)) + σ²  s.t.  s1 σ s2 = d``,
    for each ``d ≥ 0`` (``λ = scale``; the paper has ``λ = 1``).

    Closed forms: one factor fixed (``χ_{1}``) reduces to ``ω̃`` of the other; both
    ``(v−1)²`` give the symmetric ``s1 = s2 = s`` with ``λ s⁵(s − 1) = d²``. Otherwise the
    product ``v = s1 s2`` is optimized: ``min_{v ≥ 1} λ(ω1 ⊕ ω2)(v) + d²/v²``, with the
    inner split from :func:`joint_argmin`."""
    o1, o2 = penalty(omega1), penalty(omega2)
    if o1.lower != 1.0 or o2.lower != 1.0:
        raise InvalidInputError("eq. (3) needs penalties with minimum at 1 (not 'square')")
    lam = float(scale)
    if not lam > 0:
        raise InvalidInputError(f"scale must be > 0, got {scale}")
    dd = np.abs(np.asarray(d, dtype=np.float64).reshape(-1))
    ones = np.ones_like(dd)
    if o1.fixed and o2.fixed:
        s1, s2 = ones, ones.copy()
    elif o2.fixed or o1.fixed:
        free = o1 if o2.fixed else o2
        scaled_fn: Callable[..., Any] = lambda v, f=free: lam * f(v)  # noqa: E731
        scaled = Penalty(free.name, scaled_fn, free.kind, free.lower, free.p)
        if free.kind == "sq":
            s = _newton_poly_root(dd ** 2 / lam, 3)
        elif free.kind == "abs":
            s = np.maximum(1.0, np.cbrt(2.0 * dd ** 2 / lam))
        else:
            s = effective_argmin(Penalty(free.name, scaled.fn, "callable", 1.0), dd)
        s1, s2 = (s, ones) if o2.fixed else (ones, s)
    elif o1.kind == "sq" and o2.kind == "sq":
        s = _newton_poly_root(dd ** 2 / lam, 5)
        s1, s2 = s, s.copy()
    else:
        pos = dd > 0
        s1, s2 = ones.copy(), ones.copy()
        if pos.any():
            dv = dd[pos]

            def outer(V: Array) -> Array:
                _, jv = joint_argmin(o1, o2, V.reshape(-1))
                return lam * jv.reshape(V.shape) + dv[:, None] ** 2 / V ** 2

            hi = _upper_bracket(lambda h: lam * joint_penalty(o1, o2, h), dv ** 2)
            v, _ = minimize_bounded(outer, np.ones_like(dv), hi, n_grid=97, iters=50)
            z, _ = joint_argmin(o1, o2, v)
            s1[pos], s2[pos] = z, v / z
    sigma = dd / (s1 * s2)
    with np.errstate(invalid="ignore"):
        cost = lam * (np.asarray(o1(s1), dtype=np.float64) + np.asarray(o2(s2), dtype=np.float64)) + sigma ** 2
    return PairSolution(s1, s2, sigma, cost)


def joint_effective_penalty(omega1: Penalty | str, omega2: Penalty | str, d: Any) -> Array:
    """``(ω1 ⊕ ω2)~(d)``: the value of eq. (3) (the per-singular-value penalty of Theorem 2)."""
    a = np.asarray(d, dtype=np.float64)
    return pair_solve(omega1, omega2, a).cost.reshape(a.shape)


def effective_spectral_penalty(omega: Penalty | str, B: Any, omega2: Penalty | str | None = None) -> float:
    """``Ω̃(B) = Σ_j ω̃(σ_j(B))``, or ``Σ_j (ω ⊕ ω2)~(σ_j(B))`` when ``omega2`` is given."""
    s = np.linalg.svd(np.asarray(B, dtype=np.float64), compute_uv=False)
    if omega2 is None:
        return float(np.sum(effective_penalty(omega, s)))
    return float(np.sum(joint_effective_penalty(omega, omega2, s)))
