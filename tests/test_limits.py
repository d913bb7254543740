"""``tangentlab.limits``: closed forms against quadrature, layer rules against exact expectations.

Oracles (float64, independent of the library's code paths):

* dual activations of positively homogeneous ``φ`` (ReLU, leaky ReLU) by the angular
  integral ``E[φ(u)φ(v)] = (1/π) ∫₀^{2π} φ(a·e_t) φ(b·e_t) dt`` and
  ``E[φ'(u)φ'(v)] = (1/2π) ∫₀^{2π} φ'(a·e_t) φ'(b·e_t) dt`` (``(u, v) = (a·z, b·z)``, ``z`` a
  standard normal in the plane; the radial integrals are ``∫ r³e^{−r²/2} = 2`` and
  ``∫ r e^{−r²/2} = 1``), by ``scipy.integrate.quad`` with the kinks as break points;
* smooth ``φ`` (erf, tanh, GELU) by ``scipy.integrate.dblquad`` over the 2-D Gaussian;
* convolution, pooling and flatten rules: for a network that is linear in each layer's
  weights the NNGP is an exact expectation at every width, computed from ``F.unfold``
  patches and the matrix of ``avg_pool2d`` (built from one-hot images).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy import integrate
from torch import nn

import tangentlab as tl
from tangentlab import limits
from tangentlab.analysis.limits import distance_to_limit, limit_probe
from tangentlab.errors import InvalidInputError, UnsupportedLayerError
from tangentlab.kernel_predictor import KernelPredictor
from tangentlab.limits.kernels import erf_dual, leaky_relu_dual, quadrature_dual, relu_dual
from tangentlab.linearize import half_mse, model_at

COVS = [(1.0, 0.3, 2.0), (0.5, -0.45, 0.7), (2.0, 1.999, 2.0), (1.3, -1.29, 1.3), (0.2, 0.0, 3.0)]


def _cholesky_rows(k11: float, k12: float, k22: float) -> tuple[tuple[float, float], tuple[float, float]]:
    a = math.sqrt(k11)
    return (a, 0.0), (k12 / a, math.sqrt(max(k22 - k12 * k12 / k11, 0.0)))


@pytest.fixture(autouse=True)
def _quiet_quadrature():
    with warnings.catch_warnings():  # quad's round-off notice at 1e-14 tolerances
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        yield


def _angular(phi, dphi, k11, k12, k22) -> tuple[float, float]:
    (a1, a2), (b1, b2) = _cholesky_rows(k11, k12, k22)
    kinks = sorted({(math.atan2(-c1, c2) + j * math.pi) % (2 * math.pi) for c1, c2 in ((a1, a2), (b1, b2))
                    for j in (0, 1)})

    def on_circle(f, g, t):
        e = (math.cos(t), math.sin(t))
        return f(a1 * e[0] + a2 * e[1]) * g(b1 * e[0] + b2 * e[1])

    opts = {"points": kinks, "epsabs": 1e-14, "epsrel": 1e-14, "limit": 200}
    t = integrate.quad(lambda t: on_circle(phi, phi, t), 0, 2 * math.pi, **opts)[0] / math.pi
    dt = integrate.quad(lambda t: on_circle(dphi, dphi, t), 0, 2 * math.pi, **opts)[0] / (2 * math.pi)
    return t, dt


def _gauss2d(f, k11, k12, k22) -> float:
    (a, _), (s, r) = _cholesky_rows(k11, k12, k22)
    g = lambda z2, z1: f(a * z1, s * z1 + r * z2) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)  # noqa: E731
    return integrate.dblquad(g, -11, 11, -11, 11, epsabs=1e-13, epsrel=1e-13)[0]


def _t(*v: float) -> list[torch.Tensor]:
    return [torch.tensor(a) for a in v]


@pytest.mark.parametrize("alpha", [None, 0.1, 0.5])
@pytest.mark.parametrize("cov", COVS)
def test_relu_and_leaky_relu_arc_cosine_against_quadrature(cov, alpha):
    a = 0.0 if alpha is None else alpha
    phi = lambda u: u if u > 0 else a * u  # noqa: E731
    dphi = lambda u: 1.0 if u > 0 else a  # noqa: E731
    want = _angular(phi, dphi, *cov)
    dual = relu_dual if alpha is None else leaky_relu_dual(alpha)
    t, dt = dual(*_t(*cov))
    assert abs(float(t) - want[0]) < 1e-10 and abs(float(dt) - want[1]) < 1e-10


@pytest.mark.parametrize("cov", COVS[:3])
def test_erf_williams_kernel_against_quadrature(cov):
    t, dt = erf_dual(*_t(*cov))
    want = _gauss2d(lambda u, v: math.erf(u) * math.erf(v), *cov)
    dwant = _gauss2d(lambda u, v: 4 / math.pi * math.exp(-u * u - v * v), *cov)
    assert abs(float(t) - want) < 1e-10 and abs(float(dt) - dwant) < 1e-10


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_gauss_hermite_duals_against_adaptive_quadrature(name):
    mod, f, df = {
        "tanh": (nn.Tanh(), math.tanh, lambda u: 1 - math.tanh(u) ** 2),
        "gelu": (nn.GELU(), lambda u: u * 0.5 * (1 + math.erf(u / math.sqrt(2))),
                 lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2))) + u * math.exp(-u * u / 2) / math.sqrt(2 * math.pi)),
    }[name]
    dual = quadrature_dual(mod, name, order=96)
    for cov in [(0.5, -0.4, 0.7), (1.0, 0.3, 1.5)]:
        t, dt = dual(*_t(*cov))
        assert abs(float(t) - _gauss2d(lambda u, v: f(u) * f(v), *cov)) < 1e-9
        assert abs(float(dt) - _gauss2d(lambda u, v: df(u) * df(v), *cov)) < 1e-9


def test_hermite_rule_integrates_gaussian_moments():
    z, w = limits.hermite_rule(10)
    for k, m in [(0, 1.0), (2, 1.0), (4, 3.0), (6, 15.0), (8, 105.0), (3, 0.0)]:
        assert abs(float((w * z ** k).sum()) - m) < 1e-11


def _one_hidden(act: nn.Module, d: int = 3, n: int = 5) -> nn.Module:
    return nn.Sequential(nn.Linear(d, n), act, nn.Linear(n, 1))


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_one_hidden_layer_ntk_and_nngp_formulas(act):
    """``K¹ = σ₁² x·x'/d + β₁²``, NNGP ``σ₂² T(K¹) + β₂²``, NTK ``NNGP + σ₂² K¹ Ṫ(K¹)`` (NTK
    parameterization) and ``n T(K¹) + 1 + σ₂² (x·x' + 1) Ṫ(K¹)`` (standard), by quadrature."""
    model = _one_hidden(nn.ReLU() if act == "relu" else limits.Erf())
    x = torch.randn(3, 3)
    s1, b1, s2, b2 = 1.7, 0.2, 0.9, 0.05
    wv, bv = {"0": s1, "2": s2}, {"0": b1, "2": b2}
    lim = limits.kernels(model, x, weight_var=wv, bias_var=bv)
    std = limits.ntk(model, x, parameterization="standard", weight_var=wv, bias_var=bv).data[:, :, 0, 0]
    for i in range(3):
        for j in range(3):
            k = lambda a, b: s1 * float(x[a] @ x[b]) / 3 + b1  # noqa: E731
            cov = (k(i, i), k(i, j), k(j, j))
            if act == "relu":
                t, dt = _angular(lambda u: max(u, 0.0), lambda u: float(u > 0), *cov)
            else:
                t = _gauss2d(lambda u, v: math.erf(u) * math.erf(v), *cov)
                dt = _gauss2d(lambda u, v: 4 / math.pi * math.exp(-u * u - v * v), *cov)
            nngp = s2 * t + b2
            assert abs(float(lim.nngp.data[i, j, 0, 0]) - nngp) < 1e-10
            assert abs(float(lim.ntk.data[i, j, 0, 0]) - (nngp + s2 * cov[1] * dt)) < 1e-10
            want_std = 5 * t + 1 + s2 * (float(x[i] @ x[j]) + 1) * dt
            assert abs(float(std[i, j]) - want_std) < 1e-10


# --- spatial rules: exact expectations of networks linear in each layer's weights ----------
def _pool_matrix(h: int, w: int, pool: nn.Module) -> torch.Tensor:
    eye = torch.eye(h * w).reshape(h * w, 1, h, w)
    return pool(eye).reshape(h * w, -1).T  # (P', P)


def _conv_gram(conv: nn.Conv2d, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``⟨patch_p(x_n), patch_q(x'_m)⟩`` ``(N1, N2, P, P)`` by ``F.unfold``."""
    kw = {"kernel_size": conv.kernel_size, "dilation": conv.dilation, "padding": conv.padding, "stride": conv.stride}
    p1, p2 = nn.functional.unfold(x1, **kw), nn.functional.unfold(x2, **kw)
    return torch.einsum("nkp,mkq->nmpq", p1, p2)


@pytest.mark.parametrize("pooled", [False, True])
def test_conv_pool_flatten_rules_are_exact_expectations(pooled):
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
    x1, x2 = torch.randn(3, 3, 9, 8), torch.randn(2, 3, 9, 8)
    h, w = 5, 4  # (9 + 4 - 4 - 1)//2 + 1, (8 + 4 - 4 - 1)//2 + 1
    pool = nn.AvgPool2d(2, stride=1, padding=1)
    layers = [conv, pool] if pooled else [conv]
    probe = nn.Sequential(*layers, nn.Flatten())
    width = probe(x1[:1]).shape[1]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width, 2))
    sc, bc, sl, bl = 1.3, 0.4, 0.8, 0.1
    wv, bv = {"0": sc, str(len(layers) + 1): sl}, {"0": bc, str(len(layers) + 1): bl}
    G = sc / (3 * 9) * _conv_gram(conv, x1, x2) + bc  # E[h_p(x) h_q(x')] per channel
    if pooled:
        M = _pool_matrix(h, w, pool)
        G = torch.einsum("ap,nmpq,bq->nmab", M, G, M)
    want = sl * torch.diagonal(G, dim1=2, dim2=3).mean(-1) + bl
    for spatial in (["full"] if pooled else ["full", "diagonal", "auto"]):
        got = limits.nngp(model, x1, x2, weight_var=wv, bias_var=bv, spatial=spatial)
        assert got.shape == (3, 2, 2, 2)
        assert torch.allclose(got.data[:, :, 0, 0], want, rtol=1e-12, atol=1e-12)
        assert torch.equal(got.data[:, :, 0, 1], torch.zeros(3, 2))


def test_global_pooling_and_conv1d_exact():
    conv = nn.Conv1d(2, 3, 3, padding="same")
    model = nn.Sequential(conv, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 1))
    x = torch.randn(4, 2, 7)
    p = nn.functional.unfold(x[:, :, None, :], kernel_size=(1, 3), padding=(0, 1))
    G = 0.5 / 6 * torch.einsum("nkp,mkq->nmpq", p, p) + 0.2
    want = 1.1 * G.mean((2, 3)) + 0.3
    got = limits.nngp(model, x, weight_var={"0": 0.5, "3": 1.1}, bias_var={"0": 0.2, "3": 0.3})
    assert torch.allclose(got.data[:, :, 0, 0], want, rtol=1e-12, atol=1e-12)


