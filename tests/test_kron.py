"""KFAC / EKFAC / Mixed: verbs against their own dense form, and the thesis' identities
against the float64 oracle (trace exactness, Frobenius optimality, special cases)."""

from __future__ import annotations

import functools
import math
import pickle
import warnings

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.errors import InvalidInputError, UnsupportedLayerError
from tangentlab.pmat import PMatEKFAC, PMatKFAC, PMatMixed

from . import oracle
from .cases import arch_case
from .models import ARCHS

# every layer has a Kronecker structure (normalization layers: exact per-feature blocks)
KRON_ARCHS = ["mlp", "cnn", "conv1d", "norms", "tokens"]
KRON_REPS = ["kfac", "ekfac"]
DAMP = 0.05
TOL = 1e-9


@functools.cache
def kbuilt(arch: str, rep: str):
    model, x, y, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.fim(model, (x, y), "exact", rep, batch_size=4)


def _vec(M, seed=0):
    return tl.PVector.randn(M.space, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _layers(M):
    return [lay.slice for lay in M.space.layers]


# ---- verbs against the representation's own dense form ---------------------------------
VERBS = ["mv", "vTMv", "trace", "diag", "solve_exact", "solve_factored", "inverse", "inverse_factored",
         "eigh", "norm", "pow", "algebra", "select", "persist", "scipy"]


# KFAC/EKFAC need Kronecker-factorable layers everywhere (see test_non_kron_layers); the
# factored dampings are KFAC/EKFAC options.
CASES = [(a, r, v) for r in KRON_REPS for a in KRON_ARCHS for v in VERBS] + [
    (a, "mixed", v) for a in sorted(ARCHS) for v in VERBS if "factored" not in v]


@pytest.mark.parametrize(("arch", "rep", "verb"), CASES)
def test_verbs(arch, rep, verb):
    M = kbuilt(arch, rep)
    D = M.to_dense()
    eye = torch.eye(D.shape[0])
    v = _vec(M, 1)
    f = v.flat()
    if verb == "mv":
        assert oracle.rel_err(M.mv(v).flat(), D @ f) < TOL
    elif verb == "vTMv":
        assert abs(float(M.vTMv(v)) - float(f @ D @ f)) < TOL * float(D.norm() * f.dot(f))
    elif verb == "trace":
        assert abs(float(M.trace()) - float(D.trace())) < TOL * float(D.trace())
    elif verb == "diag":
        assert oracle.rel_err(M.diag().flat(), D.diagonal()) < TOL
    elif verb == "solve_exact":
        assert oracle.rel_err(M.solve(v, DAMP).flat(), torch.linalg.solve(D + DAMP * eye, f)) < 1e-8
    elif verb == "solve_factored":
        want = torch.linalg.solve(_factored_dense(M, DAMP), f)
        assert oracle.rel_err(M.solve(v, DAMP, method="factored").flat(), want) < 1e-8
    elif verb == "inverse":
        inv = M.inverse(DAMP)
        assert oracle.rel_err(inv.to_dense(), torch.linalg.inv(D + DAMP * eye)) < 1e-8
        if rep == "kfac":
            assert isinstance(inv, PMatEKFAC), "the damped inverse of A⊗B is diagonal in its eigenbasis"
    elif verb == "inverse_factored":
        inv = M.inverse(DAMP, method="factored")
        assert type(inv) is type(M)
        assert oracle.rel_err(inv.to_dense(), torch.linalg.inv(_factored_dense(M, DAMP))) < 1e-8
    elif verb == "eigh":
        vals, vecs = M.eigh(4)
        assert oracle.rel_err(vals, torch.linalg.eigvalsh(D).flip(0)[:4]) < 1e-8
        assert oracle.rel_err(D @ vecs, vecs * vals) < 1e-7
        assert oracle.rel_err(vecs.T @ vecs, torch.eye(4)) < 1e-8
    elif verb == "norm":
        assert abs(float(M.norm("fro")) - float(D.norm())) < 1e-9 * float(D.norm())
        assert abs(float(M.norm(2)) - float(torch.linalg.eigvalsh(D).max())) < 1e-8 * float(D.norm())
    elif verb == "pow":
        if rep == "mixed" and arch in ("tokens", "norms", "tied_attention"):
            with pytest.raises(tl.UnsupportedOperationError, match="pow"):
                M.pow(2)
            return
        assert oracle.rel_err(M.pow(2).to_dense(), D @ D) < 1e-8
        half = M.pow(0.5).to_dense()
        assert oracle.rel_err(half @ half, D) < 1e-7
    elif verb == "algebra":
        assert oracle.rel_err((M + 0.5 * M).mv(v).flat(), 1.5 * D @ f) < TOL
        assert oracle.rel_err((M @ M).mv(v).flat(), D @ (D @ f)) < 1e-8
        assert oracle.rel_err((-M).mv(v).flat(), -(D @ f)) < TOL
        if rep == "kfac":
            assert isinstance(2.0 * M, PMatKFAC) and isinstance(M @ M, PMatKFAC)
        if rep == "ekfac":
            assert isinstance(M + M, PMatEKFAC), "same eigenbasis: the sum stays an EKFAC"
    elif verb == "select":
        last = M.space.layers[-1].module
        sub = M.select([last])
        idx = torch.cat([torch.arange(p.offset, p.offset + p.numel) for p in M.space.layers[-1].params])
        assert oracle.rel_err(sub.to_dense(), D[idx][:, idx]) < TOL
    elif verb == "persist":
        M2 = pickle.loads(pickle.dumps(M))
        assert oracle.rel_err(M2.to_dense(), D) < TOL
        M3 = tl.pmat.load(M.state_dict())
        assert type(M3) is type(M) and oracle.rel_err(M3.to_dense(), D) < TOL
    elif verb == "scipy":
        assert oracle.rel_err(torch.as_tensor(M.to_scipy().matvec(f.numpy())), D @ f) < TOL


def _factored_dense(M, lam):
    """Dense form of the factored damping, built independently from the factors."""
    if isinstance(M, PMatKFAC):
        k = PMatKFAC(M.space, [b for b in M.blocks])
        out = torch.zeros(M.space.numel, M.space.numel)
        for blk in k.blocks:
            for g in range(blk.b.shape[0]):
                a = torch.diag(blk.a[g]) if blk.diagonal_a else blk.a[g]
                b = blk.b[g]
                pi = math.sqrt(float(a.trace() / a.shape[0]) / float(b.trace() / b.shape[0]))
                da = a + pi * math.sqrt(lam) * torch.eye(a.shape[0])
                db = b + math.sqrt(lam) / pi * torch.eye(b.shape[0])
                idx = blk.index[g].reshape(-1)
                out[idx[:, None], idx[None, :]] = torch.kron(db, da)
        return out
    out = torch.zeros(M.space.numel, M.space.numel)  # EKFAC, appendix A.4
    for blk in M.blocks:
        for g in range(blk.ub.shape[0]):
            ua = torch.eye(blk.s.shape[2]) if blk.ua is None else blk.ua[g]
            q = torch.kron(blk.ub[g].contiguous(), ua.contiguous())
            den = blk.s[g] + lam + math.sqrt(lam) * (blk.eb[g][:, None] + blk.ea[g][None, :])
            idx = blk.index[g].reshape(-1)
            out[idx[:, None], idx[None, :]] = (q * den.reshape(-1)) @ q.T
    return out


# ---- the thesis' identities against the oracle ---------------------------------------------
@pytest.mark.parametrize("arch", KRON_ARCHS)
def test_traces(arch):
    """trace(EKFAC) = trace(F) = trace(Diag) exactly; trace(KFAC) = Σ tr A tr B differs."""
    _, _, _, F = arch_case(arch)
    t = float(F.trace())
    assert abs(float(kbuilt(arch, "ekfac").trace()) - t) < 1e-10 * t
    assert abs(float(tl.pmat.PMatDiag(kbuilt(arch, "ekfac").space, torch.diagonal(F)).trace()) - t) < 1e-12 * t
    assert abs(float(kbuilt(arch, "kfac").trace()) - t) > 1e-4 * t
    assert abs(float(kbuilt(arch, "ekfac").diag().flat().sum()) - t) < 1e-10 * t


def _model_and_data(arch, seed):
    torch.manual_seed(seed)
    return ARCHS[arch]()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("arch", KRON_ARCHS)
def test_ekfac_frobenius_optimal(arch, seed):
    """‖F_l − EKFAC_l‖_F ≤ ‖F_l − KFAC_l‖_F for every layer block (Theorem 2), and
    perturbing any coordinate of s* increases the error (Lemma 1)."""
    model, x, y = _model_and_data(arch, 100 + seed)
    F = oracle.fisher_exact(model, x)
    K = tl.fim(model, (x, y), "exact", "kfac", batch_size=5)
    E = tl.fim(model, (x, y), "exact", "ekfac", batch_size=5)
    Kd, Ed = K.to_dense(), E.to_dense()
    for sl in _layers(K):
        ek = float((F[sl, sl] - Kd[sl, sl]).norm())
        ee = float((F[sl, sl] - Ed[sl, sl]).norm())
        assert ee <= ek + 1e-12, (sl, ee, ek)
    g = torch.Generator().manual_seed(seed)
    for bi, blk in enumerate(E.blocks):
        sl = _layers(E)[bi]
        base = float((F[sl, sl] - Ed[sl, sl]).norm())
        for _ in range(3):
            pos = tuple(int(torch.randint(0, d, (1,), generator=g)) for d in blk.s.shape)
            for delta in (1e-3, -1e-3):
                s = blk.s.clone()
                s[pos] += delta * float(blk.s.abs().max())
                E2 = PMatEKFAC(E.space, [b if j != bi else type(b)(**{**vars(b), "s": s})
                                         for j, b in enumerate(E.blocks)])
                assert float((F[sl, sl] - E2.to_dense()[sl, sl]).norm()) > base


@pytest.mark.parametrize("arch", KRON_ARCHS)
def test_ekfac_with_kfac_eigenvalues_is_kfac(arch):
    K = kbuilt(arch, "kfac")
    assert oracle.rel_err(PMatEKFAC.from_kfac(K).to_dense(), K.to_dense()) < 1e-10


def test_kfac_undamped_inverse_is_kronecker():
    """(A ⊗ B)⁻¹ = A⁻¹ ⊗ B⁻¹ when the factors are invertible; a clear error when they are not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(200, 4)
    K = tl.fim(model, x, "raw", "kfac")  # (the exact softmax Fisher's last B is singular: 1 ⟂ p)
    inv = K.inverse(0.0)
    assert isinstance(inv, PMatKFAC)
    assert oracle.rel_err(inv.to_dense(), torch.linalg.inv(K.to_dense())) < 1e-8
    v = _vec(K, 4)
    assert oracle.rel_err(K.solve(v).flat(), inv.mv(v).flat()) < 1e-8
    assert oracle.rel_err(K.solve(v, method="factored").flat(), inv.mv(v).flat()) < 1e-8
    singular = kbuilt("cnn", "kfac")  # 9 examples: rank-deficient factors
    with pytest.raises(InvalidInputError, match="damping"):
        singular.inverse(0.0)


def test_kfac_exact_for_one_example():
    model, x, y, _ = arch_case("mlp")
    x1 = x[:1]
    F = oracle.fisher_exact(model, x1)
    K = tl.fim(model, x1, "exact", "kfac").to_dense()
    for sl in _layers(kbuilt("mlp", "kfac")):
        assert oracle.rel_err(K[sl, sl], F[sl, sl]) < 1e-10


def test_kfac_exact_for_deep_linear_network():
    """With raw outputs the output gradients of a deep linear net do not depend on the input:
    B is constant, so A ⊗ B is the exact layer block for any number of examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4), nn.Linear(4, 3)).double()
    x = torch.randn(40, 5)
    F = oracle.gauss_newton(model, x)
    K = tl.fim(model, x, "raw", "kfac", batch_size=7)
    Kd = K.to_dense()
    for sl in _layers(K):
        assert oracle.rel_err(Kd[sl, sl], F[sl, sl]) < 1e-10


