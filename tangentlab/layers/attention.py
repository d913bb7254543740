"""Rule for ``nn.MultiheadAttention``: its input projections as sequence Linear maps.

``MultiheadAttention`` computes, per example (batch first; ``L`` queries, ``S`` keys,
``H`` heads of width ``d = E/H``)::

    q = x_q W_qᵀ + b_q,  k = x_k W_kᵀ + b_k,  v = x_v W_vᵀ + b_v      (L×E, S×E, S×E)
    [k; b_kᵀ], [v; b_vᵀ]                       (add_bias_kv: one more key/value)
    o_h = softmax(q_h k_hᵀ/√d + M) v_h        (per head, M the merged masks)
    y = out_proj([o_1 … o_H])

Every parameter of the module itself enters through a projection whose weights are
shared over positions (``bias_k``/``bias_v`` through one appended position), so the
per-example gradient of ``W_q`` is ``Σ_t g_{q,t} ã_tᵀ`` with ``ã_t = [x_{q,t}; 1]`` and
``g_{q,t} = ∂s_c/∂q_t``, exactly the sequence-Linear form of :mod:`.patch`. The rule
therefore runs the module through its own functional forward (the engine's *taps*,
:mod:`.base`): it saves the token inputs and taps the gradients of the projected tokens
``q``, ``k``, ``v`` (one packed ``[q k v]`` tap for self-attention with packed weights:
then the three projections are one Linear ``E → 3E``), and reuses the Linear rule on
each projection ("part") for per-example gradients, diagonals, NTK blocks (Gram form
``Σ_{s,t} (ã_s·ã'_t)(g_s·g'_t)`` or materialization, whichever costs fewer flops) and
Jacobian-vector products. ``out_proj`` is called as a module by that forward, so it
takes the ordinary Linear rule (``NonDynamicallyQuantizableLinear`` is a Linear).

The functional forward follows ``torch.nn.functional.multi_head_attention_forward``:
packed ``in_proj_weight`` or separate ``q/k/v_proj_weight`` (``kdim``/``vdim`` ≠
``embed_dim``), ``add_bias_kv``, ``add_zero_attn``, ``batch_first`` either way, boolean
or additive ``attn_mask`` (``(L, S)`` or ``(N·H, L, S)``) and ``key_padding_mask``
(``(N, S)``), ``need_weights`` (averaged or per head), ``is_causal`` and dropout in
training mode (random: the engine warns). Inputs must be batched (3-D): unbatched
inputs would make the examples of the batch attend to each other. Sequences of
different lengths in one batch must be padded to one length with the padding masked
by ``key_padding_mask``: an unmasked padding position is attended like any token
(that is the model's function, and what every route differentiates).

Kronecker factors (packed weights without ``bias_k``/``bias_v``): three groups
``γ ∈ {q, k, v}`` of shape ``(E, E+1)``, each with its own input factor (Eschenhagen et
al., 2023, "Kronecker-Factored Approximate Curvature for Modern Neural Network
Architectures", NeurIPS; weight sharing over the ``T`` positions of group ``γ``):

* ``approx="expand"`` (positions as extra examples): ``A_γ = Σ_n Σ_t ã ãᵀ``,
  ``B_γ = (1/T) Σ_n Σ_c Σ_t g gᵀ``;
* ``approx="reduce"`` (positions summed first): ``A_γ = Σ_n ā āᵀ`` with
  ``ā = (1/T) Σ_t ã``, ``B_γ = Σ_n Σ_c (Σ_t g)(Σ_t g)ᵀ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .base import KronLayout, LayerRule, Tap, split_taps
from .linear import LinearRule
from .patch import Patches, _kept, homogeneous, kfe_second_moment

#: the Kronecker-factor approximations for weight sharing (Eschenhagen et al., 2023)
APPROXIMATIONS = ("expand", "reduce")


class _Shape:
    """What the Linear rule reads of a module (sizes, and parameter sizes for its chunking),
    for one projection of an attention module; ``meta`` tensors: no storage."""

    def __init__(self, out_features: int, in_features: int, bias: bool):
        self.out_features, self.in_features = out_features, in_features
        self.weight = torch.empty(out_features, in_features, device="meta")
        self.bias = torch.empty(out_features, device="meta") if bias else None


@dataclass
class Part:
    """One projection: homogeneous token inputs ``patches.a`` ``(N, T, 1, I[+1])``, the tap holding
    its output gradients ``(C, N, T, O)``, and the rows it fills of the module's parameters:
    ``weight`` rows ``w0 .. w0+O`` (and ``bias`` rows ``b0 .. b0+O`` when it has one)."""

    patches: Patches
    shape: _Shape
    tap: str
    weight: str
    w0: int
    bias: str | None = None
    b0: int = 0


@dataclass
class AttentionFeatures:
    """The projections of one batch, in parameter-row order, and the tap layout of ``g``."""

    parts: list[Part]
    layout: list[tuple[str, tuple[int, ...]]]
    n: int


def _canonical(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as an additive float mask (``-inf``); a float mask as is."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise InvalidInputError(f"attention masks must be bool or float, got {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


class MultiheadAttentionRule(LayerRule):
    """``nn.MultiheadAttention`` (module docstring): its own parameters by taps on the projected
    tokens; ``out_proj`` by the Linear rule."""

    def __init__(self, strategy: str = "auto"):
        self.linear = LinearRule(strategy)

    def params(self, module: nn.MultiheadAttention) -> tuple[str, ...]:
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v")
        return tuple(n for n in names if getattr(module, n, None) is not None)

    def tapped(self, module: nn.Module) -> bool:
        return True

    # ---- the functional forward ---------------------------------------------------------
    def tapped_forward(  # nn.MultiheadAttention.forward's own signature after the tap
            self, module: nn.MultiheadAttention, tap: Tap, query: torch.Tensor,
            key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
            need_weights: bool = True, attn_mask: torch.Tensor | None = None,
            average_attn_weights: bool = True, is_causal: bool = False):
        """``module(query, key, value, ...)`` (module docstring), saving the token inputs and
        tapping the projected tokens."""
        where = f"MultiheadAttention at {tap.path or '<root>'!r}"
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise InvalidInputError(
                f"{where} got unbatched inputs (query {tuple(query.shape)}): attention would mix the "
                "examples of the batch; pass batched (3-D) query, key and value (sequences of different "
                "lengths: pad them to one length and mask the padding with key_padding_mask)")
        bf = module.batch_first

        def first(x: torch.Tensor) -> torch.Tensor:
            return x if bf else x.transpose(0, 1)

        xq = first(query)
        xk = xq if key is query else first(key)
        xv = xk if value is key else (xq if value is query else first(value))
        n, length, e = xq.shape
        src = xk.shape[1]
        if xk.shape[:2] != xv.shape[:2] or xk.shape[0] != n:
            raise InvalidInputError(
                f"{where}: query, key and value must share the batch size and key and value the "
                f"sequence length; got query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                f"{tuple(value.shape)} (batch_first={bf})")
        kpm = self._check_masks(where, key_padding_mask, attn_mask, n, length, src, module.num_heads)
        kpm = _canonical(kpm, xq.dtype)
        mask = _canonical(attn_mask, xq.dtype)
        use_causal = is_causal and kpm is None and not need_weights
        if is_causal and attn_mask is None:
            raise InvalidInputError(f"{where}: is_causal=True needs attn_mask (torch's own requirement)")
        if use_causal:
            mask = None
        q, k, v = self._project(module, tap, xq, xk, xv)
        h = module.num_heads
        d = e // h
        if mask is not None:
            mask = mask.view(1, 1, length, src) if mask.dim() == 2 else mask.view(n, h, length, src)
        if kpm is not None:
            kpm = kpm.view(n, 1, 1, src)
        if module.bias_k is not None:
            bk = tap.grad("bias_k", module.bias_k.reshape(1, 1, e).expand(n, 1, e))
            bv = tap.grad("bias_v", cast(torch.Tensor, module.bias_v).reshape(1, 1, e).expand(n, 1, e))
            k, v = torch.cat([k, bk], 1), torch.cat([v, bv], 1)
            mask, kpm = (None if t is None else F.pad(t, (0, 1)) for t in (mask, kpm))
        qh, kh, vh = (t.reshape(n, t.shape[1], h, d).transpose(1, 2) for t in (q, k, v))
        if module.add_zero_attn:
            zeros = kh.new_zeros(n, h, 1, d)
            kh, vh = torch.cat([kh, zeros], 2), torch.cat([vh, zeros], 2)
            mask, kpm = (None if t is None else F.pad(t, (0, 1)) for t in (mask, kpm))
        if kpm is not None:
            mask = kpm if mask is None else mask + kpm
        p_drop = module.dropout if module.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(qh * math.sqrt(1.0 / d), kh.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, -1)
            if p_drop > 0:  # as torch does, the returned weights are the dropped-out ones
                weights = F.dropout(weights, p_drop)
            o = torch.matmul(weights, vh)
            if average_attn_weights:
                weights = weights.mean(1)
        else:
            o = F.scaled_dot_product_attention(qh, kh, vh, mask, p_drop, use_causal)
        y = module.out_proj(o.transpose(1, 2).reshape(n, length, e))
        return (y if bf else y.transpose(0, 1)), weights

    @staticmethod
    def _check_masks(where: str, kpm, attn_mask, n: int, length: int, src: int, heads: int):
        if kpm is not None and tuple(kpm.shape) != (n, src):
            raise InvalidInputError(
                f"{where}: key_padding_mask has shape {tuple(kpm.shape)}, expected (N, S) = ({n}, {src}) "
                "(batch size, key sequence length)")
        if attn_mask is not None and tuple(attn_mask.shape) not in ((length, src), (n * heads, length, src)):
            raise InvalidInputError(
                f"{where}: attn_mask has shape {tuple(attn_mask.shape)}, expected (L, S) = ({length}, {src}) "
                f"or (N·num_heads, L, S) = ({n * heads}, {length}, {src})")
        return kpm

    @staticmethod
    def _project(module: nn.MultiheadAttention, tap: Tap, xq, xk, xv):
        """``q, k, v`` (batch first), tapped: one packed tap for self-attention with packed weights."""
        e = module.embed_dim
        b = module.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        tap.save("query", xq)
        if module._qkv_same_embed_dim and xk is xq and xv is xq:
            qkv = tap.grad("qkv", F.linear(xq, module.in_proj_weight, b))
            return qkv.split(e, -1)
        tap.save("key", xk)
        tap.save("value", xv)
        if module._qkv_same_embed_dim:
            wq, wk, wv = module.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        return (tap.grad("q", F.linear(xq, wq, bq)), tap.grad("k", F.linear(xk, wk, bk)),
                tap.grad("v", F.linear(xv, wv, bv)))

    # ---- features ------------------------------------------------------------------------
    def tap_features(self, module: nn.MultiheadAttention, tap: Tap) -> AttentionFeatures:
        e = module.embed_dim
        has_b = module.in_proj_bias is not None
        saved = tap.saved
        xq = saved["query"]
        n = xq.shape[0]
        homog: dict[tuple, torch.Tensor] = {}

        def patches(x: torch.Tensor, rows: int) -> Patches:
            key = (x.data_ptr(), x.shape, x.stride())  # one homogeneous copy per distinct input
            if key not in homog:
                homog[key] = homogeneous(x.reshape(n, x.shape[1], 1, x.shape[-1]), has_b)
            return Patches(homog[key], (rows, x.shape[-1]), has_b)

        bias = "in_proj_bias" if has_b else None
        names = dict(tap.layout())
        parts = []
        if "qkv" in names:
            parts.append(Part(patches(xq, 3 * e), _Shape(3 * e, e, has_b), "qkv", "in_proj_weight", 0, bias, 0))
        else:
            xk, xv = saved["key"], saved["value"]
            packed = module._qkv_same_embed_dim
            for j, (x, t) in enumerate(((xq, "q"), (xk, "k"), (xv, "v"))):
                w, w0 = ("in_proj_weight", j * e) if packed else (f"{t}_proj_weight", 0)
                parts.append(Part(patches(x, e), _Shape(e, x.shape[-1], has_b), t, w, w0, bias, j * e))
        if "bias_k" in names:
            ones = xq.new_ones(n, 1, 1, 1)
            for t in ("bias_k", "bias_v"):
                parts.append(Part(Patches(ones, (e, 1), False), _Shape(e, 1, False), t, t, 0))
        return AttentionFeatures(parts, tap.layout(), n)

    def _gs(self, feat: AttentionFeatures, g: torch.Tensor) -> list[torch.Tensor]:
        """Each part's output gradients ``(C, N, T, O)`` (views of ``g``)."""
        taps = split_taps(g, feat.layout)
        return [taps[p.tap] for p in feat.parts]

    # ---- per-example quantities, assembled from the parts' Linear results -----------------
    def _assemble(self, module, feat: AttentionFeatures, results: list[dict[str, torch.Tensor]],
                  lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Concatenate the parts' ``{weight, bias}`` results along the rows of the module's
        parameters (parts come in row order) and give them the parameters' shapes."""
        pieces: dict[str, list[torch.Tensor]] = {}
        for p, r in zip(feat.parts, results):
            pieces.setdefault(p.weight, []).append(r["weight"])
            if p.bias is not None:
                pieces.setdefault(p.bias, []).append(r["bias"])
        k = len(lead)
        return {name: (torch.cat(v, k) if len(v) > 1 else v[0]).reshape(*lead, *getattr(module, name).shape)
                for name, v in pieces.items()}

    def per_example(self, module, feat: AttentionFeatures, g):
        res = [self.linear.per_example(p.shape, p.patches, gp) for p, gp in zip(feat.parts, self._gs(feat, g))]
        return self._assemble(module, feat, res, (g.shape[0], g.shape[1]))

    def flat_per_example(self, module, feat: AttentionFeatures, g):
        pe = self.per_example(module, feat, g)
        return torch.cat([pe[k].reshape(g.shape[0], g.shape[1], -1) for k in self.params(module)], 2)

    def per_example_into(self, module, feat: AttentionFeatures, g, outs):
        c, n = g.shape[0], g.shape[1]
        for p, gp in zip(feat.parts, self._gs(feat, g)):
            o, i = p.shape.out_features, p.shape.in_features
            sub = {}
            if p.weight in outs:
                sub["weight"] = outs[p.weight].reshape(c, n, -1)[:, :, p.w0 * i:(p.w0 + o) * i]
            if p.bias is not None and p.bias in outs:
                sub["bias"] = outs[p.bias][:, :, p.b0:p.b0 + o]
            if sub:
                self.linear.per_example_into(p.shape, p.patches, gp, sub)

    def grad_sum(self, module, feat: AttentionFeatures, g):
        res = [self.linear.grad_sum(p.shape, p.patches, gp) for p, gp in zip(feat.parts, self._gs(feat, g))]
        return self._assemble(module, feat, res, (g.shape[0],))

    def diag(self, module, feat: AttentionFeatures, g):
        res = [self.linear.diag(p.shape, p.patches, gp) for p, gp in zip(feat.parts, self._gs(feat, g))]
        return self._assemble(module, feat, res, ())

    def sq_norms(self, module, feat: AttentionFeatures, g):
        return sum(self.linear.sq_norms(p.shape, p.patches, gp) for p, gp in zip(feat.parts, self._gs(feat, g)))

    def gram(self, module, feat1: AttentionFeatures, g1, feat2: AttentionFeatures, g2):
        out = g1.new_zeros(g1.shape[1], g2.shape[1], g1.shape[0], g2.shape[0])
        self.gram_into(module, feat1, g1, feat2, g2, out)
        return out

    def gram_into(self, module, feat1: AttentionFeatures, g1, feat2: AttentionFeatures, g2, out):
        same = g2 is g1 and feat2 is feat1
        gs1 = self._gs(feat1, g1)
        gs2 = gs1 if same else self._gs(feat2, g2)
        for p1, p2, x1, x2 in zip(feat1.parts, feat2.parts, gs1, gs2):
            self.linear.gram_into(p1.shape, p1.patches, x1, p2.patches, x2, out)

    def dot(self, module, feat: AttentionFeatures, g, v):
        out = None
        for p, gp in zip(feat.parts, self._gs(feat, g)):
            o, i = p.shape.out_features, p.shape.in_features
            vv = {"weight": v[p.weight].reshape(-1)[p.w0 * i:(p.w0 + o) * i].reshape(o, i)}
            if p.bias is not None:
                vv["bias"] = v[p.bias][p.b0:p.b0 + o]
            d = self.linear.dot(p.shape, p.patches, gp, vv)
            out = d if out is None else out + d
        return out

    # ---- Kronecker factors -----------------------------------------------------------------
    def kron_layout(self, module: nn.MultiheadAttention) -> KronLayout | None:
        """Groups q, k, v of ``in_proj_weight`` ``(E, E[+1])``; None with separate projections
        (their input widths differ) or ``bias_k``/``bias_v`` (no input column)."""
        if not module._qkv_same_embed_dim or module.bias_k is not None:
            return None
        e = module.embed_dim
        oo = torch.arange(3 * e).reshape(3, e, 1)
        w = oo * e + torch.arange(e).reshape(1, 1, e)
        if module.in_proj_bias is None:
            return KronLayout(3, e, e, {"in_proj_weight": w})
        neg = torch.full((3, e, 1), -1, dtype=torch.long)
        return KronLayout(3, e, e + 1, {"in_proj_weight": torch.cat([w, neg], 2),
                                        "in_proj_bias": torch.cat([torch.full_like(w, -1), oo], 2)})

    def _groups(self, module, feat: AttentionFeatures, g, cols) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group q, k, v: kept homogeneous inputs ``(N, T, 1, I)`` and gradients ``(C, N, T, 1, E)``."""
        e = module.embed_dim
        out = []
        for p, gp in zip(feat.parts, self._gs(feat, g)):
            a = _kept(p.patches.a, cols)
            c, n, t = gp.shape[:3]
            for j in range(gp.shape[-1] // e):
                out.append((a, gp[..., j * e:(j + 1) * e].reshape(c, n, t, 1, e)))
        return out

    def kfac_factors(self, module, feat: AttentionFeatures, g, cols, input_factor=True, approx="expand"):
        """``A_γ``, ``B_γ`` of the q, k, v groups in the ``approx`` setting (module docstring)."""
        if approx not in APPROXIMATIONS:
            raise InvalidInputError(f"approx must be one of {APPROXIMATIONS}, got {approx!r}")
        big_a, big_b = [], []
        for a, gg in self._groups(module, feat, g, cols):
            t = a.shape[1]
            a2, g2 = a[:, :, 0], gg[:, :, :, 0]
            if approx == "expand":
                if input_factor:
                    big_a.append(torch.einsum("nti,ntj->ij", a2, a2))
                big_b.append(torch.einsum("cnto,cntp->op", g2, g2) / t)
            else:
                if input_factor:
                    m = a2.mean(1)
                    big_a.append(m.T @ m)
                s = g2.sum(2).reshape(-1, g2.shape[-1])
                big_b.append(s.T @ s)
        return (torch.stack(big_a) if input_factor else None), torch.stack(big_b)

    def kfe_diag(self, module, feat: AttentionFeatures, g, cols, ua, ub):
        out = [kfe_second_moment(a, gg, None if ua is None else ua[j:j + 1], ub[j:j + 1])
               for j, (a, gg) in enumerate(self._groups(module, feat, g, cols))]
        return torch.cat(out, 0)
