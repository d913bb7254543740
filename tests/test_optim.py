"""KFAC / EKFAC / EKFAC-ra optimizers and Fisher regularizers against dense float64 oracles.

Oracles are independent of the layer rules: per-example gradients by ``torch.func``
(``vmap(grad)``), factors from explicit activations and output gradients, dense
Kronecker products, ``torch.linalg`` solves.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import tangentlab as tl
from tangentlab.errors import InvalidInputError
from tangentlab.optim import EKFAC, EKFACRA, KFAC, FisherPenalty, natural_gradient_step

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)


def data(n: int = 12, seed: int = 1, d: int = 5, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randint(0, c, (n,), generator=g)


def per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss1(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return vmap(grad(loss1), in_dims=(None, 0, 0))(params, x, y)


def hom(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[W, b]`` (..., O, I+1)."""
    return torch.cat([w, b[..., None]], -1)


def linear_oracle(model, x, y):
    """Per layer: ã (N, I+1), per-example gradient matrices G (N, O, I+1)."""
    pe = per_example_grads(model, x, y)
    h = torch.tanh(model[0](x)).detach()
    out = {}
    for name, inp in (("0", x), ("2", h)):
        a = torch.cat([inp, torch.ones(inp.shape[0], 1, dtype=DT)], 1)
        out[name] = (a, hom(pe[f"{name}.weight"], pe[f"{name}.bias"]))
    return out


def one_step(opt_cls, model, x, y, **kw):
    opt = opt_cls(model, **kw)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.step()
    return opt, {k: before[k] - v.detach() for k, v in model.named_parameters()}


def dense_kfac_solve(a_mat, b_mat, gmat, eps, scheme):
    """``Δ`` (O, I) for KFAC: plain ``(A⊗B + εI)⁻¹`` or π-factored Tikhonov."""
    o, i = gmat.shape
    if scheme == "plain":
        big = torch.kron(b_mat, a_mat) + eps * torch.eye(o * i, dtype=DT)
        return torch.linalg.solve(big, gmat.reshape(-1)).reshape(o, i)
    pi = math.sqrt((torch.trace(a_mat) / i) / (torch.trace(b_mat) / o))
    ia = torch.linalg.inv(a_mat + pi * math.sqrt(eps) * torch.eye(i, dtype=DT))
    ib = torch.linalg.inv(b_mat + math.sqrt(eps) / pi * torch.eye(o, dtype=DT))
    return ib @ gmat @ ia


def dense_ekfac_solve(a_mat, b_mat, gs, gmat, eps, scheme, s=None):
    """``Δ`` for EKFAC from the dense KFE ``Q = U_B ⊗ U_A``: ``s* = mean (Qᵀ vec G_n)²``."""
    ea, ua = torch.linalg.eigh(a_mat)
    eb, ub = torch.linalg.eigh(b_mat)
    q = torch.kron(ub, ua)
    if s is None:
        s = ((gs.reshape(gs.shape[0], -1) @ q) ** 2).mean(0)
    den = s + eps
    if scheme == "factored":
        den = den + math.sqrt(eps) * (eb[:, None] + ea[None, :]).reshape(-1)
    return (q @ ((q.T @ gmat.reshape(-1)) / den)).reshape(gmat.shape)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["plain", "factored"])
def test_kfac_step_matches_dense_oracle(scheme):
    model = mlp()
    x, y = data()
    orc = linear_oracle(model, x, y)
    lr, eps = 0.3, 1e-2
    _, d = one_step(KFAC, model, x, y, lr=lr, damping=eps, damping_scheme=scheme)
    for name, (a, gs) in orc.items():
        a_mat = a.T @ a / a.shape[0]
        bias_g = gs[..., -1]  # per-example output gradients (T = 1: the bias gradient)
        b_mat = bias_g.T @ bias_g / a.shape[0]
        want = lr * dense_kfac_solve(a_mat, b_mat, gs.mean(0), eps, scheme)
        torch.testing.assert_close(hom(d[f"{name}.weight"], d[f"{name}.bias"]), want, **TOL)