def test_kfac_factors_by_definition():
    """A = (1/N) Σ ã ãᵀ (homogeneous input) and B = (1/N) Σ_n Σ_c g gᵀ for a Linear layer."""
    model, x, y, _ = arch_case("mlp")
    K = kbuilt("mlp", "kfac")
    a_want = torch.cat([x, torch.ones(x.shape[0], 1)], 1)
    (a, b), = K.factors["0"]
    assert oracle.rel_err(a, a_want.T @ a_want / x.shape[0]) < 1e-12
    # B from the oracle: F's weight block is A ⊗ B exactly when A is rank one... use the bias
    # block instead: F[b, b] = (1/N) Σ_n Σ_c g gᵀ restricted... KFAC's B equals it only with
    # A[bias, bias] = 1: the bias-bias block of KFAC is B · 1.
    kd = K.to_dense()
    bias = K.space.info("0.bias").slice
    assert oracle.rel_err(kd[bias, bias], b) < 1e-12
    F = arch_case("mlp")[3]
    assert oracle.rel_err(F[bias, bias], b) < 1e-10, "the bias block of the exact Fisher is B"


def test_ekfac_update_diag_is_optimal_in_fixed_basis():
    """After the parameters move, update_diag gives diag(Qᵀ F_new Q) in the old basis."""
    model, x, y = _model_and_data("cnn", 7)
    E = tl.fim(model, (x, y), "exact", "ekfac", batch_size=4)
    old = [(b.ua, b.ub) for b in E.blocks]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    E.update_diag((x, y))
    F_new = oracle.fisher_exact(model, x)
    for blk, (ua, ub) in zip(E.blocks, old):
        assert blk.ua is ua and blk.ub is ub, "the basis is fixed"
        for g in range(blk.ub.shape[0]):
            q = torch.kron(blk.ub[g].contiguous(), blk.ua[g].contiguous())
            idx = blk.index[g].reshape(-1)
            want = torch.diagonal(q.T @ F_new[idx][:, idx] @ q)
            assert oracle.rel_err(blk.s[g].reshape(-1), want) < 1e-9
    assert abs(float(E.trace()) - float(F_new.trace())) < 1e-10 * float(F_new.trace())


