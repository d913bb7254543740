"""Data-parallel training: statistics averaged over the ranks weighted by their batch sizes,
eigendecompositions dealt round-robin (block ``k`` on rank ``k mod world``) and broadcast,
so that every rank applies the same preconditioner."""

from __future__ import annotations

from typing import cast

import torch

from ..distributed import Reducer
from ..kron import sym_eigh


def mean_over_ranks(reducer: Reducer, tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Means over this rank's ``n`` examples → means over all ranks' examples."""
    if not reducer.active:
        return tensors
    total = reducer.total(n, "examples in this step's batch", tensors[0].device)
    sums = [t * n for t in tensors]
    reducer.sum_(*sums)
    return [t / total for t in sums]


def shared_eigh(reducer: Reducer, a: torch.Tensor, b: torch.Tensor, owner: int,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(λ_A, U_A, λ_B, U_B)`` of the factors (``U_A = None`` for a diagonal ``A``), computed on
    rank ``owner`` and broadcast (eigenvector signs may differ between machines)."""
    diagonal = a.dim() == 2
    if reducer.rank == owner:
        ea, ua = sym_eigh(a)
        eb, ub = sym_eigh(b)
    else:
        ea, ua = (a, None) if diagonal else (a.new_empty(a.shape[:2]), torch.empty_like(a))
        eb, ub = b.new_empty(b.shape[:2]), torch.empty_like(b)
    if diagonal:  # every rank holds the same averaged diagonal already
        reducer.broadcast_(eb, ub, src=owner)
    else:
        reducer.broadcast_(ea, ua, eb, ub, src=owner)
    return ea, ua, eb, cast(torch.Tensor, ub)  # b is a matrix: it has eigenvectors


__all__ = ["mean_over_ranks", "shared_eigh"]