@pytest.mark.parametrize("scheme", ["plain", "factored"])
def test_ekfac_step_matches_dense_eigenbasis_formula(scheme):
    model = mlp(3)
    x, y = data(16, 4)
    orc = linear_oracle(model, x, y)
    lr, eps = 0.2, 3e-3
    _, d = one_step(EKFAC, model, x, y, lr=lr, damping=eps, damping_scheme=scheme)
    for name, (a, gs) in orc.items():
        n = a.shape[0]
        a_mat, b_mat = a.T @ a / n, gs[..., -1].T @ gs[..., -1] / n
        want = lr * dense_ekfac_solve(a_mat, b_mat, gs, gs.mean(0), eps, scheme)
        torch.testing.assert_close(hom(d[f"{name}.weight"], d[f"{name}.bias"]), want, **TOL)


def test_ekfac_step_equals_representation_solve():
    """Cross-check with PMatEKFAC (empirical Fisher built by the engine, s* at construction)."""
    model = mlp(5)
    x, y = data(10, 6)
    ref = copy.deepcopy(model)
    F_ = tl.fim(ref, (x, y), kind="empirical", representation="ekfac")
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    want = F_.solve(tl.PVector.from_grad(ref), 1e-2)
    _, d = one_step(EKFAC, model, x, y, lr=1.0, damping=1e-2)
    for k in d:
        torch.testing.assert_close(d[k], want[k], **TOL)


def test_ekfac_with_kfac_scalings_is_kfac():
    """One example: s* = (U_Bᵀg)²(U_Aᵀã)² = S_B ⊗ S_A exactly, so EKFAC and KFAC steps coincide
    (plain damping); and the A.4 scheme equals (A + √ε)⁻¹ ⊗ (B + √ε)⁻¹."""
    x, y = data(1, 7)
    m1, m2 = mlp(2), mlp(2)
    _, d1 = one_step(EKFAC, m1, x, y, lr=0.5, damping=1e-3, damping_scheme="plain")
    _, d2 = one_step(KFAC, m2, x, y, lr=0.5, damping=1e-3, damping_scheme="plain")
    for k in d1:
        torch.testing.assert_close(d1[k], d2[k], rtol=1e-8, atol=1e-12)
    m3 = mlp(2)
    eps = 1e-2
    _, d3 = one_step(EKFAC, m3, x, y, lr=1.0, damping=eps, damping_scheme="factored")
    orc = linear_oracle(mlp(2), x, y)
    for name, (a, gs) in orc.items():
        a_mat, b_mat = a.T @ a, gs[..., -1].T @ gs[..., -1]
        r = math.sqrt(eps)
        want = torch.linalg.inv(b_mat + r * torch.eye(b_mat.shape[0], dtype=DT)) @ gs[0] @ torch.linalg.inv(
            a_mat + r * torch.eye(a_mat.shape[0], dtype=DT))
        torch.testing.assert_close(hom(d3[f"{name}.weight"], d3[f"{name}.bias"]), want, **TOL)


def test_ekfac_ra_running_average_and_amortization():
    """Two steps, period 10: m = α(α S_B⊗S_A + (1−α) N r₀²) + (1−α) N r₁² in the step-0 KFE."""
    model = mlp(8)
    alpha, eps, lr = 0.6, 1e-2, 0.1
    opt = EKFACRA(model, lr=lr, damping=eps, decay=alpha, period=10)
    batches = [data(9, 10), data(9, 11)]
    probe = copy.deepcopy(model)
    orc0 = linear_oracle(probe, *batches[0])
    basis = {}
    for name, (a, gs) in orc0.items():
        n = a.shape[0]
        ea, ua = torch.linalg.eigh(a.T @ a / n)
        eb, ub = torch.linalg.eigh(gs[..., -1].T @ gs[..., -1] / n)
        basis[name] = (ua, ub, eb[:, None] * ea[None, :])
    for x, y in batches:
        orc = linear_oracle(model, x, y)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for name, (_, gs) in orc.items():
            ua, ub, m = basis[name]
            r = ub.T @ gs.mean(0) @ ua
            m = alpha * m + (1 - alpha) * x.shape[0] * r**2
            basis[name] = (ua, ub, m)
            want = lr * ub @ ((ub.T @ gs.mean(0) @ ua) / (m + eps)) @ ua.T
            got = hom(before[f"{name}.weight"] - model.get_parameter(f"{name}.weight").detach(),
                      before[f"{name}.bias"] - model.get_parameter(f"{name}.bias").detach())
            torch.testing.assert_close(got, want, **TOL)


