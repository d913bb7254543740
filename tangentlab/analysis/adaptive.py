"""The adaptive tangent feature model (LeJeune & Alemohammad, CPAL 2024; digest
``adaptive_tangent.md``): penalties, effective penalties and the solvers.

Model. With initial tangent features ``J`` (rows ``∇f_{θ0}(x_i)``, ``N·C × P``, row
``i·C + c``) and residuals ``r = ŷ − f_{θ0}(X)``, eq. (1) of the paper is

    min_{M, θ}  Ω(M) + ‖θ − θ0‖²   s.t.  r = J M (θ − θ0),

and eq. (2) its equivalent form ``min_β Ω̃(β) s.t. r = Jβ`` with ``β = M(θ − θ0)``.

Penalties (:class:`Penalty`) are scalar functions ω of a singular value, strictly
quasi-convex with ``ω(1) = 0`` (``(v−1)²``, ``|v−1|^p``, ``χ_{1}``), plus ``ω(v) = v²``
(minimum at 0, so its minimization runs over ``z > 0``) and user callables. Derived
quantities (all float64 numpy, vectorized over ``v``):

* effective penalty ``ω̃(v) = min_{z ≥ 1} ω(z) + v²/z²`` (:func:`effective_penalty`);
* joint penalty ``(ω1 ⊕ ω2)(v) = min_{1 ≤ z ≤ v} ω1(z) + ω2(v/z)`` for ``v ≥ 1``
  (:func:`joint_penalty`);
* the scalar problem (3) ``min_{s1, s2 ≥ 1} ω1(s1) + ω2(s2) + d²/(s1 s2)²`` whose value is
  ``(ω1 ⊕ ω2)~(d)`` (:func:`pair_solve`);
* spectral penalties ``Ω_ω(M) = Σ_j ω(σ_j(M))`` and ``Ω̃(B) = Σ_j ω̃(σ_j(B))``.

Closed forms are used where they exist (``(v−1)²``: ``z³(z−1) = v²``; both factors
``(v−1)²``: ``s⁵(s−1) = d²``; ``|v−1|``: ``z = max(1, (2v²)^{1/3})``; ``v²``: ``z² = v``);
otherwise a vectorized grid search (log-spaced, endpoint included, bracket found by
doubling) refined by golden-section search to round-off.

Solvers, none of which forms a ``P × P`` matrix:

* :func:`theorem1`: structureless ``M`` (Theorem 1): ``β̂ = Jᵀ(JJᵀ)⁻¹r``,
  ``s = argmin_{z≥1} ω(z) + ‖β̂‖²/z²``, ``M̂ = I + (s−1)β̂β̂ᵀ/‖β̂‖²`` (kept as a rank-one
  update), ``θ̂ − θ0 = β̂/s`` and ``K = K0 + (s²−1)/‖β̂‖² · rrᵀ``;
* :func:`diagonal_irls`: diagonal ``M = diag(m)`` (App. A.1) by reweighted least squares
  (``ω = v²`` gives ``Ω̃ = 2‖β‖₁``);
* :func:`model_a_irls`: Model A / Theorem 2, one pair ``(M^{(1)}_ℓ, M^{(2)}_ℓ)`` per dense
  layer acting as ``W_ℓ ↦ M^{(1)}_ℓ W_ℓ M^{(2)}_ℓ`` on ``W_ℓ`` (fan-in × fan-out), by exact
  alternating block minimization with the objective tracked after every half step;
  :func:`recover` gives ``(M̂^{(1)}, Ŵ, M̂^{(2)})`` from ``B̂`` (Lemma 5), and
  :meth:`ModelASolution.kernel` / :meth:`ModelASolution.predict` the adapted kernel and
  predictions at new points;
* :func:`direct_minimize`: the bilinear problem minimized directly over the entries of
  ``M`` (or of ``(M1, M2)``) by L-BFGS, for small cross-checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
        scaled = Penalty(free.name, (lambda v, f=free: lam * f(v)), free.kind, free.lower, free.p)
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


def spectral_penalty(omega: Penalty | str, M: Any) -> float:
    """``Ω_ω(M) = Σ_j ω(σ_j(M))`` over all ``min(P, Q)`` singular values."""
    s = np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)
    return float(np.sum(penalty(omega)(s)))


def effective_spectral_penalty(omega: Penalty | str, B: Any, omega2: Penalty | str | None = None) -> float:
    """``Ω̃(B) = Σ_j ω̃(σ_j(B))``, or ``Σ_j (ω ⊕ ω2)~(σ_j(B))`` when ``omega2`` is given."""
    s = np.linalg.svd(np.asarray(B, dtype=np.float64), compute_uv=False)
    if omega2 is None:
        return float(np.sum(effective_penalty(omega, s)))
    return float(np.sum(joint_effective_penalty(omega, omega2, s)))


# ---------------------------------------------------------------------------------------------
# kernel solves
# ---------------------------------------------------------------------------------------------
def kernel_solve(K: torch.Tensor, r: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """``α = K⁻¹ r`` for a symmetric PSD ``K`` (float64): Cholesky (with ``jitter·tr(K)/n``
    added when asked), falling back to least squares when ``K`` is singular."""
    import scipy.linalg as sla

    Kn = K.detach().to(torch.float64).cpu().numpy()
    Kn = 0.5 * (Kn + Kn.T)
    n = Kn.shape[0]
    if jitter:
        Kn = Kn + jitter * float(np.mean(np.diag(Kn))) * np.eye(n)
    rn = r.detach().to(torch.float64).cpu().numpy().reshape(n, -1)
    try:
        sol = sla.cho_solve(sla.cho_factor(Kn, check_finite=False), rn, check_finite=False)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(Kn, rn, rcond=None)[0]
    return torch.as_tensor(sol, dtype=torch.float64).reshape(r.shape)


# ---------------------------------------------------------------------------------------------
# Theorem 1 (structureless M)
# ---------------------------------------------------------------------------------------------
@dataclass
class Theorem1Solution:
    """Theorem 1: ``s``, ``‖β̂‖``, the NTK weights ``α = K0⁻¹ r`` (``β̂ = Jᵀα``) and the
    optimal objective ``ω̃(‖β̂‖)``. ``M̂ = I + (s−1) β̂β̂ᵀ/‖β̂‖²`` is never formed: use
    :meth:`apply_M` and :meth:`kernel`."""

    s: float
    beta_norm: float
    alpha: torch.Tensor
    objective: float
    r: torch.Tensor

    def kernel(self, K0: torch.Tensor) -> torch.Tensor:
        """``K = K0 + (s² − 1)/‖β̂‖² · rrᵀ`` on the training points."""
        if self.beta_norm == 0:
            return K0.clone()
        rr = torch.outer(self.r.reshape(-1), self.r.reshape(-1))
        return K0 + (self.s ** 2 - 1.0) / self.beta_norm ** 2 * rr

    def apply_M(self, beta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``M̂ v = v + (s − 1) β̂ (β̂ᵀv)/‖β̂‖²`` for a given ``β̂`` (a ``(P,)`` tensor)."""
        if self.beta_norm == 0:
            return v.clone()
        return v + (self.s - 1.0) * beta * (beta @ v) / self.beta_norm ** 2


