"""Normalization layers in the Kronecker representations, in float64 against the torch.func oracle.

LayerNorm, RMSNorm, BatchNorm (eval) and GroupNorm: feature ``d``'s affine parameters
``[w_d, b_d]`` form one ``(1 × R)`` matrix with ``A_d = (1/N) Σ_{n,c} ψ ψᵀ`` and ``B_d = 1``
(``ψ`` the per-example gradient of ``(w_d, b_d)``), so KFAC's and EKFAC's norm blocks are the
exact per-feature ``R × R`` blocks of the Fisher, and zero between features.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.errors import InvalidInputError

from . import oracle
from .cases import arch_case


class GPTBlock(nn.Module):
    """Embedding, pre-LayerNorm attention written the GPT way (Linear q/k/v/out projections
    around ``F.scaled_dot_product_attention``), an RMSNorm'd feed-forward, mean pooling, head."""

    def __init__(self, vocab: int = 9, d: int = 8, heads: int = 2, classes: int = 3):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.ff1 = nn.Linear(d, 2 * d)
        self.ff2 = nn.Linear(2 * d, d)
        self.rms = nn.RMSNorm(d)
        self.head = nn.Linear(d, classes)

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        return h.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        a = self.ln1(h)
        att = F.scaled_dot_product_attention(self._split(self.q(a)), self._split(self.k(a)), self._split(self.v(a)))
        h = h + self.o(att.transpose(1, 2).reshape(h.shape))
        h = h + self.ff2(torch.tanh(self.ff1(self.ln2(h))))
        return self.head(self.rms(h).mean(1))


def gpt(seed: int = 0, n: int = 7, t: int = 5):
    torch.manual_seed(seed)
    model = GPTBlock().double()
    with torch.no_grad():  # affine parameters away from their (1, 0) initialization
        for m in (model.ln1, model.ln2, model.rms):
            m.weight.uniform_(0.5, 1.5)
        model.ln1.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    return model, torch.randint(0, 9, (n, t), generator=g), torch.randint(0, 3, (n,), generator=g)


NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(k, m) for k, m in model.named_modules() if isinstance(m, NORM_TYPES)]


def feature_indices(space: tl.ParamSpace, path: str, module: nn.Module) -> torch.Tensor:
    """``(D, R)``: flat positions of ``(w_d, b_d)`` (weight first) for every feature ``d``."""
    cols = [torch.arange(space.info(f"{path}.{k}").offset, space.info(f"{path}.{k}").offset
                         + getattr(module, k).numel())
            for k in ("weight", "bias") if getattr(module, k, None) is not None]
    return torch.stack(cols, 1)


def cases():
    model, x, y, fisher = arch_case("norms")
    yield "norms", model, x, fisher
    model, x, _ = gpt()
    yield "gpt", model, x, oracle.fisher_exact(model, x)


CASES = {name: (model, x, fisher) for name, model, x, fisher in cases()}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_norm_blocks_are_the_exact_per_feature_blocks(name, rep):
    """Each feature's ``R × R`` block is the oracle's; the rest of the layer block is zero."""
    model, x, fisher = CASES[name]
    M = tl.fim(model, x, "exact", rep, batch_size=3)
    dense = M.to_dense()
    layers = norm_layers(model)
    assert len(layers) >= 3
    for path, mod in layers:
        idx = feature_indices(M.space, path, mod)
        for d in range(idx.shape[0]):
            i = idx[d]
            assert oracle.rel_err(dense[i[:, None], i[None, :]], fisher[i[:, None], i[None, :]]) < 1e-10
        sl = M.space.layer(path).slice
        mask = torch.zeros_like(dense[sl, sl], dtype=torch.bool)
        local = idx - sl.start
        for d in range(idx.shape[0]):
            mask[local[d][:, None], local[d][None, :]] = True
        assert float(dense[sl, sl][~mask].abs().max()) == 0.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_norm_factors_by_formula_and_ekfac_diagonal(name):
    """``A_d = (1/N) Σ_n J_{n,d}ᵀ S_n J_{n,d}`` from the oracle's per-example Jacobians (``S_n``
    the softmax Fisher of the logits), ``B_d = 1``, and EKFAC's ``s*`` is the diagonal of that
    block in EKFAC's eigenbasis (here: its eigenvalues)."""
    model, x, _ = CASES[name]
    K = tl.fim(model, x, "exact", "kfac", batch_size=3)
    E = tl.fim(model, x, "exact", "ekfac", batch_size=3)
    jac = oracle.jacobian(model, x)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    kb = {b.module: b for b in K.blocks}
    eb = {b.module: b for b in E.blocks}
    for path, mod in norm_layers(model):
        idx = feature_indices(K.space, path, mod)  # (D, R)
        j = jac[:, :, idx]  # (N, C, D, R)
        want = torch.einsum("ncdr,nce,neds->drs", j, s, j) / x.shape[0]
        blk = kb[path]
        assert oracle.rel_err(blk.a, want) < 1e-10
        assert oracle.rel_err(blk.b, torch.ones_like(blk.b)) < 1e-14
        e = eb[path]
        rot = torch.einsum("dro,drs,dsp->dop", e.ua, want, e.ua)  # U_Aᵀ A U_A per feature
        assert oracle.rel_err(e.s[:, 0, :], torch.diagonal(rot, dim1=1, dim2=2)) < 1e-9
        assert oracle.rel_err(e.s[:, 0, :].sort(-1).values, torch.linalg.eigvalsh(want)) < 1e-9


