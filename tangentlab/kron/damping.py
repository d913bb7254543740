"""Damping of Kronecker-factored curvature.

* plain: ``(A ⊗ B + λ I)⁻¹``, diagonal in the KFE with denominator ``s_B ⊗ s_A + λ``;
* factored Tikhonov damping with π (Martens & Grosse, 2015, sec. 6.3):
  ``(A + π√λ I)⁻¹ ⊗ (B + √λ/π I)⁻¹`` with ``π = sqrt((tr A / dim A) / (tr B / dim B))``,
  in the KFE ``D = (s_B + √λ/π) ⊗ (s_A + π√λ)``;
* EKFAC's factored damping (George, 2021, thesis appendix A.4): ``√λ`` added to both
  factors' eigenvalues, ``D = s + λ + √λ (λ_B ⊗ 1 + 1 ⊗ λ_A)``.
"""

from __future__ import annotations

import math

import torch

from .eigen import eye_like


def tikhonov_pi(mean_a: torch.Tensor, mean_b: torch.Tensor) -> torch.Tensor:
    """``π = sqrt(mean_a / mean_b)`` from the factors' mean eigenvalues (``tr / dim``), per
    group; guarded against a zero factor (``π`` stays finite and positive)."""
    tiny = torch.finfo(mean_a.dtype).tiny
    return torch.sqrt(mean_a / mean_b.clamp_min(tiny)).clamp_min(tiny)


def factored_inverses(a: torch.Tensor, b: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The damped inverse factors ``(A + π√λ I)⁻¹`` and ``(B + √λ/π I)⁻¹`` (``A`` may be a
    diagonal ``(G, I)``), π from the factors' traces."""
    diagonal = a.dim() == 2
    ta = (a.sum(-1) if diagonal else torch.diagonal(a, dim1=1, dim2=2).sum(-1)) / a.shape[-1]
    tb = torch.diagonal(b, dim1=1, dim2=2).sum(-1) / b.shape[-1]
    pi = tikhonov_pi(ta, tb)
    r = math.sqrt(lam)
    shift_a = (pi * r)[:, None] if diagonal else (pi * r)[:, None, None]
    a = a + shift_a * eye_like(a)
    b = b + (r / pi)[:, None, None] * eye_like(b)
    ia = 1.0 / a if diagonal else torch.linalg.inv(a)
    return ia, torch.linalg.inv(b)


def kfac_denominator(ea: torch.Tensor, eb: torch.Tensor, lam: float, factored: bool) -> torch.Tensor:
    """KFAC's damped denominator ``D`` (``(G, O, I)``) in the KFE from the factors'
    eigenvalues ``ea`` (``(G, I)``) and ``eb`` (``(G, O)``): ``s_B ⊗ s_A + λ`` (plain) or
    ``(s_B + √λ/π) ⊗ (s_A + π√λ)`` (factored, π from the mean eigenvalues)."""
    if not factored:
        return eb[:, :, None] * ea[:, None, :] + lam
    r = math.sqrt(lam)
    pi = tikhonov_pi(ea.mean(-1), eb.mean(-1))
    return (eb + (r / pi)[:, None])[:, :, None] * (ea + (pi * r)[:, None])[:, None, :]


def ekfac_shift(ea: torch.Tensor, eb: torch.Tensor, lam: float) -> torch.Tensor:
    """The part of EKFAC's factored denominator fixed by the eigenbasis:
    ``λ + √λ (λ_B ⊗ 1 + 1 ⊗ λ_A)`` (``D = s + shift``)."""
    return math.sqrt(lam) * (eb[:, :, None] + ea[:, None, :]) + lam


__all__ = ["ekfac_shift", "factored_inverses", "kfac_denominator", "tikhonov_pi"]
