"""scipy.sparse.linalg export of matrices, kernels and Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator, cg, eigsh, lsqr

import tangentlab as tl

from . import oracle
from .cases import arch_case


@pytest.mark.parametrize("implicit", [False, True])
def test_jacobian_operator(implicit):
    model, x, _, _ = arch_case("cnn")
    J = tl.jacobian(model, x, implicit=implicit, batch_size=4)
    op = J.to_scipy()
    want = oracle.jacobian(model, x).reshape(-1, op.shape[1])  # rows n·C + c
    assert op.shape == tuple(want.shape)
    v = np.random.default_rng(0).standard_normal(op.shape[1])
    u = np.random.default_rng(1).standard_normal(op.shape[0])
    assert oracle.rel_err(torch.as_tensor(op.matvec(v)), want @ torch.as_tensor(v)) < 1e-10
    assert oracle.rel_err(torch.as_tensor(op.rmatvec(u)), want.T @ torch.as_tensor(u)) < 1e-10
    # least squares through the operator: min ‖J v − u‖ (scipy drives J and Jᵀ)
    sol = lsqr(op, u, atol=1e-12, btol=1e-12, iter_lim=2000)[0]
    ref = torch.linalg.lstsq(want, torch.as_tensor(u).unsqueeze(1)).solution[:, 0]
    assert oracle.rel_err(want @ torch.as_tensor(sol), want @ ref) < 1e-6


def test_fisher_operator_with_scipy_solvers():
    model, x, y, F = arch_case("mlp")
    M = tl.fim(model, (x, y), "exact", "implicit")
    op = M.to_scipy()
    top = eigsh(op, k=2, which="LA", return_eigenvectors=False)
    assert oracle.rel_err(torch.as_tensor(np.sort(top)[::-1].copy()), torch.linalg.eigvalsh(F).flip(0)[:2]) < 1e-8
    b = np.random.default_rng(2).standard_normal(op.shape[0])
    damped = op + 0.1 * aslinearoperator(np.eye(op.shape[0]))
    xs, info = cg(damped, b, rtol=1e-12, maxiter=5000)
    assert info == 0
    want = torch.linalg.solve(F + 0.1 * torch.eye(F.shape[0]), torch.as_tensor(b))
    assert oracle.rel_err(torch.as_tensor(xs), want) < 1e-8