def test_update_diag_after_pickling_needs_an_engine():
    model, x, y, _ = arch_case("mlp")
    E = pickle.loads(pickle.dumps(kbuilt("mlp", "ekfac")))
    with pytest.raises(InvalidInputError, match="engine"):
        E.update_diag((x, y))
    E.update_diag((x, y), engine=tl.Engine(model, "exact"))
    assert abs(float(E.trace()) - float(arch_case("mlp")[3].trace())) < 1e-10


def test_centered_ekfac_and_kfac_refusal():
    model, x, y, _ = arch_case("mlp")
    J = oracle.jacobian(model, x)
    Jc = J - J.mean(0, keepdim=True)
    Fc = torch.einsum("ncp,ncq->pq", Jc, Jc) / x.shape[0]
    E = tl.fim(model, x, "raw", "ekfac", centering=True, batch_size=4)
    assert abs(float(E.trace()) - float(Fc.trace())) < 1e-10 * float(Fc.trace())
    for blk in E.blocks:
        q = torch.kron(blk.ub[0].contiguous(), blk.ua[0].contiguous())
        idx = blk.index[0].reshape(-1)
        assert oracle.rel_err(blk.s[0].reshape(-1), torch.diagonal(q.T @ Fc[idx][:, idx] @ q)) < 1e-9
    with pytest.raises(InvalidInputError, match="ekfac"):
        tl.fim(model, x, "raw", "kfac", centering=True)