def theorem1(K0: torch.Tensor, r: torch.Tensor, omega: Penalty | str = "sq", jitter: float = 0.0
             ) -> Theorem1Solution:
    """Theorem 1 from the initial kernel ``K0 = JJᵀ`` and residuals ``r`` (``N·C`` rows):
    ``‖β̂‖² = rᵀK0⁻¹r`` (the ridgeless NTK interpolator's norm), ``s = argmin_{z≥1}
    ω(z) + ‖β̂‖²/z²``, objective ``ω̃(‖β̂‖)``."""
    K0 = torch.as_tensor(K0, dtype=torch.float64)
    rf = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
    alpha = kernel_solve(K0, rf, jitter)
    b2 = float(rf @ alpha)
    bn = math.sqrt(max(b2, 0.0))
    om = penalty(omega)
    s = float(effective_argmin(om, np.array([bn]))[0]) if bn > 0 else 1.0
    return Theorem1Solution(s, bn, alpha, float(effective_penalty(om, np.array([bn]))[0]), rf)


# ---------------------------------------------------------------------------------------------
# diagonal M (App. A.1)
# ---------------------------------------------------------------------------------------------
@dataclass
class DiagonalSolution:
    beta: torch.Tensor
    m: torch.Tensor
    objectives: list[float]


