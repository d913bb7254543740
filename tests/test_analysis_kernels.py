"""Kernel statistics and alignments against brute-force definitions (float64)."""

import math

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.analysis import (
    center,
    cka,
    cka_with_labels,
    effective_rank,
    eigh_desc,
    kernel_alignment,
    kernel_distance,
    kernel_pca,
    label_energy,
    label_vector,
    spectrum_stats,
    trace_ratios,
)
from tangentlab.errors import InvalidInputError


def _psd(r, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, rank or r, generator=g, dtype=torch.float64)
    return A @ A.T


def _H(m):
    return torch.eye(m, dtype=torch.float64) - torch.ones(m, m, dtype=torch.float64) / m


@pytest.mark.parametrize("n,c", [(7, 1), (6, 3)])
def test_centering_modes_match_projectors(n, c):
    K = _psd(n * c, seed=n + c)
    P = torch.kron(_H(n), torch.eye(c, dtype=torch.float64))  # rows n*C + c
    torch.testing.assert_close(center(K, "examples", c), P @ K @ P)
    H = _H(n * c)
    torch.testing.assert_close(center(K, "full", c), H @ K @ H)
    torch.testing.assert_close(center(K, None, c), K)
    # a 4-D (N, N, C, C) kernel is flattened with rows n*C + c
    K4 = K.reshape(n, c, n, c).permute(0, 2, 1, 3)
    torch.testing.assert_close(center(K4, "examples"), P @ K @ P)


def test_effective_rank_and_trace_ratios_closed_forms():
    assert effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    e = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    mu = e / e.sum()
    assert effective_rank(e) == pytest.approx(math.exp(-(mu * mu.log()).sum().item()))
    torch.testing.assert_close(trace_ratios(e), torch.tensor([0.5, 0.75, 0.875, 1.0], dtype=torch.float64))
    torch.testing.assert_close(trace_ratios(e, [2]), torch.tensor([0.75], dtype=torch.float64))
    with pytest.raises(InvalidInputError):
        trace_ratios(e, [5])
    s = spectrum_stats(torch.tensor([1.0, 4.0, 2.0, 1.0]), ks=[1, 2], ratios=[2])
    assert s["max"] == 4 and s["mean"] == 2 and s["T1"] == 0.5 and s["ratio2"] == 0.5


def test_alignments_against_definitions():
    K1, K2 = _psd(12, 1), _psd(12, 2)
    assert kernel_alignment(K1, K2) == pytest.approx(((K1 * K2).sum() / (K1.norm() * K2.norm())).item())
    assert kernel_alignment(K1, 3.0 * K1) == pytest.approx(1.0)
    assert kernel_distance(K1, K1) == pytest.approx(0.0, abs=1e-12)
    P = torch.kron(_H(4), torch.eye(3, dtype=torch.float64))
    A, B = P @ K1 @ P, P @ K2 @ P
    assert cka(K1, K2, n_outputs=3) == pytest.approx(((A * B).sum() / (A.norm() * B.norm())).item())


@pytest.mark.parametrize("centering", ["examples", "full", None])
def test_cka_with_labels_equals_cka_with_label_kernel(centering):
    n, c = 8, 3
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0])
    K = _psd(n * c, 3)
    Y = label_vector(y, c)
    assert Y.shape == (n * c,) and Y.reshape(n, c).argmax(1).tolist() == y.tolist()
    assert cka_with_labels(K, y, centering) == pytest.approx(cka(K, torch.outer(Y, Y), centering, c))
    yb = torch.randn(n, dtype=torch.float64)  # float targets, one output
    Kb = _psd(n, 4)
    assert cka_with_labels(Kb, yb, centering) == pytest.approx(cka(Kb, torch.outer(yb, yb), centering, 1))


def test_kernel_pca_and_label_energy():
    K = _psd(10, 5, rank=4)
    coords, lam = kernel_pca(K, 4, centering=None)
    torch.testing.assert_close(coords @ coords.T, K)
    evals, U = eigh_desc(K)
    assert (evals[:-1] >= evals[1:]).all()
    y = torch.randn(10, dtype=torch.float64)
    en = label_energy(U, y)
    assert en[-1].item() == pytest.approx(1.0)
    assert (en[1:] >= en[:-1] - 1e-12).all()
    assert en[0].item() == pytest.approx(((U[:, 0] @ y) ** 2 / y.dot(y)).item())


def test_ntk_of_a_network_works_with_the_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    K = tl.ntk(model, x)
    v = cka_with_labels(K.as_matrix(), y)
    assert v == pytest.approx(cka(K, torch.outer(label_vector(y), label_vector(y))))
    assert 0.0 <= v <= 1.0


def test_bad_inputs():
    with pytest.raises(InvalidInputError):
        center(torch.ones(3, 4))
    with pytest.raises(InvalidInputError):
        center(torch.eye(4), "bogus")
    with pytest.raises(InvalidInputError):
        kernel_alignment(torch.eye(3), torch.eye(4))
    with pytest.raises(InvalidInputError):
        cka_with_labels(torch.eye(5), torch.tensor([0, 1]))
    with pytest.raises(InvalidInputError):
        center(torch.tensor([[float("nan")]]))