def test_embedding_kfac_diagonal_input_factor():
    """Embedding: one-hot inputs give a diagonal A (token frequencies); EKFAC stays exact in trace."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(9, 4, padding_idx=0)
            self.out = nn.Linear(4, 3)

        def forward(self, t):
            return self.out(torch.tanh(self.emb(t)).mean(1))

    model = Net().double()
    x = torch.randint(0, 9, (12, 5))
    x[:3, :2] = 0
    F = oracle.fisher_exact(model, x)
    K = tl.fim(model, x, "exact", "kfac", batch_size=5)
    E = tl.fim(model, x, "exact", "ekfac", batch_size=5)
    (a, _), = K.factors["emb"]
    counts = torch.bincount(x[x != 0].reshape(-1), minlength=9).double() / x.shape[0]
    assert a.dim() == 1 and oracle.rel_err(a, counts) < 1e-12
    assert abs(float(E.trace()) - float(F.trace())) < 1e-10 * float(F.trace())
    v = _vec(K, 3)
    for M in (K, E):
        D = M.to_dense()
        assert oracle.rel_err(M.mv(v).flat(), D @ v.flat()) < TOL
        assert oracle.rel_err(M.solve(v, DAMP).flat(), torch.linalg.solve(D + DAMP * torch.eye(D.shape[0]),
                                                                          v.flat())) < 1e-8
    sl = K.space.layer("emb").slice
    assert float((F[sl, sl] - E.to_dense()[sl, sl]).norm()) <= float((F[sl, sl] - K.to_dense()[sl, sl]).norm())


@pytest.mark.parametrize("arch", ["tied_attention"])
def test_non_kron_layers(arch):
    """KFAC is not defined for parameters on the generic route: say so, point to mixed."""
    model, x, y, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedLayerError, match="mixed"):
            tl.fim(model, (x, y), "exact", "kfac")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_mixed_parts_against_oracle(arch):
    """BlockDiag parts equal the oracle's layer blocks; the trace is exact (EKFAC + BlockDiag)."""
    model, x, y, F = arch_case(arch)
    M = kbuilt(arch, "mixed")
    assert isinstance(M, PMatMixed)
    assert abs(float(M.trace()) - float(F.trace())) < 1e-10 * float(F.trace())
    D = M.to_dense()
    space = M.space
    for part in M.parts:
        for lay in part.space.layers:
            sl = space.layer(lay.module).slice
            if isinstance(part, tl.PMatBlockDiag):
                assert oracle.rel_err(D[sl, sl], F[sl, sl]) < 1e-10
    kinds = M.representations
    modules = dict(model.named_modules())
    for path, kind in kinds.items():
        want = "PMatEKFAC" if isinstance(modules[path], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding,
                                                         nn.MultiheadAttention)) else "PMatBlockDiag"
        if arch == "tied_attention" and path == "emb":
            want = "PMatBlockDiag"  # tied: generic route, no Kronecker structure
        assert kind == want, (path, kind)


