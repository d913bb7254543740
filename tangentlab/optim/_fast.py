"""Batched kernels of the KFAC/EKFAC step: ``s*`` in the Kronecker-factored eigenbasis (KFE).

Notation (as in :mod:`tangentlab.optim.kfac`): homogeneous inputs ``ã`` of shape
``(N, T, G, I)`` (``T`` positions, ``G`` groups), output gradients ``g`` of shape
``(C, N, T, G, O)`` (``C`` per-example statistics, 1 for the empirical Fisher), the
per-example gradient of group ``γ``: ``G_{c,n} = Σ_t g_{c,n,t} ã_{n,t}ᵀ`` (``O × I``), and
the eigenbases ``U_A`` ``(G, I, I)``, ``U_B`` ``(G, O, O)``. EKFAC's scalings are

    ``S = Σ_{c,n} (U_Bᵀ G_{c,n} U_A)²``   (elementwise square; ``s* = S / N``).

Two regimes, no Python loop over examples:

* ``T = 1`` (Linear layers): ``U_Bᵀ G_{c,n} U_A = (U_Bᵀ g_{c,n}) (U_Aᵀ ã_n)ᵀ`` is an outer
  product, so its square is the outer product of the squares and
  ``S = (Σ_c (g U_B)²)ᵀ (ã U_A)²``: two projections and one ``(O × N)(N × I)`` matmul; no
  per-example gradient is formed.
* ``T > 1`` (convolutions, KFC): the per-example gradients are sums over positions and must be
  materialized (in chunks of examples, a batched matmul ``(O × T)(T × I)`` per example). Each
  side can be rotated before the sum over positions (cost ``N T O²`` resp. ``N T I²``) or after
  it (``N O² I`` resp. ``N O I²``); each side is rotated where it is cheaper: the output side
  first iff ``T < I``, the input side first iff ``T < O``.

SUA convolutions (spatially uncorrelated activations) use the same materialized per-example
gradient in the patch basis, split into ``K`` kernel positions ``(O × C_in)`` (both rotated
by the shared SUA bases) and the bias column.
"""

from __future__ import annotations

import torch

from ..layers.base import CHUNK_ELEMENTS