def diagonal_irls(J: torch.Tensor, r: torch.Tensor, omega: Penalty | str = "sq", iters: int = 200,
                  tol: float = 1e-13) -> DiagonalSolution:
    """Diagonal ``M = diag(m)``: ``min_{m, β} Σ_j ω(m_j) + β_j²/m_j²  s.t.  Jβ = r`` by
    alternating exact minimization from ``m = 1``:
    ``β = m² ⊙ Jᵀ(J diag(m²) Jᵀ)⁺ r`` and ``m_j = argmin_z ω(z) + β_j²/z²``.

    The objective ``Σ ω(m_j) + rᵀα`` (``Σ β_j²/m_j² = αᵀJ diag(m²)Jᵀα = rᵀα``) never
    increases; with ``ω = v²`` its limit is ``2‖β‖₁`` (iteratively reweighted ℓ1)."""
    om = penalty(omega)
    Jn = torch.as_tensor(J, dtype=torch.float64).cpu().numpy()
    rn = torch.as_tensor(r, dtype=torch.float64).reshape(-1).cpu().numpy()
    m2 = np.ones(Jn.shape[1])
    objs: list[float] = []
    beta = np.zeros_like(m2)
    for _ in range(iters):
        K = (Jn * m2) @ Jn.T
        alpha = np.linalg.lstsq(K, rn, rcond=None)[0]
        beta = m2 * (Jn.T @ alpha)
        objs.append(float(np.sum(om(np.sqrt(m2)))) + float(rn @ alpha))
        m = effective_argmin(om, beta)
        m2 = m ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            quad = np.where(beta != 0, beta ** 2 / m2, 0.0)
        objs.append(float(np.sum(om(m)) + quad.sum()))
        if len(objs) > 3 and abs(objs[-3] - objs[-1]) <= tol * max(1.0, abs(objs[-1])):
            break
    return DiagonalSolution(torch.as_tensor(beta), torch.as_tensor(np.sqrt(m2)), objs)


# ---------------------------------------------------------------------------------------------
# Model A (Theorem 2)
# ---------------------------------------------------------------------------------------------
@dataclass
class BlockFeatures:
    """Tangent features of one dense layer in factored form: the per-example gradient of
    output ``c`` with respect to ``W_ℓ`` (fan-in × fan-out) is ``a_i g_{icᵀ}``.

    ``A``: ``(N, P_ℓ)`` layer inputs ``h_{ℓ−1}`` (with a column of ones when the layer has a
    bias: the bias is the last row of ``W_ℓ``); ``G``: ``(C, N, Q_ℓ)`` gradients of the
    outputs with respect to the layer's pre-activations ``δ_ℓ``."""

    name: str
    A: torch.Tensor
    G: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape[1], self.G.shape[2]

    def rows_G(self) -> torch.Tensor:
        """``G`` as ``(N·C, Q)`` with row ``i·C + c``."""
        C, N, Q = self.G.shape
        return self.G.permute(1, 0, 2).reshape(N * C, Q)

    def kernel(self, M1sq: torch.Tensor | None = None, M2sq: torch.Tensor | None = None,
               other: BlockFeatures | None = None) -> torch.Tensor:
        """``K_ℓ[(i,c),(j,d)] = (a_iᵀ M1² a'_j)(g_icᵀ M2² g'_jd)`` (``other`` = features at
        other points, default the same), ``(N·C, N'·C)``."""
        o = other if other is not None else self
        C = self.G.shape[0]
        A1 = self.A if M1sq is None else self.A @ M1sq
        KA = A1 @ o.A.T
        G1 = self.rows_G() if M2sq is None else self.rows_G() @ M2sq
        KG = G1 @ o.rows_G().T
        return KA.repeat_interleave(C, 0).repeat_interleave(C, 1) * KG

    def pullback(self, alpha: torch.Tensor) -> torch.Tensor:
        """``Σ_{i,c} α_ic a_i g_icᵀ`` (``P_ℓ × Q_ℓ``): ``Jᵀα`` restricted to this layer."""
        C, N, _ = self.G.shape
        al = alpha.reshape(N, C)
        return self.A.T @ torch.einsum("nc,cnq->nq", al, self.G)

    def push(self, B: torch.Tensor) -> torch.Tensor:
        """``∇_{W_ℓ} f(x_i) · vec(B)``: ``(N, C)`` with entries ``a_iᵀ B g_ic``."""
        return torch.einsum("np,pq,cnq->nc", self.A, B, self.G)


