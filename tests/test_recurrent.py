"""Recurrent layers (``nn.RNN``/``nn.LSTM``/``nn.GRU``) on the default route, against a
float64 oracle.

The oracle differentiates the *fused* recurrent kernel one example at a time
(``torch.func.jacrev`` in a Python loop: ``vmap`` cannot run that kernel), so it shares
nothing with the route under test, which unrolls the kernel into per-step cell operations
under ``vmap``. Every representation (the registry's list), the NTK, the dense and
implicit Jacobian and the implicit products are checked.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import tangentlab as tl
from tangentlab.engine.plan import GenericRouteWarning
from tangentlab.errors import UnsupportedLayerError

from .cases import REPRESENTATIONS, restrict
from .oracle import rel_err

TOL = 1e-9
N, T, D, H, C = 6, 5, 3, 4, 3


class SeqNet(nn.Module):
    """``[Embedding | Linear encoder] → recurrent layer → Linear head`` on the last step or
    the mean over steps."""

    def __init__(self, cell: type, pool: str, encoder: str | None = None, **kw):
        super().__init__()
        self.batch_first = kw.get("batch_first", False)
        self.enc = {"linear": nn.Linear(D, D), "embedding": nn.Embedding(7, D), None: None}[encoder]
        self.rnn = cell(D, H, **kw)
        width = (kw.get("proj_size") or H) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, C)
        self.pool = pool

    def forward(self, x):
        if self.enc is not None:
            x = self.enc(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        out = self.rnn(x)[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out[:, -1] if self.pool == "last" else out.mean(1))


class CellNet(nn.Module):
    """``[encoder] → a recurrent cell stepped over the T positions (batch first) → Linear head``
    on the last state or the mean of the states."""

    def __init__(self, cell: type, pool: str, encoder: str | None = None, **kw):
        super().__init__()
        self.cell = cell(D, H, **kw)
        self.head = nn.Linear(H, C)
        self.pool = pool

    def forward(self, x):
        state, hs = None, []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            hs.append(state[0] if isinstance(state, tuple) else state)
        return self.head(hs[-1] if self.pool == "last" else torch.stack(hs, 1).mean(1))


CONFIGS = {
    "rnn-tanh": (nn.RNN, "last", None, dict(batch_first=True)),
    "rnn-relu-2layers": (nn.RNN, "mean", None, dict(nonlinearity="relu", num_layers=2)),
    "lstm-bidirectional": (nn.LSTM, "last", None, dict(batch_first=True, bidirectional=True)),
    "lstm-proj-2layers": (nn.LSTM, "mean", "linear", dict(proj_size=2, num_layers=2)),
    "gru-2layers-bidirectional": (nn.GRU, "mean", None, dict(batch_first=True, num_layers=2, bidirectional=True)),
    "gru-embedding": (nn.GRU, "last", "embedding", dict()),
    "rnncell-relu": (nn.RNNCell, "mean", None, dict(nonlinearity="relu")),
    "lstmcell": (nn.LSTMCell, "last", None, dict()),
    "grucell-nobias": (nn.GRUCell, "mean", None, dict(bias=False)),
}


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@functools.cache
def case(name: str):
    """``(model, x, y, J)`` with the oracle Jacobian ``J[n, c, p]`` (float64)."""
    cell, pool, encoder, kw = CONFIGS[name]
    torch.manual_seed(sum(map(ord, name)))
    net = CellNet if issubclass(cell, nn.RNNCellBase) else SeqNet
    model = net(cell, pool, encoder, **kw).double().eval()
    x = torch.randint(0, 7, (N, T)) if encoder == "embedding" else torch.randn(N, T, D, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = []
    for n in range(N):  # one example at a time through the fused kernel
        j = jacrev(lambda p, xi=x[n:n + 1]: functional_call(model, p, (xi,))[0])(params)
        rows.append(torch.cat([j[k].reshape(C, -1) for k in params], 1))
    return model, x, y, torch.stack(rows)


def fisher(name: str) -> torch.Tensor:
    """Exact softmax Fisher ``(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n``."""
    model, x, _, J = case(name)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    S = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, S, J) / N


@pytest.fixture(params=sorted(CONFIGS))
def name(request):
    return request.param


def test_ntk(name):
    model, x, _, J = case(name)
    K = _quiet(tl.ntk, model, x, batch_size=4)
    assert rel_err(K.data, torch.einsum("ncp,mdp->nmcd", J, J)) < TOL
    K2 = _quiet(tl.ntk, model, x[:2], x[2:])
    assert rel_err(K2.data, torch.einsum("ncp,mdp->nmcd", J[:2], J[2:])) < TOL


@pytest.mark.parametrize("implicit", [False, True])
def test_jacobian(name, implicit):
    model, x, _, J = case(name)
    op = _quiet(lambda: tl.jacobian(model, x, implicit=implicit, batch_size=4).to_scipy())
    v = torch.randn(J.shape[2], dtype=torch.float64)
    u = torch.randn(N * C, dtype=torch.float64)
    Jm = J.reshape(N * C, -1)
    assert rel_err(torch.as_tensor(_quiet(op.matvec, v.numpy())), Jm @ v) < TOL
    assert rel_err(torch.as_tensor(_quiet(op.rmatvec, u.numpy())), Jm.T @ u) < TOL


@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_representation(name, rep):
    model, x, y, _ = case(name)
    F = fisher(name)
    M = _quiet(tl.fim, model, (x, y), "exact", rep, batch_size=4)
    R = restrict(rep, M.space, F)
    v = tl.PVector.randn(M.space, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(_quiet(M.mv, v).flat(), R @ v.flat()) < TOL
    vmv = float(_quiet(M.vTMv, v))
    assert abs(vmv - float(v.flat() @ R @ v.flat())) < TOL * float(R.norm() * v.flat().dot(v.flat()))
    assert abs(float(_quiet(M.trace)) - float(R.trace())) < TOL * float(R.trace())
    assert rel_err(_quiet(M.diag).flat(), torch.diagonal(R)) < TOL
    if rep != "implicit":
        assert rel_err(M.to_dense(), R) < TOL


@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_kronecker_refusal_names_the_layer(rep):
    model, x, y, _ = case("lstm-bidirectional")
    with pytest.raises(UnsupportedLayerError, match=r"rnn \(LSTM\).*mixed"):
        _quiet(tl.fim, model, (x, y), "exact", rep)


def test_mixed():
    """Block-diagonal for the recurrent layer (exact), EKFAC for the head (exact trace)."""
    model, x, y, _ = case("lstm-proj-2layers")
    F = fisher("lstm-proj-2layers")
    M = _quiet(tl.fim, model, (x, y), "exact", "mixed")
    space = M.space
    rnn = [lay for lay in space.layers if lay.module == "rnn"][0]
    assert rel_err(M.to_dense()[rnn.slice, rnn.slice], F[rnn.slice, rnn.slice]) < TOL
    per_layer = sum(float(F[lay.slice, lay.slice].trace()) for lay in space.layers)
    assert abs(float(M.trace()) - per_layer) < TOL * per_layer


def test_per_example_gradients_and_empirical_fisher():
    model, x, y, _ = case("gru-2layers-bidirectional")
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = []
    for n in range(N):
        d = torch.func.grad(lambda p, n=n: nn.functional.cross_entropy(
            functional_call(model, p, (x[n:n + 1],)), y[n:n + 1]))(params)
        g.append(torch.cat([d[k].reshape(-1) for k in params]))
    G = torch.stack(g)
    M = _quiet(tl.fim, model, (x, y), "empirical", "dense", batch_size=4)
    assert rel_err(M.to_dense(), G.T @ G / N) < TOL


def test_one_warning_naming_module_and_route():
    model, x, y, _ = case("lstm-bidirectional")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tl.fim(model, (x, y), "exact", "diag", batch_size=2)  # three batches
    msgs = [str(w.message) for w in rec if issubclass(w.category, GenericRouteWarning)]
    assert len(msgs) == 1, msgs
    assert "rnn (recurrent layer LSTM" in msgs[0] and "generic torch.func route" in msgs[0]
    assert "head" not in msgs[0], "the Linear head stays on the hook route"


def test_frozen_recurrent_layer_under_vmap():
    """A recurrent layer outside the selection still runs inside the vectorized pass when
    another layer takes the generic route."""
    model, x, y, J = case("gru-embedding")
    names = ["enc.weight"]
    reg = tl.LayerRegistry()  # no rules: the embedding takes the generic route
    K = _quiet(tl.ntk, model, x, params=names, registry=reg)
    cols = J[:, :, : model.enc.weight.numel()]
    assert rel_err(K.data, torch.einsum("ncp,mdp->nmcd", cols, cols)) < TOL


def test_route_joint_agrees():
    model, x, _, J = case("rnn-relu-2layers")
    K = _quiet(tl.ntk, model, x, route="joint")
    assert rel_err(K.data, torch.einsum("ncp,mdp->nmcd", J, J)) < TOL


@pytest.mark.parametrize("route", ["auto", "generic"])
def test_dropout_in_training_mode_names_module_and_route(route):
    model = SeqNet(nn.LSTM, "last", None, num_layers=2, dropout=0.5, batch_first=True).double()
    model.train()
    x = torch.randn(N, T, D, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError, match=r"LSTM at 'rnn'.*model.eval\(\).*route='joint'"):
        _quiet(tl.ntk, model, x, route=route)
    assert _quiet(tl.ntk, model, x, route="joint").data.isfinite().all()  # the route the error names
    model.eval()
    assert _quiet(tl.ntk, model, x, route=route).data.isfinite().all()


class Packed(nn.Module):
    """An LSTM fed ``pack_padded_sequence`` (lengths in the last input feature)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(D, H, batch_first=True)
        self.head = nn.Linear(H, C)

    def forward(self, x):
        lengths = x[:, 0, D].long().cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x[:, :, :D], lengths, batch_first=True, enforce_sorted=False)
        return self.head(self.rnn(packed)[1][0][-1])


@pytest.mark.parametrize("route", ["auto", "generic"])
def test_packed_sequence_is_refused_naming_module(route):
    x = torch.randn(N, T, D + 1, dtype=torch.float64)
    x[:, :, D] = torch.tensor([5, 3, 2, 5, 1, 4], dtype=torch.float64)[:, None]
    with pytest.raises(UnsupportedLayerError, match=r"LSTM at 'rnn' receives a PackedSequence.*padded"):
        _quiet(tl.ntk, Packed().double().eval(), x, route=route)
