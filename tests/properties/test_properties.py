"""Every representation and verb on architectures drawn from :mod:`.grammar`, against the
float64 oracle (:mod:`.reference`) and against each other.

* exact representations (``keeps`` set in the registry) equal the oracle's restriction
  (all, layer blocks, diagonal, quasi-diagonal) in ``mv``, ``vTMv``, ``trace``, ``diag`` and
  ``to_dense``; their traces and diagonals agree with each other;
* KFAC/EKFAC (George et al., 2018) build exactly when every trainable layer is a hooked
  Linear/Conv/Embedding or normalization layer, else refuse pointing at ``mixed``; EKFAC's diagonal ``s*`` is the
  diagonal of the oracle's layer block in its Kronecker-factored eigenbasis (so its trace
  is exact) and it is at least as close to each block as KFAC in Frobenius norm (Theorem 2);
  ``mixed`` keeps the exact trace and the oracle's blocks in its BlockDiag parts;
* FIM/NTK duality: ``F = ΦᵀΦ/N`` and ``K = ΦΦᵀ`` share their non-zero spectrum
  (``eig F = eig K / N``, ``tr F = tr K / N``); the Jacobian (dense and matrix-free) equals the
  oracle's, and ``⟨Jv, u⟩ = ⟨v, Jᵀu⟩``;
* the user's model keeps its own parameters (objects and values) through all of it.

Profiles and how to run the long one: ``conftest.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tangentlab as tl
from tangentlab.engine import Engine
from tangentlab.errors import UnsupportedLayerError, UnsupportedOperationError
from tangentlab.pmat import PMatEKFAC

from ..cases import REPRESENTATIONS, restrict
from . import reference
from .checks import assert_close, nonzero_spectra_agree, vector
from .grammar import cases

#: expected on these models: generic-route notices (shared modules, attention) and PyTorch's
#: note on 'same' padding with even kernels
pytestmark = [pytest.mark.filterwarnings("ignore::tangentlab.engine.plan.GenericRouteWarning"),
              pytest.mark.filterwarnings("ignore:Using padding='same'")]

KRON_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.MultiheadAttention, nn.LayerNorm, nn.RMSNorm,
              nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)  # normalization layers: exact per-feature blocks
#: Absolute scale added to every reference norm (so, with the relative tolerance of 1e-8, an
#: absolute 1e-12): a matrix that vanishes analytically (the only trainable weight feeds a
#: normalization that makes the output invariant to it, a LayerNorm over one feature) is
#: round-off on both sides, amplified by the normalization's 1/sqrt(eps); test_found.py checks
#: such cases with their own bounds.
FLOOR = 1e-4


def _fim(case, rep, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.fim(case.model, case.batches, case.kind, rep, **case.fim_options(), **kw)


def _assert_model_intact(case, before):
    """The user's model still holds its own Parameter objects (and their values)."""
    after = dict(case.model.named_parameters(remove_duplicate=False))
    for name, (p, value) in before.items():
        assert after[name] is p and torch.equal(p, value), f"{name} was replaced or modified"


def _snapshot(case):
    return {n: (p, p.detach().clone()) for n, p in case.model.named_parameters(remove_duplicate=False)}


def _oracle(case):
    phi = reference.features(case)
    F = reference.fisher(case, phi)
    return phi, F, float(F.norm()) + FLOOR


