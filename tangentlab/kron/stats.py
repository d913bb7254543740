"""Factor statistics and the eigen-corrected diagonal, accumulated from the engine's captures.

For a layer whose per-example gradient of group ``γ`` is ``G_{c,n} = Σ_t g_{c,n,t} ã_{n,t}ᵀ``
(rows: outputs, columns: homogeneous inputs; the rule's
:class:`~tangentlab.layers.base.KronLayout`), over ``N`` examples:

* KFAC / KFC factors (Martens & Grosse, 2015; Grosse & Martens, 2016), for a weight shared
  over ``T`` positions in one of the two treatments of Eschenhagen et al. (2023) (the rule's
  ``kfac_factors`` with ``approx``):

  - ``"expand"`` (positions as extra examples): ``A = (1/N) Σ_n Σ_t ã ãᵀ`` and
    ``B = (1/N) Σ_n Σ_c (1/T) Σ_t g gᵀ``; exact for deep linear networks whose outputs keep
    the positions (a loss per position), for the Gaussian likelihood;
  - ``"reduce"`` (positions reduced first): ``A = (1/N) Σ_n â âᵀ``, ``â = (1/T) Σ_t ã``, and
    ``B = (1/N) Σ_n Σ_c ĝ ĝᵀ``, ``ĝ = Σ_t g``; exact for deep linear networks whose positions
    are mean- or sum-pooled before a linear read-out (the output gradients are then the same
    at every position);
* EKFAC's diagonal in the Kronecker-factored eigenbasis (George et al., 2018, eq. 10):
  ``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` (the rule's ``kfe_diag``).

The accumulators here sum one capture at a time; whoever drives the pass (the
representations' builders, the optimizers) divides by ``N`` and reduces over ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import Capture, Engine, LayerCapture, OutputBlocks
from ..engine.passes import CaptureCache, one_pass
from ..errors import InvalidInputError, UnsupportedLayerError
from ..layers.patch import KFAC_APPROXIMATIONS, check_approx
from ..space import ParamSpace
from .eigen import rotate

Layout = tuple[torch.Tensor, torch.Tensor]  # (kept homogeneous columns, flat index (G, O, I_kept))


def kron_layouts(cap: Capture, space: ParamSpace, cache: dict[str, Layout] | None = None,
                 ) -> list[tuple[LayerCapture, torch.Tensor, torch.Tensor]]:
    """Per layer of ``space``: (its capture, kept homogeneous columns, flat index (G, O, I_kept)).

    The columns and index depend on the layers only: pass the same ``cache`` dict for every
    batch of a pass and they are built once. Raises if a layer has no Kronecker structure
    (no rule defining one, or generic route).
    """
    hooked = {lc.layer.module: lc for lc in cap.layers}
    if cache is not None and cache and all(lay.module in cache and lay.module in hooked for lay in space.layers):
        return [(hooked[lay.module], *cache[lay.module]) for lay in space.layers]
    out: list[tuple[LayerCapture, torch.Tensor, torch.Tensor]] = []
    bad: list[str] = []
    for lay in space.layers:
        lc = hooked.get(lay.module)
        layout = lc.rule.kron_layout(lc.module) if lc is not None else None
        if lc is None or layout is None:
            bad.append(f"{lay.module or '<root>'} ({lay.module_type})")
            continue
        device = lc.g.device
        glob: Any = None
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


class FactorSums:
    """``Σ A`` and ``Σ B`` per layer of ``space`` over the captures given to :meth:`add`
    (``A`` only from a batch's first output block: it depends on the inputs only);
    ``approx``: ``"expand"`` or ``"reduce"`` (the module docstring)."""

    def __init__(self, space: ParamSpace, approx: str = "expand"):
        self.space = space
        self.approx = check_approx(approx)
        self.sums: dict[str, list[Any]] = {}
        self.index: dict[str, torch.Tensor] = {}
        self._layouts: dict[str, Layout] = {}

    def add(self, cap: Capture) -> None:
        for lc, cols, idx in kron_layouts(cap, self.space, self._layouts):
            a, b = lc.rule.kfac_factors(lc.module, lc.feat, lc.g, cols, input_factor=cap.first,
                                        approx=self.approx)
            m = lc.layer.module
            if m in self.sums:
                if a is not None:
                    self.sums[m][0] += a
                self.sums[m][1] += b
            else:
                self.sums[m] = [a, b]
                self.index[m] = idx

    def accumulators(self) -> list[torch.Tensor]:
        """The sums, in the same order on every rank (to reduce over ranks in place)."""
        return [t for lay in self.space.layers for t in self.sums[lay.module]]

    def means(self, n: int) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer: (module path, flat index, ``A``, ``B``), the sums divided by ``n``."""
        return [(lay.module, self.index[lay.module], self.sums[lay.module][0] / n, self.sums[lay.module][1] / n)
                for lay in self.space.layers]


class KfeSums:
    """``Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` per layer in fixed eigenbases ``bases``
    (``{module path: (U_A or None, U_B)}``) over the captures given to :meth:`add`."""

    def __init__(self, space: ParamSpace, bases: dict[str, tuple[torch.Tensor | None, torch.Tensor]]):
        self.space, self.bases = space, bases
        self.sums: dict[str, torch.Tensor] = {}
        self._layouts: dict[str, Layout] = {}

    def add(self, cap: Capture) -> None:
        for lc, cols, _ in kron_layouts(cap, self.space, self._layouts):
            m = lc.layer.module
            ua, ub = self.bases[m]
            s = lc.rule.kfe_diag(lc.module, lc.feat, lc.g, cols, ua, ub)
            self.sums[m] = self.sums[m] + s if m in self.sums else s

    def accumulators(self) -> list[torch.Tensor]:
        return [self.sums[lay.module] for lay in self.space.layers]


def kfe_diagonals(engine: Engine, data: Any, space: ParamSpace, blocks: list[Any],
                  centering: bool = False, replay: CaptureCache | None = None) -> list[torch.Tensor]:
    """``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` per block, in the blocks' fixed eigenbases;
    with ``centering``, of the centered features (``− Σ_c (U_Bᵀ M_c U_A)²``)."""
    if space != engine.space:
        raise InvalidInputError("the engine's parameter space differs from the matrix's")
    sums = KfeSums(space, {b.module: (b.ua, b.ub) for b in blocks})
    n, mean = one_pass(engine, data, "EKFAC diagonal", sums.add, centering, merge=True,
                       output_blocks=OutputBlocks.auto(), reduce=sums.accumulators, replay=replay)
    out = []
    for blk, total in zip(blocks, sums.accumulators()):
        s = total / n
        if mean is not None:
            for c in range(mean.shape[0]):
                s = s - rotate(mean[c][blk.index], blk.ua, blk.ub).pow(2)
        out.append(s)
    return out


__all__ = ["KFAC_APPROXIMATIONS", "FactorSums", "KfeSums", "check_approx", "kron_layouts"]
