"""The Kronecker-factored optimizers precondition ``nn.MultiheadAttention``'s packed input
projections (q, k, v Kronecker groups) and its ``out_proj``: while the optimizer is attached the
module runs its rule's functional (tapped) forward, which computes the same outputs and exposes
the projected tokens' gradients. float64 checks of the preconditioned gradient against the
solve of the representation ``tl.fim`` builds from the same empirical-Fisher statistics, and
training of a small transformer."""

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
V, D, T, C = 11, 6, 4, 3


class AttnNet(nn.Module):
    def __init__(self, batch_first: bool = True, bias: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first = batch_first
        self.emb = nn.Embedding(V, D)
        self.attn = nn.MultiheadAttention(D, 2, bias=bias, batch_first=batch_first)
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, C)

    def forward(self, x):
        h = self.emb(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h, need_weights=False)
        if not self.batch_first:  # back to examples first for the per-token layers
            h, a = h.transpose(0, 1), a.transpose(0, 1)
        return self.head(self.ln(h + a).mean(1))


def data(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, T), generator=g), torch.randint(0, C, (n,), generator=g)


def gradient(m, x, y) -> tl.PVector:
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    return tl.PVector.from_grad(m)


@pytest.mark.parametrize("make,rep,bias,batch_first", [(KFAC, "kfac", True, True), (KFAC, "kfac", False, True),
                                                      (KFAC, "kfac", True, False), (EKFAC, "ekfac", True, True),
                                                      (EKFAC, "ekfac", False, False)])
def test_step_equals_representation_solve(make, rep, bias, batch_first):
    m = AttnNet(batch_first, bias).to(DT).eval()
    x, y = data()
    eps = 3e-2
    ref = copy.deepcopy(m)
    want = tl.fim(ref, (x, y), kind="empirical", representation=rep).solve(gradient(ref, x, y), eps,
                                                                            method="exact")
    opt = make(m, lr=1.0, damping=eps, damping_scheme="plain")
    assert opt.fallback is None  # every parameter, the attention's included, is preconditioned
    assert "forward" in m.attn.__dict__  # the tapped forward is installed while attached
    opt.zero_grad()
    out = m(x)
    torch.testing.assert_close(out, ref(x), rtol=1e-13, atol=1e-13)  # same outputs as the native forward
    F.cross_entropy(out, y).backward()
    opt.precondition()
    got = {k: p.grad for k, p in m.named_parameters()}
    for k in got:
        torch.testing.assert_close(got[k], want[k], **TOL)
    opt.remove_hooks()
    assert "forward" not in m.attn.__dict__


def test_deep_copy_and_no_grad_use_the_native_forward():
    m = AttnNet().to(DT).eval()
    x, y = data()
    opt = KFAC(m, lr=0.1, damping=1e-2)
    twin = copy.deepcopy(m)  # its forward is rebound to the copy, which runs the class's own
    with torch.no_grad():
        torch.testing.assert_close(twin(x), m(x), rtol=1e-13, atol=1e-13)
    assert twin.attn.forward.__self__ is twin.attn
    F.cross_entropy(twin(x), y).backward()  # the copy's backward records nothing in opt
    assert "attn" not in opt.recorder.records


@pytest.mark.parametrize("make", [KFAC, EKFAC, EKFACRA])
def test_small_transformer_trains(make):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(V, 16),
                          nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True),
                          nn.Flatten(), nn.Linear(T * 16, C))
    x, y = data(48, 5)
    opt = make(model, lr=0.1, damping=3e-2, period=2)
    assert opt.fallback is None
    attn = model[1].self_attn
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert "ua" in opt.state[attn.in_proj_weight] and "ua" in opt.state[attn.out_proj.weight]
    assert losses[-1] < 0.5 * losses[0]


class CrossNet(nn.Module):
    """Separate q/k/v projections (kdim != embed_dim) and bias_k/bias_v: no Kronecker layout for
    the module's own parameters (they go to the fallback optimizer), its out_proj has one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(V, D)
        self.mem = nn.Embedding(V, 4)
        self.attn = nn.MultiheadAttention(D, 2, kdim=4, vdim=4, add_bias_kv=True, batch_first=True)
        self.head = nn.Linear(D, C)

    def forward(self, x):
        kv = self.mem(x)
        a, _ = self.attn(self.emb(x), kv, kv)
        return self.head(a.mean(1))


def test_separate_projections_fall_back_and_out_proj_is_preconditioned():
    m = CrossNet().to(DT)
    x, y = data(24, 2)
    opt = KFAC(m, lr=0.2, damping=1e-2, fallback=lambda ps: torch.optim.SGD(ps, lr=0.2))
    own = {id(p) for p in (m.attn.q_proj_weight, m.attn.k_proj_weight, m.attn.v_proj_weight, m.attn.bias_k)}
    assert own <= {id(p) for g in opt.fallback.param_groups for p in g["params"]}
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert "ua" in opt.state[m.attn.out_proj.weight] and losses[-1] < losses[0]


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_true_fisher_and_reduce_train(approx):
    m = AttnNet(seed=5).to(DT).eval()
    x, y = data(32, 6)
    opt = EKFAC(m, lr=0.2, damping=3e-2, fisher="true", kfac_approx=approx, period=2)
    assert opt.fallback is None
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert "ua" in opt.state[m.attn.in_proj_weight] and losses[-1] < 0.8 * losses[0]
