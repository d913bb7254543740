"""The adaptive tangent feature maths (paper 003, digest ``adaptive_tangent.md``) against
independent oracles: closed forms, brute-force grids, direct L-BFGS minimization of the
bilinear problem, an LP for the ℓ1 limit, dense Kronecker matrices on tiny models,
``tl.ntk`` and ``torch.func`` Jacobians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.analysis import adaptive as ad
from tangentlab.analysis import adaptive_features as af
from tangentlab.errors import InvalidInputError

# digest §2 E1 table (verified there): v, ω̃1 = (v−1)², ω̃2 = |v−1|, ω̃3 = ω1 ⊕ ω2
FIG2 = [(0.1, 0.0099, 0.0100, 0.0099), (0.5, 0.2114, 0.2500, 0.2114), (1, 0.6695, 0.8899, 0.6690),
        (2, 1.8686, 2.0000, 1.5394), (3, 3.2441, 2.9311, 2.2337), (5, 6.2465, 4.5260, 3.3674),
        (10, 14.404, 7.772, 5.523)]


def _brute_effective(fn, v, lower=1.0):
    z = lower + np.concatenate([[0.0], np.logspace(-9, 4, 400001)])
    return np.array([np.min(fn(z) + vi ** 2 / z ** 2) for vi in np.atleast_1d(v)])


def test_fig2_values_and_closed_forms():
    v = np.array([r[0] for r in FIG2], dtype=float)
    w1, w2 = ad.effective_penalty("sq", v), ad.effective_penalty("abs", v)
    w3 = ad.joint_effective_penalty("sq", "abs", v)
    for got, col in ((w1, 1), (w2, 2), (w3, 3)):
        ref = np.array([r[col] for r in FIG2])
        assert np.all(np.abs(got - ref) <= 6e-4 * np.maximum(1, ref)), (got, ref)
    # ω̃2 closed form: v² below 1/√2, 3·2^{-2/3} v^{2/3} − 1 above
    vv = np.linspace(0.01, 20, 300)
    closed = np.where(vv <= 2 ** -0.5, vv ** 2, 3 * 2 ** (-2 / 3) * vv ** (2 / 3) - 1)
    assert np.max(np.abs(ad.effective_penalty("abs", vv) - closed)) < 1e-12
    # (ω1 ⊕ ω2)(v) at 2, 3, 6 (digest §1.11)
    assert np.allclose(ad.joint_penalty("sq", "abs", [2, 3, 6]), [0.581, 1.235, 2.965], atol=6e-4)
    # closed forms agree with brute-force grids and with the generic numerics
    for name, fn in (("sq", lambda z: (z - 1) ** 2), ("abs", lambda z: np.abs(z - 1))):
        assert np.allclose(ad.effective_penalty(name, v), _brute_effective(fn, v), rtol=1e-7, atol=1e-12)
        assert np.allclose(ad.effective_penalty(ad.custom(fn), v), ad.effective_penalty(name, v),
                           rtol=1e-12, atol=1e-15)
    p = ad.abs_power(1.5)
    assert np.allclose(ad.effective_penalty(p, v), _brute_effective(lambda z: np.abs(z - 1) ** 1.5, v),
                       rtol=1e-7, atol=1e-12)


def test_effective_penalty_properties_prop3():
    v = np.linspace(1e-3, 8, 400)
    for om in ("sq", "abs", "abs:3", ad.custom(lambda z: np.cosh(z - 1) - 1)):
        w = ad.effective_penalty(om, v)
        assert np.all(w <= v ** 2 + 1e-15)  # z = 1 is feasible
        assert np.all(np.diff(w) > 0)  # increasing
        small = ad.effective_penalty(om, np.array([1e-4, 1e-3]))
        assert np.allclose(small / np.array([1e-8, 1e-6]), 1.0, atol=1e-2)  # ω̃(v) = v² + o(v²)
        u = np.linspace(0.01, 40, 500)  # concave in u = v² (uniform grid in u)
        second = np.diff(ad.effective_penalty(om, np.sqrt(u)), 2)
        assert np.all(second <= 1e-9), om
    # χ_{1}: ω̃ = v²; ω = v²: ω̃ = 2|v| with z² = |v| (the factorization identity)
    assert np.allclose(ad.effective_penalty("fixed", v), v ** 2)
    assert np.allclose(ad.effective_penalty("square", v), 2 * v)
    assert np.allclose(ad.effective_argmin("square", v), np.sqrt(v))
    gen = ad.custom(lambda z: z ** 2, lower=0.0)
    assert np.allclose(ad.effective_penalty(gen, v), 2 * v, rtol=1e-10)
    with pytest.raises(InvalidInputError, match="accepted"):
        ad.penalty("bogus")


def test_joint_penalty_prop4_and_pair_problem():
    v = np.linspace(1, 30, 200)
    j = ad.joint_penalty("sq", "abs", v)
    assert j[0] == 0 and np.all(np.diff(j) > 0)
    # (ω1 ⊕ ω2)(v) ≤ each factor alone (z = 1 or z = v)
    assert np.all(j <= np.minimum(np.abs(v - 1), (v - 1) ** 2) + 1e-12)
    # eq. (3) with both (v−1)²: symmetric s⁵(s−1) = d², equal to the generic 2-D solve
    d = np.array([0.0, 0.05, 0.7, 2.0, 9.0, 60.0])
    a = ad.pair_solve("sq", "sq", d)
    assert np.allclose(a.s1 ** 5 * (a.s1 - 1), d ** 2, rtol=1e-12, atol=1e-15) and np.allclose(a.s1, a.s2)
    sq = ad.custom(lambda z: (z - 1) ** 2)
    b = ad.pair_solve(sq, sq, d)
    assert np.allclose(a.cost, b.cost, rtol=1e-10, atol=1e-14)
    # generic (sq, |v−1|) never above a brute-force 2-D grid, and within its resolution
    c = ad.pair_solve("sq", "abs", d)
    s = 1 + np.concatenate([[0], np.logspace(-7, 2, 1500)])
    S1, S2 = np.meshgrid(s, s, indexing="ij")
    for dj, cj in zip(d, c.cost):
        grid = ((S1 - 1) ** 2 + np.abs(S2 - 1) + dj ** 2 / (S1 * S2) ** 2).min()
        assert cj <= grid + 1e-12 and cj >= grid - 1e-4 * max(1, grid)
    assert np.allclose(c.sigma, d / (c.s1 * c.s2))
    # a fixed factor reduces eq. (3) to ω̃ of the other (s3(s−1) = d² for (v−1)²)
    f = ad.pair_solve("sq", "fixed", d)
    assert np.allclose(f.s2, 1) and np.allclose(f.cost, ad.effective_penalty("sq", d))
    # the scale λ: λ(ω1 + ω2) + σ²  ==  λ · ((ω1⊕ω2)~ at d/√λ)
    g = ad.pair_solve("sq", "sq", d, scale=4.0)
    assert np.allclose(g.cost, 4.0 * ad.pair_solve("sq", "sq", d / 2.0).cost)


def test_theorem1_closed_form_equals_direct_minimization():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(4, 10, generator=gen, dtype=torch.float64) / math.sqrt(10)
    r = 2 * torch.randn(4, generator=gen, dtype=torch.float64)
    K0 = G @ G.T
    sol = ad.theorem1(K0, r, "sq")
    beta = G.T @ sol.alpha
    assert abs(float(beta.norm()) - sol.beta_norm) < 1e-12
    assert abs(sol.s ** 3 * (sol.s - 1) - sol.beta_norm ** 2) < 1e-10  # s³(s−1) = ‖β̂‖²
    M = torch.eye(10, dtype=torch.float64) + (sol.s - 1) * torch.outer(beta, beta) / sol.beta_norm ** 2
    theta = beta / sol.s
    assert torch.allclose(G @ M @ theta, r, atol=1e-13)  # constraint
    obj = float(((torch.linalg.svdvals(M) - 1) ** 2).sum() + theta @ theta)
    assert abs(obj - sol.objective) < 1e-12
    assert torch.allclose(G @ M @ M @ G.T, sol.kernel(K0), atol=1e-13)  # K = K0 + (s²−1)/‖β̂‖² rrᵀ
    v = torch.randn(10, generator=gen, dtype=torch.float64)
    assert torch.allclose(sol.apply_M(beta, v), M @ v, atol=1e-14)
    best, vals = ad.direct_minimize(G, r, "sq", restarts=2, seed=1)
    assert best >= sol.objective - 1e-9  # the direct minimum never beats the closed form
    assert abs(best - sol.objective) < 1e-6
    # predictions equal ridgeless NTK regression: K α with the adapted kernel reproduces r
    Ka = sol.kernel(K0)
    assert torch.allclose(Ka @ torch.linalg.solve(Ka, r), K0 @ sol.alpha)


def test_diagonal_solver_l1_limit_matches_lp():
    from scipy.optimize import linprog

    gen = torch.Generator().manual_seed(3)
    J = torch.randn(14, 30, generator=gen, dtype=torch.float64)
    bstar = torch.zeros(30, dtype=torch.float64)
    bstar[[2, 11, 25]] = torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)
    r = J @ bstar
    sol = ad.diagonal_irls(J, r, "square", iters=400)
    lp = linprog(np.ones(60), A_eq=np.hstack([J.numpy(), -J.numpy()]), b_eq=r.numpy(), bounds=(0, None))
    l1 = lp.fun
    assert abs(sol.objectives[-1] - 2 * l1) < 1e-5 * l1
    assert abs(2 * float(sol.beta.abs().sum()) - 2 * l1) < 1e-5 * l1
    assert abs(l1 - 6.5) < 1e-9  # the LP recovers β* here ...
    assert torch.allclose(sol.beta, bstar, atol=1e-4)  # ... and so does the reweighted solver
    assert np.all(np.diff(sol.objectives) <= 1e-9 * abs(sol.objectives[0]))  # monotone
    # ω = (v−1)²: monotone, interpolates, and no worse than the ridgeless ℓ2 solution in its objective
    s2 = ad.diagonal_irls(J, r, "sq", iters=100)
    assert np.all(np.diff(s2.objectives) <= 1e-9 * abs(s2.objectives[0]))
    assert torch.allclose(J @ s2.beta, r, atol=1e-9)
    ridge = J.T @ torch.linalg.solve(J @ J.T, r)
    assert s2.objectives[-1] <= float(ridge @ ridge) + 1e-12


def _mlp(bias: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6, bias=bias), nn.ReLU(), nn.Linear(6, 4, bias=True), nn.Tanh(),
                         nn.Linear(4, 2, bias=bias)).double()


def test_layer_features_reproduce_the_ntk():
    m = _mlp(bias=True)
    x = torch.randn(7, 5, dtype=torch.float64)
    feats, f0 = af.layer_features(m, x)
    assert [f.shape for f in feats] == [(6, 6), (7, 4), (5, 2)]  # bias = a ones column (fan-in + 1)
    K0 = tl.ntk(m, x).as_matrix()
    assert torch.allclose(sum(f.kernel() for f in feats), K0, atol=1e-13)
    assert torch.allclose(f0, m(x), atol=1e-14)
    Jf = af.features_jacobian(feats)
    assert torch.allclose(Jf @ Jf.T, K0, atol=1e-13)


def test_lemma5_one_block_recovery_and_direct_minimum():
    gen = torch.Generator().manual_seed(2)
    B = torch.randn(4, 3, generator=gen, dtype=torch.float64) * 2
    for o1, o2 in (("sq", "sq"), ("sq", "abs")):
        M1, W, M2, d, sol = ad.recover(B, o1, o2)
        assert torch.allclose(M1.dense() @ W @ M2.dense(), B, atol=1e-12)
        om1, om2 = ad.penalty(o1), ad.penalty(o2)
        val = float(np.sum(om1(M1.singular_values().numpy())) + np.sum(om2(M2.singular_values().numpy()))
                    + (W ** 2).sum())
        assert abs(val - ad.effective_spectral_penalty(o1, B, o2)) < 1e-10
    # direct minimization over (M1, M2) of Ω(M1) + Ω(M2) + ‖M1⁻¹ B M2⁻¹‖² never goes below it (ω smooth)
    from scipy.optimize import minimize

    target = ad.effective_spectral_penalty("sq", B, "sq")

    def fun(xn):
        x = torch.tensor(xn, dtype=torch.float64, requires_grad=True)
        M1, M2 = x[:16].reshape(4, 4), x[16:].reshape(3, 3)
        W = torch.linalg.solve(M1, B) @ torch.linalg.inv(M2)
        val = ((torch.linalg.svdvals(M1) - 1) ** 2).sum() + ((torch.linalg.svdvals(M2) - 1) ** 2).sum() + \
            (W ** 2).sum()
        (g,) = torch.autograd.grad(val, x)
        return float(val.detach()), g.numpy()

    for k in range(2):
        x0 = np.concatenate([np.eye(4).ravel(), np.eye(3).ravel()]) + 0.1 * np.random.default_rng(k).normal(size=25)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
        assert res.fun >= target - 1e-9
        assert res.fun <= target + 1e-5


def test_model_a_irls_one_block_against_direct_bilinear():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 3, bias=False), nn.Tanh(),
                      nn.Linear(3, 2, bias=False)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    feats, _ = af.layer_features(m, x)
    blk = [feats[1]]  # one 3 × 3 block, the other layers' transforms fixed to I
    G = af.features_jacobian(blk)
    r = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    sol = ad.model_a_irls(blk, r, [("sq", "sq")], iters=400)
    objs = np.array(sol.objectives)
    assert np.all(np.diff(objs) <= 1e-10 * objs[0])  # monotone after every half step
    assert abs(sol.ntk_objective - float(r @ torch.linalg.solve(G @ G.T, r))) < 1e-9 * sol.ntk_objective
    assert objs[-1] < sol.ntk_objective
    best, _ = ad.direct_minimize(G, r, "sq", shape=blk[0].shape, omega2="sq", restarts=2, seed=0, maxiter=800)
    assert objs[-1] <= best + 1e-6 * best
    # the objective equals the structured penalty of B̂ (Theorem 2) and B̂ interpolates
    B = sol.blocks[0].B
    assert abs(ad.effective_spectral_penalty("sq", B, "sq") - objs[-1]) < 1e-6 * objs[-1]
    assert torch.allclose(blk[0].push(B).reshape(-1), r, atol=1e-10)


def test_model_a_kernel_and_predictions_never_pxp():
    m = _mlp(bias=True, seed=6)
    x = torch.randn(8, 5, dtype=torch.float64)
    xn = torch.randn(5, 5, dtype=torch.float64)
    feats, f0 = af.layer_features(m, x)
    featn, f0n = af.layer_features(m, xn)
    r = torch.randn(16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sol = ad.model_a_irls(feats, r, [("sq", "sq"), ("sq", "abs"), ("sq", "fixed")], iters=6)
    assert np.all(np.diff(sol.objectives) <= 1e-10 * sol.objectives[0])
    # oracle: dense Jacobian times the dense block-diagonal Kronecker M² (tiny P only)
    Jd = af.features_jacobian(feats)
    Jn = af.features_jacobian(featn)
    blocks = [torch.kron(b.M1.dense(2), b.M2.dense(2)) for b in sol.blocks]  # row-major vec: M1² ⊗ M2²
    M2big = torch.block_diag(*blocks)
    assert torch.allclose(sol.kernel(feats), Jd @ M2big @ Jd.T, atol=1e-11)
    assert torch.allclose(sol.kernel(featn, feats), Jn @ M2big @ Jd.T, atol=1e-11)
    # interpolation, and predictions = f0 + Σ_ℓ ∇_{W_ℓ} f0(x) vec(B̂_ℓ)
    assert torch.allclose(sol.predict(feats, feats, f0).reshape(-1), f0.reshape(-1) + r, atol=1e-10)
    direct = f0n + sum(f.push(b.B) for f, b in zip(featn, sol.blocks))
    assert torch.allclose(sol.predict(featn, feats, f0n), direct, atol=1e-10)
    # Ŵ = M1⁻¹ B̂ M2⁻¹ and the last layer's M2 stays the identity
    for b in sol.blocks:
        assert torch.allclose(b.M1.dense() @ b.W @ b.M2.dense(), b.B, atol=1e-10)
    assert torch.allclose(sol.blocks[2].M2.dense(), torch.eye(2, dtype=torch.float64))
    with pytest.raises(InvalidInputError):
        ad.model_a_irls(feats, r, [("sq", "sq")])


def test_quadrature_rules_and_convergence():
    for rule in af.QUADRATURES:
        t, w = af.path_quadrature(9, rule)
        assert abs(w.sum() - 1) < 1e-14 and t.min() >= 0 and t.max() <= 1
    t, w = af.path_quadrature(5, "gauss")
    assert abs((w * t ** 9).sum() - 0.1) < 1e-15  # exact to degree 2n − 1
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    th0 = af.flat_params(m)
    th1 = th0 + 0.3 * torch.randn(th0.shape, dtype=torch.float64)
    f0, f1 = af.outputs_at(m, x, th0).reshape(-1), af.outputs_at(m, x, th1).reshape(-1)

    def err(n, rule):
        Jb = af.average_jacobian(m, x, th0, th1, n, rule)
        return float((f0 + Jb @ (th1 - th0) - f1).norm() / f1.norm())

    e8, e24 = err(8, "linspace"), err(24, "linspace")
    assert 2.0 < e8 / e24 < 4.5  # O(1/n) for the paper's plain mean
    t8, t16 = err(8, "trapezoid"), err(16, "trapezoid")
    assert 3.5 < t8 / t16 < 5.5  # O(h²), h = 1/(n − 1): (15/7)² ≈ 4.6
    assert err(8, "gauss") < 1e-10
    # oracle: torch.func Jacobians at the nodes
    from torch.func import functional_call, jacrev

    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]

    def f_flat(theta):
        parts, k = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = theta[k:k + s.numel()].reshape(s)
            k += s.numel()
        return functional_call(m, parts, (x,)).reshape(-1)

    tt, ww = af.path_quadrature(4, "gauss")
    ref = sum(wk * jacrev(f_flat)((1 - tk) * th0 + tk * th1) for tk, wk in zip(tt, ww))
    assert torch.allclose(af.average_jacobian(m, x, th0, th1, 4, "gauss"), ref, atol=1e-13)
    # the matrix-free J̄ v (forward mode) equals the materialized J̄ times v
    assert torch.allclose(af.average_jvp(m, x, th0, th1, 4, "gauss"), ref @ (th1 - th0), atol=1e-13)
    with pytest.raises(InvalidInputError, match="accepted"):
        af.path_quadrature(5, "simpson")


def test_kernel_diagnostics():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    K0 = X @ X.T
    d = torch.randn(10, generator=gen, dtype=torch.float64)
    Ky = af.label_kernel(d)
    dec = af.lsq_decomposition(2.5 * K0 + 0.7 * Ky, K0, Ky)
    assert abs(dec["a"] - 2.5) < 1e-12 and abs(dec["c"] - 0.7) < 1e-12 and dec["residual"] < 1e-13
    met = af.alignment_metrics(Ky, Ky)
    assert abs(met["cos"] - 1) < 1e-14 and abs(met["cka"] - 1) < 1e-12
    y = torch.tensor([0.1, -0.2, 2.0, -3.0])
    assert abs(af.diag_ratio(torch.tensor([4.0, 4.0, 1.0, 2.0]), y, 0.5) - 4.0 / 1.5) < 1e-12
