"""Shared maths of layers whose output is ``W ã_t`` at positions ``t`` (Linear, Conv).

Features are the homogeneous inputs ``ã`` of shape ``(N, T, G, I)`` (``T``
positions: 1 for a plain Linear, sequence length or spatial positions
otherwise; ``G`` groups; ``I`` inputs per group, a trailing 1 appended when the
layer has a bias) and output gradients are reshaped to ``(C, N, T, G, O)``.
The per-example gradient of group ``γ`` is ``Σ_t g_{c,n,t,γ} ã_{n,t,γ}ᵀ``.

Fast paths (chosen per layer from a flop count):
- diag for ``T = 1``: ``(Σ_c g²)ᵀ (ã²)``, one matmul;
- NTK: the Gram trick ``Σ_{t,t'} (ã_t·ã'_{t'}) (g_t·g'_{t'})``, or per-example
  materialization, whichever costs fewer flops;
- ``⟨φ, v⟩`` without materializing: ``Σ_t g_t · (V ã_t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..errors import InvalidInputError
from .base import CHUNK_ELEMENTS, KronLayout, LayerRule, sym_gram_into
from .unfold import unfold_patches


@dataclass
class ConvSource:
    """What a convolution's patches are unfolded from: the padded 4-d input ``x``
    (N, Cin, H, W; 1-d convolutions have H = 1) and the geometry."""

    x: torch.Tensor
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    stride: tuple[int, int]
    groups: int

    @property
    def out_hw(self) -> tuple[int, int]:
        h, w = self.x.shape[2], self.x.shape[3]
        return tuple((size - d * (k - 1) - 1) // st + 1  # type: ignore[return-value]
                     for size, k, d, st in zip((h, w), self.kernel, self.dilation, self.stride))


@dataclass
class Patches:
    """A patch layer's inputs: ``a`` (N, T, G, I) homogeneous inputs (ones column last when
    there is a bias). Convolutions pass ``a_=None`` and their :class:`ConvSource`: the
    unfolded ``a`` (im2col, ~kh·kw times the input) is built on first use only, so routes
    that never need it (per-example gradients by a grouped convolution) never pay for it."""

    a_: torch.Tensor | None
    weight_shape: tuple[int, ...]
    has_bias: bool
    conv: ConvSource | None = None

    @property
    def a(self) -> torch.Tensor:
        if self.a_ is None:
            self.a_ = unfold_patches(cast(ConvSource, self.conv), self.has_bias)
        return self.a_

    @property
    def n(self) -> int:
        return self.a_.shape[0] if self.a_ is not None else cast(ConvSource, self.conv).x.shape[0]

    @property
    def t(self) -> int:
        if self.a_ is not None:
            return self.a_.shape[1]
        ho, wo = cast(ConvSource, self.conv).out_hw
        return ho * wo

    @property
    def groups(self) -> int:
        return self.a_.shape[2] if self.a_ is not None else cast(ConvSource, self.conv).groups


class PatchRule(LayerRule):
    """Base for Linear/Conv rules; subclasses implement ``features`` and ``shape_g``.

    ``strategy`` picks how NTK blocks and squared norms are computed when there
    are several positions: ``"auto"`` (fewest flops), ``"structured"`` (Gram trick
    over position pairs) or ``"materialize"`` (per-example gradients).
    """

    def __init__(self, strategy: str = "auto"):
        if strategy not in ("auto", "structured", "materialize"):
            raise ValueError(f"strategy must be auto, structured or materialize, got {strategy!r}")
        self.strategy = strategy

    def _structured(self, structured_cost: int, materialized_cost: int) -> bool:
        if self.strategy == "auto":
            return structured_cost <= materialized_cost
        return self.strategy == "structured"

    def shape_g(self, module: nn.Module, feat: Patches, g: torch.Tensor) -> torch.Tensor:
        """Reshape ``(C, N, *out)`` gradients to ``(C, N, T, G, O)``."""
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------
    @staticmethod
    def _split(feat: Patches, pe: torch.Tensor, lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """``(..., G, O, I)`` homogeneous gradient -> {weight, bias} in module shapes."""
        if feat.has_bias:
            w = pe[..., :-1]
            b = pe[..., -1]
            return {"weight": w.reshape(*lead, *feat.weight_shape), "bias": b.reshape(*lead, -1)}
        return {"weight": pe.reshape(*lead, *feat.weight_shape)}

    def per_example(self, module, feat: Patches, g):
        gg = self.shape_g(module, feat, g)
        pe = torch.einsum("cntgo,ntgi->cngoi", gg, feat.a)
        return self._split(feat, pe, (g.shape[0], g.shape[1]))

    def per_example_into(self, module, feat: Patches, g, outs):
        gg = self.shape_g(module, feat, g)
        pe = torch.einsum("cntgo,ntgi->cngoi", gg, feat.a)  # homogeneous: bias in the last column
        c, n, grp, o = pe.shape[:4]
        iw = pe.shape[-1] - (1 if feat.has_bias else 0)
        if "weight" in outs:
            outs["weight"].view(c, n, grp, o, iw).copy_(pe[..., :iw])
        if "bias" in outs:
            outs["bias"].view(c, n, grp, o).copy_(pe[..., iw])

    def flat_per_example(self, module, feat: Patches, g):
        pe = self.per_example(module, feat, g)
        c, n = g.shape[0], g.shape[1]
        return torch.cat([pe[k].reshape(c, n, -1) for k in ("weight", "bias") if k in pe], 2)

    def grad_sum(self, module, feat: Patches, g):
        gg = self.shape_g(module, feat, g)
        return self._split(feat, torch.einsum("cntgo,ntgi->cgoi", gg, feat.a), (g.shape[0],))

    def diag(self, module, feat: Patches, g):
        gg = self.shape_g(module, feat, g)
        if feat.t == 1:  # Σ_c first (a contiguous reduction), then one (Σ_c g²)ᵀ (a²) matmul per group
            d = torch.einsum("ngo,ngi->goi", gg[:, :, 0].pow(2).sum(0), feat.a[:, 0].pow(2))
            return self._split(feat, d, ())
        return super().diag(module, feat, g)

    def sq_norms(self, module, feat: Patches, g):
        gg = self.shape_g(module, feat, g)
        c, n, t, grp, o = gg.shape
        if t == 1:
            return (gg[:, :, 0].pow(2).sum(-1) * feat.a[:, 0].pow(2).sum(-1)[None]).sum(-1)
        _, _, iw, bias = self.geometry(module)
        i = iw + int(bias)  # the homogeneous width, known without unfolding lazy patches
        structured = n * grp * t * t * (i + c * o)
        materialized = c * n * grp * t * o * i
        if self._structured(structured, materialized):
            out = torch.zeros(c, n, dtype=g.dtype, device=g.device)
            step = max(1, CHUNK_ELEMENTS // max(1, c * t * t * grp))
            for s in range(0, n, step):
                sl = slice(s, s + step)
                aa = torch.einsum("ntgi,nsgi->ngts", feat.a[sl], feat.a[sl])
                gg2 = torch.einsum("cntgo,cnsgo->cngts", gg[:, sl], gg[:, sl])
                out[:, sl] = torch.einsum("ngts,cngts->cn", aa, gg2)
            return out
        return self._sq_norms_materialized(module, feat, g, gg, i)

    def _sq_norms_materialized(self, module, feat: Patches, g, gg, i: int) -> torch.Tensor:
        """``‖φ_{c,n}‖²`` from per-example gradients built in chunks of examples (all outputs
        at once) and squared and summed as they come: at most ~CHUNK_ELEMENTS per-example
        entries alive (not C·N·P of them)."""
        c, n, _, grp, o = gg.shape
        out = torch.empty(c, n, dtype=g.dtype, device=g.device)
        per = max(1, CHUNK_ELEMENTS // max(1, c * grp * o * i))
        rows = self.g_rows(module, feat, g) if grp == 1 else None
        for st in range(0, n, per):
            sl = slice(st, st + per)
            if rows is not None:
                pe = torch.bmm(rows[sl], feat.a[sl, :, 0, :]).view(-1, c, o * i)  # (n_s, C, O·I)
                out[:, sl] = (pe * pe).sum(-1).T
            else:
                pe = torch.einsum("cntgo,ntgi->cngoi", gg[:, sl], feat.a[sl])
                out[:, sl] = (pe * pe).sum((2, 3, 4))
        return out

    def gram(self, module, feat1: Patches, g1, feat2: Patches, g2):
        x1 = self.shape_g(module, feat1, g1)
        x2 = x1 if (g2 is g1 and feat2 is feat1) else self.shape_g(module, feat2, g2)
        c, n, d, m = x1.shape[0], x1.shape[1], x2.shape[0], x2.shape[1]
        out = torch.zeros(n, m, c, d, dtype=g1.dtype, device=g1.device)
        self.gram_into(module, feat1, g1, feat2, g2, out)
        return out

    def gram_into(self, module, feat1: Patches, g1, feat2: Patches, g2, out: torch.Tensor) -> None:
        a1, a2 = feat1.a, feat2.a
        x1 = self.shape_g(module, feat1, g1)
        x2 = x1 if (g2 is g1 and feat2 is feat1) else self.shape_g(module, feat2, g2)
        c, n, t, grp, o = x1.shape
        d, m, s = x2.shape[0], x2.shape[1], x2.shape[2]
        i = a1.shape[-1]
        if t == 1 and s == 1:
            same = x2 is x1 and a2 is a1
            for gi in range(grp):
                # rows n·C + c, so that the (n, c, m, d) product is read as (n, m, c, d) with
                # contiguous runs over d
                r1 = x1[:, :, 0, gi].transpose(0, 1).reshape(n * c, o)
                if same:
                    sym_gram_into(a1[:, 0, gi], r1, c, out)
                    continue
                aa = a1[:, 0, gi] @ a2[:, 0, gi].T  # (N, M)
                gg = r1 @ x2[:, :, 0, gi].transpose(0, 1).reshape(m * d, o).T
                gg = gg.view(n, c, m, d).permute(0, 2, 1, 3)
                if gg.dtype != out.dtype:
                    gg, aa = gg.to(out.dtype), aa.to(out.dtype)
                out.addcmul_(gg, aa[:, :, None, None])  # += (a·a') (g·g'): one pass over out
            return
        structured = n * m * t * s * grp * (i + c * d * o)
        materialized = grp * (c * n * t + d * m * s) * o * i + c * d * n * m * grp * o * i
        if self._structured(structured, materialized):
            step = max(1, CHUNK_ELEMENTS // max(1, m * t * s * c * d))
            for gi in range(grp):
                for st in range(0, n, step):
                    sl = slice(st, st + step)
                    aa = torch.einsum("nti,msi->ntms", a1[sl, :, gi], a2[:, :, gi])
                    gg = torch.einsum("cnto,dmso->ntmscd", x1[:, sl, :, gi], x2[:, :, :, gi])
                    out[sl] += torch.einsum("ntms,ntmscd->nmcd", aa, gg)
            return
        # materialized per-example gradients, rows n·C + c and columns in the (group, o, i)
        # order of the bmm (the Gram does not depend on the order of the parameters)
        r1 = self.per_example_rows(module, feat1, g1)
        if g2 is g1 and feat2 is feat1:
            sym_gram_into(None, r1, c, out)
        else:
            gg = (r1 @ self.per_example_rows(module, feat2, g2).T).view(n, c, m, d).permute(0, 2, 1, 3)
            out += gg

    def g_rows(self, module, feat: Patches, g) -> torch.Tensor:
        """``g`` of a group-free layer as an (N, C·O, T) matrix per example (a view or one copy
        that keeps the innermost dimension contiguous; a transposed view is fine for bmm)."""
        x = self.shape_g(module, feat, g)  # (C, N, T, 1, O), O innermost
        c, n, t, _, o = x.shape
        return x[:, :, :, 0, :].permute(1, 2, 0, 3).reshape(n, t, c * o).transpose(1, 2)

    def per_example_rows(self, module, feat: Patches, g) -> torch.Tensor:
        """Per-example gradients ``Σ_t g_t ã_tᵀ`` as an ``(N·C, G·O·I)`` matrix with rows ``n·C + c``.

        Without groups, one batched matmul of per-example ``(C·O, T) @ (T, I)`` products whose
        (N, C·O, I) result already is the matrix (column order (group, o, i), not the
        parameters' order: fine for Gram matrices); large per-example GEMMs beat one small
        GEMM per output coordinate."""
        c, n = g.shape[0], g.shape[1]
        if feat.groups == 1:
            return torch.bmm(self.g_rows(module, feat, g), feat.a[:, :, 0, :]).view(n * c, -1)
        pe = torch.einsum("cntgo,ntgi->ncgoi", self.shape_g(module, feat, g), feat.a)
        return pe.reshape(n * c, -1)

    # ---- Kronecker factors (KFAC for Linear, KFC for convolutions) --------------------------
    def geometry(self, module: Any) -> tuple[int, int, int, bool]:
        """``(G, O, I_w, has_bias)``: groups, outputs and weight inputs per group."""
        raise NotImplementedError

    def kron_layout(self, module) -> KronLayout:
        grp, o, iw, bias = self.geometry(module)
        oo = torch.arange(grp * o).reshape(grp, o, 1)
        ii = torch.arange(iw).reshape(1, 1, iw)
        w = oo * iw + ii
        if not bias:
            return KronLayout(grp, o, iw, {"weight": w})
        neg = torch.full((grp, o, 1), -1, dtype=torch.long)
        return KronLayout(grp, o, iw + 1, {"weight": torch.cat([w, neg], 2),
                                            "bias": torch.cat([torch.full_like(w, -1), oo], 2)})

    def kfac_factors(self, module, feat: Patches, g, cols, input_factor=True, approx="expand"):
        """KFAC-expand (KFC for convolutions) or KFAC-reduce factors, see
        :meth:`LayerRule.kfac_factors`. Reduce averages the homogeneous inputs over the
        positions (the ones column stays 1) and sums the output gradients over them."""
        reduce = check_approx(approx) == "reduce" and feat.t != 1
        big_a = None
        if input_factor:
            a = _kept(feat.a, cols)
            if reduce:
                a = a.mean(1)
                big_a = torch.einsum("ngi,ngj->gij", a, a)
            else:
                big_a = torch.einsum("ntgi,ntgj->gij", a, a)
        gg = self.shape_g(module, feat, g)
        if reduce:
            gs = gg.sum(2)
            return big_a, torch.einsum("cngo,cngp->gop", gs, gs)
        big_b = torch.einsum("cntgo,cntgp->gop", gg, gg)
        if feat.t != 1:
            big_b /= feat.t
        return big_a, big_b

    def kfe_diag(self, module, feat: Patches, g, cols, ua, ub):
        return kfe_second_moment(_kept(feat.a, cols), self.shape_g(module, feat, g), ua, ub)

    def dot(self, module, feat: Patches, g, v):
        gg = self.shape_g(module, feat, g)
        grp = feat.groups
        w = v["weight"].reshape(grp, -1, feat.a.shape[-1] - (1 if feat.has_bias else 0))
        if feat.has_bias:
            w = torch.cat([w, v["bias"].reshape(grp, -1, 1)], dim=2)
        delta = torch.einsum("ntgi,goi->ntgo", feat.a, w)
        return torch.einsum("cntgo,ntgo->cn", gg, delta)


def kfe_second_moment(a: torch.Tensor, g: torch.Tensor, ua: torch.Tensor | None, ub: torch.Tensor,
                      chunk: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """EKFAC's ``S = Σ_{c,n} (U_Bᵀ G_{c,n} U_A)²`` (``(G, O, I)``) for ``G_{c,n} = Σ_t g_{c,n,t} ã_{n,t}ᵀ``
    (George et al., 2018, eq. 10, before the division by ``N``).

    ``a``: ``(N, T, G, I)``, ``g``: ``(C, N, T, G, O)``, ``ua``: ``(G, I, I)`` (``None``: the
    identity), ``ub``: ``(G, O, O)``. No Python loop over examples:

    * ``T = 1``: ``U_Bᵀ G U_A = (U_Bᵀ g)(U_Aᵀ ã)ᵀ`` is an outer product, so
      ``S = (Σ_c (g U_B)²)ᵀ (ã U_A)²``: two projections and one ``(O × N)(N × I)`` matmul;
    * ``T > 1``: the per-example gradients are sums over positions, formed in chunks of at most
      ``chunk`` entries by batched ``(O × T)(T × I)`` matmuls; each side is rotated before the
      sum over positions (cost ``N T O²`` resp. ``N T I²``) or after it (``N O² I`` resp.
      ``N O I²``), whichever is cheaper: the output side first iff ``T < I``, the input side
      first iff ``T < O``.
    """
    c, n, t, grp, o = g.shape
    i = a.shape[-1]
    if t == 1 and grp == 1 and c == 1:  # plain 2-D matmuls (the common Linear case)
        ar = a[:, 0, 0] if ua is None else torch.mm(a[:, 0, 0], ua[0])  # (N, I)
        gr = torch.mm(g[0, :, 0, 0], ub[0])  # (N, O)
        return torch.mm(gr.square().t(), ar.square()).unsqueeze(0)
    if t == 1:
        ar = a[:, 0].transpose(0, 1)
        if ua is not None:
            ar = torch.matmul(ar, ua)  # (G, N, I): rows ã_nᵀ U_A
        gr = torch.matmul(g[:, :, 0].permute(2, 0, 1, 3).reshape(grp, c * n, o), ub)  # (G, C·N, O)
        gsq = gr.square()
        if c > 1:
            gsq = gsq.reshape(grp, c, n, o).sum(1)
        return torch.matmul(gsq.transpose(1, 2), ar.square())
    rot_a_first = ua is not None and t < o  # N T I² < N O I²
    rot_g_first = t < i  # N T O² < N O² I
    per = max(1, chunk // max(1, grp * o * i))
    out: Any = None
    for gi in range(grp):
        ag = a[:, :, gi]  # (N, T, I)
        if rot_a_first:
            ag = torch.matmul(ag, cast(torch.Tensor, ua)[gi])
        acc: Any = None
        for ci in range(c):
            gt = g[ci, :, :, gi].transpose(1, 2)  # (N, O, T): contiguous for a convolution's gradient
            if rot_g_first:
                gt = torch.matmul(ub[gi].transpose(0, 1), gt)  # U_Bᵀ g, batched over examples
            for st in range(0, n, per):
                pe = torch.matmul(gt[st:st + per], ag[st:st + per])  # (n, O, I)
                if not rot_a_first and ua is not None:
                    pe = torch.matmul(pe, ua[gi])
                if not rot_g_first:
                    pe = torch.matmul(ub[gi].transpose(0, 1), pe)
                s = pe.square().sum(0)
                acc = s if acc is None else acc.add_(s)
        out = acc[None] if out is None else torch.cat([out, acc[None]], 0)
    return out


#: The treatments of a weight shared over positions by the Kronecker factors (Eschenhagen et al.,
#: 2023): ``"expand"`` (positions as extra examples) and ``"reduce"`` (positions reduced first).
KFAC_APPROXIMATIONS = ("expand", "reduce")


def check_approx(approx: str) -> str:
    """``approx`` if it is one of :data:`KFAC_APPROXIMATIONS`; otherwise a clear error."""
    if approx not in KFAC_APPROXIMATIONS:
        raise InvalidInputError(f"kfac_approx must be 'expand' or 'reduce' (Eschenhagen et al., 2023); "
                                f"got {approx!r}")
    return approx


def _kept(a: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``a[..., cols]`` for the sorted kept columns ``cols``; ``a`` itself (no copy) when all are kept."""
    return a if cols.numel() == a.shape[-1] else a[..., cols]


def homogeneous(a: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """Append a trailing column of ones when the layer has a bias."""
    if not has_bias:
        return a
    return torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
