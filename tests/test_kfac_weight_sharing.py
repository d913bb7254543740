"""KFAC-expand and KFAC-reduce for weights shared over positions (Eschenhagen et al., NeurIPS 2023,
"Kronecker-Factored Approximate Curvature for Modern Neural Network Architectures"), in float64
against the brute-force torch.func oracle.

The paper's exactness statements, for deep linear networks with weight sharing and a Gaussian
likelihood (the Gauss-Newton matrix of the raw outputs):

* *expand setting* (the outputs keep the ``T`` positions, a loss per position): KFAC-expand
  is the exact layer block, for every layer;
* *reduce setting* (the positions are pooled, by a mean, before the output): KFAC-reduce is the
  exact layer block, for every layer.

In each setting the other approximation is not exact (checked, so the tests can fail).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.errors import InvalidInputError, UnsupportedLayerError
from tangentlab.optim import EKFAC, KFAC

from . import oracle

N, T = 6, 5
EXACT = 1e-10


class MeanPool(nn.Module):
    """``(N, T, D) -> (N, D)`` (``dim=1``) or ``(N, C, H, W) -> (N, C)`` (``dim=(2, 3)``)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x.mean(self.dim)


def seq_linear(setting: str, deep: bool) -> nn.Module:
    """A linear network applied at every position of ``(N, T, 3)`` sequences. Expand: its
    outputs keep the positions, ``(N, T·2)``; reduce: they are mean-pooled, ``(N, 2)``, and the
    deep variant reads the pooled features out with one more (unshared) linear layer."""
    if not deep:
        return nn.Sequential(nn.Linear(3, 2), nn.Flatten(1) if setting == "expand" else MeanPool(1))
    body = [nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 4)]
    if setting == "expand":
        return nn.Sequential(*body, nn.Linear(4, 2), nn.Flatten(1))
    return nn.Sequential(*body, MeanPool(1), nn.Linear(4, 2))


def conv(setting: str) -> nn.Module:
    """One convolution (weight shared over the 3x3 output positions): outputs per position
    (expand) or globally average-pooled, then a linear read-out (reduce)."""
    c = nn.Conv2d(2, 3, 2, padding=0)
    if setting == "expand":
        return nn.Sequential(c, nn.Flatten(1))
    return nn.Sequential(c, MeanPool((2, 3)), nn.Linear(3, 2))


