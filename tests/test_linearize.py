"""Linearized / AlphaScaled / KernelPredictor against brute-force float64 oracles."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from tangentlab.errors import InvalidInputError
from tangentlab.kernel_predictor import KernelPredictor
from tangentlab.linearize import (
    AlphaScaled,
    Linearized,
    half_mse,
    model_at,
    targets_matrix,
    train_linearized,
)

DT = torch.float64


def _mlp(seed: int = 0, n_in: int = 3, hidden: int = 7, n_out: int = 2, act=nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), act(), nn.Linear(hidden, n_out)).to(DT)


def _jacobian(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Brute-force J (N*C, P) in the order of ``names`` (torch.func.jacrev)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    sub = {n: params[n] for n in names}

    def f(p):
        return functional_call(model, {**params, **p}, (x,)).reshape(-1)

    jac = jacrev(f)(sub)
    return torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], 1)


def _flat(d: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


def _perturb(lin: Linearized, scale: float = 0.3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_linearized_output_and_gradient_match_jacobian_oracle():
    model = _mlp()
    x = torch.randn(6, 3, dtype=DT)
    lin = Linearized(model)
    names = list(lin.theta())
    assert [n for n, _ in model.named_parameters()] == names
    assert sum(p.numel() for p in lin.parameters()) == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-14)  # θ = θ₀
    _perturb(lin)
    J = _jacobian(model, x, names)
    delta = _flat({n: p.detach() - model.get_parameter(n).detach() for n, p in lin.theta().items()}, names)
    expected = model(x).detach() + (J @ delta).reshape(6, 2)
    out = lin(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the non-linear model differs (sanity: the oracle can fail)
    assert (lin.nonlinear_model()(x) - out).abs().max() > 1e-4
    w = torch.randn(6, 2, dtype=DT)
    (out * w).sum().backward()
    grad = _flat({n: p.grad for n, p in lin.theta().items()}, names)
    torch.testing.assert_close(grad, J.T @ w.reshape(-1), rtol=1e-12, atol=1e-12)
    assert math.isclose(lin.distance(), float(delta.norm()), rel_tol=1e-12)
    torch.testing.assert_close(lin.delta().flat(), delta)


def test_linearized_at_checkpoint_and_subset_of_parameters():
    model = _mlp(seed=3)
    x = torch.randn(5, 3, dtype=DT)
    ckpt = {k: v + 0.2 for k, v in model.state_dict().items()}
    moved = model_at(model, ckpt)
    lin = Linearized(model, params=[model[2]], at=ckpt)  # only the last layer, at θ_t
    assert list(lin.theta()) == ["2.weight", "2.bias"]
    torch.testing.assert_close(lin(x), moved(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(lin.base_model()(x), moved(x))
    _perturb(lin, seed=4)
    J = _jacobian(moved, x, ["2.weight", "2.bias"])
    delta = _flat({n: p.detach() - moved.get_parameter(n).detach() for n, p in lin.theta().items()},
                  ["2.weight", "2.bias"])
    torch.testing.assert_close(lin(x), moved(x).detach() + (J @ delta).reshape(5, 2), rtol=1e-12, atol=1e-12)
    # last layer is linear in its parameters: the linearization is exact there
    torch.testing.assert_close(lin(x), lin.nonlinear_model()(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(InvalidInputError, match="at: 'nope'"):
        Linearized(model, at={"nope": torch.zeros(1)})


def test_linearized_batchnorm_frozen_statistics_and_train_mode_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)).to(DT)
    model.train()
    model(torch.randn(32, 3, dtype=DT))  # non-trivial running statistics
    with pytest.raises(InvalidInputError, match="BatchNorm layer '1' is in train mode"):
        Linearized(model)
    with pytest.raises(InvalidInputError, match="BatchNorm"):
        AlphaScaled(model, 10.0)
    model.eval()
    lin = Linearized(model)
    lin.train()  # the wrapped network stays in eval mode
    x = torch.randn(4, 3, dtype=DT)
    torch.testing.assert_close(lin(x), model(x))
    torch.testing.assert_close(lin(x[:1]), model(x[:1]))  # per-example: no batch statistics
    _perturb(lin, 0.1)
    names = list(lin.theta())
    J = _jacobian(model, x, names)
    delta = _flat({n: p.detach() - model.get_parameter(n).detach() for n, p in lin.theta().items()}, names)
    torch.testing.assert_close(lin(x), model(x).detach() + (J @ delta).reshape(4, 2), rtol=1e-12, atol=1e-12)


def test_alpha_scaled_forward_gradient_and_lr():
    model = _mlp(seed=2)
    x = torch.randn(5, 3, dtype=DT)
    one = AlphaScaled(model, 1.0)
    torch.testing.assert_close(one(x), model(x), rtol=1e-14, atol=1e-14)
    a = AlphaScaled(model, 7.0)
    sub = AlphaScaled(model, 7.0, subtract_initial_output=True)
    assert a.scaled_lr(0.49) == pytest.approx(0.01)
    f0 = model(x).detach()
    with torch.no_grad():
        model[0].weight.add_(0.05)
    torch.testing.assert_close(a(x), f0 + 7.0 * (model(x) - f0))
    torch.testing.assert_close(sub(x), a(x) - a.initial_output(x))
    torch.testing.assert_close(sub.initial_output(x), f0)
    # gradient = α Jᵀ g
    names = [n for n, _ in model.named_parameters()]
    model.zero_grad()
    w = torch.randn(5, 2, dtype=DT)
    (a(x) * w).sum().backward()
    grad = _flat({n: p.grad for n, p in model.named_parameters()}, names)
    torch.testing.assert_close(grad, 7.0 * _jacobian(model, x, names).T @ w.reshape(-1))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(InvalidInputError, match="alpha"):
            AlphaScaled(model, bad)


def test_large_alpha_training_tracks_linearized_model():
    """Same data, lr η/α² for f^α vs lr η for f̄: the gap shrinks like 1/α."""
    x = torch.randn(16, 3, dtype=DT)
    y = torch.randint(0, 2, (16,))
    lr, steps = 0.5, 40

    def run_alpha(alpha: float) -> torch.Tensor:
        model = _mlp(seed=5)
        m = AlphaScaled(model, alpha)
        opt = torch.optim.SGD(m.parameters(), lr=m.scaled_lr(lr))
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        return m(x).detach()

    lin, _ = train_linearized(_mlp(seed=5), x, y, epochs=steps, lr=lr)
    f_lin = lin(x).detach()
    f_one = run_alpha(1.0)
    gaps = [float((run_alpha(a) - f_lin).abs().max()) for a in (10.0, 100.0, 1000.0)]
    assert float((f_one - f_lin).abs().max()) > 10 * gaps[0]
    assert gaps[1] < gaps[0] / 5 and gaps[2] < gaps[1] / 5, gaps
    assert gaps[2] < 1e-3


def _kernel_data(seed: int = 0):
    model = _mlp(seed=seed, n_in=2, hidden=6, n_out=2)
    torch.manual_seed(seed + 10)
    x = torch.randn(8, 2, dtype=DT)
    y = torch.randint(0, 2, (8,))
    return model, x, y


def test_kernel_predictor_gd_closed_form_equals_training_linearized():
    model, x, y = _kernel_data()
    xt = torch.randn(5, 2, dtype=DT)
    kp = KernelPredictor(model, x, y)
    for steps, lr, wd in ((25, 0.3, 0.0), (10, 0.2, 0.05)):
        lin = Linearized(model)
        opt = torch.optim.SGD(lin.parameters(), lr=lr)
        target = targets_matrix(y, 2, DT)
        for _ in range(steps):
            opt.zero_grad()
            loss = half_mse(lin(x), target) + 0.5 * wd * lin.delta().norm() ** 2
            loss.backward()
            opt.step()
        torch.testing.assert_close(kp.predict(xt, steps=steps, lr=lr, ridge=wd), lin(xt).detach(),
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(kp.predict(None, steps=steps, lr=lr, ridge=wd), lin(x).detach(),
                                   rtol=1e-10, atol=1e-10)
    # train_linearized (full batch, mse) is the same dynamics
    lin2, hist = train_linearized(model, x, y, epochs=25, lr=0.3, loss="mse")
    torch.testing.assert_close(kp.predict(xt, steps=25, lr=0.3), lin2(xt).detach(), rtol=1e-10, atol=1e-10)
    assert hist[-1] < hist[0]


def test_kernel_predictor_flow_vs_small_step_gd_and_limits():
    model, x, y = _kernel_data(1)
    xt = torch.randn(4, 2, dtype=DT)
    kp = KernelPredictor(model, x, y)
    t = 3.0
    flow = kp.predict(xt, t=t)
    errs = []
    for k in (30, 300, 3000):  # GD with η = t/k -> flow, error O(η)
        errs.append(float((kp.predict(xt, steps=k, lr=t / k) - flow).abs().max()))
    assert errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5 and errs[2] < 1e-3, errs
    # t = 0: the initial function; ridge at t = ∞ vs the explicit parameter-space solution
    torch.testing.assert_close(kp.predict(xt, t=0.0), model(xt).detach())
    names = [n for n, _ in model.named_parameters()]
    J, Jt = _jacobian(model, x, names), _jacobian(model, xt, names)
    r0 = (model(x).detach() - targets_matrix(y, 2, DT)).reshape(-1)
    rho, n = 0.01, x.shape[0]
    A = J.T @ J / n + rho * torch.eye(J.shape[1], dtype=DT)
    delta = -torch.linalg.solve(A, J.T @ r0 / n)
    torch.testing.assert_close(kp.predict(xt, ridge=rho), model(xt).detach() + (Jt @ delta).reshape(4, 2))
    # t = ∞, ρ = 0 with NC < P: min-norm interpolant, fits the training targets
    assert J.shape[0] < J.shape[1]
    torch.testing.assert_close(kp.predict(None), targets_matrix(y, 2, DT), rtol=1e-8, atol=1e-8)
    dmin = -torch.linalg.pinv(J) @ r0
    torch.testing.assert_close(kp.predict(xt), model(xt).detach() + (Jt @ dmin).reshape(4, 2), rtol=1e-8, atol=1e-8)


def test_kernel_predictor_at_checkpoint_uses_that_ntk():
    model, x, y = _kernel_data(2)
    ckpt = {k: v * 1.3 for k, v in model.state_dict().items()}
    kp = KernelPredictor(model, x, y, at=ckpt)
    moved = model_at(model, ckpt)
    torch.testing.assert_close(kp.predict(x, t=0.0), moved(x).detach())
    lin, _ = train_linearized(model, x, y, epochs=7, lr=0.4, loss="mse", at=ckpt)
    torch.testing.assert_close(kp.predict(x, steps=7, lr=0.4), lin(x).detach(), rtol=1e-10, atol=1e-10)
    with pytest.raises(InvalidInputError, match="loss"):
        train_linearized(model, x, y, epochs=1, lr=0.1, loss="hinge")


def test_kernel_predictor_parameter_subset_is_kernel_regression_on_last_layer_features():
    """NTK restricted to the last layer = (features·features' + 1) I: ridge prediction in closed form."""
    model, x, y = _kernel_data(3)
    xt = torch.randn(3, 2, dtype=DT)
    kp = KernelPredictor(model, x, y, params=[model[2]])
    phi = lambda z: torch.cat([torch.tanh(model[0](z)), torch.ones(z.shape[0], 1, dtype=DT)], 1)  # noqa: E731
    A, At = phi(x).detach(), phi(xt).detach()
    K = A @ A.T
    r0 = model(x).detach() - targets_matrix(y, 2, DT)
    rho, n = 0.1, x.shape[0]
    coef = torch.linalg.solve(K + n * rho * torch.eye(n, dtype=DT), r0)
    torch.testing.assert_close(kp.predict(xt, ridge=rho), model(xt).detach() - At @ A.T @ coef)
