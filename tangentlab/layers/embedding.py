"""Rule for ``nn.Embedding``: per-example gradients scatter output gradients into
the rows of the looked-up tokens; ``padding_idx`` rows get no gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .base import CHUNK_ELEMENTS, KronLayout, LayerRule
from .patch import check_approx, kfe_second_moment

#: Largest vocabulary (selected tokens) for which KFAC-reduce forms its dense ``V × V`` input factor.
MAX_DENSE_VOCAB = 8192


@dataclass
class Tokens:
    idx: torch.Tensor  # (N, T) long
    mask: torch.Tensor | None  # (N, T) bool: False at padding_idx


class EmbeddingRule(LayerRule):
    """``strategy``: ``"auto"``, ``"structured"`` (token-match Gram trick) or ``"materialize"``."""

    def __init__(self, strategy: str = "auto"):
        if strategy not in ("auto", "structured", "materialize"):
            raise ValueError(f"strategy must be auto, structured or materialize, got {strategy!r}")
        self.strategy = strategy

    def params(self, module):
        return ("weight",)

    def check(self, module: nn.Embedding):
        if module.max_norm is not None:
            raise UnsupportedLayerError(
                f"Embedding with max_norm={module.max_norm} renormalizes its weight in place during "
                "the forward pass, so per-example Jacobians are ill-defined; remove max_norm "
                "(renormalize explicitly) before computing Fishers or NTKs"
            )
        if module.scale_grad_by_freq:
            raise UnsupportedLayerError(
                "Embedding with scale_grad_by_freq=True scales gradients by token counts of the "
                "whole batch, which couples examples; set scale_grad_by_freq=False"
            )
        return None

    def features(self, module: nn.Embedding, args, kwargs) -> Tokens:
        idx = args[0] if args else kwargs["input"]
        n = idx.shape[0]
        idx = idx.reshape(n, -1)
        mask = None if module.padding_idx is None else idx != module.padding_idx
        return Tokens(idx, mask)

    @staticmethod
    def _g(feat: Tokens, g: torch.Tensor) -> torch.Tensor:
        c, n = g.shape[0], g.shape[1]
        gg = g.reshape(c, n, feat.idx.shape[1], g.shape[-1])
        if feat.mask is not None:
            gg = gg * feat.mask[None, :, :, None].to(gg.dtype)
        return gg

    def per_example(self, module, feat: Tokens, g):
        gg = self._g(feat, g)
        c, n, t, d = gg.shape
        out = gg.new_zeros(c, n, module.num_embeddings, d)
        out.scatter_add_(2, feat.idx[None, :, :, None].expand(c, n, t, d), gg)
        return {"weight": out}

    def grad_sum(self, module, feat: Tokens, g):
        gg = self._g(feat, g)
        c, n, t, d = gg.shape
        out = gg.new_zeros(c, module.num_embeddings, d)
        out.index_add_(1, feat.idx.reshape(-1), gg.reshape(c, n * t, d))
        return {"weight": out}

    def sq_norms(self, module, feat: Tokens, g):
        gg = self._g(feat, g)
        same = (feat.idx[:, :, None] == feat.idx[:, None, :]).to(gg.dtype)  # (N, T, T)
        return torch.einsum("nts,cntd,cnsd->cn", same, gg, gg)

    def gram(self, module, feat1: Tokens, g1, feat2: Tokens, g2):
        x1 = self._g(feat1, g1)
        x2 = x1 if (g2 is g1 and feat2 is feat1) else self._g(feat2, g2)
        c, n, t, dim = x1.shape
        d, m, s = x2.shape[0], x2.shape[1], x2.shape[2]
        v = module.num_embeddings
        structured = n * m * t * s * (1 + c * d * dim)
        materialized = (c * n + d * m) * t * dim + c * d * n * m * v * dim
        use_struct = structured <= materialized if self.strategy == "auto" else self.strategy == "structured"
        if not use_struct:
            return super().gram(module, feat1, g1, feat2, g2)
        out = x1.new_zeros(n, m, c, d)
        step = max(1, CHUNK_ELEMENTS // max(1, m * t * s * c * d))
        for st in range(0, n, step):
            sl = slice(st, st + step)
            same = (feat1.idx[sl, :, None, None] == feat2.idx[None, None, :, :]).to(x1.dtype)
            gg = torch.einsum("cnte,dmse->ntmscd", x1[:, sl], x2)
            out[sl] = torch.einsum("ntms,ntmscd->nmcd", same, gg)
        return out

    # ---- Kronecker factors: one-hot inputs, so the input factor is diagonal -----------------
    def kron_layout(self, module: nn.Embedding) -> KronLayout:
        v, d = module.num_embeddings, module.embedding_dim
        # matrix M[d, v] = weight[v, d] (output dim x vocabulary), flat offset v·D + d
        idx = (torch.arange(v).reshape(1, 1, v) * d + torch.arange(d).reshape(1, d, 1))
        return KronLayout(1, d, v, {"weight": idx}, diagonal_a=True)

    def kfac_factors(self, module, feat: Tokens, g, cols, input_factor=True, approx="expand"):
        """KFAC-expand: ``A = diag(token counts)``, ``B = Σ_n Σ_c (1/T) Σ_t g gᵀ`` (diagonal ``A``,
        ``(1, V)``). KFAC-reduce (Eschenhagen et al., 2023), as for a Linear map of the one-hot
        inputs (a padding position's one-hot is zero): ``A = Σ_n m_n m_nᵀ`` with ``m_n = (1/T)
        Σ_t onehot(x_{n,t})`` the token frequencies of example ``n``, a dense ``(1, V, V)``, and
        ``B = Σ_n Σ_c (Σ_t g)(Σ_t g)ᵀ`` over all positions; exact when the output gradients are
        the same at every position (e.g. a mean-pooled embedding read out linearly). Refused
        above :data:`MAX_DENSE_VOCAB` selected tokens."""
        t = feat.idx.shape[1]
        if check_approx(approx) == "reduce" and t != 1:
            v = int(cols.numel())
            if input_factor and v > MAX_DENSE_VOCAB:
                raise UnsupportedLayerError(
                    f"kfac_approx='reduce' for nn.Embedding on sequences has a dense vocabulary x vocabulary "
                    f"input factor ({v} x {v}, {v * v * g.element_size() / 2**30:.1f} GiB); above "
                    f"{MAX_DENSE_VOCAB} tokens use kfac_approx='expand' (a diagonal factor), or leave the "
                    "Embedding out (`params=` of tangentlab.fim, `layers=` of the optimizers)")
            c, n = g.shape[0], g.shape[1]
            ssum = g.reshape(c, n, t, g.shape[-1]).sum(2).reshape(c * n, -1)  # unmasked, like a Linear's
            big_b = ssum.T @ ssum
            if not input_factor:
                return None, big_b[None]
            freq = self._frequencies(module, feat, g.dtype)[:, cols]  # (N, V_sel)
            return (freq.T @ freq)[None], big_b[None]
        gg = self._g(feat, g)  # masked (C, N, T, D)
        big_b = torch.einsum("cntd,cnte->de", gg, gg) / t
        if not input_factor:
            return None, big_b[None]
        ones = torch.ones(feat.idx.numel(), dtype=g.dtype, device=g.device)
        if feat.mask is not None:  # padding rows have no gradient: they are not counted
            ones = ones * feat.mask.reshape(-1).to(g.dtype)
        counts = g.new_zeros(module.num_embeddings).index_add_(0, feat.idx.reshape(-1), ones)
        return counts[cols][None], big_b[None]

    @staticmethod
    def _frequencies(module: nn.Embedding, feat: Tokens, dtype: torch.dtype) -> torch.Tensor:
        """``(N, V)``: ``(1/T) Σ_t onehot(x_{n,t})``, a padding position's one-hot being zero."""
        n, t = feat.idx.shape
        w = torch.full((n, t), 1.0 / t, dtype=dtype, device=feat.idx.device)
        if feat.mask is not None:
            w = w * feat.mask.to(dtype)
        return w.new_zeros(n, module.num_embeddings).scatter_add_(1, feat.idx, w)

    def kfe_diag(self, module, feat: Tokens, g, cols, ua, ub):
        """``Σ_{c,n} (U_Bᵀ G_{c,n} U_A)²`` without the ``(V, D)`` per-example gradients. With the
        diagonal input factor (``U_A = I``, KFAC-expand) the rotated output gradients are summed per
        distinct (example, token) pair, squared, and added into their token's column; with a dense
        ``U_A`` (KFAC-reduce) the rotated one-hot inputs are rows of ``U_A`` (``U_Aᵀ e_x = U_A[x]``),
        and :func:`~tangentlab.layers.patch.kfe_second_moment` sums over positions."""
        gg = self._g(feat, g)
        if ua is not None:
            v = module.num_embeddings
            pos = torch.full((v,), -1, dtype=torch.long, device=feat.idx.device)
            pos[cols] = torch.arange(cols.numel(), device=feat.idx.device)
            p = pos[feat.idx]  # (N, T): the token's selected column, -1 when not selected
            rows = ua[0][p.clamp(min=0)] * (p >= 0)[..., None].to(ua.dtype)  # (N, T, V_sel)
            c, n, t, d = gg.shape
            return kfe_second_moment(rows[:, :, None], gg[:, :, :, None], None, ub)
        gr = torch.einsum("cntd,de->cnte", gg, ub[0])
        c, n, t, d = gr.shape
        v = module.num_embeddings
        keys = (torch.arange(n, device=feat.idx.device)[:, None] * v + feat.idx).reshape(-1)
        pairs, inv = torch.unique(keys, return_inverse=True)
        sums = gr.new_zeros(c, pairs.numel(), d).index_add_(1, inv, gr.reshape(c, n * t, d))
        out = gr.new_zeros(v, d).index_add_(0, pairs % v, sums.pow(2).sum(0))
        return out.T[:, cols][None]

    def dot(self, module, feat: Tokens, g, v):
        gg = self._g(feat, g)
        delta = v["weight"][feat.idx]  # (N, T, D)
        return torch.einsum("cntd,ntd->cn", gg, delta)