def test_amortized_basis_is_kept_between_recomputations():
    """EKFAC with period 3: at step 1 the KFE is step 0's, s* is step 1's batch."""
    model = mlp(9)
    opt = EKFAC(model, lr=0.1, damping=1e-2, period=3)
    (x0, y0), (x1, y1) = data(8, 20), data(8, 21)
    orc0 = linear_oracle(copy.deepcopy(model), x0, y0)
    opt.zero_grad()
    F.cross_entropy(model(x0), y0).backward()
    opt.step()
    orc1 = linear_oracle(model, x1, y1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.zero_grad()
    F.cross_entropy(model(x1), y1).backward()
    opt.step()
    for name in orc0:
        a0, g0 = orc0[name]
        _, g1 = orc1[name]
        n = a0.shape[0]
        want = 0.1 * dense_ekfac_solve(a0.T @ a0 / n, g0[..., -1].T @ g0[..., -1] / n, g1, g1.mean(0), 1e-2,
                                       "plain")
        got = hom(before[f"{name}.weight"] - model.get_parameter(f"{name}.weight").detach(),
                  before[f"{name}.bias"] - model.get_parameter(f"{name}.bias").detach())
        torch.testing.assert_close(got, want, **TOL)


# ---------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, stride=1).to(DT)
        self.fc = nn.Linear(3 * 4 * 4, 3).to(DT)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def conv_oracle(model: SmallCNN, x, y):
    """Patches ã (N, T, Cin·9+1), output gradients g (N, T, O), per-example weight grads."""
    n = x.shape[0]
    out = model.conv(x)
    out.retain_grad()
    F.cross_entropy(model.fc(torch.tanh(out).flatten(1)), y, reduction="sum").backward()
    g = out.grad.detach().reshape(n, 3, -1).transpose(1, 2)  # per-example (sum loss)
    model.zero_grad()
    p = F.unfold(x, 3, padding=1).transpose(1, 2)  # (N, T, Cin·9)
    a = torch.cat([p, torch.ones(n, p.shape[1], 1, dtype=DT)], 2)
    pe = per_example_grads(model, x, y)
    return a, g, pe


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_conv_kfc_step(cls):
    model = SmallCNN()
    x = torch.randn(6, 2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a, g, pe = conv_oracle(copy.deepcopy(model), x, y)
    n, t = a.shape[0], a.shape[1]
    a_mat = torch.einsum("nti,ntj->ij", a, a) / n
    b_mat = torch.einsum("nto,ntp->op", g, g) / n / t
    gs = hom(pe["conv.weight"].reshape(n, 3, -1), pe["conv.bias"])
    eps = 1e-2
    _, d = one_step(cls, model, x, y, lr=1.0, damping=eps, damping_scheme="plain")
    got = hom(d["conv.weight"].reshape(3, -1), d["conv.bias"])
    if cls is KFAC:
        want = dense_kfac_solve(a_mat, b_mat, gs.mean(0), eps, "plain")
    else:
        want = dense_ekfac_solve(a_mat, b_mat, gs, gs.mean(0), eps, "plain")
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("cls", [KFAC, EKFAC])
def test_conv_sua_step(cls):
    """SUA: weight block I_K ⊗ (B ⊗ A_SUA) over kernel positions, bias block B·T_out."""
    model = SmallCNN()
    x = torch.randn(5, 2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0, 1])
    a, g, pe = conv_oracle(copy.deepcopy(model), x, y)
    n, t = a.shape[0], a.shape[1]
    xs = x.reshape(n, 2, -1)
    a_sua = torch.einsum("ncp,ndp->cd", xs, xs) / n * (t / xs.shape[2])
    b_mat = torch.einsum("nto,ntp->op", g, g) / n / t
    eps = 1e-2
    _, d = one_step(cls, model, x, y, lr=1.0, damping=eps, damping_scheme="plain", conv="sua")
    wk = pe["conv.weight"].reshape(n, 3, 2, 9)  # (N, O, Cin, K)
    for k in range(9):
        gs = wk[..., k]
        if cls is KFAC:
            want = dense_kfac_solve(a_sua, b_mat, gs.mean(0), eps, "plain")
        else:
            want = dense_ekfac_solve(a_sua, b_mat, gs, gs.mean(0), eps, "plain")
        torch.testing.assert_close(d["conv.weight"][..., k // 3, k % 3], want, **TOL)
    gb = pe["conv.bias"][..., None]
    a_b = torch.full((1, 1), float(t), dtype=DT)
    want_b = (dense_kfac_solve(a_b, b_mat, gb.mean(0), eps, "plain") if cls is KFAC
              else dense_ekfac_solve(a_b, b_mat, gb, gb.mean(0), eps, "plain"))
    torch.testing.assert_close(d["conv.bias"], want_b[:, 0], **TOL)


# ---------------------------------------------------------------------------------------------
def test_true_fisher_gaussian_statistics():
    """fisher='true', Gaussian likelihood: B₁ = mean Jᵀ J with J = W₂ diag(1 − h²), B₂ = I."""
    model = mlp(11)
    x = data(7, 12)[0]
    target = torch.randn(7, 3, dtype=DT)
    eps = 1e-2
    opt = KFAC(model, lr=1.0, damping=eps, damping_scheme="plain", fisher="true", likelihood="gaussian")
    s1 = model[0](x).detach()
    h = torch.tanh(s1)
    w2 = model[2].weight.detach()
    jac = w2[None] * (1 - h**2)[:, None, :]  # (N, C, H)
    b1 = torch.einsum("nch,nck->hk", jac, jac) / 7
    a1 = torch.cat([x, torch.ones(7, 1, dtype=DT)], 1)
    a2 = torch.cat([h, torch.ones(7, 1, dtype=DT)], 1)
    opt.zero_grad()
    F.mse_loss(model(x), target).backward()
    grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.step()
    for name, a, b in (("0", a1, b1), ("2", a2, torch.eye(3, dtype=DT))):
        want = dense_kfac_solve(a.T @ a / 7, b, hom(grads[f"{name}.weight"], grads[f"{name}.bias"]), eps, "plain")
        got = hom(before[f"{name}.weight"] - model.get_parameter(f"{name}.weight").detach(),
                  before[f"{name}.bias"] - model.get_parameter(f"{name}.bias").detach())
        torch.testing.assert_close(got, want, **TOL)


def test_true_fisher_sampled_matches_mc_representation():
    """fisher='true', softmax: the sampled labels are the engine's Monte-Carlo Fisher samples
    (same seed, batch index = step), so step 0 equals PMatKFAC(kind='mc').solve."""
    model = mlp(13)
    x, y = data(11, 14)
    ref = copy.deepcopy(model)
    Fm = tl.fim(ref, (x,), kind="mc", n_samples=1, representation="kfac", seed=5)
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    want = Fm.solve(tl.PVector.from_grad(ref), 1e-2)
    _, d = one_step(KFAC, model, x, y, lr=1.0, damping=1e-2, damping_scheme="plain", fisher="true", seed=5)
    for k in d:
        torch.testing.assert_close(d[k], want[k], **TOL)


@pytest.mark.slow
def test_sampled_fisher_factor_converges_to_exact():
    """The sampled output factor averaged over many steps tends to the exact-Fisher factor."""
    model = mlp(15)
    x, _ = data(40, 16)
    opt = KFAC(model, lr=0.0, damping=1e-2, fisher="true", period=1)
    acc = 0
    k = 60
    for _ in range(k):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        acc = acc + opt.state[model[2].weight]["ub"][0] @ torch.diag(opt.state[model[2].weight]["eb"][0]) @ \
            opt.state[model[2].weight]["ub"][0].T
    exact = tl.fim(model, (x,), kind="classification", representation="kfac")
    b_exact = exact.factors["2"][0][1]
    err = (acc / k - b_exact).norm() / b_exact.norm()
    assert err < 0.15, err


# ---------------------------------------------------------------------------------------------
class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(17)
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=DT))
        self.norm = nn.LayerNorm(4).to(DT)

    def forward(self, x):
        h = self.norm(torch.tanh(self.net[0](x)))
        return self.net[2](h) * self.scale


def test_fallback_optimizer_for_other_parameters():
    model = WithExtra()
    x, y = data(8, 18)
    ref = copy.deepcopy(model)
    opt = EKFAC(model, lr=0.1, damping=1e-2, fallback=lambda ps: torch.optim.SGD(ps, lr=0.05))
    covered = {id(p) for g in opt.param_groups for p in g["params"]}
    # the LayerNorm has a Kronecker block (its exact per-feature blocks): only `scale` falls back
    assert {n for n, p in model.named_parameters() if id(p) not in covered} == {"scale"}
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    F.cross_entropy(ref(x), y).backward()
    for name in ("scale",):
        want = ref.get_parameter(name).detach() - 0.05 * ref.get_parameter(name).grad
        torch.testing.assert_close(model.get_parameter(name).detach(), want, **TOL)
    assert not torch.allclose(model.net[0].weight, ref.net[0].weight)


def test_precondition_in_front_of_another_optimizer():
    m1, m2 = mlp(19), mlp(19)
    x, y = data(9, 20)
    _, d = one_step(EKFAC, m1, x, y, lr=0.3, damping=1e-2)
    pre = EKFAC(m2, damping=1e-2)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.3)
    before = {k: v.detach().clone() for k, v in m2.named_parameters()}
    F.cross_entropy(m2(x), y).backward()
    pre.precondition()
    sgd.step()
    for k, v in m2.named_parameters():
        torch.testing.assert_close(before[k] - v.detach(), d[k], **TOL)


