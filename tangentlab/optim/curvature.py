"""The curvature blocks of the Kronecker-factored optimizers (thesis ch. 4, Algorithm 1), built
with the Kronecker pipeline (:mod:`tangentlab.kron`).

Per block, on recomputation steps: the factors ``A``, ``B`` on the current minibatch (the
rule's ``kfac_factors``, KFAC-expand or KFAC-reduce; SUA for ``conv="sua"``), averaged over ranks, and their eigenbases
(eigenvalues clamped at 0). Per step: the scaling ``s`` in the Kronecker-factored eigenbasis
(KFAC: ``s_B ⊗ s_A``; EKFAC: ``s*`` from the rule's ``kfe_diag``; EKFAC-ra: a running average
kept by the optimizer) and the damped denominator ``D`` (:mod:`tangentlab.kron.damping`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from ..distributed import Reducer
from ..kron import ekfac_shift, kfac_denominator
from ..kron.sua import sua_input_factor, sua_second_moments
from .blocks import ParamBlock
from .ranks import mean_over_ranks, shared_eigh
from .statistics import Stats

if TYPE_CHECKING:
    from ..layers.patch import PatchRule


class Curvature:
    """Factors, eigenbases, scalings and damped denominators of ``blocks``; per-block tensors
    live in the optimizer state ``state(block)`` (``ua``, ``ea``, ``ub``, ``eb`` and, for
    EKFAC, ``s``). ``scaling``: ``"kfac"``, ``"batch"`` (EKFAC) or ``"running"`` (EKFAC-ra);
    ``approx``: the factors' ``"expand"`` or ``"reduce"`` (:meth:`LayerRule.kfac_factors`)."""

    def __init__(self, blocks: list[ParamBlock], state: Callable[[ParamBlock], dict[str, Any]],
                 reducer: Reducer, scaling: str, damping_scheme: str, approx: str = "expand"):
        self.blocks, self.state, self.reducer = blocks, state, reducer
        self.scaling, self.damping_scheme, self.approx = scaling, damping_scheme, approx
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self._den_cache: dict[int, tuple[float, torch.Tensor]] = {}

    def clear_cache(self) -> None:
        self._den_cache.clear()

    # ---- factors and eigenbases (recomputation steps) -----------------------------------
    def local_factors(self, b: ParamBlock, stats: Stats, raw_input: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (``(G, I, I)``, ``(G, I)`` when diagonal) and ``B`` (``(G, O, O)``): means over
        this rank's minibatch. ``raw_input``: the layer's input (SUA weight blocks only)."""
        feat, g, n = stats[b.name]
        if b.part == "kron":
            cols = torch.arange(b.shape[2], device=g.device)
            a, bb = b.rule.kfac_factors(b.module, feat, g, cols, approx=self.approx)
            return cast(torch.Tensor, a) / n, bb / n  # input_factor=True: A is computed
        # SUA: B from the rule, A over input channels
        _, bb = b.rule.kfac_factors(b.module, feat, g, torch.zeros(1, dtype=torch.long, device=g.device),
                                    input_factor=False)
        if b.part == "sua_b":
            a = torch.full((1, 1, 1), float(feat.t), dtype=bb.dtype, device=bb.device)
            return a, bb / n
        x = cast(torch.Tensor, raw_input)  # given for SUA weight blocks
        return sua_input_factor(x, feat.t) / n, bb / n  # the same for all K kernel positions

    def recompute(self, b: ParamBlock, stats: Stats, raw_input: torch.Tensor | None = None) -> None:
        """New factors and eigenbasis of ``b`` (EKFAC-ra: ``s`` reset to ``s_B ⊗ s_A``)."""
        st = self.state(b)
        a, bb = self.local_factors(b, stats, raw_input)
        a, bb = mean_over_ranks(self.reducer, [a.contiguous(), bb.contiguous()], stats[b.name][2])
        ea, ua, eb, ub = shared_eigh(self.reducer, a, bb, self.index[id(b)] % self.reducer.world_size)
        ea, eb = ea.clamp_min(0), eb.clamp_min(0)
        if b.part == "sua_w":  # one decomposition shared by the K kernel positions
            k = b.shape[0]
            ea, ua, eb, ub = (cast(torch.Tensor, t).expand(k, *cast(torch.Tensor, t).shape[1:]).contiguous()
                              for t in (ea, ua, eb, ub))  # a convolution's factors are matrices
        st.update(ua=ua, ea=ea, ub=ub, eb=eb)
        self._den_cache.pop(self.index[id(b)], None)
        if self.scaling == "running":
            st["s"] = eb[:, :, None] * ea[:, None, :]

    # ---- scalings and damping (every step) ----------------------------------------------
    def kfe_second_moments(self, blocks: list[ParamBlock], stats: Stats) -> dict[int, torch.Tensor]:
        """EKFAC's ``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` for each block (keyed by position in
        ``self.blocks``; means over all ranks when distributed): the rule's ``kfe_diag``, the two
        SUA blocks of a convolution from one pass."""
        out: dict[int, torch.Tensor] = {}
        sua: dict[str, dict[str, int]] = {}
        for b in blocks:
            idx = self.index[id(b)]
            feat, g, n = stats[b.name]
            if b.part == "kron":
                st = self.state(b)
                cols = torch.arange(b.shape[2], device=g.device)
                out[idx] = b.rule.kfe_diag(b.module, feat, g, cols, st["ua"], st["ub"]) / n
            else:
                sua.setdefault(b.name, {})[b.part] = idx
        for name, parts in sua.items():
            feat, g, n = stats[name]
            some = self.blocks[next(iter(parts.values()))]
            wi, bi = parts.get("sua_w"), parts.get("sua_b")
            basis: dict[int | None, tuple[torch.Tensor, torch.Tensor]]
            basis = {i: (self.state(self.blocks[i])["ua"], self.state(self.blocks[i])["ub"])
                     for i in (wi, bi) if i is not None}
            rule = cast("PatchRule", some.rule)  # SUA blocks are convolutions
            sw, sb = sua_second_moments(feat.a, rule.shape_g(some.module, feat, g), some.kernel_size,
                                        feat.has_bias, basis.get(wi), basis.get(bi))
            if wi is not None:
                out[wi] = cast(torch.Tensor, sw) / n
            if bi is not None:
                out[bi] = cast(torch.Tensor, sb) / n
        if self.reducer.active:
            n = stats[blocks[0].name][2]
            keys = list(out)
            for k, v in zip(keys, mean_over_ranks(self.reducer, [out[k].contiguous() for k in keys], n)):
                out[k] = v
        return out

    def denominator(self, b: ParamBlock, s: torch.Tensor | None, eps: float) -> torch.Tensor:
        """The damped diagonal ``D`` in the KFE. The parts fixed between recomputations (KFAC's
        whole ``D``; EKFAC's factored shift ``ε + √ε (λ_B ⊗ 1 + 1 ⊗ λ_A)``) are cached per
        block and ``ε``."""
        factored = self.damping_scheme == "factored"
        if not factored and self.scaling != "kfac":
            return cast(torch.Tensor, s) + eps  # EKFAC passes its scaling s
        idx = self.index[id(b)]
        hit = self._den_cache.get(idx)
        if hit is None or hit[0] != eps:
            st = self.state(b)
            ea, eb = st["ea"], st["eb"]
            if self.scaling == "kfac":
                fixed = kfac_denominator(ea, eb, eps, factored)
            else:
                fixed = ekfac_shift(ea, eb, eps)
            hit = (eps, fixed)
            self._den_cache[idx] = hit
        return hit[1] if self.scaling == "kfac" else cast(torch.Tensor, s) + hit[1]


__all__ = ["Curvature"]
