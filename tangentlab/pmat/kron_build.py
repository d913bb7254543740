"""Filling KFAC and EKFAC from the engine's per-layer inputs and output gradients.

KFAC takes one pass (factor sums by matmuls, no per-example gradients); EKFAC a
second pass for ``s*`` in the eigenbasis of the first pass's factors (one matmul
per plain Linear layer). Both normalize by the number of examples seen. The per-capture
statistics are those of the Kronecker pipeline (:mod:`tangentlab.kron.stats`).
"""

from __future__ import annotations

from typing import Any, cast

import torch

from ..engine import Engine, OutputBlocks
from ..engine.passes import CaptureCache, one_pass
from ..errors import InvalidInputError
from ..kron import FactorSums, check_approx, kfe_diagonals, kron_layouts, sym_eigh
from .kron import KfeBlock, KronBlock, PMatEKFAC, PMatKFAC


def build_kfac(engine: Engine, data: Any, centering: bool = False, stash: CaptureCache | None = None,
               kfac_approx: str = "expand") -> PMatKFAC:
    """KFAC from one pass; ``kfac_approx``: ``"expand"`` or ``"reduce"`` for weights shared over
    positions (:mod:`tangentlab.kron.stats`)."""
    check_approx(kfac_approx)
    if centering:
        raise InvalidInputError("KFAC of centered tangent features is not defined; use "
                                "representation='ekfac' (exact centered s*) or 'dense'")
    sums = FactorSums(engine.space, kfac_approx)
    n, _ = one_pass(engine, data, "KFAC factors", sums.add, stash=stash, merge=True, output_blocks=OutputBlocks.auto(),
                    reduce=sums.accumulators)
    blocks = [KronBlock(*layer) for layer in sums.means(n)]
    return PMatKFAC(engine.space, blocks, engine.budget)


def build_ekfac(engine: Engine, data: Any, centering: bool = False, kfac_approx: str = "expand") -> PMatEKFAC:
    """EKFAC: the eigenbasis of the ``kfac_approx`` factors, ``s*`` from the per-example
    gradients (whatever the factors' approximation)."""
    check_approx(kfac_approx)
    # the s* pass reuses the factor pass's captures when they fit a quarter of the budget
    stash = CaptureCache(engine.budget.nbytes // 4)
    kfac = build_kfac(engine, data, stash=stash, kfac_approx=kfac_approx)
    blocks = []
    for blk in kfac.blocks:
        ea, ua = sym_eigh(blk.a)
        eb, ub = sym_eigh(blk.b)
        # one basis for all ranks: eigenvector signs may differ between machines
        engine.reducer.broadcast_(ea, ua, eb, ub)
        ub_ = cast(torch.Tensor, ub)  # B is a matrix: it has eigenvectors
        blocks.append(KfeBlock(blk.module, blk.index, ua, ub_, eb[:, :, None] * ea[:, None, :], ea, eb))
    ss = kfe_diagonals(engine, data, engine.space, blocks, centering, replay=stash)
    stash.caps = []
    blocks = [KfeBlock(b.module, b.index, b.ua, b.ub, s, b.ea, b.eb) for b, s in zip(blocks, ss)]
    return PMatEKFAC(engine.space, blocks, engine.budget, engine)


__all__ = ["build_kfac", "build_ekfac", "kfe_diagonals", "kron_layouts"]