@pytest.mark.parametrize("make", [lambda m: KFAC(m, lr=0.2, damping=1e-2, period=2, momentum=0.5),
                                  lambda m: EKFAC(m, lr=0.2, damping=1e-2, period=2),
                                  lambda m: EKFACRA(m, lr=0.2, damping=1e-2, period=3),
                                  lambda m: KFAC(m, lr=0.2, damping=1e-2, fisher="true", period=2)])
def test_state_dict_round_trip_continues_identically(make):
    model = WithExtra()
    opt = make(model)
    batches = [data(10, 30 + i) for i in range(6)]

    def run(m, o, bs):
        for x, y in bs:
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()

    run(model, opt, batches[:3])
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    run(model, opt, batches[3:])
    clone = WithExtra()
    clone.load_state_dict(saved_model)
    opt2 = make(clone)
    opt2.load_state_dict(saved)
    run(clone, opt2, batches[3:])
    for (k, a), (_, b) in zip(model.named_parameters(), clone.named_parameters()):
        assert torch.equal(a, b), k


def test_dtype_float32_and_bad_configuration():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).float()
    x, y = torch.randn(8, 5, dtype=torch.float32), torch.randint(0, 3, (8,))
    opt = EKFAC(model, lr=0.1, damping=1e-2)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.state[model[0].weight]["s"].dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(InvalidInputError, match="damping_scheme"):
        KFAC(model, damping_scheme="tikhonov")
    with pytest.raises(InvalidInputError, match="damping"):
        EKFAC(model, damping=0.0)
    with pytest.raises(InvalidInputError, match="period"):
        EKFAC(model, period=0)
    with pytest.raises(InvalidInputError, match="fisher"):
        EKFAC(model, fisher="fake")
    opt.zero_grad(set_to_none=False)
    with pytest.raises(InvalidInputError, match="backward"):
        opt.step()


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rep", ["dense", "diag", "kfac", "ekfac", "lowrank"])
def test_fisher_penalty_value_and_gradient(rep):
    model = mlp(21)
    x, y = data(10, 22)
    Fm = tl.fim(model, (x, y), kind="exact", representation=rep)
    Fd = tl.fim(model, (x, y), kind="exact", representation="dense").to_dense()
    if rep != "dense":
        Fd = Fm.to_dense()
    pen = FisherPenalty(Fm, model, strength=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    delta = (tl.PVector.from_model(model) - pen.anchor).flat().detach()
    val = pen(model)
    torch.testing.assert_close(val, 1.5 * delta @ Fd @ delta, **TOL)
    val.backward()
    g = tl.PVector.from_grad(model).flat()
    torch.testing.assert_close(g, 3.0 * Fd @ delta, **TOL)


@pytest.mark.parametrize("rep", ["dense", "diag", "ekfac", "lowrank"])
def test_natural_gradient_step(rep):
    model = mlp(23)
    x, y = data(10, 24)
    Fm = tl.fim(model, (x, y), kind="exact", representation=rep)
    Fd = Fm.to_dense()
    F.cross_entropy(model(x), y).backward()
    g = tl.PVector.from_grad(model).flat()
    before = tl.PVector.from_model(model).flat().detach().clone()
    natural_gradient_step(model, Fm, lr=0.5, damping=1e-2)
    want = before - 0.5 * torch.linalg.solve(Fd + 1e-2 * torch.eye(Fd.shape[0], dtype=DT), g)
    torch.testing.assert_close(tl.PVector.from_model(model).flat().detach(), want, **TOL)


# ---------------------------------------------------------------------------------------------
# fast paths of the step (kfe_second_moment, sua_second_moments, structured gather/scatter, skipped statistics)
def _kfe_reference(a, g, ua, ub):
    """The straightforward formula: materialize G_{c,n} = Σ_t g ãᵀ, rotate, square, sum."""
    pe = torch.einsum("cntgo,ntgi->cngoi", g, a)
    return torch.einsum("cngoi,gop,giq->cngpq", pe, ub, ua).pow(2).sum((0, 1))


def _orthogonal(grp: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(grp, d, d, generator=gen, dtype=DT))[0]


@pytest.mark.parametrize("c,n,t,grp,o,i", [(1, 7, 1, 1, 3, 5), (2, 7, 1, 2, 3, 5),  # T = 1: one matmul
                                           (1, 9, 4, 1, 3, 5),  # rotate g first, ã after
                                           (1, 9, 4, 1, 6, 3),  # ã first, g after
                                           (2, 9, 4, 3, 2, 2),  # both after
                                           (3, 5, 2, 2, 4, 9)])  # both first
@pytest.mark.parametrize("chunk", [1 << 24, 10])
def test_kfe_second_moment_fast_path_matches_per_example_formula(c, n, t, grp, o, i, chunk):
    from tangentlab.layers.patch import kfe_second_moment

    gen = torch.Generator().manual_seed(c * 100 + t * 10 + o)
    a = torch.randn(n, t, grp, i, generator=gen, dtype=DT)
    g = torch.randn(c, n, t, grp, o, generator=gen, dtype=DT)
    ua, ub = _orthogonal(grp, i, gen), _orthogonal(grp, o, gen)
    torch.testing.assert_close(kfe_second_moment(a, g, ua, ub, chunk), _kfe_reference(a, g, ua, ub), **TOL)
    # a strided (non-contiguous) patch layout, as the convolution rule produces
    buf = a.permute(0, 2, 3, 1).contiguous()
    torch.testing.assert_close(kfe_second_moment(buf.permute(0, 3, 1, 2), g, ua, ub, chunk),
                               _kfe_reference(a, g, ua, ub), **TOL)
    # U_A = None: the identity (a diagonal input factor is its own eigenbasis)
    eye = torch.eye(i, dtype=DT).expand(grp, i, i)
    torch.testing.assert_close(kfe_second_moment(a, g, None, ub, chunk), _kfe_reference(a, g, eye, ub), **TOL)


@pytest.mark.parametrize("diagonal", [False, True])
def test_kron_damping_matches_dense_formulas(diagonal):
    """The pipeline's damped denominators in the KFE against the dense damped matrices."""
    from tangentlab.kron import ekfac_shift, factored_inverses, kfac_denominator, solve_in_basis, sym_eigh

    gen = torch.Generator().manual_seed(11)
    o, i, lam = 3, 4, 0.05
    xa, xb = torch.randn(2, i, 6, generator=gen, dtype=DT), torch.randn(2, o, 5, generator=gen, dtype=DT)
    a = xa.pow(2).mean(-1) if diagonal else xa @ xa.transpose(1, 2) / 6
    b = xb @ xb.transpose(1, 2) / 5
    v = torch.randn(2, o, i, generator=gen, dtype=DT)
    ea, ua = sym_eigh(a)
    eb, ub = sym_eigh(b)
    assert (ua is None) == diagonal
    for g in range(2):
        am = torch.diag(a[g]) if diagonal else a[g]
        big = torch.kron(b[g], am)
        plain = torch.linalg.solve(big + lam * torch.eye(o * i, dtype=DT), v[g].reshape(-1)).reshape(o, i)
        got = solve_in_basis(v, ua, ub, kfac_denominator(ea, eb, lam, False))[g]
        torch.testing.assert_close(got, plain, **TOL)
        ia, ib = factored_inverses(a, b, lam)
        fac = ib[g] @ v[g] @ (torch.diag(ia[g]) if diagonal else ia[g])
        torch.testing.assert_close(solve_in_basis(v, ua, ub, kfac_denominator(ea, eb, lam, True))[g], fac, **TOL)
        # EKFAC's factored damping with s = s_B ⊗ s_A: (A + √λ I) ⊗ (B + √λ I) in the KFE
        s = eb[:, :, None] * ea[:, None, :]
        shifted = torch.kron(b[g] + lam ** 0.5 * torch.eye(o, dtype=DT), am + lam ** 0.5 * torch.eye(i, dtype=DT))
        want = torch.linalg.solve(shifted, v[g].reshape(-1)).reshape(o, i)
        torch.testing.assert_close(solve_in_basis(v, ua, ub, s + ekfac_shift(ea, eb, lam))[g], want, **TOL)


@pytest.mark.parametrize("has_bias", [True, False])
def test_sua_second_moments_fast_path_matches_per_example_formula(has_bias):
    from tangentlab.kron.sua import sua_second_moments

    gen = torch.Generator().manual_seed(5)
    c, n, t, o, cin, k = 2, 6, 5, 3, 2, 4
    a = torch.randn(n, t, 1, cin * k + int(has_bias), generator=gen, dtype=DT)
    g = torch.randn(c, n, t, 1, o, generator=gen, dtype=DT)
    ua, ub = _orthogonal(1, cin, gen).expand(k, -1, -1), _orthogonal(1, o, gen).expand(k, -1, -1)
    ua_b, ub_b = torch.full((1, 1, 1), 0.7, dtype=DT), _orthogonal(1, o, gen)
    sw, sb = sua_second_moments(a, g, k, has_bias, (ua, ub), (ua_b, ub_b) if has_bias else None, chunk=17)
    pe = torch.einsum("cnto,nti->cnoi", g[:, :, :, 0], a[:, :, 0])
    w = pe[..., :cin * k].reshape(c, n, o, cin, k)
    want = torch.einsum("cnoik,op,iq->cnkpq", w, ub[0], ua[0]).pow(2).sum((0, 1))
    torch.testing.assert_close(sw, want, **TOL)
    if has_bias:
        want_b = ((g[:, :, :, 0].sum(2) @ ub_b[0]) ** 2).sum((0, 1)) * 0.49
        torch.testing.assert_close(sb[0, :, 0], want_b, **TOL)
    else:
        assert sb is None


@pytest.mark.parametrize("conv", ["kfc", "sua"])
def test_structured_gather_scatter_equal_the_index_layout(conv):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, groups=2, bias=False),
                          nn.Flatten(), nn.Linear(36, 3)).to(DT)
    if conv == "sua":
        model[2] = nn.Conv2d(4, 4, 3, bias=False).to(DT)
    opt = KFAC(model, conv=conv)
    for b in opt.blocks:
        assert b.structured
        tensors = {k: torch.randn(p.shape, dtype=DT) for k, p in b.params.items()}
        flat = torch.cat([tensors[k].reshape(-1) for k in b.index])
        mat = b.gather(tensors)
        torch.testing.assert_close(mat, flat[b.perm].reshape(b.shape), rtol=0, atol=0)
        back = b.scatter(mat)
        for k in tensors:
            torch.testing.assert_close(back[k], tensors[k], rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda m: KFAC(m, lr=0.1, damping=1e-2, period=3),
                                  lambda m: EKFACRA(m, lr=0.1, damping=1e-2, period=3)])
