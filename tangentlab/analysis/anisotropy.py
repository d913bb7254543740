"""Kernel alignment, RKHS norms and neural anisotropy directions of a scalar network
(Ortiz-Jiménez et al., "What can linearized neural networks actually say about
generalization?", NeurIPS 2021).

Conventions (all reductions in float64):

* **Gram convention.** ``K = J Jᵀ`` is the NTK Gram matrix of a scalar model on ``m``
  points (``tl.ntk(model, x).as_matrix()``), ``u_j`` its unit eigenvectors in decreasing
  order of eigenvalue ``λ^G_j`` (:func:`tangentlab.analysis.eigh_desc`). The alignment
  of a vector ``f ∈ Rᵐ`` is ``α^G(f) = fᵀKf / fᵀf = ‖Jᵀf‖² / ‖f‖²``, so ``α^G(u_j) = λ^G_j``.
* **Operator convention** (the paper's Lemma 1, empirical measure on the ``m`` points):
  ``‖f‖²₂ = fᵀf/m``, ``α(f) = E_{x,x'} f(x) Θ(x,x') f(x') = fᵀKf/m²`` and the RKHS norm
  ``‖f‖²_Θ = fᵀK⁻¹f`` (the same in both conventions). Lemma 1,
  ``‖f‖²_Θ ≥ ‖f‖⁴₂/α(f)``, reads ``fᵀK⁻¹f ≥ (fᵀf)²/(fᵀKf)`` (Cauchy–Schwarz in the
  eigenbasis), with equality iff ``f`` is an eigenvector.
* **Eigenfunction targets.** ``φ_j(x_i) = √m u_{j,i}``; the binary target is
  ``sign(φ_j)`` with ``sign(0) := +1``. Eigenvectors are returned by ``eigh`` with an
  arbitrary sign; :func:`canonical_signs` fixes it (largest-magnitude entry positive).
  Indices are **0-based** (``j = 0`` is the top eigenvector).
* **Energy concentration** of labels ``y`` on the top-``K`` eigenvectors ``Φ_K``:
  ``E_K = ‖Φ_K y‖₂/‖y‖₂`` and its square ``E_K²`` (both are reported; the paper's text
  shows the unsquared ratio). Random labels give ``E_K² ≈ K/m``.
* **Neural anisotropy directions** (Theorem 1). For a scalar model ``f_θ : R^d → R``
  and ``x ∼ N(0, I_d)``, the linear predictor ``g_u(x) = uᵀx`` (``‖u‖ = 1``) has alignment
  ``α(g_u) = ‖E_x[(uᵀx) ∇_θ f(x)]‖² = ‖E_x[∇²_{x,θ} f(x)] u‖²`` (Stein's lemma). With
  ``M = E_x ∇²_{x,θ} f ∈ R^{P×d}`` stored transposed as ``A = Mᵀ ∈ R^{d×P}``
  (``A[k, p] = E ∂²f/∂x_k∂θ_p``), the NADs are the left singular vectors of ``A`` (right
  singular vectors of ``M``) in decreasing order of singular value ``s_j``, and
  ``α(g_{v_j}) = s_j²``. The paper evaluates ``M`` at the origin instead of the
  expectation (``n_samples=0`` here); both are supported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..engine.contexts import keep_tensors, shared_modules
from ..errors import InvalidInputError
from .kernels import _matrix, eigh_desc, label_energy

if TYPE_CHECKING:
    from ..maps import PushForwardDense


# ---------------------------------------------------------------------------------------------
# kernels: alignment, RKHS norm, Lemma 1
# ---------------------------------------------------------------------------------------------
def _columns(F: Any, m: int) -> torch.Tensor:
    """``F`` as an ``(m, k)`` float64 matrix of column vectors (a 1-D vector is one column)."""
    F = torch.as_tensor(F).to(torch.float64)
    if F.dim() == 1:
        F = F.unsqueeze(1)
    if F.dim() != 2 or F.shape[0] != m:
        raise InvalidInputError(f"expected vectors of length {m} (as columns), got shape {tuple(F.shape)}")
    return F


def alignment(K: Any, F: Any) -> torch.Tensor:
    """Gram-convention alignments ``α^G(f) = fᵀKf / fᵀf`` of the columns of ``F`` (``(m,)`` or
    ``(m, k)``) under the Gram matrix ``K`` (``(m, m)``); returns ``(k,)``."""
    Km = _matrix(K)
    Fm = _columns(F, Km.shape[0])
    den = (Fm * Fm).sum(0)
    if (den <= 0).any():
        raise InvalidInputError("alignment of a zero vector")
    return (Fm * (Km @ Fm)).sum(0) / den


def _eig_cutoff(evals: torch.Tensor, rcond: float | None) -> torch.Tensor:
    """Mask of the eigenvalues kept by the pseudo-inverse: ``λ > rcond · λ_max`` (default
    ``rcond = m · eps``)."""
    if rcond is None:
        rcond = evals.numel() * torch.finfo(torch.float64).eps
    return evals > rcond * evals.max().clamp_min(0)


def lemma1(K: Any, F: Any, rcond: float | None = None) -> dict[str, torch.Tensor]:
    """RKHS norms and Lemma 1 bounds of the columns ``f`` of ``F`` on the Gram matrix ``K``.

    With the eigenpairs ``(λ_j, u_j)`` of ``K`` and ``c_j = u_jᵀf``, the pseudo-inverse keeps
    the eigenvalues above ``rcond · λ_max`` (set ``R``) and the returned quantities are:

    * ``rkhs_norm_sq`` = ``fᵀK⁺f`` = ``Σ_{j∈R} c_j²/λ_j`` (``‖f‖²_Θ`` on the sample);
    * ``bound`` = ``(Σ_{j∈R} c_j²)² / Σ_{j∈R} λ_j c_j²``, Lemma 1's ``‖f_R‖⁴₂/α(f_R)`` for the
      part ``f_R`` of ``f`` in the kept eigenspace, so ``bound ≤ rkhs_norm_sq`` exactly
      (for a positive definite ``K`` and ``rcond=0`` this is ``(fᵀf)²/(fᵀKf)``);
    * ``alpha`` = ``fᵀKf/m²`` (operator convention), ``alpha_gram`` = ``fᵀKf/fᵀf``,
      ``norm_sq`` = ``fᵀf/m``;
    * ``captured`` = ``Σ_{j∈R} c_j² / fᵀf`` (1 when nothing is cut off);
    * ``gen_term`` = ``√(‖f‖²_Θ · E_x Θ(x,x) / m)``, the complexity term of the kernel
      generalization bound (eq. 2), with ``E_x Θ(x,x) = tr K / m``.
    """
    Km = _matrix(K)
    m = Km.shape[0]
    Fm = _columns(F, m)
    evals, evecs = eigh_desc(Km)
    keep = _eig_cutoff(evals, rcond)
    C = evecs.T @ Fm  # (m, k) coordinates in the eigenbasis
    Ck, lk = C[keep], evals[keep].unsqueeze(1)
    rkhs = (Ck ** 2 / lk).sum(0)
    kept = (Ck ** 2).sum(0)
    quad_kept = (lk * Ck ** 2).sum(0)
    ff = (Fm * Fm).sum(0)
    fKf = (Fm * (Km @ Fm)).sum(0)
    return {"rkhs_norm_sq": rkhs, "bound": kept ** 2 / quad_kept, "alpha": fKf / m ** 2, "alpha_gram": fKf / ff,
            "norm_sq": ff / m, "captured": kept / ff,
            "gen_term": torch.sqrt(rkhs * torch.diagonal(Km).mean() / m)}


# ---------------------------------------------------------------------------------------------
# eigenfunctions
# ---------------------------------------------------------------------------------------------
def canonical_signs(evecs: torch.Tensor) -> torch.Tensor:
    """Flip each column of ``evecs`` so that its entry of largest magnitude is positive."""
    U = torch.as_tensor(evecs)
    idx = U.abs().argmax(0)
    s = torch.sign(U[idx, torch.arange(U.shape[1])])
    s[s == 0] = 1
    return U * s


def eigenfunction_targets(evecs: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Binary targets ``sign(φ_j)`` (``sign(0) := +1``) of the 0-based eigenvector columns
    ``indices`` of ``evecs`` (``(m, r)``); returns ``(len(indices), m)`` float64 in ``{±1}``."""
    U = torch.as_tensor(evecs).to(torch.float64)
    idx = [int(j) for j in indices]
    if any(j < 0 or j >= U.shape[1] for j in idx):
        raise InvalidInputError(f"eigenvector indices must lie in 0..{U.shape[1] - 1}, got {idx}")
    V = U[:, idx].T
    return torch.where(V >= 0, 1.0, -1.0).to(torch.float64)