# --- layout, tiles, variances -------------------------------------------------------------
def test_layout_symmetry_and_tiles():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4, 3))
    x1, x2 = torch.randn(5, 1, 6, 6), torch.randn(3, 1, 6, 6)
    K = limits.ntk(model, x1)
    assert K.shape == (5, 5, 3, 3) and K.symmetric
    both = limits.ntk(model, torch.cat([x1, x2]))
    K12 = limits.ntk(model, x1, x2)
    assert torch.allclose(K12.data, both.data[:5, 5:], rtol=1e-13, atol=1e-14)
    assert torch.allclose(limits.ntk(model, x1, block=2).data, K.data, rtol=1e-13, atol=1e-14)
    both_kernels = limits.kernels(model, x1)
    assert torch.equal(both_kernels.ntk.data, K.data)
    assert torch.allclose(both_kernels.nngp.data, limits.nngp(model, x1, block=3).data, rtol=1e-13, atol=1e-14)
    assert torch.allclose(K.data[:, :, 1, 1], K.data[:, :, 0, 0]) and float(K.data[:, :, 0, 2].abs().max()) == 0
    assert torch.allclose(K.data, K.data.permute(1, 0, 3, 2))
    assert float(torch.linalg.eigvalsh(K.as_matrix()).min()) > -1e-10


