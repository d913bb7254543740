"""The Kronecker-factored optimizers on an ``nn.Embedding`` (any layer whose rule defines a
Kronecker layout is preconditioned): float64 checks of the preconditioned gradient against the
dense formula and against PMatKFAC / PMatEKFAC built by :func:`tangentlab.fim` on the same
statistics, and training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.optim import EKFAC, EKFACRA, KFAC

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)
V, D, T, C = 9, 4, 3, 3


def model(seed: int = 0, padding_idx: int | None = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(V, D, padding_idx=padding_idx), nn.Flatten(), nn.Tanh(),
                         nn.Linear(T * D, C)).to(DT)


def data(n: int = 14, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, T), generator=g), torch.randint(0, C, (n,), generator=g)


def deltas(opt_cls, m, x, y, **kw) -> dict[str, torch.Tensor]:
    opt = opt_cls(m, lr=1.0, **kw)
    assert opt.fallback is None  # the embedding is preconditioned, not handed to the fallback
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.precondition()
    return {k: p.grad.detach().clone() for k, p in m.named_parameters()}


def gradient(m, x, y) -> tl.PVector:
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    return tl.PVector.from_grad(m)


def test_kfac_embedding_matches_dense_formula():
    """``(A ⊗ B + εI)⁻¹ g`` with ``A = diag(token counts)/N`` and ``B`` the output-gradient factor
    (KFC's 1/T), for the matrix ``M[d, v] = weight[v, d]``."""
    m, (x, y) = model(), data()
    eps = 1e-2
    emb = m[0]
    h = emb(x)
    h.retain_grad()
    ref = copy.deepcopy(m)
    loss = F.cross_entropy(m[3](m[2](m[1](h))), y, reduction="sum")  # per-example output gradients
    loss.backward()
    n = x.shape[0]
    gout = h.grad * (x != 0)[..., None]  # (N, T, D), no gradient at padding_idx
    b_mat = torch.einsum("ntd,nte->de", gout, gout) / T / n
    counts = torch.bincount(x[x != 0], minlength=V).to(DT) / n
    big = torch.kron(b_mat, torch.diag(counts)) + eps * torch.eye(D * V, dtype=DT)
    gmean = gradient(ref, x, y)["0.weight"]  # (V, D)
    want = torch.linalg.solve(big, gmean.T.reshape(-1)).reshape(D, V).T
    got = deltas(KFAC, model(), x, y, damping=eps, damping_scheme="plain")
    torch.testing.assert_close(got["0.weight"], want, **TOL)


@pytest.mark.parametrize("make,rep,method", [(KFAC, "kfac", "factored"), (KFAC, "kfac", "exact"),
                                             (EKFAC, "ekfac", "exact"), (EKFAC, "ekfac", "factored")])
def test_step_equals_representation_solve(make, rep, method):
    """The optimizer's preconditioned gradient is the solve of the representation tl.fim builds
    from the same (empirical Fisher) statistics, for every layer, the embedding included."""
    m, (x, y) = model(2), data(12, 3)
    eps = 3e-2
    ref = copy.deepcopy(m)
    fm = tl.fim(ref, (x, y), kind="empirical", representation=rep)
    want = fm.solve(gradient(ref, x, y), eps, method=method)
    scheme = "factored" if method == "factored" else "plain"
    got = deltas(make, m, x, y, damping=eps, damping_scheme=scheme)
    for k in got:
        torch.testing.assert_close(got[k], want[k], **TOL)


@pytest.mark.parametrize("make", [KFAC, EKFAC, EKFACRA])
def test_embedding_model_trains(make):
    m, (x, y) = model(4, padding_idx=None), data(32, 5)
    opt = make(m, lr=0.2, damping=1e-2, period=3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.fallback is None and "ua" in opt.state[m[0].weight]
    assert opt.state[m[0].weight]["ua"] is None  # the diagonal input factor is its own eigenbasis
    assert losses[-1] < 0.7 * losses[0]
    twin = copy.deepcopy(m)
    opt2 = make(twin, lr=0.2, damping=1e-2, period=3)
    opt2.load_state_dict(opt.state_dict())  # the state round-trips with U_A = None
    for mm, o in ((m, opt), (twin, opt2)):
        o.zero_grad()
        F.cross_entropy(mm(x), y).backward()
        o.step()
    for p, q in zip(m.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_embedding_kfe_diag_matches_per_example_formula():
    """``Σ_{c,n} (U_Bᵀ G_{c,n})²`` from the per-example gradients (repeated tokens in an example
    add up before squaring; padding rows get nothing)."""
    from tangentlab.layers.embedding import EmbeddingRule

    emb = nn.Embedding(V, D, padding_idx=0).to(DT)
    rule = EmbeddingRule()
    gen = torch.Generator().manual_seed(7)
    idx = torch.tensor([[1, 1, 3], [0, 2, 2], [5, 0, 5], [4, 4, 4]])
    g = torch.randn(2, 4, T, D, generator=gen, dtype=DT)
    feat = rule.features(emb, (idx,), {})
    ub = torch.linalg.qr(torch.randn(1, D, D, generator=gen, dtype=DT))[0]
    pe = rule.per_example(emb, feat, g)["weight"]  # (C, N, V, D)
    want = (pe @ ub[0]).pow(2).sum((0, 1)).T[None]  # (1, D, V)
    cols = torch.arange(V)
    torch.testing.assert_close(rule.kfe_diag(emb, feat, g, cols, None, ub), want, **TOL)
    kept = torch.tensor([1, 2, 5])
    torch.testing.assert_close(rule.kfe_diag(emb, feat, g, kept, None, ub), want[..., kept], **TOL)
