"""Every representation × verb against the float64 oracle, per architecture.

The reference for each representation is derived from the oracle Fisher: the
full matrix (Dense, LowRank, Implicit), its diagonal (Diag) or its layer blocks
(BlockDiag). Parametrized so each (architecture, representation, verb) reports
separately.
"""

from __future__ import annotations

import pickle

import pytest
import torch

import tangentlab as tl
from tangentlab.errors import UnsupportedOperationError

from .cases import REPRESENTATIONS, arch_case, built, reference
from .models import ARCHS
from .oracle import rel_err

ARCH_NAMES = sorted(ARCHS)
TOL = 1e-9
DAMP = 0.1


def _vec(M, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tl.PVector.randn(M.space, dtype=torch.float64, generator=g)


@pytest.fixture(params=ARCH_NAMES)
def arch(request):
    return request.param


@pytest.fixture(params=REPRESENTATIONS)
def rep(request):
    return request.param


def test_build_matches_oracle(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    if rep == "implicit":
        v = _vec(M)
        assert rel_err(M.mv(v).flat(), R @ v.flat()) < TOL
    else:
        assert rel_err(M.to_dense(), R) < TOL


def test_mv(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    v = _vec(M, 1)
    assert rel_err(M.mv(v).flat(), R @ v.flat()) < TOL
    assert rel_err((M @ v).flat(), R @ v.flat()) < TOL


def test_vTMv(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    v = _vec(M, 2)
    assert abs(float(M.vTMv(v)) - float(v.flat() @ R @ v.flat())) < TOL * float(R.norm() * v.flat().dot(v.flat()))


def test_trace(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    assert abs(float(M.trace()) - float(R.trace())) < TOL * float(R.trace())


def test_diag(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    assert rel_err(M.diag().flat(), torch.diagonal(R)) < TOL
    assert abs(float(M.diag().flat().sum()) - float(M.trace())) < TOL * float(R.trace())


def test_to_dense(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    if rep == "implicit":
        with pytest.raises(UnsupportedOperationError, match="PMatDense"):
            M.to_dense()
    else:
        assert rel_err(M.to_dense(), R) < TOL


def test_solve(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    v = _vec(M, 3)
    want = torch.linalg.solve(R + DAMP * torch.eye(R.shape[0]), v.flat())
    tol = 1e-6 if rep == "implicit" else TOL
    assert rel_err(M.solve(v, DAMP).flat(), want) < tol
    # round trip: solve(mv(v) + λv, λ) = v
    assert rel_err(M.solve(M.mv(v) + DAMP * v, DAMP).flat(), v.flat()) < tol


def test_implicit_solve_with_preconditioner(arch):
    M, R = built(arch, "implicit"), reference(arch, "implicit")
    v = _vec(M, 4)
    want = torch.linalg.solve(R + DAMP * torch.eye(R.shape[0]), v.flat())
    x = M.solve(v, DAMP, preconditioner=built(arch, "blockdiag"))
    assert rel_err(x.flat(), want) < 1e-6


def test_inverse(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    if rep in ("implicit", "quasidiag"):
        with pytest.raises(UnsupportedOperationError, match="solve"):
            M.inverse(DAMP)
        return
    inv = M.inverse(DAMP)
    assert type(inv) is type(M)
    want = torch.linalg.inv(R + DAMP * torch.eye(R.shape[0]))
    assert rel_err(inv.to_dense(), want) < TOL


def test_eigh(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    k = 3
    vals, vecs = M.eigh(k)
    want = torch.linalg.eigvalsh(R).flip(0)[:k]
    assert rel_err(vals, want) < 1e-8
    assert vecs.shape == (R.shape[0], k)
    assert rel_err(vecs.T @ vecs, torch.eye(k)) < 1e-8
    assert rel_err(R @ vecs, vecs * vals) < 1e-7


def test_eigh_full(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    if rep == "implicit":
        with pytest.raises(UnsupportedOperationError, match="eigh"):
            M.eigh()
        return
    vals, vecs = M.eigh()
    rec = vecs @ torch.diag(vals) @ vecs.T
    if rep == "lowrank":  # eigenpairs on the row space of U; the rest are 0
        assert vals.numel() <= R.shape[0]
    assert rel_err(rec, R) < 1e-8


def test_norm(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    assert abs(float(M.norm("fro")) - float(torch.linalg.norm(R))) < 1e-8 * float(torch.linalg.norm(R))
    top = float(torch.linalg.eigvalsh(R).abs().max())
    assert abs(float(M.norm(2)) - top) < 1e-7 * top


def test_add_scale_matmul(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    v = _vec(M, 5)
    s = M + 0.5 * M
    assert rel_err(s.mv(v).flat(), 1.5 * R @ v.flat()) < TOL
    if rep != "implicit":
        assert type(s) is type(M)
    d = M - 0.25 * M
    assert abs(float(d.trace()) - 0.75 * float(R.trace())) < TOL * float(R.trace())
    p = M @ M
    assert rel_err(p.mv(v).flat(), R @ (R @ v.flat())) < TOL
    assert M.size() == (R.shape[0], R.shape[0])


def test_mixed_sum(arch, rep):
    """Sums across representations are lazy but exact."""
    M, R = built(arch, rep), reference(arch, rep)
    D, RD = built(arch, "diag"), reference(arch, "diag")
    v = _vec(M, 6)
    s = M + D
    assert rel_err(s.mv(v).flat(), (R + RD) @ v.flat()) < TOL
    assert abs(float(s.trace()) - float((R + RD).trace())) < TOL * float(R.trace())


def test_scipy_linear_operator(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    op = M.to_scipy()
    v = _vec(M, 7).flat()
    assert op.shape == (R.shape[0], R.shape[0])
    assert rel_err(torch.as_tensor(op.matvec(v.numpy())), R @ v) < TOL


def test_pickle_and_state_dict(arch, rep):
    M, R = built(arch, rep), reference(arch, rep)
    if rep == "implicit":
        with pytest.raises(UnsupportedOperationError):
            pickle.dumps(M)
        with pytest.raises(UnsupportedOperationError):
            M.state_dict()
        return
    M2 = pickle.loads(pickle.dumps(M))
    assert rel_err(M2.to_dense(), R) < TOL
    M3 = tl.pmat.load(M.state_dict())
    assert type(M3) is type(M)
    assert rel_err(M3.to_dense(), R) < TOL
    buf = __import__("io").BytesIO()
    torch.save(M.state_dict(), buf)
    buf.seek(0)
    M4 = tl.pmat.load(torch.load(buf, weights_only=False))
    assert rel_err(M4.to_dense(), R) < TOL


def test_ewc_penalty_is_differentiable(arch, rep):
    """``F.vTMv(θ − θ*)`` back-propagates to ``2 F (θ − θ*)``."""
    model, _, _, _ = arch_case(arch)
    M, R = built(arch, rep), reference(arch, rep)
    star = tl.PVector.from_model(model, M.space).detach().clone()
    delta = _vec(M, 8) * 1e-2
    theta = (star + delta).flat().clone().requires_grad_(True)
    pv = tl.PVector.from_flat(M.space, theta)
    if rep == "implicit":
        return  # implicit products are not differentiable in v (they run full passes)
    penalty = M.vTMv(pv - star)
    (g,) = torch.autograd.grad(penalty, theta)
    assert rel_err(g, 2 * R @ delta.flat()) < 1e-8


def test_lowrank_solve_keeps_orthogonal_component(arch):
    """Erratum 13: the exact (JᵀJ/N + λI)⁻¹ keeps the part of v outside the row space of J."""
    M = built(arch, "lowrank")
    u = M.factor
    v = _vec(M, 9).flat()
    ortho = v - u.T @ torch.linalg.lstsq(u.T, v).solution
    x = M.solve(tl.PVector.from_flat(M.space, ortho), DAMP).flat()
    assert rel_err(x, ortho / DAMP) < 1e-8


def test_select(arch, rep):
    """Restricting an existing matrix to some parameters gives the oracle's sub-block."""
    model, _, _, _ = arch_case(arch)
    M, R = built(arch, rep), reference(arch, rep)
    names = list(M.space.names)
    chosen = [names[0], M.space.layers[-1].module]  # one parameter + one whole layer
    sub = M.select(chosen)
    keep = [p for p in M.space.params if p.name == names[0] or p.name.startswith(chosen[1] + ".")
            or (chosen[1] == "" and p.name in names)]
    idx = torch.cat([torch.arange(p.offset, p.offset + p.numel) for p in keep])
    assert sub.space.names == tuple(p.name for p in keep)
    assert type(sub) is type(M)
    v = _vec(sub, 10)
    assert rel_err(sub.mv(v).flat(), R[idx][:, idx] @ v.flat()) < TOL
    assert abs(float(sub.trace()) - float(R[idx][:, idx].trace())) < TOL * float(R.trace())