def test_variances_are_read_from_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 400), nn.ReLU(), nn.Linear(400, 2))
    var = limits.read_variances(model)
    w, b = model[2].weight.detach(), model[2].bias.detach()
    assert var["2"] == pytest.approx((400 * float(w.pow(2).mean()), float(b.pow(2).mean())), rel=1e-12)
    # PyTorch's default kaiming_uniform(a=√5): σ_w² = 1/3 in expectation, Var(b) = 1/(3 fan_in)
    assert var["0"][0] == pytest.approx(1 / 3, rel=0.02) and var["0"][1] == pytest.approx(1 / 90, rel=0.25)
    x = torch.randn(4, 30)
    given = limits.nngp(model, x, weight_var={k: v[0] for k, v in var.items()},
                        bias_var={k: v[1] for k, v in var.items()})
    assert torch.allclose(limits.nngp(model, x).data, given.data, rtol=1e-13)
    assert not torch.allclose(limits.nngp(model, x, weight_var=2.0).data, given.data)
    with pytest.raises(InvalidInputError, match="'9'"):
        limits.nngp(model, x, weight_var={"9": 1.0})


def test_empirical_ntk_parameterizations():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(4, 3)
    assert torch.equal(limits.empirical_ntk(model, x, parameterization="standard").data, tl.ntk(model, x).data)
    var = limits.read_variances(model)
    scale = {"0.weight": var["0"][0] / 3, "0.bias": var["0"][1], "2.weight": var["2"][0] / 6, "2.bias": var["2"][1]}
    want = sum(s * tl.ntk(model, x, params=[name]).data for name, s in scale.items())
    assert torch.allclose(limits.empirical_ntk(model, x).data, want, rtol=1e-12, atol=1e-14)


