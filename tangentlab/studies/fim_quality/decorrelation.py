"""Part 2b of ``fim-quality``: decorrelation in the Kronecker-factored eigenbasis (thesis
Fig. 4.2 left).

For a layer block ``F_l`` of the empirical Fisher of the sigmoid MLP of part 2 and the KFE
``Q = U_B ⊗ U_A`` of KFAC's factors estimated on the same examples, the *off-diagonal mass*
of a symmetric matrix ``M`` in a basis is ``‖M − diag(M)‖²_F / ‖M‖²_F`` (0: diagonal in that
basis; ``‖M‖_F`` is the same in every orthonormal basis). Measured in the parameter basis
(``M = F_l``) and in the KFE (``M = Qᵀ F_l Q``); in the KFE it equals EKFAC's squared relative
Frobenius error with ``s*`` on the same examples (``s* = diag(Qᵀ F_l Q)``).

For the figure, the *correlation* matrices ``D^{-1/2} M D^{-1/2}`` of the 250 coordinates of
largest variance in each basis (the thesis shows a block of 250 parameters of layer 2).
"""

from __future__ import annotations

from typing import Any

import torch

#: Columns of ``tables/decorrelation.csv``.
DECOR_COLUMNS = ["step", "layer", "split", "basis", "metric", "value"]
DECOR_KEY = ["step", "layer", "split", "basis", "metric"]
#: Coordinates of the correlation block shown in the figure (thesis: 250 parameters).
BLOCK = 250


def kfe_block(f: torch.Tensor, ekfac_layer: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(F_g, Qᵀ F_g Q)]`` for each Kronecker group of the one-layer EKFAC ``ekfac_layer``
    (``M.select([layer])``), ``F_g`` the group's entries of the dense layer block ``f`` in the
    group's ``(O·I)`` layout. Entries of ``f`` between groups are not included."""
    out = []
    for blk in ekfac_layer.blocks:
        n_groups, o, i = blk.s.shape
        for g in range(n_groups):
            idx = blk.index[g].reshape(-1)
            fg = f[idx[:, None], idx[None, :]]
            f4 = fg.reshape(o, i, o, i)
            ub = blk.ub[g]
            ua = blk.ua[g] if blk.ua is not None else torch.eye(i, dtype=f.dtype, device=f.device)
            # Qᵀ F Q, one index at a time (O(P² (O + I)))
            t = torch.einsum("ap,abcd->pbcd", ub, f4)
            t = torch.einsum("bq,pbcd->pqcd", ua, t)
            t = torch.einsum("pqcd,cr->pqrd", t, ub)
            rot = torch.einsum("pqrd,ds->pqrs", t, ua).reshape(o * i, o * i)
            out.append((fg, rot))
    return out


def off_diagonal_mass(m: torch.Tensor) -> float:
    """``‖m − diag(m)‖²_F / ‖m‖²_F`` (NaN for a zero matrix)."""
    total = float(m.pow(2).sum())
    if total <= 0:
        return float("nan")
    return (total - float(torch.diagonal(m).pow(2).sum())) / total


def correlation_block(m: torch.Tensor, k: int = BLOCK) -> torch.Tensor:
    """The correlation matrix of the ``k`` coordinates of largest variance of ``m`` (in
    descending order of variance)."""
    d = torch.diagonal(m)
    top = torch.argsort(d, descending=True)[:k]
    sub = m[top[:, None], top[None, :]]
    s = torch.diagonal(sub).clamp_min(torch.finfo(m.dtype).tiny).sqrt()
    return sub / s[:, None] / s[None, :]


def layer_masses(f: torch.Tensor, ekfac_layer: Any) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """``(mass in the parameter basis, mass in the KFE, F_g, Qᵀ F_g Q)`` of the layer (its first
    Kronecker group; a Linear layer has one)."""
    fg, rot = kfe_block(f, ekfac_layer)[0]
    return off_diagonal_mass(fg), off_diagonal_mass(rot), fg, rot


def decorrelation_rows(model: Any, data: tuple[torch.Tensor, torch.Tensor], step: int, layers: list[str],
                       splits: int, fkw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, tuple]]:
    """Off-diagonal masses of every layer's empirical Fisher block in the parameter basis and
    the KFE, on ``splits`` disjoint equal parts of ``data`` (independent realizations), and, on
    the whole of ``data``, EKFAC's relative Frobenius error (for the identity) and the
    correlation blocks of each basis (returned for the figure, by layer)."""
    from ...api import fim
    from .metrics import fro_error

    x, y = data
    n = x.shape[0] // splits
    rows: list[dict[str, Any]] = []
    blocks: dict[str, tuple] = {}

    def row(layer, split, basis, metric, value):
        return {"step": step, "layer": layer, "split": split, "basis": basis, "metric": metric,
                "value": float(value)}

    for split in range(-1, splits):
        part = data if split < 0 else (x[split * n:(split + 1) * n], y[split * n:(split + 1) * n])
        exact = fim(model, part, representation="blockdiag", **fkw)
        ek = fim(model, part, representation="ekfac", **fkw)
        for layer in layers:
            f = exact.blocks[layer]
            sub = ek.select([layer])
            m_par, m_kfe, fg, rot = layer_masses(f, sub)
            rows += [row(layer, split, "parameter", "offdiag_mass", m_par), row(layer, split, "kfe", "offdiag_mass",
                                                                                m_kfe)]
            if split < 0:
                rel = fro_error(f, sub) / float(torch.linalg.matrix_norm(f))
                rows.append(row(layer, split, "kfe", "ekfac_fro_rel_err_sq", rel ** 2))
                blocks[layer] = (correlation_block(fg), correlation_block(rot))
    return rows, blocks
