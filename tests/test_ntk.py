"""The empirical NTK Gram tensor and its verbs against the oracle."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import tangentlab as tl
from tangentlab.fmat import ntk_diag

from . import oracle
from .cases import arch_case
from .models import ARCHS

ARCH_NAMES = sorted(ARCHS)


def _ntk(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.ntk(*args, **kw)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_ntk_square(arch):
    model, x, _, _ = arch_case(arch)
    K = _ntk(model, x, batch_size=3)
    want = oracle.ntk(model, x)
    assert K.shape == want.shape
    assert oracle.rel_err(K.data, want) < 1e-10
    m = K.as_matrix()
    assert oracle.rel_err(m, m.T) < 1e-14, "square kernel is symmetric"
    assert float(torch.linalg.eigvalsh(m).min()) > -1e-8 * float(m.diagonal().max()), "PSD"


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_ntk_cross_and_per_layer(arch):
    model, x, _, _ = arch_case(arch)
    x1, x2 = x[:4], x[4:]
    K = _ntk(model, x1, x2, per_layer=True, batch_size=3)
    assert oracle.rel_err(K.data, oracle.ntk(model, x1, x2)) < 1e-10
    space = tl.ParamSpace.from_model(model)
    total = sum(K.layer(lay.module).data for lay in space.layers)
    assert oracle.rel_err(total, K.data) < 1e-12
    for lay in space.layers:
        names = [p.name for p in lay.params]
        assert oracle.rel_err(K.layer(lay.module).data, oracle.ntk(model, x1, x2, names)) < 1e-9


@pytest.mark.parametrize("arch", ["mlp", "cnn", "tokens"])
def test_ntk_centered(arch):
    model, x, _, _ = arch_case(arch)
    J = oracle.jacobian(model, x)
    m = J.mean(0, keepdim=True)
    K = _ntk(model, x, centering=True, batch_size=4)
    assert oracle.rel_err(K.data, torch.einsum("ncp,mdp->nmcd", J - m, J - m)) < 1e-10
    # cross kernel: both sets centered by the mean over x1
    K2 = _ntk(model, x[:5], x[5:], centering=True, per_layer=True, batch_size=2)
    J1, J2 = J[:5], J[5:]
    m1 = J1.mean(0, keepdim=True)
    assert oracle.rel_err(K2.data, torch.einsum("ncp,mdp->nmcd", J1 - m1, J2 - m1)) < 1e-10
    assert oracle.rel_err(sum(v.data for v in K2.layers.values()), K2.data) < 1e-10


def test_fmat_verbs():
    model, x, _, _ = arch_case("mlp")
    K = _ntk(model, x)
    M = oracle.ntk(model, x).permute(0, 2, 1, 3).reshape(x.shape[0] * 4, -1)
    n, c = x.shape[0], 4
    u = tl.FVector(torch.randn(n, c))
    assert oracle.rel_err(K.as_matrix(), M) < 1e-10
    assert oracle.rel_err(K.mv(u).flat(), M @ u.flat()) < 1e-10
    assert abs(float(K.vTMv(u)) - float(u.flat() @ M @ u.flat())) < 1e-9 * float(M.norm())
    assert abs(float(K.trace()) - float(M.trace())) < 1e-10 * float(M.trace())
    assert oracle.rel_err(K.diag().reshape(-1), M.diagonal()) < 1e-10
    vals, vecs = K.eigh(5)
    assert oracle.rel_err(vals, torch.linalg.eigvalsh(M).flip(0)[:5]) < 1e-9
    assert oracle.rel_err(M @ vecs, vecs * vals) < 1e-8
    sol = K.solve(u, 0.3)
    assert oracle.rel_err(sol.flat(), torch.linalg.solve(M + 0.3 * torch.eye(n * c), u.flat())) < 1e-9
    assert abs(float(K.norm()) - float(M.norm())) < 1e-10 * float(M.norm())
    assert oracle.rel_err((K + 2 * K).data, 3 * K.data) < 1e-14
    op = K.to_scipy()
    assert oracle.rel_err(torch.as_tensor(op.matvec(u.flat().numpy())), M @ u.flat()) < 1e-10
    K2 = tl.FMatDense.from_state_dict(pickle.loads(pickle.dumps(K.state_dict())))
    assert torch.equal(K2.data, K.data)
    assert oracle.rel_err(ntk_diag(tl.Engine(model, "raw"), x), K.diag()) < 1e-10


def test_cross_kernel_refuses_square_only_verbs():
    model, x, _, _ = arch_case("mlp")
    K = _ntk(model, x[:3], x[3:])
    with pytest.raises(tl.InvalidInputError, match="square"):
        K.trace()
    u = tl.FVector(torch.randn(x.shape[0] - 3, 4))
    assert K.mv(u).shape == (3, 4)


def test_ntk_is_unnormalized_gram_of_tangent_features():
    """K = ΦΦᵀ: with the exact-Fisher outputs, eig(K)/N = eig(F) (duality, normalization)."""
    model, x, y, F = arch_case("cnn")
    K = _ntk(model, x, output="exact")
    ek = torch.linalg.eigvalsh(K.as_matrix()).flip(0)[:5] / x.shape[0]
    ef = torch.linalg.eigvalsh(F).flip(0)[:5]
    assert oracle.rel_err(ek, ef) < 1e-9


def test_select_layers_and_jacobian_columns():
    model, x, _, _ = arch_case("norms")
    K = _ntk(model, x, per_layer=True)
    sub = K.select(["c1", "out"])
    assert oracle.rel_err(sub.data, oracle.ntk(model, x, names=["c1.weight", "c1.bias", "out.weight",
                                                                "out.bias"])) < 1e-10
    J = tl.jacobian(model, x).select(["bn1.weight", "out"])
    want = oracle.jacobian(model, x, names=["bn1.weight", "out.weight", "out.bias"])
    assert oracle.rel_err(J.data, want) < 1e-10
    with pytest.raises(tl.InvalidInputError, match="no layers"):
        K.select("nonexistent")


@pytest.mark.parametrize("rows", [3, 300, 777])
def test_symmetric_block_product_equals_full_product(rows):
    from tangentlab.layers.base import per_example_gram, sym_gram_into

    x = torch.randn(rows, 19, dtype=torch.float64)  # rows n·C + c with C = 1: the plain x xᵀ
    out = torch.zeros(rows, rows, 1, 1, dtype=torch.float64)
    sym_gram_into(None, x, 1, out, block=64)
    torch.testing.assert_close(out[:, :, 0, 0], x @ x.T, rtol=0, atol=1e-12)
    p = torch.randn(3, rows // 3 + 1, 7, dtype=torch.float64)
    torch.testing.assert_close(per_example_gram(p), torch.einsum("cnp,dmp->nmcd", p, p), rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 23])
@pytest.mark.parametrize("per_layer", [False, True])
def test_ntk_blocked_symmetric_gram(batch_size, per_layer):
    """N·C = 700 rows > 512: the Linear Gram trick runs in several block rows of examples
    (lower triangle + mirror, accumulated in place); with batch_size, tiles land in views."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 10))
    x = torch.randn(70, 6)
    K = _ntk(model, x, batch_size=batch_size or 70, per_layer=per_layer)
    want = oracle.ntk(model, x)
    assert oracle.rel_err(K.data, want) < 1e-12
    if per_layer:
        for lay in tl.ParamSpace.from_model(model).layers:
            names = [p.name for p in lay.params]
            assert oracle.rel_err(K.layer(lay.module).data, oracle.ntk(model, x, None, names)) < 1e-12
    x2 = torch.randn(5, 6)
    assert oracle.rel_err(_ntk(model, x, x2, batch_size=batch_size or 70).data, oracle.ntk(model, x, x2)) < 1e-12