def inputs(model: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if isinstance(model[0], nn.Conv2d):
        return torch.randn(N, 2, 4, 4, generator=g)
    return torch.randn(N, T, 3, generator=g)


def blocks(M: tl.PMat) -> list[slice]:
    return [lay.slice for lay in M.space.layers]


def errors(model: nn.Module, x: torch.Tensor, rep: str, approx: str) -> list[float]:
    """Per layer: relative error of the representation's layer block against the oracle's
    Gauss-Newton block."""
    G = oracle.gauss_newton(model, x)
    M = tl.fim(model, x, "raw", rep, kfac_approx=approx, batch_size=4)
    D = M.to_dense()
    return [oracle.rel_err(D[sl, sl], G[sl, sl]) for sl in blocks(M)]


def seeded(make, *args):
    torch.manual_seed(3)
    return make(*args)


# ---- the paper's exactness statements ---------------------------------------------------------
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("setting", ["expand", "reduce"])
@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_exact_in_its_own_setting_linear(setting, deep, rep):
    """Each approximation is the exact layer block, for every layer, of a single shared linear
    layer and of a deep linear network in its own setting (EKFAC of an exact Kronecker block is
    that block)."""
    model = seeded(seq_linear, setting, deep)
    errs = errors(model, inputs(model), rep, setting)
    assert max(errs) < EXACT, errs


@pytest.mark.parametrize("setting", ["expand", "reduce"])
def test_exact_in_its_own_setting_conv(setting):
    model = seeded(conv, setting)
    errs = errors(model, inputs(model), "kfac", setting)
    assert max(errs) < EXACT, errs


@pytest.mark.parametrize("setting", ["expand", "reduce"])
def test_not_exact_in_the_other_setting(setting):
    """The other approximation misses the shared layers' blocks (the positions' cross terms
    resp. their differences), so each exactness is specific to its setting."""
    other = "reduce" if setting == "expand" else "expand"
    for model in (seeded(seq_linear, setting, True), seeded(conv, setting)):
        errs = errors(model, inputs(model), "kfac", other)
        shared = errs[:-1] if setting == "reduce" else errs  # a reduce read-out has T = 1: exact
        assert min(shared) > 1e-3, errs


# ---- factors by definition, outside the exact settings ----------------------------------------
def test_reduce_factors_by_definition():
    """``A = (1/N) Σ_n â âᵀ`` (``â`` the position-mean of the homogeneous input) and
    ``B = (1/N) Σ_n Σ_c ĝ ĝᵀ`` (``ĝ`` the position-sum of the output gradients), on a nonlinear
    sequence model; ``B`` from the oracle's output Jacobian of the layer."""
    torch.manual_seed(5)
    lin = nn.Linear(3, 4)
    model = nn.Sequential(lin, nn.Tanh(), MeanPool(1), nn.Linear(4, 2))
    x = inputs(model, 1)
    K = tl.fim(model, x, "raw", "kfac", kfac_approx="reduce")
    (a, b), = K.factors["0"]
    ahat = torch.cat([x, torch.ones(N, T, 1)], 2).mean(1)
    assert oracle.rel_err(a, ahat.T @ ahat / N) < 1e-12
    # ĝ_c = Σ_t ∂f_c/∂s_t: the Jacobian of the outputs w.r.t. a bias added to every position
    bias_jac = oracle.jacobian(model, x, ["0.bias"])  # (N, C, O) = Σ_t ∂f_c/∂s_t
    assert oracle.rel_err(b, torch.einsum("nco,ncp->op", bias_jac, bias_jac) / N) < 1e-12


def test_approximations_coincide_without_sharing():
    """For ``T = 1`` (a plain MLP) reduce is expand, bit for bit."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(9, 3)
    e = tl.fim(model, x, "exact", "kfac", kfac_approx="expand")
    r = tl.fim(model, x, "exact", "kfac", kfac_approx="reduce")
    for be, br in zip(e.blocks, r.blocks):
        assert torch.equal(be.a, br.a) and torch.equal(be.b, br.b)


def test_ekfac_reduce_basis_and_exact_trace():
    """EKFAC-reduce: the eigenbasis of the reduce factors, ``s*`` from the per-example
    gradients (so the trace is the exact one, whatever the factors)."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), MeanPool(1), nn.Linear(4, 2))
    x = inputs(model, 2)
    G = oracle.gauss_newton(model, x)
    K = tl.fim(model, x, "raw", "kfac", kfac_approx="reduce")
    E = tl.fim(model, x, "raw", "ekfac", kfac_approx="reduce")
    assert abs(float(E.trace()) - float(G.trace())) < 1e-10 * float(G.trace())
    for kb, eb in zip(K.blocks, E.blocks):
        for g in range(eb.ub.shape[0]):
            q = torch.kron(eb.ub[g].contiguous(), eb.ua[g].contiguous())
            # the eigenbasis of the reduce factors: Qᵀ (A ⊗ B) Q is diagonal
            dense = torch.kron(kb.b[g].contiguous(), kb.a[g].contiguous())
            rot = q.T @ dense @ q
            assert float((rot - torch.diag(torch.diagonal(rot))).norm()) < 1e-10 * float(dense.norm())
            idx = eb.index[g].reshape(-1)
            assert oracle.rel_err(eb.s[g].reshape(-1), torch.diagonal(q.T @ G[idx][:, idx] @ q)) < 1e-9


# ---- the optimizers ---------------------------------------------------------------------------
def _classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), MeanPool(1), nn.Linear(5, 3))


@pytest.mark.parametrize("make,rep,method", [(KFAC, "kfac", "exact"), (KFAC, "kfac", "factored"),
                                             (EKFAC, "ekfac", "exact")])
def test_optimizer_reduce_step_equals_representation_solve(make, rep, method):
    """``kfac_approx="reduce"`` in the optimizers: the preconditioned gradient is the damped solve
    of the representation tl.fim builds with the same argument on the same statistics."""
    m = _classifier(7)
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(11, T, 3, generator=g), torch.randint(0, 3, (11,), generator=g)
    ref = copy.deepcopy(m)
    eps = 3e-2
    fm = tl.fim(ref, (x, y), kind="empirical", representation=rep, kfac_approx="reduce")
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    want = fm.solve(tl.PVector.from_grad(ref), eps, method=method)
    opt = make(m, lr=1.0, damping=eps, damping_scheme="factored" if method == "factored" else "plain",
               kfac_approx="reduce")
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.precondition()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[k], rtol=1e-9, atol=1e-11)
    # the expand solve differs (the sequence layers' factors do): the argument reached the factors
    other = tl.fim(ref, (x, y), kind="empirical", representation=rep, kfac_approx="expand")
    assert oracle.rel_err(other.solve(tl.PVector.from_grad(ref), eps, method=method)["0.weight"],
                          want["0.weight"]) > 1e-3