@given(cases(), st.data())
def test_exact_representations_against_the_oracle(case, data):
    """Optionally on a random subset of the parameters, and centered (for the kinds whose
    pseudo-outputs are unique: the exact Fisher's are one root of ``diag p − ppᵀ`` among many,
    and the mean over examples depends on which)."""
    before = _snapshot(case)
    names = reference.trainable(case)
    chosen = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(names), min_size=1, unique=True)))
    centering = case.kind != "exact" and data.draw(st.booleans())
    phi = reference.features(case)
    if chosen is not None:
        names = [n for n in names if n in chosen]
        phi = phi[:, :, reference.columns(case, names)]
    F = reference.fisher(case, phi, centering)
    scale = float(reference.fisher(case, phi).norm()) + FLOOR  # centering cancels terms of this size
    traces, diags = {}, {}
    for rep in REPRESENTATIONS:
        M = _fim(case, rep, params=chosen, centering=centering)
        assert list(M.space.names) == names, "the space: the chosen trainable parameters, frozen ones left out"
        R = restrict(rep, M.space, F)
        v = vector(M.space, 1)
        assert_close(M.mv(v).flat(), R @ v.flat(), scale, f"{rep}.mv")
        assert_close(M.vTMv(v), v.flat() @ R @ v.flat(), scale * float(v.flat() @ v.flat()), f"{rep}.vTMv")
        traces[rep] = M.trace()
        assert_close(traces[rep], R.trace(), scale, f"{rep}.trace")
        diags[rep] = M.diag().flat()
        assert_close(diags[rep], torch.diagonal(R), scale, f"{rep}.diag")
        if rep == "implicit":
            with pytest.raises(UnsupportedOperationError, match="PMatDense"):
                M.to_dense()
        else:
            assert_close(M.to_dense(), R, scale, f"{rep}.to_dense")
    for rep in REPRESENTATIONS:  # every exact representation keeps the diagonal
        assert_close(traces[rep], traces["dense"], scale, f"trace {rep} vs dense")
        assert_close(diags[rep], diags["dense"], scale, f"diag {rep} vs dense")
    _assert_model_intact(case, before)