def binarization_cosine(evecs: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """``cos(sign(φ_j), φ_j) = ‖u_j‖₁ / √m`` for the unit eigenvectors ``u_j`` (paper: ≈ 0.78)."""
    U = torch.as_tensor(evecs).to(torch.float64)[:, [int(j) for j in indices]]
    S = torch.where(U >= 0, 1.0, -1.0).to(torch.float64)
    return (S * U).sum(0) / (S.norm(dim=0) * U.norm(dim=0))


def energy_concentration(evecs: torch.Tensor, y: torch.Tensor, ks: Sequence[int]) -> dict[int, tuple[float, float]]:
    """``{K: (E_K, E_K²)}`` with ``E_K = ‖Φ_K y‖/‖y‖`` for the top-``K`` eigenvector columns of
    ``evecs`` (decreasing eigenvalues) and float targets ``y`` (e.g. ±1)."""
    y = torch.as_tensor(y).to(torch.float64)
    cum = label_energy(evecs, y)
    out = {}
    for k in ks:
        k = int(k)
        if not 1 <= k <= cum.numel():
            raise InvalidInputError(f"energy concentration order K={k} must lie in 1..{cum.numel()}")
        e2 = float(cum[k - 1])
        out[k] = (math.sqrt(max(e2, 0.0)), e2)
    return out


# ---------------------------------------------------------------------------------------------
# neural anisotropy directions (Theorem 1)
# ---------------------------------------------------------------------------------------------
def _params(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], {n: p.detach() for n, p in named}


def _weights(weights: Any, x: torch.Tensor) -> torch.Tensor:
    """Per-example weights ``(N,)`` on ``x``'s dtype and device; ``None`` means ``1/N`` each."""
    n = x.shape[0]
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    if w.shape != (n,):
        raise InvalidInputError(f"weights must have shape ({n},) (one per example), got {tuple(w.shape)}")
    return w


def mixed_derivative(model: nn.Module, x: torch.Tensor, weights: torch.Tensor | None = None,
                     batch_size: int = 256) -> torch.Tensor:
    """``A = Mᵀ`` with ``M = Σ_i w_i ∇²_{x,θ} f(x_i)`` (default ``w_i = 1/N``): a ``(d, P)`` tensor,
    ``A[k, p] = Σ_i w_i ∂²f(x_i)/∂x_k ∂θ_p`` (parameters in ``model.parameters()`` order,
    inputs flattened). ``f`` must be scalar (output ``(N,)`` or ``(N, 1)``) and act on each
    example separately (eval mode). Computed with ``torch.func``: ``d`` reverse-mode passes
    through the input gradient; nothing larger than ``(d, P)`` is formed."""
    from torch.func import functional_call, grad, jacrev

    x = torch.as_tensor(x)
    n = x.shape[0]
    if n == 0:
        raise InvalidInputError("mixed_derivative needs at least one input")
    weights = _weights(weights, x)
    names, params = _params(model)
    d = x[0].numel()

    def g(p: dict[str, torch.Tensor], xb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        def total(xx: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, p, (xx,))
            if out.dim() > 1 and out.shape[1:].numel() != 1:
                raise InvalidInputError(f"the model must have one output, got output shape {tuple(out.shape)}")
            return (out.reshape(-1) * wb).sum()

        return grad(total)(xb).reshape(-1, d).sum(0)  # Σ_i w_i ∇_x f(x_i): (d,)

    A: Any = None
    with keep_tensors(shared_modules(model)):  # a module used at several places keeps its Parameters
        for s in range(0, n, batch_size):
            jac = jacrev(g)(params, x[s:s + batch_size], weights[s:s + batch_size])
            blk = torch.cat([jac[nm].reshape(d, -1) for nm in names], dim=1)
            A = blk if A is None else A + blk
    return A


def neural_anisotropy_directions(model: nn.Module, input_shape: Sequence[int], n_samples: int = 0,
                                 generator: torch.Generator | None = None, batch_size: int = 256,
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NADs of a scalar ``model`` (Theorem 1): ``(alphas (d,), directions (d, d), A (d, P))``.

    ``A`` is :func:`mixed_derivative` at the origin (``n_samples=0``, the paper's choice) or
    averaged over ``n_samples`` draws ``x ∼ N(0, I)``; ``directions[j]`` is the ``j``-th left
    singular vector of ``A`` (unit, largest-magnitude entry positive) and ``alphas[j] = s_j²``
    the predicted alignment ``α(g_{v_j})``, decreasing. ``d = prod(input_shape)``.
    """
    p0 = next(model.parameters())
    shape = (max(1, n_samples), *[int(s) for s in input_shape])
    if n_samples <= 0:
        x = torch.zeros(shape, dtype=p0.dtype, device=p0.device)
    else:
        x = torch.randn(shape, generator=generator, dtype=p0.dtype).to(p0.device)
    A = mixed_derivative(model, x, batch_size=batch_size)
    U, S, _ = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    d = A.shape[0]
    if S.numel() < d:  # fewer parameters than inputs: complete the basis with the null space
        Q, _ = torch.linalg.qr(torch.cat([U, torch.eye(d, dtype=U.dtype, device=U.device)], 1))
        U, S = Q[:, :d], torch.cat([S, S.new_zeros(d - S.numel())])
    return S ** 2, canonical_signs(U).T.contiguous(), A


def predicted_linear_alignment(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``α(g_u) = ‖M u‖² = ‖Aᵀu‖²`` for the rows ``u`` of ``U`` (``(k, d)`` or ``(d,)``), each
    normalized to unit length (Theorem 1); returns ``(k,)``."""
    U = torch.as_tensor(U).to(dtype=A.dtype, device=A.device)
    if U.dim() == 1:
        U = U.unsqueeze(0)
    U = U / U.norm(dim=1, keepdim=True)
    return ((U @ A) ** 2).sum(1).to(torch.float64)


def linear_alignment_mc(model: nn.Module, U: torch.Tensor, x: torch.Tensor, batch_size: int = 500,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo alignments of the linear predictors ``g_u(x) = uᵀx`` (rows of ``U``, unit) on
    samples ``x`` (``(N, *input_shape)``): ``a_i = (uᵀx_i) ∇_θ f(x_i)`` and

    * the unbiased U-statistic ``(‖Σ a_i‖² − Σ ‖a_i‖²) / (N(N−1))`` of
      ``E_{x≠x'}[g_u(x) Θ(x,x') g_u(x')]``;
    * the plug-in ``‖(1/N) Σ a_i‖²`` (biased upwards by ``tr Cov(a)/N``).

    Per-example gradients come from :func:`tangentlab.jacobian` in chunks of ``batch_size``;
    returns ``(unbiased (k,), plugin (k,))``."""
    from ..api import jacobian

    U = torch.as_tensor(U).to(dtype=torch.float64, device=x.device)
    if U.dim() == 1:
        U = U.unsqueeze(0)
    U = U / U.norm(dim=1, keepdim=True)
    n = x.shape[0]
    if n < 2:
        raise InvalidInputError("linear_alignment_mc needs at least two samples")
    S: Any = None
    Q = torch.zeros(U.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size]
        J = cast("PushForwardDense", jacobian(model, (xb,), progress=False))
        G = J.to_dense().reshape(xb.shape[0], -1).to(torch.float64)
        c = xb.reshape(xb.shape[0], -1).to(torch.float64) @ U.T  # (b, k)
        blk = G.T @ c  # (P, k)
        S = blk if S is None else S + blk
        Q += (c ** 2 * (G ** 2).sum(1, keepdim=True)).sum(0)
    tot = (S ** 2).sum(0)
    return (tot - Q) / (n * (n - 1)), tot / n ** 2


def alignment_vector(model: nn.Module, x: torch.Tensor, f: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """``Σ_i w_i f(x_i) ∇_θ f_θ(x_i)`` as a flat ``(P,)`` vector (default ``w_i = 1/N``), one
    backward product ``Jᵀ(w ⊙ f)``; ``‖·‖²`` of it is ``α(f)`` (eq. 10) without a Gram matrix."""
    from ..api import jacobian
    from ..vectors import FVector

    n = x.shape[0]
    w = _weights(weights, x)
    J = jacobian(model, (x,), implicit=True, progress=False)
    u = (w * torch.as_tensor(f, dtype=x.dtype, device=x.device).reshape(-1)).reshape(n, 1)
    return J.T.mv(FVector(u)).flat()
