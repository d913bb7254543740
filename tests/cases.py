"""Cached builds shared by the test modules: one model + oracle Fisher per architecture."""

from __future__ import annotations

import functools
import warnings

import torch

import tangentlab as tl
from tangentlab.pmat.registry import lookup, representations

from . import oracle
from .models import ARCHS

#: The representations that hold part of ``F`` exactly (``keeps`` set in the registry), so
#: that every verb can be checked against the oracle; approximations (KFAC, EKFAC, mixed)
#: have their own tests.
REPRESENTATIONS = [r.name for r in representations() if r.keeps is not None]


@functools.cache
def arch_case(arch: str):
    """``(model, x, y, F_oracle)`` for the exact classification Fisher (float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(sum(map(ord, arch)))
        model, x, y = ARCHS[arch]()
        return model, x, y, oracle.fisher_exact(model, x)
    finally:
        torch.set_default_dtype(old)


@functools.cache
def built(arch: str, rep: str):
    """The tangentlab Fisher of ``arch`` in representation ``rep`` (batches of 4: several batches)."""
    model, x, y, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.fim(model, (x, y), "exact", rep, batch_size=4)


def restrict(rep: str, space: tl.ParamSpace, F: torch.Tensor) -> torch.Tensor:
    """What representation ``rep`` keeps of the dense matrix ``F`` on ``space`` (its ``keeps``)."""
    keeps = lookup(rep).keeps
    if keeps == "diagonal":
        return torch.diag(torch.diagonal(F))
    if keeps == "quasi-diagonal":
        return torch.where(tl.PMatQuasiDiag.mask(space).to(F.device), F, torch.zeros_like(F))
    if keeps == "layer blocks":
        mask = torch.zeros_like(F, dtype=torch.bool)
        for lay in space.layers:
            mask[lay.slice, lay.slice] = True
        return torch.where(mask, F, torch.zeros_like(F))
    if keeps != "all":
        raise ValueError(f"no oracle for a representation keeping {keeps!r}")
    return F


def reference(arch: str, rep: str) -> torch.Tensor:
    """The dense matrix a representation should equal, derived from the oracle."""
    model, _, _, F = arch_case(arch)
    return restrict(rep, tl.ParamSpace.from_model(model), F)