def test_statistics_only_formed_on_recomputation_steps(make):
    """KFAC and EKFAC-ra between recomputations need no layer statistics (EKFAC does)."""
    model = mlp(31)
    opt = make(model)
    calls = []
    real = opt._statistics
    opt._statistics = lambda: calls.append(opt.n_steps) or real()
    for i in range(5):
        x, y = data(6, 40 + i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert calls == [0, 3]
    opt.zero_grad(set_to_none=False)  # no backward since the last step: still refused
    with pytest.raises(InvalidInputError, match="backward"):
        opt.step()


@pytest.mark.parametrize("cls,scheme", [(KFAC, "plain"), (KFAC, "factored"), (EKFAC, "factored")])
def test_changed_damping_takes_effect_between_recomputations(cls, scheme):
    """The cached damped denominators follow a change of ``param_groups[0]['damping']``."""
    m1, m2 = mlp(33), mlp(33)
    x, y = data(8, 34)
    o1 = cls(m1, damping=1e-1, damping_scheme=scheme, period=5)
    o2 = cls(m2, damping=3e-3, damping_scheme=scheme, period=5)
    for m, o in ((m1, o1), (m2, o2)):
        F.cross_entropy(m(x), y).backward()
        o.precondition()  # recomputes on this batch; parameters unchanged
        o.zero_grad()
    o1.param_groups[0]["damping"] = 3e-3
    for m, o in ((m1, o1), (m2, o2)):
        F.cross_entropy(m(x), y).backward()
        o.precondition()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, **TOL)
