"""Exact maths of the geometric-compression study (paper 004) and a smoke run of the study."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import tangentlab as tl
from tangentlab.analysis.compression import (
    MeanFieldNet,
    NetParams,
    amplification,
    beta_feature,
    beta_lazy,
    bootstrap_exponent,
    compress,
    fit_power_law,
    hinge_kernel_gd,
    hinge_loss,
    hinge_velocity,
    init_params,
    kernel_svc,
    kernel_test_error,
    knn_mutual_information,
    label_projections,
    net_output,
    neuron_amplification,
    ntk_closed_form,
    predictor,
)
from tangentlab.studies.compression.data import (
    CYLINDER_R,
    STRIPE_X_MAX,
    STRIPE_X_MIN,
    cylinder_labels,
    gaussian_task,
    stripe_labels,
)
from tangentlab.studies.compression.training import FeatureRun, train_feature
from tangentlab.studies.framework.config import ConfigError

D64 = torch.float64


def _params(d: int = 4, h: int = 7, seed: int = 0) -> NetParams:
    return init_params(d, h, torch.Generator().manual_seed(seed))


# ---- amplification factor ---------------------------------------------------------------------
def test_amplification_on_constructed_weights():
    w = torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 2.0, 0.0, 0.0]], dtype=D64)
    # Λ² = (d − 1) Σ ω_1² / Σ ‖ω_⊥‖² = 4 · 10 / 9
    assert amplification(w) == pytest.approx(math.sqrt(4 * 10 / 9), rel=1e-15)
    lam = neuron_amplification(w)
    assert torch.allclose(lam, torch.tensor([3 / 2, 0.0, -1 / 2], dtype=D64), rtol=0, atol=1e-15)
    # d_∥ = 2 form: Λ² = (d_⊥/d_∥) Σ ‖ω_∥‖² / Σ ‖ω_⊥‖² with d_⊥ = 3
    assert amplification(w, d_par=2) == pytest.approx(math.sqrt(3 / 2 * 12 / 7), rel=1e-15)
    assert torch.equal(neuron_amplification(w, 2)[1], torch.tensor(math.inf, dtype=D64))
    assert torch.allclose(neuron_amplification(w, 2)[[0, 2]], torch.tensor([math.sqrt(10 / 3), 1 / 2], dtype=D64))
    # isotropic weights: Λ = 1 exactly when every coordinate has the same sum of squares
    assert amplification(torch.eye(6, dtype=D64)) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(tl.errors.InvalidInputError):
        amplification(w, d_par=5)


def test_amplification_is_one_at_init():
    w = init_params(5, 20000, torch.Generator().manual_seed(1)).w
    assert abs(amplification(w) - 1) < 0.03
    assert abs(amplification(w, 2) - 1) < 0.03


def test_compress():
    x = torch.arange(12, dtype=D64).reshape(3, 4)
    c = compress(x, 1, 4.0)
    assert torch.equal(c[:, 0], x[:, 0]) and torch.equal(c[:, 1:], x[:, 1:] / 4)


# ---- network, predictor, gradient flow ---------------------------------------------------------
def test_predictor_and_module_agree():
    P = _params()
    x = torch.randn(9, 4, dtype=D64, generator=torch.Generator().manual_seed(2))
    f = net_output(P, x)
    # direct formula of Eq. (1)
    u = x @ P.w.T / 2.0 + P.b
    ref = (math.sqrt(2) * u.clamp_min(0)) @ P.beta / 7
    assert torch.allclose(f, ref, rtol=0, atol=1e-15)
    assert torch.allclose(MeanFieldNet(P)(x)[:, 0], f, rtol=0, atol=1e-15)
    f0 = f.clone()
    assert torch.equal(predictor(P, x, f0, 1e-6), torch.zeros(9, dtype=D64))  # F ≡ 0 at t = 0
    Q = NetParams(P.w + 0.1, P.b, P.beta * 1.5)
    F1, F3 = predictor(Q, x, f0, 1.0), predictor(Q, x, f0, 3.0)
    assert torch.allclose(F3, 3 * F1, rtol=1e-14, atol=0)
    assert torch.allclose(F1, net_output(Q, x) - f0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha", [1e-6, 1.0, 1e3])
def test_hinge_velocity_is_minus_autograd_gradient(alpha):
    P0 = _params(d=3, h=11, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 3, dtype=D64, generator=g)
    y = torch.where(torch.rand(20, generator=g, dtype=D64) > 0.5, 1.0, -1.0).to(D64)
    f0 = net_output(P0, x)
    # move away from the origin so that some margins are met and some are not
    P = NetParams(P0.w + 0.3 * torch.randn(11, 3, dtype=D64, generator=g), P0.b + 0.2, P0.beta * 2)
    F = 2 * torch.randn(20, dtype=D64, generator=g)  # outputs on both sides of the margin
    w, b, beta = (t.clone().requires_grad_(True) for t in (P.w, P.b, P.beta))
    Fa = alpha * (net_output(NetParams(w, b, beta), x) - f0)
    # the active set is that of F; write the loss with the same active set (l' = Θ(1 − yF))
    active = (y * F < 1).to(D64)
    loss = (active * (1 - y * Fa)).mean() / alpha
    gw, gb, gbeta = torch.autograd.grad(loss, (w, b, beta))
    v, act = hinge_velocity(P, x, y, F)
    assert torch.equal(act, active)
    for a, ref in ((v.w, -gw), (v.b, -gb), (v.beta, -gbeta)):
        assert torch.allclose(a, ref, rtol=1e-12, atol=1e-15)


def test_hinge_loss_gradient_matches_velocity_at_own_outputs():
    P = _params(d=3, h=5, seed=5)
    x = torch.randn(15, 3, dtype=D64, generator=torch.Generator().manual_seed(6))
    y = stripe_labels(x, (-0.5, 0.5))
    f0 = torch.zeros(15, dtype=D64)  # a non-frozen baseline is fine for this identity
    alpha = 40.0
    w, b, beta = (t.clone().requires_grad_(True) for t in (P.w, P.b, P.beta))
    loss = hinge_loss(predictor(NetParams(w, b, beta), x, f0, alpha), y, alpha)
    grads = torch.autograd.grad(loss, (w, b, beta))
    v, _ = hinge_velocity(P, x, y, predictor(P, x, f0, alpha))
    for a, g in zip((v.w, v.b, v.beta), grads):
        assert torch.allclose(a, -g, rtol=1e-12, atol=1e-15)


def test_gd_step_equals_autograd_step():
    """The first accepted step of train_feature is W + dt·(−∇L) with dt = t after the step."""
    P0 = _params(d=3, h=9, seed=7)
    T = gaussian_task("stripe", 3, 30, 10, 0, 0)
    f0 = net_output(P0, T.x_train)
    run = train_feature(FeatureRun(P0.clone()), T.x_train, T.y_train, f0, 1e-6, 1, max_dgrad=1e-3, max_dout=0.5,
                        dt_min=0.5, stop_fraction=1.0, max_steps=1)
    assert run.step == 1
    w, b, beta = (t.clone().requires_grad_(True) for t in (P0.w, P0.b, P0.beta))
    loss = hinge_loss(predictor(NetParams(w, b, beta), T.x_train, f0, 1e-6), T.y_train, 1e-6)
    grads = torch.autograd.grad(loss, (w, b, beta))
    for new, old, g in zip((run.params.w, run.params.b, run.params.beta), (P0.w, P0.b, P0.beta), grads):
        assert torch.allclose(new, old - run.t * g, rtol=1e-12, atol=1e-13)


def test_conservation_law_along_the_flow():
    """β_n² − ‖ω_n‖² − b_n² is conserved by the flow (homogeneity of σ); Euler error O(dt)."""
    P = _params(d=3, h=6, seed=8)
    T = gaussian_task("stripe", 3, 40, 10, 0, 1)
    f0 = net_output(P, T.x_train)
    c0 = P.beta**2 - P.w.pow(2).sum(1) - P.b**2
    drift, moved = [], 0.0
    for dt in (0.5, 0.25):
        Q = P.clone()
        for _ in range(int(10 / dt)):
            v, _ = hinge_velocity(Q, T.x_train, T.y_train, predictor(Q, T.x_train, f0, 1e-6))
            Q = NetParams(Q.w + dt * v.w, Q.b + dt * v.b, Q.beta + dt * v.beta)
        drift.append(float((Q.beta**2 - Q.w.pow(2).sum(1) - Q.b**2 - c0).abs().max()))
        moved = float((Q.beta**2 - P.beta**2).abs().max())
    assert drift[1] < 0.6 * drift[0]  # first order in dt
    assert drift[1] < 0.05 * moved  # while β² itself changed by much more


def test_empirical_ntk_equals_closed_form():
    P = _params(d=4, h=13, seed=9)
    g = torch.Generator().manual_seed(10)
    x, z = torch.randn(6, 4, dtype=D64, generator=g), torch.randn(5, 4, dtype=D64, generator=g)
    net = MeanFieldNet(P)
    K = tl.ntk(net, x, z).as_matrix()
    assert torch.allclose(K, ntk_closed_form(P, x, z), rtol=1e-12, atol=1e-16)
    # last layer only: the σσ term
    s = lambda a: math.sqrt(2) * (a @ P.w.T / 2 + P.b).clamp_min(0)  # noqa: E731
    KL = tl.ntk(net, x, z, params=net.last).as_matrix()
    assert torch.allclose(KL, s(x) @ s(z).T / 13**2, rtol=1e-12, atol=1e-16)


# ---- exponents -------------------------------------------------------------------------------------
def test_predicted_exponents():
    assert beta_lazy(5) == pytest.approx(5 / 13) and beta_feature(5) == pytest.approx(9 / 13)
    assert beta_lazy(3) == pytest.approx(3 / 7) and beta_feature(3, 2) == pytest.approx(1 / 2)
    assert beta_lazy(10) == pytest.approx(5 / 14) and beta_feature(10) == pytest.approx(19 / 28)
    assert beta_feature(2) == pytest.approx(0.75)


def test_fit_power_law_exact_and_noisy():
    p = np.array([128, 256, 512, 1024, 2048], dtype=float)
    fit = fit_power_law(p, 3.0 * p**-0.4)
    assert fit.slope == pytest.approx(-0.4, abs=1e-13) and fit.prefactor == pytest.approx(3.0, rel=1e-12)
    assert fit.stderr < 1e-12 and fit.ci[0] == pytest.approx(-0.4, abs=1e-10)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        y = 2.0 * p**-0.7 * np.exp(0.1 * rng.standard_normal(p.size))
        f = fit_power_law(p, y)
        covered += f.ci[0] <= -0.7 <= f.ci[1]
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95 %
    samples = [list(0.5 * q**0.5 * np.exp(0.2 * rng.standard_normal(7))) for q in p]
    b = bootstrap_exponent(p, samples, n_boot=300, seed=1)
    assert b.ci[0] <= 0.5 <= b.ci[1] and b.ci[0] < b.slope < b.ci[1]
    with pytest.raises(tl.errors.InvalidInputError):
        fit_power_law([1.0, 1.0], [1.0, 2.0])


# ---- kernel learning -------------------------------------------------------------------------------
def test_hinge_kernel_gd_equals_primal_gradient_descent():
    """Kernel GD on K = ΦΦᵀ equals GD on the linear model Φw (autograd of the mean hinge loss)
    with the same step rule, step by step up to convergence; predictions on test points agree.

    The two routes compute the same piecewise-linear iteration in different orders (kernel:
    ``F += dt·K g``; primal: ``w −= dt·∇L``, then ``Φw``), so they agree up to round-off
    provided every step takes the same active set ``{μ : y_μ F_μ < 1}``. That set is decided
    by the data, not by round-off, only if no margin ever lands within round-off of 1: the
    test asserts so (``gap``). This is why ``max_dout`` is not 1/n for an integer n: every
    point is active at the start, so the output moving fastest moves by exactly ``max_dout``
    per step and lands exactly on the hinge's kink after n steps, where the two routes'
    round-offs (±1 ulp) pick opposite sides and the trajectories then differ by O(max_dout)
    (with 0.1: at step 10). With the same active sets the round-off difference grows at most
    linearly in the number of steps: ``tol`` bounds it by 8 ulps of the largest output per step
    (observed: ≲ 1 ulp per step)."""
    g = torch.Generator().manual_seed(11)
    phi = torch.randn(25, 8, dtype=D64, generator=g)
    phi_te = torch.randn(10, 8, dtype=D64, generator=g)
    y = torch.where(phi[:, 0] + 0.3 * phi[:, 1] > 0, 1.0, -1.0).to(D64)
    K = phi @ phi.T
    max_dout = 0.15
    fit = hinge_kernel_gd(K, y, max_dout=max_dout)
    assert fit.converged and fit.train_margin_min >= 1.0 and fit.steps > 100
    eps = torch.finfo(D64).eps
    w = torch.zeros(8, dtype=D64, requires_grad=True)
    gap = math.inf
    for step in range(1, fit.steps + 1):
        gap = min(gap, float((y * (phi @ w).detach() - 1).abs().min()))
        loss = torch.relu(1 - y * (phi @ w)).mean()
        (grad,) = torch.autograd.grad(loss, w)
        dt = max_dout / float((phi @ -grad).abs().max())
        with torch.no_grad():
            w -= dt * grad
        a = fit.a if step == fit.steps else hinge_kernel_gd(K, y, max_dout=max_dout, max_steps=step).a
        F_primal, F_kernel = phi @ w.detach(), K @ a
        tol = 8 * step * eps * float(F_kernel.abs().max())
        assert torch.allclose(F_primal, F_kernel, rtol=0, atol=tol), (step, float((F_primal - F_kernel).abs().max()))
    assert gap > 1e-9 > 8 * fit.steps * eps * float((K @ fit.a).abs().max())  # active sets decided by the data
    tol = 8 * fit.steps * eps * float((phi_te @ phi.T @ fit.a).abs().max())
    assert torch.allclose(phi_te @ w.detach(), phi_te @ phi.T @ fit.a, rtol=0, atol=tol)


def test_kernel_learning_known_kernels():
    y = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=D64)
    fit = hinge_kernel_gd(torch.eye(4, dtype=D64), y, max_dout=0.3)
    # K = I: each output grows by 0.3 until it passes 1, i.e. F = 1.2 y after 4 steps
    assert fit.converged and fit.steps == 4 and torch.allclose(fit.a, 1.2 * y / 1.0, atol=1e-12)
    # hard-margin SVC on two points x = ±2 with the linear kernel: F(x) = x / 2
    x = torch.tensor([[2.0], [-2.0]], dtype=D64)
    svc = kernel_svc(x @ x.T, torch.tensor([1.0, -1.0], dtype=D64), C=1e6)
    xt = torch.tensor([[0.5], [-3.0], [1.0]], dtype=D64)
    F = xt @ x.T @ svc.a + svc.intercept
    assert torch.allclose(F, xt[:, 0] / 2, atol=1e-6) and svc.converged
    err = kernel_test_error(xt @ x.T, svc, torch.tensor([1.0, 1.0, 1.0], dtype=D64))
    assert err == pytest.approx(1 / 3)


# ---- kernel PCA diagnostics --------------------------------------------------------------------------
def test_label_projections_sum_rule_and_mi():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(60, 3, dtype=D64, generator=g)
    y = torch.where(x[:, 0] > 0, 1.0, -1.0).to(D64)
    K = x @ x.T + torch.eye(60, dtype=D64)
    evals, evecs, om = label_projections(K, y)
    assert om.sum() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(om, (evecs.T @ y) ** 2 / 60, atol=1e-12)
    assert bool((evals[:-1] >= evals[1:]).all())
    sep = torch.randn(2000, dtype=D64, generator=g)
    lab = torch.where(sep > 0, 1.0, -1.0).to(D64)
    assert knn_mutual_information(sep, lab) > 0.85  # k = 5: boundary and tail bias (≈ 1 bit as n → ∞)
    noise = torch.randn(2000, dtype=D64, generator=g)
    assert knn_mutual_information(noise, lab) < 0.2


# ---- data -----------------------------------------------------------------------------------------------
def test_stripe_and_cylinder_labels():
    x1 = torch.tensor([[-1.0, 0.0], [0.0, 5.0], [1.0, 0.0], [1.3, 0.0]], dtype=D64)
    assert torch.equal(stripe_labels(x1), torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=D64))
    assert torch.equal(stripe_labels(x1, (-0.5, 0.5, 1.2)), torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=D64))
    assert torch.equal(cylinder_labels(torch.tensor([[1.0, 1.0, 9.0], [0.5, 0.5, -9.0]], dtype=D64)),
                       torch.tensor([1.0, -1.0], dtype=D64))
    from scipy.stats import norm

    assert norm.cdf(STRIPE_X_MAX) - norm.cdf(STRIPE_X_MIN) == pytest.approx(0.5, abs=1e-6)
    assert math.exp(-CYLINDER_R**2 / 2) == pytest.approx(0.5, abs=1e-14)
    n = 20000
    for model, dpar in (("stripe", 1), ("cylinder", 2)):
        T = gaussian_task(model, 3, 16, n, 8, 0, d_par=dpar)
        assert abs(float((T.y_test > 0).double().mean()) - 0.5) < 3 / math.sqrt(n)
        assert T.x_kernel.shape == (8, 3) and T.x_train.shape == (16, 3)
    # the training points do not depend on the test/kernel sizes
    a, b = gaussian_task("stripe", 3, 16, 5, 0, 0), gaussian_task("stripe", 3, 16, 50, 9, 0)
    assert torch.equal(a.x_train, b.x_train)


# ---- the CNN ------------------------------------------------------------------------------------------------
def test_mnasnet_like_cnn_and_its_ntk():
    from torch.func import functional_call, jacrev

    from tangentlab.studies.compression.models import MnasNetLike

    torch.manual_seed(0)
    big = MnasNetLike(1, 28)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in big.modules()) == 16
    assert big(torch.randn(2, 1, 28, 28)).shape == (2, 1)
    net = MnasNetLike(1, 8).double()
    x = torch.randn(3, 1, 8, 8, dtype=D64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,))[:, 0])(params)
    J = torch.cat([j.reshape(3, -1) for j in jac.values()], 1)
    assert torch.allclose(tl.ntk(net, x).as_matrix(), J @ J.T, rtol=1e-10, atol=1e-14)


# ---- configuration ----------------------------------------------------------------------------------------
def test_config_errors():
    from tangentlab.studies.compression.config import CompressionConfig
    from tangentlab.studies.framework.config import build_config

    def build(*sets, preset=None):
        return build_config(CompressionConfig, preset=preset, sets=list(sets), study="compression")

    cases = [(("ntk_p=300",), "ntk_p"), (("cylinder_d=3", "cylinder_d_par=3"), "cylinder_d_par"),
             (("models=stripe,torus",), "models"), (("p_values=5,10",), "p_values"),
             (("kernel_solver=ridge",), "kernel_solver"), (("p_values=128,128",), "p_values"),
             (("cnn_dataset=mnist",), "data_dir"), (("cnn_dataset=mnist", "data_dir=/nonexistent"), "data_dir"),
             (("cnn_p=1000",), "cnn_p"), (("cnn_dataset=cifar",), "cnn_dataset"),
             (("cnn_p_values=64,64,256",), "cnn_p_values"), (("cnn_p_values=64,1000", "cnn_p=64"), "cnn_p_values"),
             (("cnn_p_values=8,256",), "cnn_p_values"), (("cnn_p_values=64,128",), "cnn_p"),
             (("lambda_p_values=512",), "lambda_p_values"), (("lambda_p_values=2048,2048",), "lambda_p_values"),
             (("lambda_p_values=5",), "lambda_p_values"), (("alpha_values=1,1",), "alpha_values"),
             (("stripe_hd_p_values=64", "lambda_p_values=64"), "lambda_p_values")]
    for sets, fieldname in cases:
        with pytest.raises(ConfigError) as e:
            build(*sets)
        assert e.value.field == fieldname and "\n" not in str(e.value)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as e:
            build(preset="paper")
        assert e.value.field == "device"


def test_study_smoke_and_resume(tmp_path):
    from tangentlab.studies.framework.runner import run_study

    sets = ["width=16", "p_values=20,30", "cylinder_p_values=20,30", "seeds=1", "n_test=60", "max_steps=40",
            "ntk_p=30", "n_modes=3", "mi_k=2", "progress=off", "threads=1", "cnn_width=1", "cnn_p=24",
            "cnn_p_values=16,24", "cnn_seeds=1", "cnn_steps=4", "cnn_n_test=100", "lambda_seeds=1",
            "lambda_p_values=40", "stripe_hd_p_values=20,30", "stripe_hd_d=6", "fp_p=200", "fp_width=20",
            "fp_seeds=2", "alpha_values=1e-6,1e-4,1e-2,1e2,1e4", "alpha_p=30", "alpha_width=16", "alpha_seeds=2"]
    out = tmp_path / "run"
    store = run_study("compression", sets=sets, out=str(out), stream=open("/dev/null", "w"))
    runs = store.read("runs")
    assert len(runs) == 18 and {r["model"] for r in runs} == {"stripe", "cylinder", "stripe_hd"}
    assert {r["d"] for r in runs if r["model"] == "stripe_hd"} == {"6"}
    lam_only = [r for r in runs if r["seed"] == "1" or r["p"] == "40"]  # extra seeds; every seed at p = 40
    assert len(lam_only) == 12 and all(r["test_error"] == "nan" and r["lambda_max"] == "nan" for r in lam_only)
    assert all(r["test_error"] != "nan" for r in runs if r not in lam_only)
    assert (out / "report.html").exists()
    kinds = {r["kernel"] for r in store.read("kernels")}
    assert {"lazy", "ntk_init", "ntk_final", "last_init", "last_final", "network"} <= kinds
    assert len(store.read("spectra")) > 0 and len(store.read("trajectory")) > 0
    assert {r["kernel"] for r in store.read("kernels") if r["model"] == "cnn"} == {*kinds} - {"lazy",
                                                                                       "compressed_lazy"}
    cnn = [r for r in store.read("kernels") if r["model"] == "cnn"]
    assert sorted({int(r["p"]) for r in cnn}) == [16, 24] and len(cnn) == 2 * 5
    fp = store.read("fixed_points")
    assert len(fp) == 2 * 20 and {r["seed"] for r in fp} == {"0", "1"}
    scan = store.read("alpha_scan")
    assert len(scan) == 2 * 5 and all(r["lazy_error"] != "nan" for r in scan)
    # every claim carries its criterion and kind; the findings have intervals where there are seeds
    claims = {r["topic"]: r for r in store.read("claims")}
    assert all(r["criterion"] and r["kind"] in ("finding", "identity") and r["paper"] for r in claims.values())
    for topic in ("β_feature > β_lazy (stripe, d=6)", "compressed lazy ≈ feature: error (cylinder, d=3, d_∥=2)",
                  "compressed lazy ≈ feature: exponent (stripe, d=5)", "α → 0: t* ∝ log(1/α)", "α → ∞: t* ∝ 1/α",
                  "amplified neurons sit at the predicted attractors (d=2)"):  # intervals: see test_fixed_points_alpha
        assert topic in claims and claims[topic]["kind"] == "finding", topic
    assert claims["three attractors of the compressing regime (d=2)"]["kind"] == "identity"
    assert claims["three attractors of the compressing regime (d=2)"]["verdict"] == "yes"
    for name in ("fixed_points.png", "alpha_scan.png"):
        assert (out / "figures" / name).exists()
    html = (out / "report.html").read_text()
    assert "cnn_learning_curves.png" in html and "β initial NTK" in html
    n, nk = len(store.read("trajectory")), len(store.read("kernels"))
    store = run_study("compression", out=str(out), resume=True, stream=open("/dev/null", "w"))
    assert len(store.read("runs")) == 18 and len(store.read("trajectory")) == n and len(store.read("kernels")) == nk


def test_cnn_learning_curve_fits_recover_exact_power_laws():
    """Medians → exponents: exact power laws give β exactly, with a seed-bootstrap interval
    (several seeds) or the OLS t-interval (one seed), and the Fig. 8 claims."""
    from tangentlab.studies.compression.claims import cnn_learning_curves, exponent
    from tangentlab.studies.compression.config import CompressionConfig
    from tangentlab.studies.framework.config import build_config

    ps = [64, 128, 256, 512]
    beta = {"network": 0.5, "ntk_init": 0.3, "ntk_final": 0.45, "last_init": 0.1, "last_final": 0.4}
    rows = [{"model": "cnn", "p": float(p), "seed": float(s), "kernel": k, "test_error": 2.0 * (1 + 0.1 * s) * p ** -b}
            for k, b in beta.items() for p in ps for s in range(3)]
    cfg = build_config(CompressionConfig, sets=["cnn_p_values=64,128,256,512", "cnn_p=256"], study="compression")
    table, fits, claims = cnn_learning_curves(cfg, rows)
    for k, b in beta.items():
        assert fits[k]["value"] == pytest.approx(b, abs=1e-12) and fits[k]["ci"] == "seed bootstrap"
        assert fits[k]["lo"] <= b + 1e-12 and b - 1e-12 <= fits[k]["hi"]
    assert len(table) == len(beta) * len(ps) and all(r["seeds"] == 3 for r in table)
    assert [c.held for c in claims] == [True, True]
    # one seed with noise: the OLS t-interval of the slope brackets the fit
    rng = np.random.default_rng(0)
    noisy = [[float(2 * p ** -0.5 * math.exp(0.1 * rng.standard_normal()))] for p in ps]
    f = exponent(ps, noisy, -1.0)
    assert f["ci"] == "OLS t-interval" and f["lo"] < f["value"] < f["hi"]
    ols = fit_power_law(ps, [v[0] for v in noisy])
    assert f["value"] == pytest.approx(-ols.slope) and (f["lo"], f["hi"]) == pytest.approx(sorted(-c for c in ols.ci))


def test_training_resumes_exactly_from_a_checkpoint():
    P0 = _params(d=3, h=12, seed=13)
    T = gaussian_task("stripe", 3, 40, 10, 0, 2)
    f0 = net_output(P0, T.x_train)
    kw = dict(max_dgrad=1e-3, max_dout=0.5, dt_min=0.5, stop_fraction=1.0)
    full = train_feature(FeatureRun(P0.clone()), T.x_train, T.y_train, f0, 1e-6, 1, max_steps=60, **kw)
    saved: list = []
    half = train_feature(FeatureRun(P0.clone()), T.x_train, T.y_train, f0, 1e-6, 1, max_steps=30,
                         on_checkpoint=lambda r: saved.append(copy.deepcopy(r.state_dict())), checkpoint_every=30,
                         **kw)
    assert saved and saved[-1]["step"] == 30 == half.step
    start = FeatureRun(P0.clone())
    start.load_state_dict(saved[-1])
    resumed = train_feature(start, T.x_train, T.y_train, f0, 1e-6, 1, max_steps=60,
                            **kw)
    assert resumed.step == full.step and resumed.t == full.t
    assert torch.equal(resumed.params.w, full.params.w) and torch.equal(resumed.params.beta, full.params.beta)
    assert resumed.lambda_max == full.lambda_max


def test_study_resumes_inside_a_unit_from_its_training_checkpoint(tmp_path, monkeypatch):
    """A run killed right after a training checkpoint resumes that unit from the checkpoint
    (not from step 0) and writes the same tables as an uninterrupted run."""
    from tangentlab.studies.compression import run as run_module
    from tangentlab.studies.framework.runner import run_study

    sets = ["models=stripe", "p_values=20", "seeds=1", "lambda_seeds=0", "lambda_p_values=40", "width=16",
            "n_test=60", "max_steps=40", "checkpoint_every=7", "ntk_p=0", "cnn=false", "progress=off", "threads=1",
            "fixed_points=false", "alpha_scan=false"]
    real = run_module.train_feature
    starts: list[int] = []

    def killed(run, *args, on_checkpoint, **kw):
        def save_then_die(r):
            on_checkpoint(r)
            raise RuntimeError("killed")

        return real(run, *args, on_checkpoint=save_then_die, **kw)

    def spy(run, *args, **kw):
        starts.append(run.step)
        return real(run, *args, **kw)

    out = tmp_path / "killed"
    monkeypatch.setattr(run_module, "train_feature", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_study("compression", sets=sets, out=str(out), report=False, stream=open("/dev/null", "w"))
    monkeypatch.setattr(run_module, "train_feature", spy)
    resumed = run_study("compression", out=str(out), resume=True, report=False, stream=open("/dev/null", "w"))
    assert starts[0] == 7  # the unit restarted from its checkpoint
    ref = run_study("compression", sets=sets, out=str(tmp_path / "ref"), report=False, stream=open("/dev/null", "w"))
    for name in ("runs", "trajectory", "kernels"):
        strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in resumed.read(name)]
        assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in ref.read(name)], name
