"""Items 8-10 (appendix B.1-B.3): each metric against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from tangentlab.studies.alignment import appendix_hierarchy as H
from tangentlab.studies.alignment import norm_capacity as NC
from tangentlab.studies.alignment import spectral_bias as SB
from tangentlab.studies.alignment.appendix_common import spearman
from tangentlab.studies.framework.models import make_mlp


def _brute_jacobian(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Row by row with autograd: one backward pass per (example, output)."""
    rows = []
    out = model(x)
    for n in range(x.shape[0]):
        for c in range(out.shape[1]):
            g = torch.autograd.grad(out[n, c], list(model.parameters()), retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def test_bias_kernel_is_jacobian_gram() -> None:
    K = SB.bias_kernel(8, 3, 12, seed=4)
    torch.manual_seed(4)
    model = make_mlp(1, (8, 8), 1, "relu", dtype=torch.float64)
    J = _brute_jacobian(model, torch.linspace(0, 1, 12, dtype=torch.float64)[:, None])
    assert np.allclose(K, (J @ J.T).numpy(), rtol=1e-12, atol=1e-12)


def test_frequency_trend_on_cosines() -> None:
    n = 40
    x = (np.arange(n) + 0.5) / n
    # orthonormal cosine modes of increasing frequency k = 0..n-1 (DCT-II basis): dominant rfft bin ≈ k/2
    U = np.stack([np.cos(np.pi * k * x) for k in range(n)], 1)
    U /= np.linalg.norm(U, axis=0)
    freq, rho = SB.frequency_trend(U)
    assert rho > 0.95 and freq[0] == 0
    # the reversed basis has a decreasing trend
    assert SB.frequency_trend(U[:, ::-1])[1] < -0.95
    lam = np.array([10.0, 5, 4, 3, 2, 1, 0.9, 0.8, 0.7, 0.5, 0.1])
    assert SB.ratio10(lam) == 0.05
    assert math.isnan(SB.ratio10(lam[:5]))


def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.normal(size=30)
    assert abs(spearman(a, b) - spearmanr(a, b).statistic) < 1e-12
    assert math.isnan(spearman(np.ones(5), b[:5]))


def test_min_norm_interpolator_and_rescaling() -> None:
    _, phi = NC.rbf_features(60, 80, 3.0, seed=1)
    U, s, Vt = np.linalg.svd(phi, full_matrices=False)
    assert np.allclose(NC.rescaled(U, s ** 2, Vt, 1.0), phi, atol=1e-12)
    white = NC.rescaled(U, s ** 2, Vt, 0.0)
    assert np.allclose(np.linalg.svd(white, compute_uv=False), 1.0)
    y = np.sign(U[:, 1])
    idx = np.arange(0, 60, 3)
    half = NC.rescaled(U, s ** 2, Vt, 0.5)  # singular values ≥ sqrt(0.5): well conditioned
    w, lam, u = NC.min_norm(half[idx], y[idx])
    assert np.allclose(w, np.linalg.pinv(half[idx]) @ y[idx], atol=1e-8)
    assert np.allclose(half[idx] @ w, y[idx], atol=1e-8)
    assert np.allclose(lam.sum(), np.trace(half[idx] @ half[idx].T))


def test_prop_b25_against_numerical_minimum() -> None:
    rng = np.random.default_rng(3)
    n = 6
    lam = np.sort(rng.uniform(0.1, 5, n))[::-1]
    uy = rng.normal(size=n)
    closed = np.abs(uy).sum() / n
    res = minimize(lambda t: NC.nu_bound(lam, uy, np.exp(t), n), np.zeros(n), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert res.fun == pytest.approx(closed, rel=1e-6)
    err, beaten = NC.prop_b25_error(lam, uy, n, seed=0)
    assert err < 1e-12 and beaten == 0.0


def test_jacobian_singular_directions_and_output_change() -> None:
    torch.manual_seed(0)
    model = make_mlp(5, (7,), 3, "relu", dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    J = H.jacobian_matrix(model, x)
    assert torch.allclose(J, _brute_jacobian(model, x), atol=1e-12)
    sigma, V = H.right_singular(J, 5)
    s_ref = torch.linalg.svdvals(J)[:5]
    assert torch.allclose(sigma, s_ref, rtol=1e-9)
    assert torch.allclose(V.T @ V, torch.eye(5, dtype=V.dtype), atol=1e-9)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    eps = 1e-6
    for j in range(3):
        d = H.output_change(model, x, V[:, j], eps)
        assert d / eps == pytest.approx(float(sigma[j]), rel=1e-4)
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), w)
