"""Comparison helpers of the property tests: errors relative to the scale of the whole
matrix, so that blocks that are (nearly) zero compare with an absolute tolerance."""

from __future__ import annotations

import torch

import tangentlab as tl

TOL = 1e-8


def close(a: torch.Tensor, b: torch.Tensor, scale: float, tol: float = TOL) -> bool:
    """``‖a − b‖ ≤ tol · (‖b‖ + scale)``."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm()) <= tol * (float(b.norm()) + scale)


def assert_close(a, b, scale: float, what: str, tol: float = TOL) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = float((a - b).norm())
    assert err <= tol * (float(b.norm()) + scale), f"{what}: error {err:.3e} (reference norm {float(b.norm()):.3e})"


def vector(space: tl.ParamSpace, seed: int) -> tl.PVector:
    return tl.PVector.randn(space, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def nonzero_spectra_agree(a: torch.Tensor, b: torch.Tensor, scale: float, what: str, tol: float = 1e-7) -> None:
    """The non-zero eigenvalues of the symmetric ``a`` and ``b`` agree (the rest are ~0)."""
    ea = torch.linalg.eigvalsh(a).flip(0)
    eb = torch.linalg.eigvalsh(b).flip(0)
    r = min(ea.numel(), eb.numel())
    assert_close(ea[:r], eb[:r], scale, what + " (top eigenvalues)", tol)
    for rest in (ea[r:], eb[r:]):
        if rest.numel():
            assert float(rest.abs().max()) <= tol * (scale + float(ea[0].abs())), what + " (remaining eigenvalues)"
