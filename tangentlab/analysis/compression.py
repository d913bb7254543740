"""Mathematics of geometric compression (Paccolat, Petrini, Geiger, Tyloo & Wyart 2022).

Everything here is a plain function of tensors, float64 by default, and vectorized over neurons / examples.

**Network, Eq. (1).** One hidden layer in mean-field scaling,

    f(x) = (1/h) Σ_n β_n σ(ω_n·x/√d + b_n),    σ(u) = √2 max(0, u),

with ``ω_n ∈ R^d``, ``b_n``, ``β_n`` i.i.d. N(0, 1) at initialization. The predictor is
``F(x) = α (f(x) − f₀(x))`` with ``f₀`` the frozen initial network (``F ≡ 0`` at t = 0).
:class:`MeanFieldNet` is the same function as an ``nn.Module`` built from ``nn.Linear``
layers (first-layer weight = ``ω``, bias = ``b``, last-layer weight = ``β``), so that
:func:`tangentlab.ntk` gives its exact empirical NTK.

**Dynamics, Eq. (2)/(4).** Gradient flow on the hinge loss with the α trick,
``L = (1/(α p)) Σ_μ max(0, 1 − y_μ F(x_μ))``; its velocity ``−∇L`` does not depend on α
(only through the active set ``l'_μ = Θ(1 − y_μ F_μ)``), see :func:`hinge_velocity`.

**Compression, Eq. (9).** ``Λ² = (d_⊥/d_∥) Σ_n ‖ω_{n,∥}‖² / Σ_n ‖ω_{n,⊥}‖²`` (for d_∥ = 1:
``(d−1) Σ ω²_{n,1} / Σ ‖ω_{n,⊥}‖²``), so ``E Λ(0)² ≈ 1`` (:func:`amplification`).

**Learning curves.** ``ε ~ p^{−β}`` with ``β_lazy = d/(3d−2)`` and ``β_feature = (2d−1)/(3d−2)``
(d_∥ = 1) or ``(d + d_⊥/2)/(3d−2)`` (d_∥ > 1) (:func:`beta_lazy`, :func:`beta_feature`);
fits by least squares in log-log (:func:`fit_power_law`) with seed-bootstrap intervals
(:func:`bootstrap_exponent`).

**Kernel learning (§1.8).** The α → ∞ limit: hinge gradient descent in function space
with a frozen Gram matrix, ``a(0) = 0``, ``da/dt = (1/p) y ⊙ Θ(1 − y ⊙ K a)`` until all
margins are met (:func:`hinge_kernel_gd`), predictions ``K_te,tr a``; or the kernel SVC of
the lazy-regime theory (:func:`kernel_svc`).

**Kernel PCA (§5).** Label projections ``ω_r² = (v_r·y)²/p`` on the eigenvectors of the
Gram matrix (sum rule ``Σ_r ω_r² = 1``; cumulative sums are
:func:`tangentlab.analysis.label_energy`) and the k-NN mutual-information estimator of
App. E (:func:`knn_mutual_information`, bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from .kernels import eigh_desc, label_energy

SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# the network of Eq. (1)
# ---------------------------------------------------------------------------------------------
def sigma(u: torch.Tensor) -> torch.Tensor:
    """``σ(u) = √2 · max(0, u)`` (unit second moment for u ~ N(0, 1))."""
    return SQRT2 * torch.relu(u)


@dataclass
class NetParams:
    """Parameters of Eq. (1): ``w`` (h, d) the ``ω_n``, ``b`` (h,), ``beta`` (h,)."""

    w: torch.Tensor
    b: torch.Tensor
    beta: torch.Tensor

    @property
    def h(self) -> int:
        return int(self.w.shape[0])

    @property
    def d(self) -> int:
        return int(self.w.shape[1])

    def clone(self) -> NetParams:
        return NetParams(self.w.clone(), self.b.clone(), self.beta.clone())

    def state(self) -> dict[str, torch.Tensor]:
        return {"w": self.w, "b": self.b, "beta": self.beta}


def init_params(d: int, h: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> NetParams:
    """``ω_n, b_n, β_n`` i.i.d. standard normal (the paper's initialization)."""
    w = torch.randn(h, d, generator=generator, dtype=dtype)
    b = torch.randn(h, generator=generator, dtype=dtype)
    beta = torch.randn(h, generator=generator, dtype=dtype)
    return NetParams(w, b, beta)


def preactivations(params: NetParams, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``u[μ, n] = ω_n·x_μ/√d + b_n``, shape (p, h), written into ``out`` when given (reusing a
    (p, h) buffer across steps avoids the page faults of a fresh large allocation, 3× here)."""
    return torch.addmm(params.b, x, params.w.T, alpha=1.0 / math.sqrt(params.d), out=out)


def net_output(params: NetParams, x: torch.Tensor) -> torch.Tensor:
    """``f(x) = (1/h) Σ_n β_n σ(u_n(x))``, shape (p,)."""
    return sigma(preactivations(params, x)) @ params.beta / params.h


def predictor(params: NetParams, x: torch.Tensor, f0: torch.Tensor, alpha: float) -> torch.Tensor:
    """``F(x) = α (f(x) − f₀(x))`` with ``f₀`` the frozen initial outputs on ``x``."""
    return alpha * (net_output(params, x) - f0)


def hinge_loss(F: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The α-normalized hinge loss ``(1/(α p)) Σ_μ max(0, 1 − y_μ F_μ)``."""
    return torch.relu(1.0 - y * F).mean() / alpha


def hinge_velocity(params: NetParams, x: torch.Tensor, y: torch.Tensor, F: torch.Tensor,
                   u: torch.Tensor | None = None, r: torch.Tensor | None = None,
                   buf: torch.Tensor | None = None) -> tuple[NetParams, torch.Tensor]:
    """``−∇L`` in closed form, Eq. (4), and the active mask ``l'_μ = Θ(1 − y_μ F_μ)``.

    With ``g_μ = y_μ l'_μ / p`` and ``u = ω·x/√d + b``::

        dω_n/dt = (1/h) Σ_μ g_μ β_n σ'(u_{μn}) x_μ/√d
        db_n/dt = (1/h) Σ_μ g_μ β_n σ'(u_{μn})
        dβ_n/dt = (1/h) Σ_μ g_μ σ(u_{μn})

    (``σ' = √2 Θ(u)``). ``F`` is the predictor on ``x`` at ``params``; α does not appear.
    ``u`` (preactivations) and ``r = relu(u)`` may be passed when already computed, ``buf``
    a (p, h) workspace for ``Θ(u)``. ``[g x, g]ᵀ Θ(u)`` gives ``dω`` and ``db`` in one matmul
    (the per-neuron factor ``√2 β_n/h`` is applied to the (d+1, h) result), ``relu(u)ᵀ g``
    gives ``dβ``.
    """
    p, d = x.shape
    u = preactivations(params, x) if u is None else u
    r = torch.relu(u) if r is None else r
    active = (y * F < 1.0).to(x.dtype)
    g = y * active / p
    gx = torch.cat([g[:, None] * x, g[:, None]], dim=1)  # (p, d + 1)
    step = torch.sign(r, out=buf)  # Θ(u) as 0/1 (r ≥ 0)
    m = gx.T @ step  # (d + 1, h): Σ_μ g_μ [x_μ, 1] Θ(u_μn)
    coef = SQRT2 * params.beta / params.h
    dw = (coef / math.sqrt(d))[:, None] * m[:d].T
    db = coef * m[d]
    dbeta = (SQRT2 / params.h) * (r.T @ g)
    return NetParams(dw, db, dbeta), active


class Scale(nn.Module):
    """Multiplication by a constant (no parameters)."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c


class _SqrtTwoReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sigma(x)


class MeanFieldNet(nn.Sequential):
    """Eq. (1) as ``nn.Sequential``: ``x/√d → Linear(d, h) [ω, b] → √2·ReLU → Linear(h, 1, no
    bias) [β] → ·1/h``. Output shape (N, 1). Built from :class:`NetParams` (copied)."""

    def __init__(self, params: NetParams):
        h, d = params.w.shape
        first = nn.Linear(d, h).to(params.w.dtype)
        last = nn.Linear(h, 1, bias=False).to(params.w.dtype)
        with torch.no_grad():
            first.weight.copy_(params.w)
            first.bias.copy_(params.b)
            last.weight.copy_(params.beta[None, :])
        super().__init__(Scale(1.0 / math.sqrt(d)), first, _SqrtTwoReLU(), last, Scale(1.0 / h))

    @property
    def first(self) -> nn.Linear:
        return self[1]  # type: ignore[return-value]

    @property
    def last(self) -> nn.Linear:
        return self[3]  # type: ignore[return-value]


def ntk_closed_form(params: NetParams, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The NTK of Eq. (1) (App. D), ``(N_x, N_z)``:
    ``Θ(x, z) = (1/h²) Σ_n [σ(u_n(x)) σ(u_n(z)) + β_n² σ'(u_n(x)) σ'(u_n(z)) (1 + x·z/d)]``."""
    ux, uz = preactivations(params, x), preactivations(params, z)
    h, d = params.h, params.d
    dx, dz = SQRT2 * (ux > 0).to(x.dtype), SQRT2 * (uz > 0).to(x.dtype)
    return (sigma(ux) @ sigma(uz).T + (dx * params.beta**2) @ dz.T * (1 + x @ z.T / d)) / h**2


# ---------------------------------------------------------------------------------------------
# compression measures
# ---------------------------------------------------------------------------------------------
def _check_dpar(w: torch.Tensor, d_par: int) -> None:
    if not 1 <= d_par < w.shape[-1]:
        raise InvalidInputError(f"d_par={d_par} must lie in 1..{w.shape[-1] - 1} (input dimension {w.shape[-1]})")


def amplification(w: torch.Tensor, d_par: int = 1) -> float:
    """Global amplification factor, Eq. (9) and its d_∥ > 1 form:
    ``Λ = sqrt( (d_⊥/d_∥) Σ_n ‖ω_{n,∥}‖² / Σ_n ‖ω_{n,⊥}‖² )`` (``w``: (h, d), informative
    coordinates first). Equals the ratio of RMS per-coordinate weights, ∥ over ⊥."""
    _check_dpar(w, d_par)
    d_perp = w.shape[1] - d_par
    par = w[:, :d_par].pow(2).sum()
    perp = w[:, d_par:].pow(2).sum()
    return float(torch.sqrt(d_perp / d_par * par / perp))


def neuron_amplification(w: torch.Tensor, d_par: int = 1) -> torch.Tensor:
    """Per-neuron amplification ``λ_n = ω_{n,1}/‖ω_{n,⊥}‖`` (signed) for d_∥ = 1, and
    ``‖ω_{n,∥}‖/‖ω_{n,⊥}‖`` for d_∥ > 1; shape (h,)."""
    _check_dpar(w, d_par)
    perp = w[:, d_par:].norm(dim=1)
    par = w[:, 0] if d_par == 1 else w[:, :d_par].norm(dim=1)
    return par / perp


def beta_lazy(d: int) -> float:
    """Lazy (NTK, cusp ξ = 1) learning-curve exponent ``β = d/(3d − 2)``."""
    return d / (3 * d - 2)


def beta_feature(d: int, d_par: int = 1) -> float:
    """Feature-regime exponent with ``Λ ~ √p``: ``(2d − 1)/(3d − 2)`` for d_∥ = 1 and
    ``(d + d_⊥/2)/(3d − 2)`` for d_∥ > 1."""
    if d_par == 1:
        return (2 * d - 1) / (3 * d - 2)
    return (d + (d - d_par) / 2) / (3 * d - 2)


def compress(x: torch.Tensor, d_par: int, lam: float) -> torch.Tensor:
    """``x_⊥ → x_⊥ / Λ`` (the first ``d_par`` coordinates are kept)."""
    out = x.clone()
    out[:, d_par:] /= lam
    return out


# ---------------------------------------------------------------------------------------------
# power-law fits
# ---------------------------------------------------------------------------------------------
@dataclass
class PowerLawFit:
    """``y ≈ A x^slope`` by least squares on ``(log x, log y)``; ``ci`` a confidence interval
    of the slope (t-distribution of the OLS slope, or seed bootstrap)."""

    slope: float
    prefactor: float
    stderr: float
    ci: tuple[float, float]
    n: int


def fit_power_law(x: Any, y: Any, level: float = 0.95) -> PowerLawFit:
    """Least-squares fit of ``log y = log A + s log x`` with the t-interval of ``s``.

    Needs ≥ 2 points with ``x, y > 0``; the interval is ``(s, s)`` with 2 points (no residual
    degrees of freedom) and ``± t_{n−2} · stderr`` otherwise."""
    from scipy import stats

    lx = np.log(np.asarray(x, dtype=np.float64))
    yy = np.asarray(y, dtype=np.float64)
    if lx.size != yy.size or lx.size < 2:
        raise InvalidInputError(f"a power-law fit needs ≥ 2 matching points, got {lx.size} and {yy.size}")
    if not (np.all(np.isfinite(lx)) and np.all(yy > 0)):
        raise InvalidInputError("a power-law fit needs positive x and y")
    ly = np.log(yy)
    n = lx.size
    xm, ym = lx.mean(), ly.mean()
    sxx = float(((lx - xm) ** 2).sum())
    if sxx == 0:
        raise InvalidInputError("a power-law fit needs at least two distinct x")
    s = float(((lx - xm) * (ly - ym)).sum() / sxx)
    a = float(ym - s * xm)
    if n > 2:
        resid = ly - (a + s * lx)
        se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
        t = float(stats.t.ppf(0.5 + level / 2, n - 2))
        ci = (s - t * se, s + t * se)
    else:
        se, ci = 0.0, (s, s)
    return PowerLawFit(s, math.exp(a), se, ci, n)


def bootstrap_exponent(x: Any, samples: list[Any], n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                       reduce: str = "median") -> PowerLawFit:
    """Slope of ``log reduce(samples[i])`` vs ``log x[i]`` (the fit of the medians over
    seeds) with a bootstrap interval: seeds resampled with replacement at each ``x``,
    percentiles of the refitted slopes. ``stderr`` is the bootstrap standard deviation."""
    if len(samples) != len(x):
        raise InvalidInputError(f"{len(samples)} sample groups for {len(x)} x values")
    red = np.median if reduce == "median" else np.mean
    groups = [np.asarray(s, dtype=np.float64) for s in samples]
    point = fit_power_law(x, [red(g) for g in groups], level)
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        vals = [red(g[rng.integers(0, g.size, g.size)]) for g in groups]
        if min(vals) > 0:
            slopes.append(fit_power_law(x, vals).slope)
    if not slopes:
        return point
    lo, hi = np.quantile(slopes, [0.5 - level / 2, 0.5 + level / 2])
    return PowerLawFit(point.slope, point.prefactor, float(np.std(slopes)), (float(lo), float(hi)), point.n)


# ---------------------------------------------------------------------------------------------
# kernel learning
# ---------------------------------------------------------------------------------------------
@dataclass
class KernelFit:
    """Result of :func:`hinge_kernel_gd`: coefficients ``a`` (predictor ``K(·, x_tr) a``),
    Euler steps taken, final time ``t`` and whether all margins were met."""

    a: torch.Tensor
    steps: int
    t: float
    converged: bool
    train_margin_min: float
    intercept: float = 0.0


def hinge_kernel_gd(K: torch.Tensor, y: torch.Tensor, max_dout: float = 0.1, max_steps: int = 100_000,
                    margin: float = 1.0) -> KernelFit:
    """Hinge-loss kernel gradient descent (the α → ∞ limit of the network, §1.8).

    ``a(0) = 0``; explicit Euler on ``da/dt = (1/p) y ⊙ Θ(margin − y ⊙ K a)``, i.e. on
    the training outputs ``dF/dt = (1/p) K (y ⊙ l')``. Each step takes the largest ``dt``
    for which no training output moves by more than ``max_dout`` (the ``dout`` rule of the
    paper's integrator), and the run stops when ``min_μ y_μ F_μ ≥ margin`` (all margins
    met) or after ``max_steps``. The sign of ``K a`` does not depend on the scale of ``K``.
    """
    K = K.to(torch.float64)
    y = y.to(torch.float64)
    p = y.numel()
    if K.shape != (p, p):
        raise InvalidInputError(f"kernel of shape {tuple(K.shape)} for {p} labels")
    a = torch.zeros(p, dtype=torch.float64)
    F = torch.zeros(p, dtype=torch.float64)
    t = 0.0
    steps = 0
    converged = False
    while steps < max_steps:
        active = y * F < margin
        if not bool(active.any()):
            converged = True
            break
        g = y * active.to(torch.float64) / p
        dF = K @ g
        top = float(dF.abs().max())
        if top == 0.0:
            break
        dt = max_dout / top
        a += dt * g
        F += dt * dF
        t += dt
        steps += 1
        if steps % 200 == 0:  # refresh against accumulated round-off
            F = K @ a
    if not converged and not bool((y * F < margin).any()):
        converged = True
    return KernelFit(a, steps, t, converged, float((y * F).min()) if p else math.nan)


def kernel_svc(K: torch.Tensor, y: torch.Tensor, C: float = 1e4) -> KernelFit:
    """Kernel support-vector classifier (scikit-learn ``SVC(kernel="precomputed")``) on
    ``K / mean(diag K)`` (so that ``C`` does not depend on the kernel's scale; C → ∞ is the
    hard-margin SVC of the lazy-regime theory). Returned as a :class:`KernelFit` whose
    ``a`` and ``intercept`` apply to the *unnormalized* kernel: ``F = K(·, x_tr) a + b``;
    ``converged``: all training margins ``y F ≥ 1 − 1e-3`` in the normalized scale."""
    from sklearn.svm import SVC

    K = K.to(torch.float64)
    y = y.to(torch.float64)
    p = y.numel()
    if K.shape != (p, p):
        raise InvalidInputError(f"kernel of shape {tuple(K.shape)} for {p} labels")
    scale = float(torch.diagonal(K).mean())
    if not scale > 0:
        raise InvalidInputError("the kernel has a non-positive mean diagonal")
    Kn = (K / scale).cpu().numpy()
    svc = SVC(C=C, kernel="precomputed", tol=1e-6)
    svc.fit(Kn, y.cpu().numpy())
    a = np.zeros(p)
    a[svc.support_] = svc.dual_coef_[0]
    a_t = torch.as_tensor(a, dtype=torch.float64, device=K.device) / scale
    b = float(svc.intercept_[0])
    margins = y * (K @ a_t + b)
    return KernelFit(a_t, int(svc.n_iter_[0]), math.nan, bool(margins.min() >= 1 - 1e-3), float(margins.min()), b)


def kernel_test_error(K_test_train: torch.Tensor, fit: KernelFit, y_test: torch.Tensor) -> float:
    """``ε = mean[ y_te · (K_te,tr a + b) ≤ 0 ]`` (``b = 0`` for hinge kernel GD)."""
    F = K_test_train.to(torch.float64) @ fit.a + fit.intercept
    return float((y_test.to(torch.float64) * F <= 0).to(torch.float64).mean())


# ---------------------------------------------------------------------------------------------
# kernel PCA diagnostics
# ---------------------------------------------------------------------------------------------
def label_projections(K: torch.Tensor, y: torch.Tensor, k: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the (uncentered) Gram matrix and the label projections.

    Returns ``(eigenvalues (k,), eigenvectors (p, k), ω² (k,))`` with
    ``ω_r² = (v_r·y)²/p`` for ±1 labels (``‖y‖² = p``), decreasing eigenvalues; computed
    from :func:`tangentlab.analysis.label_energy` (its increments), so ``Σ_{r≤p} ω_r² = 1``."""
    evals, evecs = eigh_desc(K)
    cum = label_energy(evecs, y.to(torch.float64))
    omega2 = torch.diff(cum, prepend=cum.new_zeros(1))
    k = evals.numel() if k is None else min(int(k), evals.numel())
    return evals[:k], evecs[:, :k], omega2[:k]


def knn_mutual_information(z: torch.Tensor, y: torch.Tensor, k: int = 5, standardize: bool = True,
                           eps: float = 1e-10) -> float:
    """k-NN estimate (bits) of the mutual information between features ``z`` ((p,) or (p, D))
    and balanced binary labels ``y`` (App. E):

        Î = 1 − (1/p) Σ_i h₂(q̂₊(x_i)),   q̂₊ = 1 / (1 + (r₊/r₋)^D),

    ``r_±(x_i)`` the distance to the k-th nearest neighbour of label ± (the point itself
    included, as in the paper's code), ``h₂`` the binary entropy in bits. Components are
    standardized first (zero mean, unit std)."""
    z = z.to(torch.float64)
    if z.dim() == 1:
        z = z[:, None]
    if standardize:
        z = (z - z.mean(0)) / z.std(0).clamp_min(eps)
    D = z.shape[1]
    pos = y > 0
    if int(pos.sum()) < k or int((~pos).sum()) < k:
        raise InvalidInputError(f"the MI estimator needs at least k={k} points of each label")
    dist = torch.cdist(z, z)

    def kth(mask: torch.Tensor) -> torch.Tensor:
        return dist[:, mask].kthvalue(k, dim=1).values

    rp, rm = kth(pos), kth(~pos)
    ratio = (rp + eps) / (rm + eps)
    q = 1.0 / (1.0 + ratio.pow(D))
    q = q.clamp(eps, 1 - eps)
    h2 = -(q * torch.log2(q) + (1 - q) * torch.log2(1 - q))
    return float(1.0 - h2.mean())

