"""Independent float64 oracle: brute-force per-example Jacobians with torch.func.

Nothing here uses tangentlab: Jacobians come from ``vmap(jacrev(functional_call))``
over single examples and Fishers from their textbook formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, vmap


def _params(model, names=None):
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    return {k: named[k].detach() for k in names}, {k: v.detach() for k, v in named.items()}


def jacobian(model, x, names=None) -> torch.Tensor:
    """``J[n, c, p] = ∂f_c(x_n)/∂θ_p`` for the raw outputs: ``(N, C, P)``."""
    sel, full = _params(model, names)

    def f(p, xi):
        q = dict(full)
        q.update(p)
        return functional_call(model, q, (xi[None],))[0].reshape(-1)

    j = vmap(jacrev(f), in_dims=(None, 0))(sel, x)
    return torch.cat([j[k].reshape(x.shape[0], j[k].shape[1], -1) for k in sel], 2)


def fisher_exact(model, x, names=None) -> torch.Tensor:
    """``(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n``."""
    j = jacobian(model, x, names)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", j, s, j) / x.shape[0]


def gauss_newton(model, x, names=None) -> torch.Tensor:
    j = jacobian(model, x, names)
    return torch.einsum("ncp,ncq->pq", j, j) / x.shape[0]


def loss_grads(model, x, y, names=None) -> torch.Tensor:
    """Per-example cross-entropy gradients ``(N, P)``."""
    sel, full = _params(model, names)

    def ell(p, xi, yi):
        q = dict(full)
        q.update(p)
        return F.cross_entropy(functional_call(model, q, (xi[None],)), yi[None])

    g = vmap(grad(ell), in_dims=(None, 0, 0))(sel, x, y)
    return torch.cat([g[k].reshape(x.shape[0], -1) for k in sel], 1)


def empirical_fisher(model, x, y, names=None) -> torch.Tensor:
    g = loss_grads(model, x, y, names)
    return g.T @ g / x.shape[0]


def ntk(model, x1, x2=None, names=None) -> torch.Tensor:
    """``K[n, m, c, d]`` of the raw outputs: ``(N1, N2, C, D)``."""
    j1 = jacobian(model, x1, names)
    j2 = j1 if x2 is None else jacobian(model, x2, names)
    return torch.einsum("ncp,mdp->nmcd", j1, j2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(b.norm(), 1e-300))