def _kron_ready(case) -> bool:
    """Whether every trainable layer takes the hook route with a Kronecker-factored rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = Engine(case.model, case.output())
        plan = eng.plan(case.batches[0])
    return not plan.generic and all(isinstance(h.module, KRON_TYPES) for h in plan.hooked)


@given(cases())
def test_kronecker_representations_identities(case):
    before = _snapshot(case)
    _, F, scale = _oracle(case)
    if not _kron_ready(case):
        for rep in ("kfac", "ekfac"):
            with pytest.raises(UnsupportedLayerError, match="mixed"):
                _fim(case, rep)
    else:
        K, E = _fim(case, "kfac"), _fim(case, "ekfac")
        Kd, Ed = K.to_dense(), E.to_dense()
        v = vector(K.space, 2)
        for name, M, D in (("kfac", K, Kd), ("ekfac", E, Ed)):  # verbs against their own dense form
            own = float(D.norm()) + FLOOR
            assert_close(M.mv(v).flat(), D @ v.flat(), own, f"{name}.mv")
            assert_close(M.trace(), D.trace(), own, f"{name}.trace")
            assert_close(M.diag().flat(), D.diagonal(), own, f"{name}.diag")
            assert_close(M.vTMv(v), v.flat() @ D @ v.flat(), own * float(v.flat().dot(v.flat())), f"{name}.vTMv")
        assert_close(PMatEKFAC.from_kfac(K).to_dense(), Kd, scale, "EKFAC with KFAC's eigenvalues")
        assert_close(E.trace(), F.trace(), scale, "EKFAC trace = exact trace")
        for blk in E.blocks:
            for g in range(blk.ub.shape[0]):
                ua = torch.eye(blk.s.shape[2]) if blk.ua is None else blk.ua[g]
                q = torch.kron(blk.ub[g].contiguous(), ua.contiguous())
                idx = blk.index[g].reshape(-1)
                assert_close(blk.s[g].reshape(-1), torch.diagonal(q.T @ F[idx][:, idx] @ q), scale,
                             "EKFAC s* = diag of F in the eigenbasis")
        for lay in K.space.layers:
            sl = lay.slice
            ek, ee = float((F[sl, sl] - Kd[sl, sl]).norm()), float((F[sl, sl] - Ed[sl, sl]).norm())
            assert ee <= ek + 1e-9 * scale, f"EKFAC farther than KFAC from block {lay.module}: {ee} > {ek}"
    M = _fim(case, "mixed")
    assert_close(M.trace(), F.trace(), scale, "mixed trace = exact trace")
    D = M.to_dense()
    for part in M.parts:
        if isinstance(part, tl.PMatBlockDiag):
            for lay in part.space.layers:
                sl = M.space.layer(lay.module).slice
                assert_close(D[sl, sl], F[sl, sl], scale, f"mixed block {lay.module}")
    _assert_model_intact(case, before)


@given(cases())
def test_fim_ntk_duality_and_jacobian(case):
    before = _snapshot(case)
    phi, F, scale = _oracle(case)
    n = case.n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Fd = _fim(case, "dense").to_dense()
        K = tl.ntk(case.model, case.batches, output=case.output(), seed=case.seed)
        Km = K.as_matrix()
        if case.kind != "exact":  # exact: tangentlab's C−1 pseudo-outputs are another root of diag p − ppᵀ
            want = torch.einsum("ncp,mdp->ncmd", phi, phi).reshape(Km.shape)
            assert_close(Km, want, scale * n, "NTK = Φ Φᵀ")
        assert_close(Fd.trace(), Km.trace() / n, scale, "tr F = tr K / N")
        nonzero_spectra_agree(Fd, Km / n, scale, "eig F = eig K / N")
        G = _fim(case, "dense", route="generic").to_dense()
        assert_close(G, F, scale, "dense Fisher on the generic route")
        if case.kind in ("raw", "regression") and case.n > 1:  # cross kernel of two disjoint sets
            k = case.sizes[0] if len(case.sizes) > 1 else 1
            Kx = tl.ntk(case.model, case.x[:k], case.x[k:], output=case.output())
            want = torch.einsum("ncp,mdp->nmcd", phi[:k], phi[k:])
            assert_close(Kx.data, want, scale * n, "cross NTK = Φ₁ Φ₂ᵀ")
        J = tl.jacobian(case.model, case.batches)
        Ji = tl.jacobian(case.model, case.batches, implicit=True)
        jo = reference.jacobian(case)
        jscale = float(jo.norm()) + FLOOR
        assert_close(J.to_dense(), jo, jscale, "dense Jacobian")
        v = vector(J.space, 3)
        assert_close(J.mv(v).tensor, jo @ v.flat(), jscale * float(v.norm()), "J v (dense)")
        jv = Ji.mv(v)
        assert_close(jv.tensor, jo @ v.flat(), jscale * float(v.norm()), "J v (matrix-free)")
        u = tl.FVector(torch.randn(jv.tensor.shape, generator=torch.Generator().manual_seed(4)))
        jtu = Ji.T.mv(u)
        assert_close(jtu.flat(), torch.einsum("ncp,nc->p", jo, u.tensor), jscale * float(u.norm()), "Jᵀ u")
        assert abs(float(jv.dot(u) - v.dot(jtu))) <= 1e-9 * jscale * float(v.norm() * u.norm()), "adjointness"
    _assert_model_intact(case, before)


@given(cases(kinds=("raw", "regression")))
def test_softmax_kinds_on_one_output_are_refused(case):
    """A softmax over one logit is constant, so ``kind="exact"``/``"mc"`` and the exact NTK output
    are refused on a one-output model (pointing at ``kind="binary"``); several outputs build."""
    from tangentlab.errors import InvalidInputError

    before = _snapshot(case)
    for kind in ("exact", "mc"):
        if case.outputs == 1:
            with pytest.raises(InvalidInputError, match="binary"):
                tl.fim(case.model, case.batches, kind, "diag")
        else:
            fm = tl.fim(case.model, case.batches, kind, "diag")
            assert torch.isfinite(torch.as_tensor(fm.trace()))
    if case.outputs == 1:
        with pytest.raises(InvalidInputError, match="binary"):
            tl.ntk(case.model, case.batches, output="exact")
    _assert_model_intact(case, before)