@dataclass
class SymmetricFactor:
    """A symmetric ``M = I + U (diag(s) − 1) Uᵀ`` (``U`` with orthonormal columns)."""

    U: torch.Tensor
    s: torch.Tensor

    @classmethod
    def identity(cls, n: int) -> SymmetricFactor:
        return cls(torch.zeros(n, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))

    def dense(self, power: int = 1) -> torch.Tensor:
        n = self.U.shape[0]
        return torch.eye(n, dtype=torch.float64) + (self.U * (self.s ** power - 1.0)) @ self.U.T

    def singular_values(self) -> torch.Tensor:
        n = self.U.shape[0]
        return torch.cat([self.s, torch.ones(n - self.s.numel(), dtype=torch.float64)])


@dataclass
class BlockSolution:
    name: str
    B: torch.Tensor
    M1: SymmetricFactor
    M2: SymmetricFactor
    W: torch.Tensor
    singular_values: torch.Tensor


@dataclass
class ModelASolution:
    """Result of :func:`model_a_irls`: per-layer ``(B̂, M̂1, Ŵ, M̂2)``, the kernel weights
    ``α`` (``f(x) = f0(x) + K(x, X) α``), the objective after every half step and the
    initial (ridgeless NTK, ``M = I``) objective ``rᵀK0⁻¹r``."""

    blocks: list[BlockSolution]
    alpha: torch.Tensor
    objectives: list[float]
    ntk_objective: float
    omegas: list[tuple[Penalty, Penalty]] = field(default_factory=list)

    def kernel(self, feats: Sequence[BlockFeatures], other: Sequence[BlockFeatures] | None = None,
               per_layer: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """The adapted kernel ``Σ_ℓ (A M1² A'ᵀ) ∘ (G M2² G'ᵀ)`` between ``feats`` and ``other``
        (default: the same points); ``per_layer`` returns each layer's term."""
        out = {}
        for i, (f, b) in enumerate(zip(feats, self.blocks, strict=True)):
            o = None if other is None else other[i]
            out[f.name] = f.kernel(b.M1.dense(2), b.M2.dense(2), o)
        return out if per_layer else sum(out.values())

    def predict(self, feats_new: Sequence[BlockFeatures], feats_train: Sequence[BlockFeatures],
                f0_new: torch.Tensor) -> torch.Tensor:
        """``f(x) = f0(x) + K(x, X) α`` at new points (``f0_new``: ``(N', C)``)."""
        K = self.kernel(feats_new, feats_train)
        return f0_new + (K @ self.alpha).reshape(f0_new.shape)


def recover(B: torch.Tensor, omega1: Penalty | str, omega2: Penalty | str, scale: float = 1.0
            ) -> tuple[SymmetricFactor, torch.Tensor, SymmetricFactor, torch.Tensor, PairSolution]:
    """Lemma 5: from ``B = U diag(d) Vᵀ`` the minimizers ``M̂1 = U S1 Uᵀ``,
    ``Ŵ = U diag(d/(s1 s2)) Vᵀ``, ``M̂2 = V S2 Vᵀ`` of
    ``Ω_{ω1}(M1) + Ω_{ω2}(M2) + ‖W‖²`` s.t. ``M1 W M2 = B`` (``s = 1`` beyond the rank).
    Returns ``(M1, W, M2, d, pair solution)``."""
    U, d, Vh = torch.linalg.svd(B.to(torch.float64), full_matrices=False)
    sol = pair_solve(omega1, omega2, d.numpy(), scale)
    s1 = torch.as_tensor(sol.s1, dtype=torch.float64)
    s2 = torch.as_tensor(sol.s2, dtype=torch.float64)
    W = (U * torch.as_tensor(sol.sigma, dtype=torch.float64)) @ Vh
    return SymmetricFactor(U, s1), W, SymmetricFactor(Vh.T.contiguous(), s2), d, sol


def model_a_irls(feats: Sequence[BlockFeatures], r: torch.Tensor,
                 omegas: Sequence[tuple[Penalty | str, Penalty | str]], iters: int = 30,
                 scale: float = 1.0, jitter: float = 0.0, tol: float = 0.0,
                 callback: Callable[[int, float], None] | None = None) -> ModelASolution:
    """Model A / Theorem 2 by alternating exact block minimization (digest §1.14-C) of

        J(M, B) = Σ_ℓ λ[Ω_{ω1ℓ}(M1_ℓ) + Ω_{ω2ℓ}(M2_ℓ)] + ‖M1_ℓ⁻¹ B_ℓ M2_ℓ⁻¹‖²_F
        s.t.  r = Σ_ℓ ∇_{W_ℓ} f0(X) vec(B_ℓ),

    from ``M = I`` (so the first ``B`` is the ridgeless NTK solution, objective ``rᵀK0⁻¹r``):

    1. ``K = Σ_ℓ (A M1² Aᵀ) ∘ (G M2² Gᵀ)``, ``α = K⁻¹ r``, ``B_ℓ = M1² (Σ α a gᵀ) M2²``
       (exact minimizer over ``B`` given ``M``; ``Σ‖W_ℓ‖² = rᵀα``);
    2. per layer ``B_ℓ = U diag(d) Vᵀ`` and eq. (3) per ``d_j`` (exact minimizer over ``M``
       given ``B``, Lemma 5).

    ``objectives`` holds ``J`` after each half step (non-increasing up to round-off); the
    loop stops after ``iters`` rounds or when a round gains less than ``tol·J``.
    ``omegas[ℓ] = (ω1, ω2)``; use ``"fixed"`` for ``M2`` of a last layer with ``C`` outputs.
    ``λ = scale`` (``1`` in the paper)."""
    if len(omegas) != len(feats):
        raise InvalidInputError(f"{len(feats)} layers but {len(omegas)} penalty pairs")
    oms = [(penalty(a), penalty(b)) for a, b in omegas]
    rf = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
    M1 = [SymmetricFactor.identity(f.shape[0]) for f in feats]
    M2 = [SymmetricFactor.identity(f.shape[1]) for f in feats]
    objs: list[float] = []
    ntk_obj = math.nan
    alpha = torch.zeros_like(rf)
    blocks: list[BlockSolution] = []
    for it in range(iters + 1):
        m1sq = [m.dense(2) for m in M1]
        m2sq = [m.dense(2) for m in M2]
        K = sum(f.kernel(a, b) for f, a, b in zip(feats, m1sq, m2sq))
        alpha = kernel_solve(K, rf, jitter)
        fit = float(rf @ alpha)
        pen = sum(scale * (float(np.sum(o1(M1[i].s.numpy()))) + float(np.sum(o2(M2[i].s.numpy()))))
                  for i, (o1, o2) in enumerate(oms))
        objs.append(pen + fit)
        if it == 0:
            ntk_obj = fit
        Bs = [a @ f.pullback(alpha) @ b for f, a, b in zip(feats, m1sq, m2sq)]
        if it == iters or (tol > 0 and len(objs) >= 3 and objs[-3] - objs[-1] <= tol * abs(objs[-1])):
            break
        blocks = []
        total = 0.0
        for i, (B, (o1, o2)) in enumerate(zip(Bs, oms)):
            f1, W, f2, d, sol = recover(B, o1, o2, scale)
            M1[i], M2[i] = f1, f2
            total += float(np.sum(sol.cost))
            blocks.append(BlockSolution(feats[i].name, B, f1, f2, W, d))
        objs.append(total)
        if callback is not None:
            callback(it, total)
    # final blocks: B from the last kernel solve with the current M
    final = []
    for i, B in enumerate(Bs):
        m1inv = M1[i].dense(-1)
        m2inv = M2[i].dense(-1)
        final.append(BlockSolution(feats[i].name, B, M1[i], M2[i], m1inv @ B @ m2inv,
                                   torch.linalg.svdvals(B)))
    return ModelASolution(final, alpha, objs, ntk_obj, oms)


# ---------------------------------------------------------------------------------------------
# direct minimization (small cross-checks)
# ---------------------------------------------------------------------------------------------
def direct_minimize(G: torch.Tensor, r: torch.Tensor, omega: Penalty | str,
                    shape: tuple[int, int] | None = None, omega2: Penalty | str | None = None,
                    restarts: int = 4, seed: int = 0, noise: float = 0.1, maxiter: int = 3000
                    ) -> tuple[float, list[float]]:
    """Minimize the bilinear problem directly over the entries of ``M`` by L-BFGS (float64,
    autograd gradients), from ``restarts`` starts ``I + noise·N(0, 1)``:

    * ``shape=None``: full ``M`` (``P × P``, Theorem 1): ``Ω_ω(M) + rᵀ(G M Mᵀ Gᵀ)⁻¹ r``;
    * ``shape=(P, Q)``: one block whose columns of ``G`` follow the row-major ``vec_r(W)``
      (as :func:`tangentlab.analysis.adaptive_features.features_jacobian`), so
      ``vec_r(M1 W M2) = (M1 ⊗ M2ᵀ) vec_r(W)`` (the column-major form is ``M2ᵀ ⊗ M1``):
      ``Ω_{ω}(M1) + Ω_{ω2}(M2) + rᵀ(G (M1M1ᵀ ⊗ M2ᵀM2) Gᵀ)⁻¹ r``.

    Only for small ``P`` (it forms ``M``). Returns ``(best, all restart values)``."""
    from scipy.optimize import minimize

    o1 = penalty(omega)
    o2 = penalty(omega2) if omega2 is not None else o1
    G = torch.as_tensor(G, dtype=torch.float64)
    rf = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
    P = G.shape[1]
    gen = torch.Generator().manual_seed(seed)
    sizes = [(P, P)] if shape is None else [(shape[0], shape[0]), (shape[1], shape[1])]

    def unpack(x: torch.Tensor) -> list[torch.Tensor]:
        out, k = [], 0
        for a, b in sizes:
            out.append(x[k:k + a * b].reshape(a, b))
            k += a * b
        return out

    def objective(x: torch.Tensor) -> torch.Tensor:
        mats = unpack(x)
        if shape is None:
            (M,) = mats
            pen = o1(torch.linalg.svdvals(M)).sum()
            JM = G @ M
        else:
            M1, M2 = mats
            pen = o1(torch.linalg.svdvals(M1)).sum() + o2(torch.linalg.svdvals(M2)).sum()
            JM = G @ torch.kron(M1, M2.T.contiguous())
        K = JM @ JM.T
        return pen + rf @ torch.linalg.solve(K, rf)

    def fun(xn: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(xn, dtype=torch.float64, requires_grad=True)
        val = objective(x)
        if not torch.isfinite(val):
            return 1e30, np.zeros_like(xn)
        (g,) = torch.autograd.grad(val, x)
        return float(val.detach()), g.numpy()

    vals = []
    for _ in range(restarts):
        x0 = torch.cat([(torch.eye(a, dtype=torch.float64) + noise * torch.randn(a, b, generator=gen,
                                                                              dtype=torch.float64)).reshape(-1)
                        for a, b in sizes]).numpy()
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter, "gtol": 1e-12,
                                                                      "ftol": 1e-15, "maxcor": 30})
        vals.append(float(res.fun))
    return min(vals), vals