# ---- bad input --------------------------------------------------------------------------------
def test_unknown_or_misplaced_approximation_is_refused():
    model = seeded(seq_linear, "expand", 1)
    x = inputs(model)
    with pytest.raises(InvalidInputError, match="expand.*reduce"):
        tl.fim(model, x, "raw", "kfac", kfac_approx="mean")
    with pytest.raises(InvalidInputError, match="kfac_approx"):
        tl.fim(model, x, "raw", "dense", kfac_approx="reduce")
    with pytest.raises(InvalidInputError, match="expand.*reduce"):
        KFAC(model, kfac_approx="Reduce")
    with pytest.raises(InvalidInputError, match="sua"):
        EKFAC(nn.Sequential(nn.Conv2d(2, 3, 2)), conv="sua", kfac_approx="reduce")


@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_embedding_reduce_exact_in_its_setting(rep, padding_idx):
    """An Embedding is a linear map of one-hot inputs, so a mean-pooled embedding read out by a
    linear layer is the reduce setting: KFAC-reduce's dense token-frequency input factor gives
    the exact block (as for a Linear map of one-hot inputs whose padding rows are zero),
    KFAC-expand's
    diagonal one does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3, padding_idx=padding_idx), MeanPool(1), nn.Linear(3, 2))
    x = torch.randint(0, 7, (N, 4), generator=torch.Generator().manual_seed(1))
    x[0, :2] = 0  # some padding when padding_idx = 0
    G = oracle.gauss_newton(model, x)
    for approx, exact in (("reduce", True), ("expand", False)):
        M = tl.fim(model, x, "raw", rep, kfac_approx=approx)
        D = M.to_dense()
        sl = blocks(M)[0]
        err = oracle.rel_err(D[sl, sl], G[sl, sl])
        assert (err < EXACT) if exact else (err > 1e-3), (approx, err)
    K = tl.fim(model, x, "raw", "kfac", kfac_approx="reduce")
    (a, _), = K.factors["0"]
    freq = torch.zeros(N, 7)
    for n in range(N):
        for t in range(4):
            if padding_idx is None or x[n, t] != padding_idx:
                freq[n, x[n, t]] += 1 / 4
    assert oracle.rel_err(a, freq.T @ freq / N) < 1e-12


def test_embedding_reduce_ekfac_trace_and_optimizer():
    """EKFAC-reduce on a nonlinear embedding model: ``s*`` from the per-example gradients in the
    dense eigenbasis (the trace is the exact one), and the optimizer's step is the solve of the
    same representation."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Embedding(6, 3), nn.Tanh(), MeanPool(1), nn.Linear(3, 3))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 6, (9, 5), generator=g), torch.randint(0, 3, (9,), generator=g)
    G = oracle.gauss_newton(model, x)
    E = tl.fim(model, x, "raw", "ekfac", kfac_approx="reduce")
    assert abs(float(E.trace()) - float(G.trace())) < 1e-10 * float(G.trace())
    eb = E.blocks[0]
    q = torch.kron(eb.ub[0].contiguous(), eb.ua[0].contiguous())
    idx = eb.index[0].reshape(-1)
    assert oracle.rel_err(eb.s[0].reshape(-1), torch.diagonal(q.T @ G[idx][:, idx] @ q)) < 1e-9
    ref = copy.deepcopy(model)
    fm = tl.fim(ref, (x, y), kind="empirical", representation="ekfac", kfac_approx="reduce")
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    want = fm.solve(tl.PVector.from_grad(ref), 3e-2, method="exact")
    opt = EKFAC(model, lr=1.0, damping=3e-2, damping_scheme="plain", kfac_approx="reduce")
    assert opt.fallback is None
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.precondition()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], rtol=1e-9, atol=1e-11)


def test_embedding_reduce_vocabulary_limit_and_single_token(monkeypatch):
    from tangentlab.layers import embedding

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3), MeanPool(1), nn.Linear(3, 2))
    x = torch.randint(0, 7, (5, 4))
    monkeypatch.setattr(embedding, "MAX_DENSE_VOCAB", 6)
    with pytest.raises(UnsupportedLayerError, match="7 x 7.*expand"):
        tl.fim(model, x, "raw", "kfac", kfac_approx="reduce")
    # one token per example: nothing is shared, reduce is expand
    x1 = x[:, :1]
    r = tl.fim(model, x1, "raw", "kfac", kfac_approx="reduce")
    e = tl.fim(model, x1, "raw", "kfac")
    assert all(torch.equal(p.a, q.a) and torch.equal(p.b, q.b) for p, q in zip(r.blocks, e.blocks))
