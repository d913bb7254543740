"""Spatially uncorrelated activations (SUA) for the factors of a convolution (Grosse & Martens,
2016, sec. 3.2; the optimizers' ``conv="sua"``).

The weight ``(O, C_in, K)`` of a ``groups = 1`` convolution with ``K`` kernel positions is
arranged as ``K`` matrices ``(O, C_in)`` sharing the factors
``A_SUA = (T_out/T_in)(1/N) Σ_n Σ_p x_p x_pᵀ`` (over the input channels at the input
positions ``p``; the scale of KFC's diagonal blocks) and KFC's ``B``; the bias is its own
block ``(1, O, 1)`` with input factor ``T_out``.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from ..layers.base import CHUNK_ELEMENTS


def sua_input_factor(x: torch.Tensor, t_out: int) -> torch.Tensor:
    """``Σ_n (T_out/T_in) Σ_p x_p x_pᵀ`` (``(1, C_in, C_in)``) of the raw inputs ``x`` (``(N, C_in, *spatial)``)."""
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return torch.einsum("ncp,ndp->cd", x, x)[None] * (t_out / x.shape[2])


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
    per = max(1, chunk // max(1, o * a.shape[-1]))
    a2 = a[:, :, 0]  # (N, T, I)
    sw: Any = None
    sb: Any = None
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
    if sb is not None:  # only accumulated when bias_basis is given
        sb = (sb * cast(tuple[torch.Tensor, torch.Tensor], bias_basis)[0][0, 0, 0] ** 2)[None, :, None]
    return sw, sb


__all__ = ["sua_input_factor", "sua_second_moments"]
