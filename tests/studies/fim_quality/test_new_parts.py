"""The measures of fim-quality's Fig. 3.7 (NTK kernel PCA) and Fig. 4.2 left (decorrelation in
the KFE) against independent float64 computations (per-example autograd, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tangentlab.api import fim
from tangentlab.pmat import NAMES
from tangentlab.studies.fim_quality.decorrelation import correlation_block, layer_masses, off_diagonal_mass
from tangentlab.studies.fim_quality.ntk_pca import (
    class_pairs,
    difference_gram,
    intra_inter_gap,
    kernel_pca,
    linear_separability,
    normalized,
)
from tangentlab.studies.framework.models import build_model, make_mlp

pytestmark = pytest.mark.skipif("ekfac" not in NAMES, reason="ekfac not registered")


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_difference_gram_matches_per_example_autograd():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10, width=3, hidden=(8,), activation="relu").double()
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    g = difference_gram(model, x, 2, 5)
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        out = model(x[i:i + 1])
        (out[0, 5] - out[0, 2]).backward()
        rows.append(_flat_grad(model))
    j = torch.stack(rows)
    assert torch.allclose(g, j @ j.T, rtol=1e-10, atol=1e-12)


def test_kernel_pca_gap_and_separability_on_known_cases():
    rng = np.random.default_rng(0)
    labels = torch.tensor([0] * 10 + [1] * 10)
    # features: two far-apart clusters in 3-d -> linear kernel, separable in its first PC
    feats = np.concatenate([rng.normal(0, 0.1, (10, 3)) + [5, 0, 0], rng.normal(0, 0.1, (10, 3)) - [5, 0, 0]])
    g = torch.tensor(feats @ feats.T)
    proj = kernel_pca(g)
    # the projections are the top-2 part of the centered Gram (numpy reference)
    h = np.eye(20) - 1 / 20
    ev, evec = np.linalg.eigh(h @ feats @ feats.T @ h)
    top = evec[:, -2:] @ np.diag(ev[-2:]) @ evec[:, -2:].T
    assert np.allclose(proj @ proj.T, top, atol=1e-8)
    assert linear_separability(proj, labels.numpy()) == 1.0
    c = normalized(g)
    assert torch.allclose(torch.diagonal(c), torch.ones(20, dtype=torch.float64))
    assert intra_inter_gap(c, labels) > 1.5  # cosines ≈ +1 within, ≈ −1 across
    # identical distributions: no linear separation in the plane of the first two components
    mixed = rng.normal(0, 1, (200, 5))
    lab = np.array([0, 1] * 100)
    acc = linear_separability(kernel_pca(torch.tensor(mixed @ mixed.T)), lab)
    assert acc < 0.75
    assert len(set(class_pairs(10, 5, 3))) == 5 and all(a < b for a, b in class_pairs(10, 5, 3))


def test_offdiagonal_mass_matches_dense_float64_fisher_in_the_kfe():
    """Off-diagonal masses of a layer's empirical Fisher in the parameter basis and in the KFE
    U_B ⊗ U_A, against a brute-force computation: per-example gradients by autograd, factors
    A = E[ã ãᵀ] (ã = (a, 1)), B = E[δ δᵀ] by hand, the rotation with numpy's kron."""
    torch.manual_seed(1)
    model = make_mlp(6, (5, 4), 3, "sigmoid", torch.float64)
    x = torch.randn(60, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (60,))
    layer = model[2]  # the second Linear
    acts, deltas, grads = [], [], []
    for i in range(len(x)):
        model.zero_grad()
        a = model[1](model[0](x[i:i + 1]))  # input of the second Linear
        z = layer(a)
        z.retain_grad()
        out = model[4](model[3](z))
        torch.nn.functional.cross_entropy(out, y[i:i + 1]).backward()
        acts.append(torch.cat([a[0], torch.ones(1, dtype=torch.float64)]).detach().numpy())
        deltas.append(z.grad[0].numpy().copy())
        grads.append(torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).reshape(-1).numpy().copy())
    gmat = np.stack(grads)
    f = gmat.T @ gmat / len(x)  # dense float64 empirical Fisher of the layer, (W | b) row-major
    a_f = np.stack(acts).T @ np.stack(acts) / len(x)
    b_f = np.stack(deltas).T @ np.stack(deltas) / len(x)
    q = np.kron(np.linalg.eigh(b_f)[1], np.linalg.eigh(a_f)[1])
    rot = q.T @ f @ q

    def mass(m):
        return (np.sum(m ** 2) - np.sum(np.diag(m) ** 2)) / np.sum(m ** 2)

    fkw = dict(kind="empirical", batch_size=60, progress=False)
    exact = fim(model, (x, y), representation="blockdiag", **fkw)
    ek = fim(model, (x, y), representation="ekfac", **fkw)
    m_par, m_kfe, fg, rotated = layer_masses(exact.blocks["2"], ek.select(["2"]))
    assert m_par == pytest.approx(mass(f), rel=1e-8)
    assert m_kfe == pytest.approx(mass(rot), rel=1e-6)
    assert m_kfe < m_par
    assert off_diagonal_mass(torch.eye(4, dtype=torch.float64)) == 0.0
    c = correlation_block(torch.tensor(f), k=7)
    assert c.shape == (7, 7) and torch.allclose(torch.diagonal(c), torch.ones(7, dtype=torch.float64))