def _examples_per_chunk(per_example: int, chunk: int) -> int:
    return max(1, chunk // max(1, per_example))


def kfe_second_moment(a: torch.Tensor, g: torch.Tensor, ua: torch.Tensor, ub: torch.Tensor,
                      chunk: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``S = Σ_{c,n} (U_Bᵀ G_{c,n} U_A)²`` of shape ``(G, O, I)`` (see the module docstring).

    ``a``: ``(N, T, G, I)``, ``g``: ``(C, N, T, G, O)``, ``ua``: ``(G, I, I)``, ``ub``:
    ``(G, O, O)``; ``chunk`` bounds the number of per-example gradient entries alive at once
    (``T > 1`` only)."""
    c, n, t, grp, o = g.shape
    i = a.shape[-1]
    if t == 1 and grp == 1 and c == 1:  # plain 2-D matmuls (the common Linear case)
        ar = torch.mm(a[:, 0, 0], ua[0])  # (N, I)
        gr = torch.mm(g[0, :, 0, 0], ub[0])  # (N, O)
        return torch.mm(gr.square().t(), ar.square()).unsqueeze(0)
    if t == 1:
        ar = torch.matmul(a[:, 0].transpose(0, 1), ua)  # (G, N, I): rows ã_nᵀ U_A
        gr = torch.matmul(g[:, :, 0].permute(2, 0, 1, 3).reshape(grp, c * n, o), ub)  # (G, C·N, O)
        gsq = gr.square()
        if c > 1:
            gsq = gsq.reshape(grp, c, n, o).sum(1)
        return torch.matmul(gsq.transpose(1, 2), ar.square())
    rot_a_first = t < o  # N T I² < N O I²
    rot_g_first = t < i  # N T O² < N O² I
    per = _examples_per_chunk(grp * o * i, chunk)
    out = None
    for gi in range(grp):
        ag = a[:, :, gi]  # (N, T, I)
        if rot_a_first:
            ag = torch.matmul(ag, ua[gi])
        acc = None
        for ci in range(c):
            gt = g[ci, :, :, gi].transpose(1, 2)  # (N, O, T): contiguous for a convolution's gradient
            if rot_g_first:
                gt = torch.matmul(ub[gi].transpose(0, 1), gt)  # U_Bᵀ g, batched over examples
            for st in range(0, n, per):
                pe = torch.matmul(gt[st:st + per], ag[st:st + per])  # (n, O, I)
                if not rot_a_first:
                    pe = torch.matmul(pe, ua[gi])
                if not rot_g_first:
                    pe = torch.matmul(ub[gi].transpose(0, 1), pe)
                s = pe.square().sum(0)
                acc = s if acc is None else acc.add_(s)
        out = acc[None] if out is None else torch.cat([out, acc[None]], 0)
    return out


def sua_second_moments(a: torch.Tensor, g: torch.Tensor, k: int, has_bias: bool,
                       weight_basis: tuple[torch.Tensor, torch.Tensor] | None,
                       bias_basis: tuple[torch.Tensor, torch.Tensor] | None,
                       chunk: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """EKFAC's ``S`` for the two blocks of an SUA convolution (``groups = 1``).

    ``a``: patches ``(N, T, 1, C_in·K [+1])`` (column order ``(C_in, K)``, bias last),
    ``g``: ``(C, N, T, 1, O)``; ``weight_basis``: ``(U_A, U_B)`` of the weight block
    (``(K, C_in, C_in)``, ``(K, O, O)``, the same matrices for every ``K``; ``None``: skip),
    ``bias_basis``: ``(U_A, U_B)`` of the bias block (``(1, 1, 1)``, ``(1, O, O)``; ``None``:
    skip). The per-example weight gradient at kernel position ``κ`` is
    ``W_{c,n,κ} = Σ_t g_{c,n,t} x_{n,t,(·,κ)}ᵀ`` (``O × C_in``) and its bias gradient
    ``b_{c,n} = Σ_t g_{c,n,t}``. Returns ``(Σ (U_Bᵀ W U_A)²`` shaped ``(K, O, C_in)``,
    ``Σ (U_Bᵀ b)² u_A²`` shaped ``(1, O, 1))``."""
    c, n = g.shape[0], g.shape[1]
    o = g.shape[-1]
    cin = (a.shape[-1] - int(has_bias)) // k
    per = _examples_per_chunk(o * a.shape[-1], chunk)
    a2 = a[:, :, 0]  # (N, T, I)
    sw = sb = None
    for ci in range(c):
        gg = g[ci, :, :, 0]  # (N, T, O)
        if bias_basis is not None:
            rb = torch.matmul(gg.sum(1), bias_basis[1][0])  # (N, O): b_nᵀ U_B
            s = rb.square().sum(0)
            sb = s if sb is None else sb.add_(s)
        if weight_basis is None:
            continue
        ua, ub = weight_basis[0][0], weight_basis[1][0]
        for st in range(0, n, per):
            pe = torch.matmul(gg[st:st + per].transpose(1, 2), a2[st:st + per])  # (n, O, I)
            w = pe[..., :cin * k].reshape(-1, o, cin, k).permute(0, 3, 1, 2)  # (n, K, O, C_in)
            r = torch.matmul(torch.matmul(ub.transpose(0, 1), w), ua)
            s = r.square().sum(0)
            sw = s if sw is None else sw.add_(s)
    if sb is not None:
        sb = (sb * bias_basis[0][0, 0, 0] ** 2)[None, :, None]
    return sw, sb


__all__ = ["kfe_second_moment", "sua_second_moments"]
