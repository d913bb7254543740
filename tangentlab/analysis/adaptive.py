"""The adaptive tangent feature model (LeJeune & Alemohammad, "Adaptive tangent feature
perspective of neural networks", CPAL 2024): the solvers.

Model. With initial tangent features ``J`` (rows ``∇f_{θ0}(x_i)``, ``N·C × P``, row
``i·C + c``) and residuals ``r = ŷ − f_{θ0}(X)``, eq. (1) of the paper is

    min_{M, θ}  Ω(M) + ‖θ − θ0‖²   s.t.  r = J M (θ − θ0),

and eq. (2) its equivalent form ``min_β Ω̃(β) s.t. r = Jβ`` with ``β = M(θ − θ0)``.

Penalties ``ω`` and their effective and joint forms live in :mod:`.adaptive_penalties`
(re-exported here).

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
from typing import cast

import numpy as np
import torch

from ..errors import InvalidInputError
from .adaptive_penalties import (
    PENALTY_NAMES,
    PairSolution,
    Penalty,
    abs_power,
    custom,
    effective_argmin,
    effective_penalty,
    effective_spectral_penalty,
    fixed_identity,
    joint_argmin,
    joint_effective_penalty,
    joint_penalty,
    minimize_bounded,
    pair_solve,
    penalty,
    square,
    squared_deviation,
)

__all__ = [
    "Penalty", "squared_deviation", "abs_power", "fixed_identity", "square", "custom", "PENALTY_NAMES",
    "penalty", "minimize_bounded", "effective_argmin", "effective_penalty", "joint_argmin", "joint_penalty",
    "PairSolution", "pair_solve", "joint_effective_penalty", "effective_spectral_penalty", "kernel_solve",
    "Theorem1Solution", "theorem1", "DiagonalSolution", "diagonal_irls", "BlockFeatures", "SymmetricFactor",
    "BlockSolution", "ModelASolution", "recover", "model_a_irls", "direct_minimize",
]


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
        return out if per_layer else cast(torch.Tensor, sum(out.values()))

    def predict(self, feats_new: Sequence[BlockFeatures], feats_train: Sequence[BlockFeatures],
                f0_new: torch.Tensor) -> torch.Tensor:
        """``f(x) = f0(x) + K(x, X) α`` at new points (``f0_new``: ``(N', C)``)."""
        K = cast(torch.Tensor, self.kernel(feats_new, feats_train))
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
    """Model A / Theorem 2 by alternating exact block minimization of

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
        K = cast(torch.Tensor, sum(f.kernel(a, b) for f, a, b in zip(feats, m1sq, m2sq)))
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