@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_whole_transformer_consistency(rep):
    """A whole GPT-style model in one Kronecker representation: trace (EKFAC's the exact one),
    mv and damped solve against the representation's dense form."""
    model, x, fisher = CASES["gpt"]
    M = tl.fim(model, x, "exact", rep)
    D = M.to_dense()
    v = tl.PVector.randn(M.space, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    f = v.flat()
    assert abs(float(M.trace()) - float(D.trace())) < 1e-10 * float(D.trace())
    if rep == "ekfac":
        assert abs(float(M.trace()) - float(fisher.trace())) < 1e-10 * float(fisher.trace())
    assert oracle.rel_err(M.mv(v).flat(), D @ f) < 1e-10
    lam = 0.05
    assert oracle.rel_err(M.solve(v, lam).flat(), torch.linalg.solve(D + lam * torch.eye(len(f)), f)) < 1e-8
    other = tl.fim(model, x, "exact", "ekfac" if rep == "kfac" else "kfac").to_dense()
    for path, _ in norm_layers(model):  # the norm blocks are exact: KFAC's equal EKFAC's
        sl = M.space.layer(path).slice
        assert oracle.rel_err(D[sl, sl], other[sl, sl]) < 1e-10


def test_reduce_leaves_norm_blocks_exact():
    """The norm blocks do not depend on ``kfac_approx`` (nothing is approximated inside them)."""
    model, x, _ = gpt(3, t=4)
    model.emb.requires_grad_(False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    e = tl.fim(model, x, "exact", "kfac", params=names)
    r = tl.fim(model, x, "exact", "kfac", params=names, kfac_approx="reduce")
    eb, rb = {b.module: b for b in e.blocks}, {b.module: b for b in r.blocks}
    for path in ("ln1", "ln2", "rms"):
        assert torch.equal(eb[path].a, rb[path].a) and torch.equal(eb[path].b, rb[path].b)
    assert oracle.rel_err(rb["q"].a, eb["q"].a) > 1e-3  # a projection shared over positions: they differ


def test_part_of_a_norm_layer():
    """Bias-only training (the LayerNorm weights frozen): the kept column's exact 1 x 1 blocks."""
    model, x, _ = gpt()
    names = ["ln1.bias", "head.weight", "head.bias"]
    fisher = oracle.fisher_exact(model, x, names)
    for rep in ("kfac", "ekfac"):
        M = tl.fim(model, x, "exact", rep, params=names)
        sl = M.space.layer("ln1").slice
        assert oracle.rel_err(M.to_dense()[sl, sl], torch.diag(torch.diagonal(fisher[sl, sl]))) < 1e-10


def test_norm_layout_index_covers_parameters_once():
    """The layout: ``D`` groups of ``(1, R)``, weight in column 0 and bias in column 1."""
    from tangentlab.layers.norm import LayerNormRule

    ln = nn.LayerNorm((2, 3))
    lay = LayerNormRule().kron_layout(ln)
    assert (lay.groups, lay.out, lay.inputs, lay.diagonal_a) == (6, 1, 2, False)
    assert torch.equal(lay.index["weight"][:, 0, 0], torch.arange(6))
    assert torch.equal(lay.index["bias"][:, 0, 1], torch.arange(6))
    assert (lay.index["weight"][..., 1] == -1).all() and (lay.index["bias"][..., 0] == -1).all()
    assert LayerNormRule().kron_layout(nn.LayerNorm(4, elementwise_affine=False)) is None
    assert math.prod(LayerNormRule().kron_layout(nn.LayerNorm(4, bias=False)).index["weight"].shape) == 4


# ---- the optimizers ---------------------------------------------------------------------------
def _precondition(make, model, x, y, **kw) -> dict[str, torch.Tensor]:
    opt = make(model, lr=1.0, **kw)
    assert opt.fallback is None  # every layer, the norms included, is preconditioned
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.precondition()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("make", ["KFAC", "EKFAC"])
def test_optimizer_norm_step_is_the_dense_solve(make):
    """For a norm layer the step is ``(A ⊗ B + εI)⁻¹ g`` per feature with ``A = 1`` and ``B`` the
    empirical Fisher's ``R × R`` block of the feature (oracle per-example loss gradients)."""
    from tangentlab import optim

    model, x, y = gpt(5)
    eps = 2e-2
    got = _precondition(getattr(optim, make), model, x, y, damping=eps, damping_scheme="plain")
    model2, _, _ = gpt(5)
    grads = oracle.loss_grads(model2, x, y)  # (N, P), per-example cross-entropy gradients
    space = tl.ParamSpace.from_model(model2)
    for path, mod in norm_layers(model2):
        idx = feature_indices(space, path, mod)  # (D, R)
        psi = grads[:, idx]  # (N, D, R)
        b = torch.einsum("ndr,nds->drs", psi, psi) / x.shape[0]
        g = psi.mean(0)
        want = torch.linalg.solve(b + eps * torch.eye(b.shape[-1]), g)  # (D, R)
        names = [k for k in ("weight", "bias") if getattr(mod, k, None) is not None]
        for r, k in enumerate(names):
            torch.testing.assert_close(got[f"{path}.{k}"].reshape(-1), want[:, r], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("make,rep,method", [("KFAC", "kfac", "factored"), ("KFAC", "kfac", "exact"),
                                             ("EKFAC", "ekfac", "exact"), ("EKFAC", "ekfac", "factored")])
def test_optimizer_step_equals_representation_solve(make, rep, method):
    """The whole GPT-style model: the preconditioned gradient is the damped solve of the
    representation tl.fim builds from the same (empirical Fisher) statistics."""
    from tangentlab import optim

    model, x, y = gpt(6)
    ref, _, _ = gpt(6)
    eps = 3e-2
    fm = tl.fim(ref, (x, y), kind="empirical", representation=rep)
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    want = fm.solve(tl.PVector.from_grad(ref), eps, method=method)
    got = _precondition(getattr(optim, make), model, x, y, damping=eps,
                        damping_scheme="factored" if method == "factored" else "plain")
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("make", ["KFAC", "EKFAC", "EKFACRA"])
def test_small_transformer_trains(make):
    from tangentlab import optim

    model, x, _ = gpt(7, n=32, t=6)
    y = x[:, 0] % 3  # a learnable task: the class of the first token
    opt = getattr(optim, make)(model, lr=0.3, damping=0.1, period=3)
    assert opt.fallback is None
    assert {b.name for b in opt.blocks} >= {"ln1", "ln2", "rms", "emb", "q", "head"}
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses


def test_optimizer_refuses_a_batchnorm_switched_to_training_mode():
    """A BatchNorm preconditioned from eval mode and then trained with batch statistics: refused
    (its block would silently use the running statistics); built in training mode it falls back."""
    from tangentlab.optim import KFAC

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    opt = KFAC(model.eval(), damping=0.1)
    assert opt.fallback is None
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(InvalidInputError, match="training mode"):
        opt.step()
    opt2 = KFAC(model, damping=0.1)
    assert opt2.fallback is not None and "1" not in {b.name for b in opt2.blocks}
