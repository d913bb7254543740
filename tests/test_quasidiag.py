"""PMatQuasiDiag (diagonal + bias–row couplings) against the float64 oracle, per
architecture × verb: stored entries equal the oracle Fisher's, every verb agrees with
the matrix's own ``to_dense()``."""

from __future__ import annotations

import functools
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.errors import InvalidInputError, MemoryBudgetError, UnsupportedOperationError
from tangentlab.memory import MemoryBudget
from tangentlab.pmat.quasidiag import PMatQuasiDiag, build_quasidiag, coupled_layers

from . import oracle
from .cases import arch_case
from .models import ARCHS
from .oracle import rel_err

ARCH_NAMES = sorted(ARCHS)
TOL = 1e-10
DAMP = 0.1
# coupled (weight, bias) layers per architecture: every layer with a bias, whatever its route
COUPLED = {
    "mlp": ["0", "2", "4"],
    "cnn": ["0", "2", "6"],  # conv "4" has no bias
    "conv1d": ["0", "2", "4"],
    "tokens": ["norm", "proj", "head"],  # the embedding has no bias
    "norms": ["c1", "bn", "c2", "gn", "fc", "bn1", "out"],  # RMSNorm has no bias
    "tied_attention": ["att.out_proj", "mix"],  # out_proj takes the generic route
}