def test_layernorm_residual_and_gelu_agree_with_a_wide_network():
    """A width-2048 network (one draw; kernels concentrate like 1/√width) is within 6 %."""
    torch.manual_seed(3)
    n = 2048
    model = nn.Sequential(nn.Linear(5, n), nn.LayerNorm(n), nn.GELU(), nn.Linear(n, n),
                          limits.Residual(nn.Sequential(nn.Linear(n, n), nn.Tanh(), nn.Linear(n, n))),
                          nn.ReLU(), nn.Linear(n, 1))
    x = torch.randn(4, 5)
    for p in ("ntk", "standard"):
        emp, lim = limits.empirical_ntk(model, x, parameterization=p), limits.ntk(model, x, parameterization=p)
        assert distance_to_limit(emp, lim)["rel_frobenius"] < 0.06, p


# --- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("layer,name", [(nn.MaxPool1d(2), "MaxPool1d"), (nn.BatchNorm1d(4), "BatchNorm1d"),
                                        (nn.Softmax(dim=1), "Softmax")])
def test_unknown_layer_is_refused_with_its_name(layer, name):
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), layer), nn.Linear(4, 1))
    with pytest.raises(UnsupportedLayerError, match=rf"'1\.1' \({name}\)"):
        limits.ntk(model, torch.randn(2, 3))


def test_refusals():
    x = torch.randn(2, 3)
    with pytest.raises(UnsupportedLayerError, match="'2'.*LayerNorm after a non-odd"):
        limits.nngp(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 1)), x)
    with pytest.raises(UnsupportedLayerError, match="residual branch"):
        limits.nngp(nn.Sequential(nn.Linear(3, 4), limits.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))), x)
    with pytest.raises(UnsupportedLayerError, match="'2'.*not a Gaussian process"):
        limits.nngp(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 1)), x)
    with pytest.raises(UnsupportedLayerError, match="'3'.*not a Gaussian process"):
        limits.nngp(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), limits.Residual(nn.Linear(4, 4)), nn.ReLU()), x)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 1))
    with pytest.raises(InvalidInputError, match="spatial='full'"):
        limits.nngp(cnn, torch.randn(2, 1, 6, 6), spatial="diagonal")
    with pytest.raises(InvalidInputError, match="parameterization"):
        limits.ntk(cnn, torch.randn(2, 1, 6, 6), parameterization="mup")
    with pytest.raises(UnsupportedLayerError, match="'0'"):
        limits.nngp(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()), torch.randn(2, 2, 5, 5))


