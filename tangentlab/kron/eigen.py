"""The Kronecker-factored eigenbasis (KFE) of a batch of factor pairs.

A layer's parameters form ``G`` matrices ``V_γ`` of shape ``(O, I)``; its KFAC factors are
``A`` (``(G, I, I)``, or ``(G, I)`` when diagonal, e.g. one-hot inputs) and ``B``
(``(G, O, O)``). With ``A = U_A S_A U_Aᵀ`` and ``B = U_B S_B U_Bᵀ`` the KFE coordinates of
``V`` are ``U_Bᵀ V U_A`` (George et al., 2018, eq. 9); a diagonal ``A`` has ``U_A = I``,
written ``None`` so that no rotation is done on that side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch


def sym_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigendecomposition of a batch of symmetric factors, symmetrized first
    (a diagonal factor ``(G, I)``: ``(m, None)``)."""
    if m.dim() == 2:
        return m, None
    e, u = torch.linalg.eigh((m + m.transpose(1, 2)) / 2)
    return e, u


def rotate(v: torch.Tensor, ua: torch.Tensor | None, ub: torch.Tensor) -> torch.Tensor:
    """KFE coordinates ``U_Bᵀ V U_A`` of ``V`` (``(G, O, I)``)."""
    w = ub.transpose(1, 2) @ v
    return w if ua is None else w @ ua


def unrotate(w: torch.Tensor, ua: torch.Tensor | None, ub: torch.Tensor) -> torch.Tensor:
    """Back to parameter coordinates: ``U_B W U_Aᵀ``."""
    v = ub @ w
    return v if ua is None else v @ ua.transpose(1, 2)


def solve_in_basis(v: torch.Tensor, ua: torch.Tensor | None, ub: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``U_B [(U_Bᵀ V U_A) ⊘ D] U_Aᵀ``: the inverse of ``(U_A ⊗ U_B) diag(D) (U_A ⊗ U_B)ᵀ``
    applied to ``V`` (EKFAC composed as rotation · diagonal · rotationᵀ)."""
    return unrotate(rotate(v, ua, ub) / den, ua, ub)


def right_mul(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``V A`` for ``V`` (G, O, I) and ``A`` (G, I, I) or diagonal (G, I)."""
    return v * a[:, None, :] if a.dim() == 2 else v @ a


def eye_like(m: torch.Tensor) -> torch.Tensor:
    """The identity shaped like the factor ``m`` (a vector of ones for a diagonal factor)."""
    if m.dim() == 2:
        return torch.ones_like(m)
    return torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)


def sym_fn(m: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to the eigenvalues of a batch of symmetric matrices (or a diagonal)."""
    if m.dim() == 2:
        return fn(m)
    e, u_ = sym_eigh(m)
    u = cast(torch.Tensor, u_)  # a batch of matrices has eigenvectors
    return (u * fn(e)[:, None, :]) @ u.transpose(1, 2)


__all__ = ["eye_like", "right_mul", "rotate", "solve_in_basis", "sym_eigh", "sym_fn", "unrotate"]