def _build(model, data, kind="exact", **kw) -> PMatQuasiDiag:
    route = kw.pop("route", "auto")
    params = kw.pop("params", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_quasidiag(tl.Engine(model, kind, params, route=route), tl.data.Batches(data, 4), **kw)


@functools.cache
def qd(arch: str, fast: bool = True) -> PMatQuasiDiag:
    model, x, y, _ = arch_case(arch)
    return _build(model, (x, y), fast=fast)


@functools.cache
def dense(arch: str) -> torch.Tensor:
    return qd(arch).to_dense()


def reference(arch: str) -> torch.Tensor:
    """The oracle Fisher with every entry outside the quasi-diagonal pattern zeroed."""
    _, _, _, F = arch_case(arch)
    return torch.where(PMatQuasiDiag.mask(qd(arch).space), F, torch.zeros_like(F))


def _vec(M, seed=0):
    return tl.PVector.randn(M.space, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=ARCH_NAMES)
def arch(request):
    return request.param


# ---- the build against the oracle --------------------------------------------------------
def test_stored_entries_match_oracle(arch):
    M, (_, _, _, F) = qd(arch), arch_case(arch)
    assert [p.module for p in M.pairs] == COUPLED[arch]
    assert rel_err(M.data, torch.diagonal(F)) < TOL
    for pair in M.pairs:
        idx = pair.indices()
        want = F[idx[:, -1:], idx[:, :-1]]  # F[b_o, W_{o,j}]
        assert rel_err(M.cross[pair.module].reshape(pair.rows, pair.width), want) < TOL
        assert float(want.abs().max()) > 0


def test_to_dense_is_the_masked_oracle(arch):
    M, D = qd(arch), dense(arch)
    mask = PMatQuasiDiag.mask(M.space)
    assert torch.equal(D[~mask], torch.zeros_like(D[~mask]))
    assert rel_err(D, reference(arch)) < TOL
    assert torch.equal(D, D.T)


def test_trace_is_exact(arch):
    _, _, _, F = arch_case(arch)
    assert abs(float(qd(arch).trace()) - float(F.trace())) <= 1e-10 * float(F.trace())


def test_fast_path_equals_materialized(arch):
    fast, slow = qd(arch), qd(arch, fast=False)
    assert rel_err(fast.data, slow.data) < 1e-12
    for m, c in fast.cross.items():
        assert rel_err(c, slow.cross[m]) < 1e-12


@pytest.mark.parametrize("arch_", ["mlp", "norms", "tied_attention"])
def test_structure_and_values_do_not_depend_on_route(arch_):
    model, x, y, _ = arch_case(arch_)
    G = _build(model, (x, y), route="generic")
    assert [p.module for p in G.pairs] == COUPLED[arch_]
    assert rel_err(G.to_dense(), dense(arch_)) < TOL


def test_patch_layer_shapes():
    """Conv with one output position (T = 1 fast path), grouped conv, Linear on sequences."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(2, 4, 3, padding=1, groups=2)
            self.c2 = nn.Conv2d(4, 6, 4)  # 4×4 input -> 1×1 output: T = 1
            self.seq = nn.Linear(3, 5)
            self.out = nn.Linear(6 + 5, 3)

        def forward(self, x):
            h = torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1)
            s = torch.tanh(self.seq(x[:, 0, :3, :3].transpose(1, 2))).mean(1)
            return self.out(torch.cat([h, s], 1))

    torch.manual_seed(0)
    model, x = Net().double().eval(), torch.randn(7, 2, 4, 4)
    fast, slow = _build(model, x, "raw"), _build(model, x, "raw", fast=False)
    assert [p.module for p in fast.pairs] == ["c1", "c2", "seq", "out"]
    want = oracle.gauss_newton(model, x)
    mask = PMatQuasiDiag.mask(fast.space)
    assert rel_err(fast.to_dense(), torch.where(mask, want, torch.zeros_like(want))) < TOL
    assert rel_err(slow.to_dense(), fast.to_dense()) < 1e-12


def test_centering_matches_oracle(arch):
    model, x, _, _ = arch_case(arch)
    J = oracle.jacobian(model, x)
    Jc = J - J.mean(0, keepdim=True)
    want = torch.einsum("ncp,ncq->pq", Jc, Jc) / x.shape[0]
    M = _build(model, x, "raw", centering=True)
    want = torch.where(PMatQuasiDiag.mask(M.space), want, torch.zeros_like(want))
    assert rel_err(M.to_dense(), want) < TOL
    assert abs(float(M.trace() - want.trace())) < 1e-10 * float(want.trace())


def test_partial_parameter_selection():
    """A layer with only its weight selected keeps only its diagonal."""
    model, x, y, F = arch_case("norms")
    M = _build(model, (x, y), params=["c2", "bn1.weight", "out"])
    assert [p.module for p in M.pairs] == ["c2", "out"]
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offs = [sum(sizes[:i]) for i in range(len(sizes))]
    idx = torch.cat([torch.arange(offs[i], offs[i] + sizes[i]) for i, n in enumerate(names)
                     if n.startswith(("c2.", "out.")) or n == "bn1.weight"])
    want = F[idx][:, idx]
    want = torch.where(PMatQuasiDiag.mask(M.space), want, torch.zeros_like(want))
    assert rel_err(M.to_dense(), want) < TOL


# ---- verbs against the matrix's own dense form ------------------------------------------
def test_mv_and_vTMv(arch):
    M, D = qd(arch), dense(arch)
    v = _vec(M, 1)
    assert rel_err(M.mv(v).flat(), D @ v.flat()) < TOL
    assert rel_err((M @ v).flat(), D @ v.flat()) < TOL
    want = float(v.flat() @ D @ v.flat())
    assert abs(float(M.vTMv(v)) - want) < TOL * float(D.norm() * v.flat().dot(v.flat()))
    op = M.to_scipy()
    assert rel_err(torch.as_tensor(op.matvec(v.flat().numpy())), D @ v.flat()) < TOL


def test_vTMv_is_differentiable(arch):
    M, D = qd(arch), dense(arch)
    theta = _vec(M, 8).flat().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(M.vTMv(tl.PVector.from_flat(M.space, theta)), theta)
    assert rel_err(g, 2 * D @ theta.detach()) < TOL


def test_diag(arch):
    M, D = qd(arch), dense(arch)
    assert rel_err(M.diag().flat(), torch.diagonal(D)) < TOL
    assert abs(float(M.diag().flat().sum()) - float(M.trace())) < TOL * float(M.trace())


def test_solve(arch):
    M, D = qd(arch), dense(arch)
    v = _vec(M, 3)
    want = torch.linalg.solve(D + DAMP * torch.eye(D.shape[0]), v.flat())
    assert rel_err(M.solve(v, DAMP).flat(), want) < 1e-9
    assert rel_err(M.solve(M.mv(v) + DAMP * v, DAMP).flat(), v.flat()) < 1e-9


def test_solve_zero_pivots_raise():
    M = qd("mlp")
    v = _vec(M)
    Z = PMatQuasiDiag(M.space, torch.zeros_like(M.data), {m: torch.zeros_like(c) for m, c in M.cross.items()})
    with pytest.raises(InvalidInputError, match="damping"):
        Z.solve(v)
    assert rel_err(Z.solve(v, 2.0).flat(), v.flat() / 2) < TOL
    # nonzero d_W but a zero Schur complement: d_b = Σ c²/d_W
    pair = M.pairs[0]
    data, cross = torch.ones_like(M.data), {m: torch.zeros_like(c) for m, c in M.cross.items()}
    cross[pair.module][0, 0] = 1.0
    S = PMatQuasiDiag(M.space, data, cross)
    with pytest.raises(InvalidInputError, match="Schur"):
        S.solve(v)
    x = S.solve(v, 0.5).flat()
    assert rel_err(S.to_dense() @ x + 0.5 * x, v.flat()) < TOL


def test_inverse_is_refused(arch):
    with pytest.raises(UnsupportedOperationError, match="solve"):
        qd(arch).inverse(DAMP)


def test_eigh(arch):
    M, D = qd(arch), dense(arch)
    k = 3
    vals, vecs = M.eigh(k)
    assert rel_err(vals, torch.linalg.eigvalsh(D).flip(0)[:k]) < 1e-10
    assert vecs.shape == (D.shape[0], k)
    assert rel_err(vecs.T @ vecs, torch.eye(k)) < 1e-10
    assert rel_err(D @ vecs, vecs * vals) < 1e-9
    vals, vecs = M.eigh()
    assert torch.all(vals[:-1] >= vals[1:])
    assert rel_err(vecs @ torch.diag(vals) @ vecs.T, D) < 1e-10
    assert rel_err(vecs.T @ vecs, torch.eye(D.shape[0])) < 1e-10


def test_norm(arch):
    M, D = qd(arch), dense(arch)
    assert abs(float(M.norm("fro")) - float(torch.linalg.norm(D))) < 1e-10 * float(torch.linalg.norm(D))
    top = float(torch.linalg.eigvalsh(D).abs().max())
    assert abs(float(M.norm(2)) - top) < 1e-10 * top
    with pytest.raises(InvalidInputError):
        M.norm(1)


def test_algebra(arch):
    M, D = qd(arch), dense(arch)
    v = _vec(M, 5)
    s = M + 0.5 * M
    assert type(s) is PMatQuasiDiag
    assert rel_err(s.to_dense(), 1.5 * D) < TOL
    d = M - M / 4
    assert type(d) is PMatQuasiDiag
    assert rel_err(d.to_dense(), 0.75 * D) < TOL
    assert rel_err((-M).to_dense(), -D) < TOL
    p = M @ M  # not quasi-diagonal: a lazy product
    assert rel_err(p.mv(v).flat(), D @ (D @ v.flat())) < TOL
    diag = tl.PMatDiag(M.space, M.data.clone())
    m = M + diag
    assert rel_err(m.mv(v).flat(), (D + torch.diag(M.data)) @ v.flat()) < TOL
    assert M.size() == (D.shape[0], D.shape[0])


def test_select(arch):
    M, D = qd(arch), dense(arch)
    _, _, _, F = arch_case(arch)
    names = list(M.space.names)
    coupled = M.pairs[0]
    choices = [
        [names[0], M.space.layers[-1].module],  # one parameter + one whole layer
        [coupled.module],  # a whole coupled layer: cross terms kept
        [coupled.weight.name, names[-1]],  # weight without its bias: cross terms dropped
    ]
    for chosen in choices:
        sub = M.select(chosen)
        assert type(sub) is PMatQuasiDiag
        idx = torch.cat([torch.arange(M.space.info(n).offset, M.space.info(n).offset
                                      + M.space.info(n).numel) for n in sub.space.names])
        mask = PMatQuasiDiag.mask(sub.space)
        assert rel_err(sub.to_dense(), torch.where(mask, D[idx][:, idx], torch.zeros(()))) < TOL
        assert rel_err(sub.to_dense(), torch.where(mask, F[idx][:, idx], torch.zeros(()))) < TOL
    assert [p.module for p in M.select([coupled.module]).pairs] == [coupled.module]
    assert M.select([coupled.weight.name]).pairs == ()


def test_pickle_and_state_dict(arch):
    M, D = qd(arch), dense(arch)
    M2 = pickle.loads(pickle.dumps(M))
    assert rel_err(M2.to_dense(), D) < TOL
    M3 = PMatQuasiDiag.from_state_dict(M.state_dict())
    assert type(M3) is PMatQuasiDiag and M3.space == M.space
    assert rel_err(M3.to_dense(), D) < TOL
    buf = io.BytesIO()
    torch.save(M.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    assert state["type"] == "PMatQuasiDiag"
    assert rel_err(PMatQuasiDiag.from_state_dict(state).to_dense(), D) < TOL


# ---- budget and validation ------------------------------------------------------------------
def test_memory_budget():
    M = qd("mlp")
    small = PMatQuasiDiag(M.space, M.data, M.cross, MemoryBudget(4000))
    with pytest.raises(MemoryBudgetError):
        small.to_dense()
    # blocks of at most 9×9: eigendecompositions run in chunks of rows within the budget
    vals, vecs = small.eigh(3)
    want, _ = M.eigh(3)
    assert rel_err(vals, want) < 1e-12
    assert abs(float(small.norm(2)) - float(M.norm(2))) < 1e-12 * float(M.norm(2))
    tiny = PMatQuasiDiag(M.space, M.data, M.cross, MemoryBudget(1000))
    with pytest.raises(MemoryBudgetError, match="arrowhead"):
        tiny.norm(2)


def test_constructor_validation():
    M = qd("mlp")
    with pytest.raises(InvalidInputError, match="coupled layers"):
        PMatQuasiDiag(M.space, M.data, {})
    bad = dict(M.cross)
    bad["0"] = bad["0"].T
    with pytest.raises(InvalidInputError, match="shape"):
        PMatQuasiDiag(M.space, M.data, bad)
    with pytest.raises(InvalidInputError):
        PMatQuasiDiag(M.space, M.data[:-1], M.cross)


def test_coupling_rule():
    """bias.shape == weight.shape[:bias.dim()] decides; other pairs keep only the diagonal."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4))
            self.bias = nn.Parameter(torch.randn(4))  # not a row bias

        def forward(self, x):
            return x @ self.weight + self.bias

    model = nn.Sequential(nn.Linear(2, 3), Odd(), nn.LayerNorm((2, 2)))
    space = tl.ParamSpace.from_model(model)
    assert [(p.module, p.rows, p.width) for p in coupled_layers(space)] == [("0", 3, 2), ("2", 4, 1)]
    assert int(PMatQuasiDiag.mask(space).sum()) == space.numel + 2 * (6 + 4)


def test_joint_route_matches_masked_dense():
    """BatchNorm in train mode (route='joint'): the entries equal the joint dense Fisher's."""
    from tangentlab.pmat.build import build_dense

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double().train()
    x = torch.randn(8, 3)
    M = _build(model, x, "raw", route="joint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D = build_dense(tl.Engine(model, "raw", route="joint"), tl.data.Batches(x, 4)).to_dense()
    assert [p.module for p in M.pairs] == ["0", "1", "3"]
    mask = PMatQuasiDiag.mask(M.space)
    assert rel_err(M.to_dense(), torch.where(mask, D, torch.zeros(()))) < TOL