def test_mixed_assignment_override():
    model, x, y, F = arch_case("norms")
    M = tl.fim(model, (x, y), "exact", "mixed", mixed={nn.Linear: "kfac", "bn": "diag"})
    kinds = M.representations
    assert kinds["fc"] == kinds["out"] == "PMatKFAC"
    assert kinds["c1"] == "PMatEKFAC" and kinds["bn"] == "PMatDiag" and kinds["gn"] == "PMatBlockDiag"
    sl = M.space.layer("bn").slice
    assert oracle.rel_err(M.to_dense()[sl, sl], torch.diag(torch.diagonal(F[sl, sl]))) < 1e-10
    with pytest.raises(InvalidInputError, match="mixed"):
        tl.fim(model, (x, y), "exact", "diag", mixed={"bn": "diag"})


def test_kron_storage_is_factored():
    """Storage: Σ (I² + O²) for KFAC, plus Σ O·I for EKFAC — never the O·I × O·I block."""
    model = nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 10)).double()
    x = torch.randn(8, 300)
    K = tl.fim(model, x, "exact", "kfac")
    E = tl.fim(model, x, "exact", "ekfac")
    k_entries = sum(b.a.numel() + b.b.numel() for b in K.blocks)
    assert k_entries == 301**2 + 200**2 + 201**2 + 10**2
    e_entries = sum(b.ua.numel() + b.ub.numel() + b.s.numel() for b in E.blocks)
    assert e_entries == k_entries + 200 * 301 + 10 * 201


@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_ekfac_second_pass_replays_captures(monkeypatch, kind):
    """EKFAC's s* pass reuses the factor pass's captures (one capture per chunk of merged
    batches in all); when they do not fit the stash it recomputes them, with the same result
    (same chunks, same random streams)."""
    from tangentlab.engine import Engine
    from tangentlab.engine.passes import CaptureCache
    from tangentlab.pmat import kron_build

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
    x = torch.randn(30, 5)
    calls = []
    orig = Engine.capture_blocks  # every capture of a pass comes from it
    monkeypatch.setattr(Engine, "capture_blocks", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))

    def build_it():
        calls.clear()
        fm = tl.fim(model, x, kind=kind, representation="ekfac", batch_size=8, progress=False)
        return fm, len(calls)

    kept, n_kept = build_it()

    class Tiny(CaptureCache):
        def __init__(self, limit):
            super().__init__(1)

    monkeypatch.setattr(kron_build, "CaptureCache", Tiny)
    again, n_again = build_it()
    # exact: one chunk of the batches [8, 8, 8, 6] in every pass; mc: labels drawn per batch, never merged
    per_pass = 1 if kind == "exact" else 4
    assert n_kept == per_pass and n_again == 2 * per_pass
    for a, b in zip(kept.blocks, again.blocks):
        assert torch.equal(a.s, b.s) and torch.equal(a.ua, b.ua)
