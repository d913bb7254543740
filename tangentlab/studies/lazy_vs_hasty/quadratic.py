"""The quadratic model of thesis §5.4 / App. C.1 and its 2-layer network counterpart (Fig. C.9).

Data ``X ∈ R^{n×d}`` with full SVD ``X = Σ_λ √μ_λ u_λ v_λᵀ`` (``μ_λ = 0`` beyond the rank),
labels ``y``, ``y_λ = u_λᵀ y`` made ``≥ 0`` by flipping ``(u_λ, v_λ)``, and
``ỹ_λ = √μ_λ y_λ`` (the components of ``Xᵀy`` on ``v_λ``). The model is ``f_θ(x) = θᵀx`` with
the quadratic parametrization ``θ = ½ Σ_λ w_λ² v_λ`` and the loss ``ℓ(w) = ½ Σ_i (f(x_i) − y_i)²``;
the initialization is ``w⁰ = √σ 1`` (``θ⁰_λ = σ/2``). Gradient flow ``ẇ = −∇ℓ`` gives, per mode,
``θ̇_λ = −2 μ_λ θ_λ (θ_λ − θ*_λ)`` with ``θ*_λ = y_λ/√μ_λ`` (``θ⁰_λ`` beyond the rank), solved by
(Prop. 5.4.1)

* non-linear (5.4.5): ``θ_λ(t) = θ⁰θ* / (θ⁰ − e^{−2ỹ_λ t}(θ⁰ − θ*))``, and
  ``θ⁰/(1 + 2μ_λθ⁰t)`` when ``θ*_λ = 0``;
* linearized in ``w`` at ``w⁰`` (5.4.6, with the factor 2 that the thesis misses):
  ``θ_λ(t) = θ* + e^{−2μ_λθ⁰_λ t}(θ⁰ − θ*)``.

:class:`QuadraticModel` evaluates both closed forms and integrates the gradient flow on ``w``
numerically (``scipy.integrate.solve_ivp``, in the original coordinates: the gradient is
``w ⊙ Vᵀ Xᵀ (Xθ − y)``, not the per-mode formula) to check them. :func:`example1`–:func:`example3`
build the three examples of §5.4.3 (learning-order flip, label noise, spurious feature).
:func:`two_layer_dynamics` trains the dense 2-layer linear network ``f(x) = aᵀ W x`` of App. C.7
with :class:`~tangentlab.linearize.AlphaScaled` at a small and a large ``α`` on the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...linearize import AlphaScaled

__all__ = ["QuadraticModel", "example1", "example2", "example3", "half_error_times", "first_time_below",
           "two_layer_dynamics", "two_layer_init", "two_layer_torch_step", "QuadraticExample"]


class QuadraticModel:
    """Closed forms and numerical gradient flow of the quadratic model (see the module docstring)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, sigma: float, rtol: float = 1e-10):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        n, d = X.shape
        U, s, Vt = np.linalg.svd(X, full_matrices=True)
        r = int(np.sum(s > rtol * max(float(s[0]), 1e-300))) if s.size else 0
        V = Vt.T.copy()
        U = U.copy()
        y_lam = U[:, :r].T @ y
        sgn = np.where(y_lam < 0, -1.0, 1.0)
        U[:, :r] *= sgn
        V[:, :r] *= sgn
        self.X, self.y, self.n, self.d, self.rank = X, y, n, d, r
        self.U, self.V = U, V
        self.mu = np.zeros(d)
        self.mu[:r] = s[:r] ** 2
        self.y_lam = np.abs(y_lam)
        self.ytilde = np.zeros(d)
        self.ytilde[:r] = s[:r] * self.y_lam
        self.sigma = float(sigma)
        self.w0 = np.full(d, np.sqrt(sigma))
        self.theta0 = self.w0 ** 2 / 2
        self.theta_star = self.theta0.copy()
        self.theta_star[:r] = self.y_lam / s[:r]

    # --- closed forms (mode coordinates θ_λ) -------------------------------------------------
    def theta_nonlinear(self, t: Sequence[float] | np.ndarray) -> np.ndarray:
        """``(T, d)`` mode coordinates of the non-linear gradient flow at times ``t`` (eq. 5.4.5)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
        th0, ths, mu = self.theta0, self.theta_star, self.mu
        out = np.broadcast_to(th0, (t.shape[0], self.d)).copy()
        act = mu > 0
        # θ⁰θ*/(θ⁰ − e^{−2ỹt}(θ⁰ − θ*)) = θ⁰ / (1 + h(t)(θ⁰ − θ*)) with h = (1 − e^{−2μθ*t})/θ*
        # (→ 2μt as θ* → 0): no cancellation for tiny θ*, and the θ* = 0 case is the same formula
        ths_a, mu_a = ths[act], mu[act]
        safe = np.where(ths_a == 0, 1.0, ths_a)
        h = np.where(ths_a == 0, 2 * mu_a * t, -np.expm1(-2 * mu_a * ths_a * t) / safe)
        out[:, act] = th0[act] / (1 + h * (th0[act] - ths_a))
        return out

    def theta_linear(self, t: Sequence[float] | np.ndarray) -> np.ndarray:
        """``(T, d)`` mode coordinates of the linearized gradient flow (eq. 5.4.6, rate ``2μθ⁰``)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
        th0, ths, mu = self.theta0, self.theta_star, self.mu
        return ths + np.exp(-2 * mu * th0 * t) * (th0 - ths)

    def theta(self, t: Sequence[float] | np.ndarray, regime: str) -> np.ndarray:
        if regime == "nonlinear":
            return self.theta_nonlinear(t)
        if regime == "linear":
            return self.theta_linear(t)
        raise ValueError(f"regime: unknown {regime!r}; accepted: 'nonlinear', 'linear'")

    def outputs(self, theta_modes: np.ndarray) -> np.ndarray:
        """``f(x_i) = x_iᵀ V θ`` for mode coordinates ``(T, d)`` → ``(T, n)``."""
        return theta_modes @ (self.X @ self.V).T

    def sq_errors(self, t: Sequence[float] | np.ndarray, regime: str) -> np.ndarray:
        """Per-example squared errors ``(f(x_i) − y_i)²`` at times ``t``: ``(T, n)``."""
        return (self.outputs(self.theta(t, regime)) - self.y) ** 2

    # --- numerical gradient flow on w ------------------------------------------------------------
    def _grad(self, regime: str) -> Callable[[float, np.ndarray], np.ndarray]:
        X, y, V, w0, th0 = self.X, self.y, self.V, self.w0, self.theta0

        def nonlinear(_t: float, w: np.ndarray) -> np.ndarray:
            theta = V @ (0.5 * w ** 2)
            return -w * (V.T @ (X.T @ (X @ theta - y)))

        def linear(_t: float, w: np.ndarray) -> np.ndarray:
            theta = V @ (th0 + w0 * (w - w0))  # θ̄ = θ⁰ + Σ w⁰_λ (w_λ − w⁰_λ) v_λ
            return -w0 * (V.T @ (X.T @ (X @ theta - y)))

        return nonlinear if regime == "nonlinear" else linear

    def simulate(self, t: Sequence[float] | np.ndarray, regime: str, rtol: float = 1e-12,
                 atol: float = 1e-14) -> np.ndarray:
        """Mode coordinates ``(T, d)`` from integrating ``ẇ = −∇_w ℓ`` (DOP853) in the original coordinates."""
        from scipy.integrate import solve_ivp

        t = np.asarray(t, dtype=np.float64)
        sol = solve_ivp(self._grad(regime), (0.0, float(t.max())), self.w0.copy(), method="DOP853",
                        t_eval=t, rtol=rtol, atol=atol)
        if not sol.success:  # pragma: no cover
            raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
        w = sol.y.T
        if regime == "nonlinear":
            return 0.5 * w ** 2
        return self.theta0 + self.w0 * (w - self.w0)

    def gradient_descent(self, steps: int, lr: float, regime: str) -> np.ndarray:
        """Mode coordinates ``(steps+1, d)`` of plain gradient descent on ``w`` (time ``lr·k``)."""
        g = self._grad(regime)
        w = self.w0.copy()
        out = [w.copy()]
        for _ in range(steps):
            w = w + lr * g(0.0, w)
            out.append(w.copy())
        W = np.array(out)
        return 0.5 * W ** 2 if regime == "nonlinear" else self.theta0 + self.w0 * (W - self.w0)


