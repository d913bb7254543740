"""The measures of ``fim-quality``: cosine and relative error of vectors, the Frobenius
distance of an exact Fisher block to an approximation (without densifying EKFAC), the
eigenvalues of KFAC/EKFAC and damped solves with each representation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...errors import UnsupportedOperationError
from ...vectors import PVector
from .config import KRON


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``cos(a, b)`` (NaN when either is zero)."""
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (NaN when ``b`` is zero)."""
    den = float(b.norm())
    return float((a - b).norm()) / den if den > 0 else math.nan



def fro_error(f: torch.Tensor, M: Any, cache: dict[bytes, torch.Tensor] | None = None) -> float:
    """``‖f − M‖_F`` for a dense ``f`` on ``M``'s parameter space.

    An EKFAC is not densified (``Q S Qᵀ`` costs ``P_l³``): with ``Q = U_B ⊗ U_A`` orthogonal,
    ``‖f − Q S Qᵀ‖² = ‖f‖² − ‖diag(Qᵀ f Q)‖² + ‖diag(Qᵀ f Q) − s‖²`` over each Kronecker group
    (cross-group entries of ``f`` count fully), where ``diag(Qᵀ f Q)`` is computed from ``f``
    by two Kronecker contractions in ``O(P_l² (O + I))``. Other representations: ``to_dense``.
    ``cache`` (one dict per ``f``) keeps ``f``'s entries regathered in each group's layout."""
    blocks = getattr(M, "blocks", None)
    if type(M).__name__ != "PMatEKFAC" or not isinstance(blocks, list) or not all(
            hasattr(b, name) for b in blocks for name in ("ua", "ub", "s", "index")):
        return float(torch.linalg.matrix_norm(f - M.to_dense()))
    err2 = f.pow(2).sum()
    for blk in blocks:
        n_groups, o, i = blk.s.shape
        for g in range(n_groups):
            idx = blk.index[g].reshape(-1)
            key = idx.cpu().numpy().tobytes()
            f4 = cache.get(key) if cache is not None else None
            if f4 is None:
                f4 = f[idx[:, None], idx[None, :]].reshape(o, i * o * i)
                if cache is not None:
                    cache[key] = f4
            ub = blk.ub[g]
            t = (ub.T @ f4).reshape(o, i, o, i)  # contract the first output index with U_B
            t = torch.einsum("pbcd,cp->pbd", t, ub)  # ... and the second one, keeping p = r
            if blk.ua is None:
                d = torch.diagonal(t, dim1=1, dim2=2)
            else:
                ua = blk.ua[g]
                d = ((t @ ua) * ua[None]).sum(1)  # Σ_bd ua[b,q] t[p,b,d] ua[d,q]
            # within the group: ‖fg‖² − ‖d‖² off the diagonal (in the KFE) + ‖d − s‖² on it
            err2 = err2 - d.pow(2).sum() + (d - blk.s[g]).pow(2).sum()
    return float(err2.clamp_min(0).sqrt())


def eigenvalues(M: Any) -> torch.Tensor:
    """All eigenvalues of ``M``, descending: for KFAC the products of its factors' eigenvalues
    (``M.factors``), for EKFAC its diagonal ``s`` (the basis is orthogonal), otherwise ``M.eigh()``
    (which for the Kronecker representations also builds every eigenvector)."""
    blocks = getattr(M, "blocks", None)
    if type(M).__name__ == "PMatEKFAC" and isinstance(blocks, list) and all(hasattr(b, "s") for b in blocks):
        return torch.sort(torch.cat([b.s.reshape(-1) for b in blocks]), descending=True).values
    factors = getattr(M, "factors", None)
    if type(M).__name__ == "PMatKFAC" and isinstance(factors, dict):
        vals = []
        for pairs in factors.values():
            for a, b in pairs:
                ea = a if a.dim() == 1 else torch.linalg.eigvalsh(a)
                vals.append(torch.outer(torch.linalg.eigvalsh(b), ea).reshape(-1))
        return torch.sort(torch.cat(vals), descending=True).values
    return M.eigh()[0]


def damped_solver(M: Any, rep: str, lam: float, method: str) -> Callable[[PVector], PVector]:
    """``u ↦ (M + λI)⁻¹ u``: KFAC/EKFAC through ``solve(method=)``; the others through
    ``inverse(λ)`` once, then products (per-vector ``solve`` when there is no inverse)."""
    if rep in KRON:
        return lambda u: M.solve(u, lam, method=method)
    try:
        inv = M.inverse(lam)
    except UnsupportedOperationError:
        return lambda u: M.solve(u, lam)
    return inv.mv
