"""Filling KFAC and EKFAC from the engine's per-layer inputs and output gradients.

KFAC takes one pass (factor sums by matmuls, no per-example gradients); EKFAC a
second pass for ``s*`` in the eigenbasis of the first pass's factors (one matmul
per plain Linear layer). Both normalize by the number of examples seen.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import Capture, Engine, LayerCapture
from ..errors import InvalidInputError, UnsupportedLayerError
from ..space import ParamSpace
from .build import CaptureStash, one_pass
from .kron import KfeBlock, KronBlock, PMatEKFAC, PMatKFAC, _eigh, _rot


def kron_layouts(cap: Capture, space: ParamSpace,
                 cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 ) -> list[tuple[LayerCapture, torch.Tensor, torch.Tensor]]:
    """Per layer of ``space``: (its capture, kept homogeneous columns, flat index (G, O, I_kept)).

    The columns and index depend on the layers only: pass the same ``cache`` dict for every
    batch of a pass and they are built once. Raises if a layer has no Kronecker structure
    (no rule defining one, or generic route).
    """
    hooked = {lc.layer.module: lc for lc in cap.layers}
    if cache is not None and cache and all(lay.module in cache and lay.module in hooked for lay in space.layers):
        return [(hooked[lay.module], *cache[lay.module]) for lay in space.layers]
    out, bad = [], []
    for lay in space.layers:
        lc = hooked.get(lay.module)
        layout = lc.rule.kron_layout(lc.module) if lc is not None else None
        if layout is None:
            bad.append(f"{lay.module or '<root>'} ({lay.module_type})")
            continue
        device = lc.g.device
        glob = None
        for p in lay.params:
            idx = layout.index.get(p.local)
            if idx is None:
                bad.append(f"{lay.module} ({lay.module_type}: parameter {p.local})")
                break
            idx = idx.to(device)
            part = torch.where(idx >= 0, idx + p.offset, torch.full_like(idx, -1))
            glob = part if glob is None else torch.where(part >= 0, part, glob)
        else:
            cols = (glob >= 0).all(0).all(0)
            if ((glob >= 0) & ~cols).any():
                raise InvalidInputError(f"layer {lay.module!r}: a selected parameter shares Kronecker "
                                        "columns with an unselected one; select whole parameters")
            out.append((lc, cols.nonzero().flatten(), glob[..., cols]))
            if cache is not None:
                cache[lay.module] = out[-1][1:]
    if bad:
        raise UnsupportedLayerError(
            "KFAC/EKFAC are not defined for " + ", ".join(bad) + "; use representation='mixed' "
            "(EKFAC for Linear/Conv/Embedding, block-diagonal elsewhere), or select Kronecker-"
            "factorable layers with `params=`"
        )
    return out


def build_kfac(engine: Engine, data: Any, centering: bool = False, stash: CaptureStash | None = None) -> PMatKFAC:
    if centering:
        raise InvalidInputError("KFAC of centered tangent features is not defined; use "
                                "representation='ekfac' (exact centered s*) or 'dense'")
    sums: dict[str, list] = {}
    index: dict[str, torch.Tensor] = {}
    layouts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def consume(cap: Capture) -> None:
        for lc, cols, idx in kron_layouts(cap, engine.space, layouts):
            # A depends on the inputs only: taken from the first output block of each batch
            a, b = lc.rule.kfac_factors(lc.module, lc.feat, lc.g, cols, input_factor=cap.first)
            m = lc.layer.module
            if m in sums:
                if a is not None:
                    sums[m][0] += a
                sums[m][1] += b
            else:
                sums[m] = [a, b]
                index[m] = idx

    n, _ = one_pass(engine, data, "KFAC factors", consume, stash=stash, output_blocks=True,
                    reduce=lambda: [t for lay in engine.space.layers for t in sums[lay.module]])
    blocks = [KronBlock(lay.module, index[lay.module], sums[lay.module][0] / n, sums[lay.module][1] / n)
              for lay in engine.space.layers]
    return PMatKFAC(engine.space, blocks, engine.budget)


def kfe_diagonals(engine: Engine, data: Any, space: ParamSpace, blocks: list,
                  centering: bool = False, replay: CaptureStash | None = None) -> list[torch.Tensor]:
    """``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` per block, in the blocks' fixed eigenbases;
    with ``centering``, of the centered features (``− Σ_c (U_Bᵀ M_c U_A)²``)."""
    by_module = {b.module: b for b in blocks}
    sums: dict[str, torch.Tensor] = {}
    layouts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def consume(cap: Capture) -> None:
        for lc, cols, _ in kron_layouts(cap, space, layouts):
            blk = by_module[lc.layer.module]
            s = lc.rule.kfe_diag(lc.module, lc.feat, lc.g, cols, blk.ua, blk.ub)
            sums[blk.module] = sums[blk.module] + s if blk.module in sums else s

    if space != engine.space:
        raise InvalidInputError("the engine's parameter space differs from the matrix's")
    n, mean = one_pass(engine, data, "EKFAC diagonal", consume, centering, output_blocks=True,
                       reduce=lambda: [sums[b.module] for b in blocks], replay=replay)
    out = []
    for blk in blocks:
        s = sums[blk.module] / n
        if mean is not None:
            for c in range(mean.shape[0]):
                s = s - _rot(mean[c][blk.index], blk.ua, blk.ub).pow(2)
        out.append(s)
    return out


def build_ekfac(engine: Engine, data: Any, centering: bool = False) -> PMatEKFAC:
    # the s* pass reuses the factor pass's captures when they fit a quarter of the budget
    stash = CaptureStash(engine.budget.nbytes // 4)
    kfac = build_kfac(engine, data, stash=stash)
    blocks = []
    for blk in kfac.blocks:
        ea, ua = _eigh(blk.a)
        eb, ub = _eigh(blk.b)
        # one basis for all ranks: eigenvector signs may differ between machines
        engine.reducer.broadcast_(ea, ua, eb, ub)
        blocks.append(KfeBlock(blk.module, blk.index, ua, ub, eb[:, :, None] * ea[:, None, :], ea, eb))
    ss = kfe_diagonals(engine, data, engine.space, blocks, centering, replay=stash)
    stash.caps = []
    blocks = [KfeBlock(b.module, b.index, b.ua, b.ub, s, b.ea, b.eb) for b, s in zip(blocks, ss)]
    return PMatEKFAC(engine.space, blocks, engine.budget, engine)


__all__ = ["build_kfac", "build_ekfac", "kfe_diagonals", "kron_layouts"]