def test_width_one_bottleneck_warns_but_returns_a_kernel():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1), nn.ReLU(), nn.Linear(1, 2))
    with pytest.warns(limits.WidthWarning, match="'2' has width 1"):
        K = limits.ntk(model, torch.randn(4, 3))
    assert K.shape == (4, 4, 2, 2) and torch.isfinite(K.data).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        limits.ntk(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), torch.randn(4, 3))


# --- predictions and the probe ----------------------------------------------------------
def test_from_kernel_with_the_empirical_ntk_matches_the_predictor():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 2))
    x, y, xt = torch.randn(12, 3), torch.randn(12, 2), torch.randn(5, 3)
    ref = KernelPredictor(model, x, y)
    kp = KernelPredictor.from_kernel(lambda a, b: tl.ntk(model, a, b), x, y, f0=model)
    for kw in ({"t": 3.0}, {"steps": 7, "lr": 0.3}, {"ridge": 1e-2}):
        assert torch.allclose(kp.predict(xt, **kw), ref.predict(xt, **kw), rtol=1e-11, atol=1e-12)
        assert torch.allclose(kp.predict(None, **kw), ref.predict(None, **kw), rtol=1e-11, atol=1e-12)
    zero = KernelPredictor.from_kernel(lambda a, b: tl.ntk(model, a, b), x, y)
    ref0 = KernelPredictor(model, x, y, offset=False)
    assert torch.allclose(zero.predict(xt, t=2.0), ref0.predict(xt, t=2.0), rtol=1e-11, atol=1e-12)
    with pytest.raises(InvalidInputError, match="n_outputs"):
        KernelPredictor.from_kernel(lambda a, b: tl.ntk(model, a, b), x, y, n_outputs=3)


def test_trained_network_linearization_and_infinite_width_model_agree():
    """Full-batch gradient descent on the half mean squared loss of a wide network, its
    linearization and the infinite-width model (standard parameterization, same f₀) give
    close test predictions; the network moves well away from its initial outputs."""
    torch.manual_seed(4)
    n, steps, lr = 2048, 40, 1.0 / 2048
    model = nn.Sequential(nn.Linear(4, n), nn.ReLU(), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, 1))
    x, xt = torch.randn(10, 4), torch.randn(6, 4)
    y = torch.sin(x.sum(1, keepdim=True))
    lin = KernelPredictor(model, x, y)
    init = model_at(model)  # kernel and f₀ of the network at initialization
    inf = KernelPredictor.from_kernel(lambda a, b: limits.ntk(init, a, b, parameterization="standard"), x, y,
                                      f0=init)
    with torch.no_grad():
        f0 = model(xt)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        half_mse(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        net = model(xt)
    p_lin, p_inf = lin.predict(xt, steps=steps, lr=lr), inf.predict(xt, steps=steps, lr=lr)
    moved = float((net - f0).norm())
    assert moved > 0.1
    assert float((net - p_lin).norm()) < 0.05 * moved
    assert float((p_inf - p_lin).norm()) < 0.1 * moved


def test_limit_probe_and_distance():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 2))
    x = torch.randn(6, 3)
    lim = limits.ntk(model, x, parameterization="standard")
    same = distance_to_limit(lim, lim)
    assert same["rel_frobenius"] == 0.0 and same["cka"] == pytest.approx(1.0, abs=1e-12)
    for p in ("standard", "ntk"):
        row = limit_probe(model, x, parameterization=p)
        assert set(row) == {"rel_frobenius", "cka"} and 0 < row["rel_frobenius"] < 1 and 0 < row["cka"] <= 1
    with pytest.raises(InvalidInputError):
        distance_to_limit(lim, limits.ntk(model, x[:3]))
