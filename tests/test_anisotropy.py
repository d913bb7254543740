"""tangentlab.analysis.anisotropy against independent oracles, in float64: the mixed derivative
∇²_{x,θ}f (brute-force torch.func, finite differences), Theorem 1 (Gauss–Hermite quadrature),
the unbiased Monte-Carlo alignment (explicit pair sum), Lemma 1 (random kernels), eigenfunction
targets and the energy concentration (closed forms)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

import tangentlab as tl
from tangentlab.analysis import eigh_desc
from tangentlab.analysis.anisotropy import (
    alignment,
    alignment_vector,
    binarization_cosine,
    canonical_signs,
    eigenfunction_targets,
    energy_concentration,
    lemma1,
    linear_alignment_mc,
    mixed_derivative,
    neural_anisotropy_directions,
    predicted_linear_alignment,
)
from tangentlab.errors import InvalidInputError

D = torch.float64


def _mlp(d: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 1)).to(D).eval()


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GELU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(2 * 2 * 2, 3), nn.Tanh(), nn.Linear(3, 1)).to(D).eval()


def _flat_fn(model: nn.Module):
    """``F(θ_flat, x)`` for one example, and θ₀ flat (parameters() order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def F(th: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = th[i:i + k].reshape(s)
            i += k
        return functional_call(model, params, (x.unsqueeze(0),)).reshape(())

    return F, theta


def _brute_mixed(model: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    F, theta = _flat_fn(model)
    d = x[0].numel()
    out = torch.zeros(d, theta.numel(), dtype=D)
    for xi, wi in zip(x, w):
        H = jacfwd(jacrev(F, argnums=0), argnums=1)(theta, xi)  # (P, *input_shape)
        out += wi * H.reshape(theta.numel(), d).T
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_mixed_derivative_matches_brute_force_torch_func(kind):
    model = _mlp() if kind == "mlp" else _cnn()
    shape = (3,) if kind == "mlp" else (1, 4, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, *shape, generator=g, dtype=D)
    w = torch.rand(5, generator=g, dtype=D)
    A = mixed_derivative(model, x, w, batch_size=2)  # two batches are summed
    torch.testing.assert_close(A, _brute_mixed(model, x, w), rtol=1e-10, atol=1e-12)
    # default weights: the mean
    torch.testing.assert_close(mixed_derivative(model, x), _brute_mixed(model, x, torch.full((5,), 0.2, dtype=D)),
                               rtol=1e-10, atol=1e-12)


def test_mixed_derivative_matches_finite_differences():
    model = _mlp(d=3, seed=2)
    x0 = torch.tensor([[0.3, -0.7, 1.1]], dtype=D)
    A = mixed_derivative(model, x0)

    def grad_theta(x: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        model(x).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()

    h = 1e-5
    for k in range(3):
        e = torch.zeros_like(x0)
        e[0, k] = h
        fd = (grad_theta(x0 + e) - grad_theta(x0 - e)) / (2 * h)
        torch.testing.assert_close(A[k], fd, rtol=1e-6, atol=1e-8)


def test_mixed_derivative_keeps_the_parameters_of_a_module_used_twice():
    """torch.func.functional_call restores swapped tensors in swap order: a module reachable
    under two paths would be left holding plain Tensors (tied weight split, optimizers train
    nothing). The model must come back with its own Parameter objects, still tied."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(3, 1))
    before = [id(p) for p in model.parameters()]
    x = torch.randn(4, 3, dtype=D)
    A = mixed_derivative(model, x)
    assert [id(p) for p in model.parameters()] == before
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight is model[2].weight
    # finite differences of the parameter gradient of the mean output (tied weight counted once)
    def grad_theta(xx: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        model(xx).mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()
    h = 1e-5
    for k in range(3):
        e = torch.zeros_like(x)
        e[:, k] = h
        fd = (grad_theta(x + e) - grad_theta(x - e)) / (2 * h)
        torch.testing.assert_close(A[k], fd, rtol=1e-6, atol=1e-8)


def test_mixed_derivative_rejects_multi_output_and_bad_weights():
    model = nn.Linear(3, 2).to(D)
    with pytest.raises(InvalidInputError, match="one output"):
        mixed_derivative(model, torch.zeros(1, 3, dtype=D))
    with pytest.raises(InvalidInputError, match="weights"):
        mixed_derivative(_mlp(), torch.zeros(2, 3, dtype=D), torch.ones(3, dtype=D))


def test_nads_are_the_singular_vectors_and_alphas_their_alignment():
    model = _cnn(seed=3)
    alphas, V, A = neural_anisotropy_directions(model, (1, 4, 4))
    d = 16
    assert V.shape == (d, d) and alphas.shape == (d,)
    torch.testing.assert_close(V @ V.T, torch.eye(d, dtype=D), atol=1e-12, rtol=0)
    assert bool((alphas[:-1] >= alphas[1:] - 1e-15).all())
    torch.testing.assert_close(predicted_linear_alignment(A, V), alphas, rtol=1e-9, atol=1e-15)
    # A Aᵀ = V diag(α) Vᵀ (the spectral decomposition of the input-space Gram of M)
    torch.testing.assert_close(A @ A.T, V.T @ torch.diag(alphas) @ V, rtol=1e-9, atol=1e-13)
    # the origin: A is mixed_derivative at x = 0; the top NAD maximizes ‖Aᵀu‖² over unit u
    torch.testing.assert_close(A, mixed_derivative(model, torch.zeros(1, 1, 4, 4, dtype=D)))
    u = torch.randn(5, d, generator=torch.Generator().manual_seed(0), dtype=D)
    assert bool((predicted_linear_alignment(A, u) <= alphas[0] * (1 + 1e-12)).all())
    # canonical signs: the largest-magnitude entry is positive
    assert bool((V.gather(1, V.abs().argmax(1, keepdim=True)) > 0).all())


def test_theorem1_by_gauss_hermite_quadrature():
    """Stein's lemma: E[(uᵀx) ∇_θ f(x)] = E[∇²_{x,θ} f(x)] u for x ∼ N(0, I₂), both sides computed
    on the same tensor Gauss–Hermite rule (exact to the rule's precision for this smooth f)."""
    model = _mlp(d=2, seed=4)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / math.sqrt(2 * math.pi)
    X = torch.tensor(list(itertools.product(nodes, nodes)), dtype=D)
    W = torch.tensor([a * b for a, b in itertools.product(weights, weights)], dtype=D)
    A = mixed_derivative(model, X, W, batch_size=2000)
    for u in (torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.6, -0.8], dtype=D)):
        lhs = alignment_vector(model, X, X @ u, W)
        torch.testing.assert_close(lhs, A.T @ u, rtol=1e-9, atol=1e-10 * float(lhs.abs().max()))
        torch.testing.assert_close(predicted_linear_alignment(A, u)[0], lhs.pow(2).sum(), rtol=1e-9, atol=0)


def test_linear_alignment_mc_is_the_pair_sum():
    model = _mlp(d=3, seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 3, generator=g, dtype=D)
    U = torch.randn(2, 3, generator=g, dtype=D)
    unbiased, plugin = linear_alignment_mc(model, U, x, batch_size=3)
    F, theta = _flat_fn(model)
    G = torch.stack([jacrev(F)(theta, xi) for xi in x])  # (N, P) per-example gradients
    for k in range(2):
        u = U[k] / U[k].norm()
        a = (x @ u).unsqueeze(1) * G
        pairs = sum(float(a[i] @ a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
        assert unbiased[k].item() == pytest.approx(pairs, rel=1e-10)
        assert plugin[k].item() == pytest.approx(float(a.mean(0).pow(2).sum()), rel=1e-10)


def _random_kernel(m: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(m, rank or 2 * m, generator=g, dtype=D)
    return J @ J.T


def test_lemma1_on_random_kernels_and_functions():
    for seed in range(5):
        K = _random_kernel(12, seed=seed)
        F = torch.randn(12, 30, generator=torch.Generator().manual_seed(100 + seed), dtype=D)
        res = lemma1(K, F, rcond=0.0)
        # oracle: fᵀK⁻¹f by a solve, and (fᵀf)² / (fᵀKf)
        rkhs = (F * torch.linalg.solve(K, F)).sum(0)
        bound = (F * F).sum(0) ** 2 / (F * (K @ F)).sum(0)
        torch.testing.assert_close(res["rkhs_norm_sq"], rkhs, rtol=1e-9, atol=0)
        torch.testing.assert_close(res["bound"], bound, rtol=1e-9, atol=0)
        assert bool((res["bound"] <= res["rkhs_norm_sq"] * (1 + 1e-12)).all())
        assert bool((res["bound"] < res["rkhs_norm_sq"] * (1 - 1e-6)).all())  # strict for generic f
        torch.testing.assert_close(res["captured"], torch.ones(30, dtype=D))
        # operator convention: ‖f‖⁴₂ / α(f) is the same number
        torch.testing.assert_close(res["norm_sq"] ** 2 / res["alpha"], bound, rtol=1e-12, atol=0)
        torch.testing.assert_close(res["gen_term"], torch.sqrt(rkhs * torch.diagonal(K).mean() / 12))
    # equality for eigenvectors
    K = _random_kernel(10, seed=9)
    lam, U = eigh_desc(K)
    res = lemma1(K, U, rcond=0.0)
    torch.testing.assert_close(res["bound"], res["rkhs_norm_sq"], rtol=1e-10, atol=0)
    torch.testing.assert_close(res["rkhs_norm_sq"], 1 / lam, rtol=1e-10, atol=0)


def test_lemma1_with_a_cutoff_on_a_singular_kernel():
    K = _random_kernel(10, rank=4, seed=3)
    F = torch.randn(10, 8, generator=torch.Generator().manual_seed(1), dtype=D)
    res = lemma1(K, F, rcond=1e-10)
    assert bool((res["captured"] < 1).all()) and bool((res["captured"] > 0).all())
    assert bool((res["bound"] <= res["rkhs_norm_sq"] * (1 + 1e-12)).all())
    # the pseudo-inverse's quadratic form
    torch.testing.assert_close(res["rkhs_norm_sq"], (F * (torch.linalg.pinv(K, hermitian=True) @ F)).sum(0),
                               rtol=1e-7, atol=0)


def test_alignment_of_eigenvectors_and_backward_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).to(D)
    x = torch.randn(9, 4, dtype=D)
    K = tl.ntk(model, x).as_matrix()
    lam, U = eigh_desc(K)
    torch.testing.assert_close(alignment(K, U), lam, rtol=1e-10, atol=1e-12)
    f = torch.randn(9, dtype=D)
    v = alignment_vector(model, x, f, torch.ones(9, dtype=D))  # Jᵀf
    assert v.pow(2).sum().item() == pytest.approx(float(f @ K @ f), rel=1e-10)
    assert alignment(K, f).item() == pytest.approx(float(f @ K @ f / (f @ f)), rel=1e-12)
    with pytest.raises(InvalidInputError, match="weights must have shape"):
        alignment_vector(model, x, f, torch.ones(8, dtype=D))


def test_eigenfunction_targets_orthogonality_and_binarization():
    K = _random_kernel(20, seed=2)
    lam, U = eigh_desc(K)
    U = canonical_signs(U)
    m = 20
    phi = math.sqrt(m) * U  # φ_j(x_i) = √m u_{j,i}: orthonormal under the empirical measure
    torch.testing.assert_close(phi.T @ phi / m, torch.eye(m, dtype=D), atol=1e-12, rtol=0)
    T = eigenfunction_targets(U, [0, 3, 7])
    assert T.shape == (3, m) and set(T.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(T, torch.sign(U[:, [0, 3, 7]].T))
    # sign(0) = +1
    Z = torch.zeros(4, 2, dtype=D)
    Z[1, 0] = -1
    assert eigenfunction_targets(Z, [0])[0].tolist() == [1.0, -1.0, 1.0, 1.0]
    torch.testing.assert_close(binarization_cosine(U, [0, 3]), U[:, [0, 3]].abs().sum(0) / math.sqrt(m))
    with pytest.raises(InvalidInputError, match="indices"):
        eigenfunction_targets(U, [20])


def test_energy_concentration_closed_form():
    K = _random_kernel(8, seed=4)
    _, U = eigh_desc(K)
    c = torch.tensor([3.0, 0.0, -1.0, 2.0, 0.5, 0.0, 1.0, -2.0], dtype=D)
    y = U @ c
    ec = energy_concentration(U, y, [1, 3, 8])
    total = float(c.pow(2).sum())
    for k, (e, e2) in ec.items():
        assert e2 == pytest.approx(float(c[:k].pow(2).sum()) / total, rel=1e-12)
        assert e == pytest.approx(math.sqrt(e2), rel=1e-12)
    assert ec[8][1] == pytest.approx(1.0, rel=1e-12)
    # random ±1 labels: the average of E_K² over all 2^m sign vectors is exactly K/m
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=8)), dtype=D)
    for k in (1, 3, 5):
        mean = np.mean([energy_concentration(U, s, [k])[k][1] for s in signs])
        assert mean == pytest.approx(k / 8, rel=1e-12)
    with pytest.raises(InvalidInputError, match="K=9"):
        energy_concentration(U, y, [9])
