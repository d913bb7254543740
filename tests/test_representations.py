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
from tangentlab.errors import InvalidInputError, UnsupportedOperationError
from tangentlab.memory import MemoryBudget

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


# ---- the registry: a representation registered from outside the package ----------------------
class PMatScaledIdentity(tl.PMat):
    """Toy representation ``F ≈ s·I`` with ``s = tr F / P`` (registered by the test, not the package)."""

    def __init__(self, space, scale, budget=None):
        self.space, self.scale = space, torch.as_tensor(scale)
        self.budget = budget or MemoryBudget.resolve(None, self.scale.device)

    @property
    def dtype(self):
        return self.scale.dtype

    @property
    def device(self):
        return self.scale.device

    def mv(self, v):
        self._check_vec(v)
        return self.scale * v

    def trace(self):
        return self.scale * self.space.numel

    def diag(self):
        return self._vec(self.scale.expand(self.space.numel).clone())

    def solve(self, v, damping=0.0):
        return (1.0 / (self.scale + damping)) * v

    def _scale(self, s):
        return PMatScaledIdentity(self.space, self.scale * s, self.budget)

    def state_dict(self):
        return {**self._meta(), "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state):
        return cls(tl.ParamSpace.from_state(state["space"]), state["scale"])


def build_scaled_identity(engine, data, centering=False):
    """One pass for the diagonal (the package's builder), reduced to its mean."""
    d = tl.pmat.build.build_diag(engine, data, centering)
    return PMatScaledIdentity(engine.space, d.trace() / engine.space.numel, engine.budget)


@pytest.fixture
def toy():
    from tangentlab.pmat import register, unregister

    register("toy", aliases=("scaled_identity",), build=build_scaled_identity, stores="`tr F / P`",
             memory="1", summary="a test's toy")(PMatScaledIdentity)
    yield PMatScaledIdentity
    unregister("toy")


def test_registered_toy_representation(toy):
    model, x, y, F = arch_case("mlp")
    for spelling in ("toy", "Scaled_Identity", "PMatScaledIdentity", toy):
        M = tl.fim(model, (x, y), "exact", spelling, batch_size=4)
        assert type(M) is toy
    s = float(F.trace()) / F.shape[0]
    assert abs(float(M.scale) - s) < TOL * s
    v = _vec(M, 11)
    assert rel_err(M.mv(v).flat(), s * v.flat()) < TOL
    assert rel_err((M + M).mv(v).flat(), 2 * s * v.flat()) < TOL  # lazy sum, scalings
    assert rel_err(M.solve(M.mv(v), 0.0).flat(), v.flat()) < TOL
    with pytest.raises(UnsupportedOperationError, match="eigh.*PMatDense"):
        M.eigh(2)
    M2 = tl.pmat.load(M.state_dict())
    assert type(M2) is toy and float(M2.scale) == float(M.scale)
    assert "toy" in tl.pmat.NAMES and tl.pmat.BUILDERS[toy] is build_scaled_identity
    with pytest.raises(InvalidInputError, match="'toy'"):
        tl.fim(model, (x, y), "exact", "no-such-representation")


def test_unregistered_toy_is_gone(toy):
    from tangentlab.pmat import unregister

    unregister(toy)
    assert "toy" not in tl.pmat.NAMES
    with pytest.raises(InvalidInputError, match="unknown representation"):
        tl.pmat.resolve("toy")
    with pytest.raises(InvalidInputError, match="cannot load"):
        tl.pmat.load({"type": "PMatScaledIdentity"})


def test_readme_table_lists_every_representation():
    """The README's representation table has one row per registered representation."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Representations", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| `")}
    for rep in tl.pmat.representations():
        assert f"`{rep.name}`" in rows, f"README's representation table misses {rep.name!r}"
    assert len(rows) == len(tl.pmat.representations())