@dataclass
class QuadraticExample:
    """One example of §5.4.3: the model, group masks over the ``n`` examples, and time ranges."""

    name: str
    model: QuadraticModel
    groups: dict[str, np.ndarray]
    t_nonlinear: float
    t_linear: float


def example1(mu: Sequence[float] = (9, 8, 7, 6, 5), sigma: float = 1e-3) -> QuadraticExample:
    """Ex. 1: ``x_i = √μ_i e_i``, ``y_i = μ_{n−i+1}/√μ_i`` (learning-order flip)."""
    mu_a = np.asarray(mu, dtype=np.float64)
    n = mu_a.size
    X = np.diag(np.sqrt(mu_a))
    y = mu_a[::-1] / np.sqrt(mu_a)
    groups = {f"example {i + 1}": np.arange(n) == i for i in range(n)}
    return QuadraticExample("example 1", QuadraticModel(X, y, sigma), groups, 1.0, 250.0)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return rng.permutation(y)


def _labels_and_flips(n: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced ``±1`` labels, a mask of ``q`` random examples and ``κ`` (``-1`` on them, ``1`` elsewhere)."""
    rng = np.random.default_rng(seed)
    y = _labels(n, rng)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, q, replace=False)] = True
    return y, flipped, np.where(flipped, -1.0, 1.0)


def example2(n: int = 20, q: int = 5, d: int = 200, eta: float = 2.0, sigma: float = 1e-3,
             seed: int = 0) -> QuadraticExample:
    """Ex. 2: ``x_i = κ_i y_i e_1 + η e_{i+1}`` with ``q`` examples whose feature disagrees with the label."""
    if not (1 <= q < (n + 1) // 2 and d > n):
        raise ValueError("example 2 needs 1 <= q < ceil(n/2) and d > n")
    y, noisy, kappa = _labels_and_flips(n, q, seed)
    X = np.zeros((n, d))
    X[:, 0] = kappa * y
    X[np.arange(n), np.arange(n) + 1] = eta
    return QuadraticExample("example 2", QuadraticModel(X, y, sigma), {"clean": ~noisy, "noisy": noisy}, 1.0, 50.0)


def example3(n: int = 20, q: int = 5, d: int = 200, eta: float = 2.0, lam: float = 0.5, sigma: float = 1e-3,
             seed: int = 0) -> QuadraticExample:
    """Ex. 3: ``x_i = κ_i y_i e_1 + λ y_i e_2 + η e_{i+2}``: a spurious feature ``e_1`` that agrees with the
    label on the majority (``κ = 1``) and disagrees on ``q`` minority examples; ``e_2`` is the core feature."""
    if not (1 <= q < n and d > n + 1):
        raise ValueError("example 3 needs 1 <= q < n and d > n + 1")
    y, minority, kappa = _labels_and_flips(n, q, seed)
    X = np.zeros((n, d))
    X[:, 0] = kappa * y
    X[:, 1] = lam * y
    X[np.arange(n), np.arange(n) + 2] = eta
    return QuadraticExample("example 3", QuadraticModel(X, y, sigma),
                            {"majority": ~minority, "minority": minority}, 1.0, 10.0)


def half_error_times(t: np.ndarray, sq_err: np.ndarray) -> np.ndarray:
    """Per example, the first time its squared error is ``≤`` half its initial value (``inf`` if never)."""
    out = np.full(sq_err.shape[1], np.inf)
    for i in range(sq_err.shape[1]):
        hit = np.nonzero(sq_err[:, i] <= 0.5 * sq_err[0, i])[0]
        if hit.size:
            out[i] = t[hit[0]]
    return out


def first_time_below(t: np.ndarray, curve: np.ndarray, threshold: float) -> int | None:
    """Index of the first entry of ``curve`` that is ``≤ threshold`` (``None`` if none)."""
    hit = np.nonzero(np.asarray(curve) <= threshold)[0]
    return int(hit[0]) if hit.size else None


def two_layer_init(d: int, seed: int, init_scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(W, a)``: PyTorch's default ``nn.Linear`` init (uniform ``±1/√d``) of ``W`` ``d×d`` and ``a``
    ``d``, times ``init_scale`` (seeded)."""
    torch.manual_seed(seed)  # float32 draws (independent of torch's default dtype), then float64
    net = nn.Sequential(nn.Linear(d, d, bias=False, dtype=torch.float32),
                        nn.Linear(d, 1, bias=False, dtype=torch.float32)).to(torch.float64)
    return (init_scale * net[0].weight.detach().numpy().copy(),
            init_scale * net[1].weight.detach().numpy().reshape(-1).copy())


def two_layer_dynamics(X: np.ndarray, y: np.ndarray, alpha: float, steps: int, lr: float, seed: int,
                       init_scale: float = 0.5) -> np.ndarray:
    """Per-example squared errors ``(steps+1, n)`` of the dense 2-layer linear network
    ``f(x) = aᵀ W x`` (``W`` ``d×d``, ``a`` ``d``, no bias, :func:`two_layer_init`) trained by
    full-batch gradient descent on ``½ Σ_i (f^α(x_i) − y_i)²`` with ``f^α = α (f − f₀)`` (the
    :class:`~tangentlab.linearize.AlphaScaled` model with a zero function at init) and learning
    rate ``lr/α²``: ``∂/∂a = α W Xᵀ r``, ``∂/∂W = α a (Xᵀ r)ᵀ`` with ``r = f^α(X) − y`` (closed-form
    gradients in numpy; the test checks them against autograd through ``AlphaScaled``)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    W, a = two_layer_init(X.shape[1], seed, init_scale)
    f0 = X @ W.T @ a
    step = lr / alpha ** 2
    errs = np.empty((steps + 1, X.shape[0]))
    for k in range(steps + 1):
        r = alpha * (X @ W.T @ a - f0) - y
        errs[k] = r ** 2
        if k == steps:
            break
        xr = X.T @ r
        ga, gW = alpha * (W @ xr), alpha * np.outer(a, xr)
        a, W = a - step * ga, W - step * gW
    return errs


def two_layer_torch_step(X: np.ndarray, y: np.ndarray, alpha: float, lr: float, seed: int,
                         init_scale: float = 0.5) -> np.ndarray:
    """The squared errors after one step of the same training done with ``AlphaScaled`` and autograd."""
    W, a = two_layer_init(X.shape[1], seed, init_scale)
    d = X.shape[1]
    net = nn.Sequential(nn.Linear(d, d, bias=False), nn.Linear(d, 1, bias=False)).to(torch.float64)
    with torch.no_grad():
        net[0].weight.copy_(torch.as_tensor(W))
        net[1].weight.copy_(torch.as_tensor(a).reshape(1, -1))
    model = AlphaScaled(net, alpha, subtract_initial_output=True)
    opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(lr))
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    (0.5 * (model(Xt).reshape(-1) - yt).pow(2).sum()).backward()
    opt.step()
    with torch.no_grad():
        return (model(Xt).reshape(-1) - yt).pow(2).numpy()
