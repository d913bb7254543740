"""Average tangent features along a parameter path and the kernel diagnostics of the
adaptive tangent feature paper (LeJeune & Alemohammad, CPAL 2024).

* Average tangent features: ``∇̄f(x) = ∫₀¹ ∇_θ f_{θ_t}(x) dt`` on ``θ_t = (1−t)θ0 + tθ1``,
  so that ``f_{θ1}(x) − f_{θ0}(x) = ∇̄f(x)(θ1 − θ0)`` exactly. The integral is a quadrature
  ``Σ_k w_k J(θ_{t_k})`` (:func:`path_quadrature`): ``"linspace"`` (the paper: the plain
  mean of ``n`` points of ``linspace(0, 1, n)``, endpoints included), ``"left"`` (left
  Riemann sum ``t = k/n``, ``k < n``), ``"trapezoid"`` and ``"gauss"`` (Gauss–Legendre).
  Each Jacobian comes from the fast engine (:func:`tangentlab.jacobian`), ``(N·C, P)``
  with row ``i·C + c``; only the running sum is kept (never ``P × P``).
* Kernels on the ``N·C`` rows: ``K̄ = J̄J̄ᵀ``, ``K0`` (the empirical NTK at θ0), the final
  kernel ``K(θ1)`` and the label kernel ``K_ŷ = Δf Δfᵀ`` with ``Δf = f_{θ1} − f_{θ0}``.
* Diagnostics: cosine alignment ("sim", :func:`tangentlab.analysis.kernel_alignment`),
  centered alignment (:func:`tangentlab.analysis.cka`), the least-squares decomposition
  ``K̄ ≈ a K0 + c K_ŷ`` with its relative residual (:func:`lsq_decomposition`) and the
  diagonal of a kernel against the target (:func:`diag_ratio`).
* :func:`layer_features`: the factored per-layer tangent features ``(A_ℓ, G_ℓ)`` of the
  dense layers (from the engine's capture) that :func:`tangentlab.analysis.adaptive.model_a_irls`
  works on.
"""

from __future__ import annotations

import copy
from typing import cast

import numpy as np
import torch
from torch import nn

from ..api import jacobian
from ..engine import EngineOptions, make_engine
from ..errors import InvalidInputError
from ..maps import PushForwardDense
from ..progress import progress
from ..vectors import PVector
from .adaptive import BlockFeatures
from .kernels import cka, kernel_alignment

QUADRATURES = ("linspace", "left", "trapezoid", "gauss")


def path_quadrature(n: int, rule: str = "linspace") -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t_k ∈ [0, 1]`` and weights ``w_k`` (summing to 1) of ``∫₀¹ g(t) dt ≈ Σ w_k g(t_k)``.

    ``linspace``: ``t = linspace(0, 1, n)``, ``w = 1/n`` (the paper's plain mean; error
    ``O(1/n)``); ``left``: ``t = k/n``, ``w = 1/n``; ``trapezoid``: ``linspace`` nodes, end
    weights halved (``O(1/n²)``); ``gauss``: ``n``-point Gauss–Legendre (exact for
    polynomials of degree ``2n − 1``)."""
    if rule not in QUADRATURES:
        raise InvalidInputError(f"unknown quadrature {rule!r}; accepted: {', '.join(QUADRATURES)}")
    n = int(n)
    if n < 1 or (rule == "trapezoid" and n < 2):
        raise InvalidInputError(f"quadrature {rule!r} needs at least {2 if rule == 'trapezoid' else 1} points")
    if rule == "linspace":
        t = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
        return t, np.full(n, 1.0 / n)
    if rule == "left":
        return np.arange(n) / n, np.full(n, 1.0 / n)
    if rule == "trapezoid":
        t = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return t, w
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1.0) / 2.0, w / 2.0


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's trainable parameters as one flat vector (the engine's order), detached."""
    return PVector.from_model(model).flat().detach().clone()


def jacobian_matrix(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``J`` as ``(N·C, P)`` (row ``i·C + c``) from :func:`tangentlab.jacobian`."""
    J = cast(PushForwardDense, jacobian(model, x, batch_size=batch_size, progress=False))
    return J.data.reshape(-1, J.data.shape[-1])


def average_jacobian(model: nn.Module, x: torch.Tensor, theta0: torch.Tensor, theta1: torch.Tensor,
                     n: int = 50, rule: str = "linspace", batch_size: int | None = None,
                     show_progress: bool | None = None) -> torch.Tensor:
    """``J̄ = Σ_k w_k J(θ_{t_k})`` (``(N·C, P)``), ``θ_t = (1−t)θ0 + tθ1`` (flat vectors in
    the engine's parameter order); ``model`` is not modified (a copy is moved along the path)."""
    t, w = path_quadrature(n, rule)
    work = copy.deepcopy(model)
    space = PVector.from_model(work).space
    th0, th1 = theta0.to(torch.float64), theta1.to(torch.float64)
    dtype = next(work.parameters()).dtype
    acc: torch.Tensor | None = None
    for tk, wk in progress(list(zip(t, w)), "average tangent features", show_progress):
        PVector.from_flat(space, ((1.0 - tk) * th0 + tk * th1).to(dtype)).copy_to_model(work)
        Jk = jacobian_matrix(work, x, batch_size).to(torch.float64)
        acc = Jk.mul_(wk) if acc is None else acc.add_(Jk, alpha=float(wk))
    assert acc is not None
    return acc


def average_jvp(model: nn.Module, x: torch.Tensor, theta0: torch.Tensor, theta1: torch.Tensor,
                n: int = 50, rule: str = "linspace", v: torch.Tensor | None = None,
                batch_size: int | None = None) -> torch.Tensor:
    """``J̄ v = Σ_k w_k J(θ_{t_k}) v`` (``(N·C,)``; default ``v = θ1 − θ0``, so that
    ``f0 + J̄v ≈ f_{θ1}``) by forward-mode products of the engine
    (``tangentlab.jacobian(..., implicit=True)``): the Jacobians are never materialized."""
    t, w = path_quadrature(n, rule)
    work = copy.deepcopy(model)
    space = PVector.from_model(work).space
    th0, th1 = theta0.to(torch.float64), theta1.to(torch.float64)
    dtype = next(work.parameters()).dtype
    vv = PVector.from_flat(space, (th1 - th0 if v is None else v).to(dtype))
    acc: torch.Tensor | None = None
    for tk, wk in zip(t, w):
        PVector.from_flat(space, ((1.0 - tk) * th0 + tk * th1).to(dtype)).copy_to_model(work)
        jv = jacobian(work, x, implicit=True, batch_size=batch_size, progress=False).mv(vv).flat()
        jv = jv.to(torch.float64).reshape(-1) * float(wk)
        acc = jv if acc is None else acc + jv
    assert acc is not None
    return acc


@torch.no_grad()
def outputs_at(model: nn.Module, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """``f_θ(x)`` as ``(N, C)`` (the model's own parameters when ``theta`` is None)."""
    if theta is None:
        out = model(x)
    else:
        work = copy.deepcopy(model)
        PVector.from_flat(PVector.from_model(work).space, theta.to(next(work.parameters()).dtype)
                          ).copy_to_model(work)
        out = work(x)
    return out.reshape(x.shape[0], -1)


def label_kernel(delta: torch.Tensor) -> torch.Tensor:
    """``K_ŷ = Δf Δfᵀ`` on the ``N·C`` rows (``delta``: ``(N, C)`` or ``(N·C,)``)."""
    d = delta.reshape(-1).to(torch.float64)
    return torch.outer(d, d)


def lsq_decomposition(K: torch.Tensor, K0: torch.Tensor, Ky: torch.Tensor) -> dict[str, float]:
    """Least squares over all entries: ``K ≈ a K0 + c K_ŷ``; returns ``a``, ``c`` and the
    relative residual ``‖K − a K0 − c K_ŷ‖_F / ‖K‖_F``."""
    X = torch.stack([K0.reshape(-1), Ky.reshape(-1)], 1).to(torch.float64)
    y = K.reshape(-1).to(torch.float64)
    coef = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    res = y - X @ coef
    return {"a": float(coef[0]), "c": float(coef[1]), "residual": float(res.norm() / y.norm())}


def diag_ratio(diag: torch.Tensor, y: torch.Tensor, fraction: float = 0.15) -> float:
    """Mean of ``diag`` over the ``fraction`` of points with the smallest ``|y|`` divided by
    its mean over the ``fraction`` with the largest ``|y|`` (> 1: amplified near ``y = 0``)."""
    d = diag.reshape(-1).to(torch.float64)
    a = y.reshape(-1).abs().to(torch.float64)
    if d.numel() != a.numel():
        raise InvalidInputError(f"{d.numel()} diagonal entries for {a.numel()} targets")
    k = max(1, int(round(fraction * a.numel())))
    order = torch.argsort(a)
    return float(d[order[:k]].mean() / d[order[-k:]].mean())


def alignment_metrics(K: torch.Tensor, Ky: torch.Tensor, n_outputs: int = 1) -> dict[str, float]:
    """``cos`` (Frobenius cosine, the paper's "sim") and ``cka`` (centered over examples)."""
    return {"cos": kernel_alignment(K, Ky), "cka": cka(K, Ky, "examples", n_outputs)}


def layer_features(model: nn.Module, x: torch.Tensor) -> tuple[list[BlockFeatures], torch.Tensor]:
    """Factored tangent features of every parameterized layer of ``model`` on ``x``, from one
    capture of the engine: ``A_ℓ`` (inputs, with a ones column for a bias) and ``G_ℓ``
    (output gradients w.r.t. the layer's outputs), plus the outputs ``f(x)`` ``(N, C)``.
    Only ``nn.Linear`` layers on 2-D inputs are supported (the paper's Model A)."""
    for name, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)) and not isinstance(mod, nn.Linear):
            raise InvalidInputError(f"layer {name!r} ({type(mod).__name__}): Model A features support nn.Linear "
                                    "layers only")
    eng = make_engine(model, EngineOptions(progress=False), "raw")
    cap = eng.capture((x.to(eng.dtype),), 0)
    if cap.generic:
        raise InvalidInputError(f"parameters {sorted(cap.generic)} are not on a Linear layer's fast path")
    feats = []
    for lc in cap.layers:
        a = lc.feat.a
        if a.shape[1] != 1 or a.shape[2] != 1:
            raise InvalidInputError(f"layer {lc.layer.module!r}: Model A needs 2-D inputs (one position)")
        A = a[:, 0, 0, :].to(torch.float64)
        G = lc.g.reshape(lc.g.shape[0], lc.g.shape[1], -1).to(torch.float64)
        feats.append(BlockFeatures(lc.layer.module, A, G))
    return feats, cap.outputs.to(torch.float64)


def features_jacobian(feats: list[BlockFeatures]) -> torch.Tensor:
    """The ``(N·C, P)`` Jacobian assembled from factored features (each layer's block is
    ``vec`` of ``a g_cᵀ`` in row-major (fan-in, fan-out) order) — for small checks only."""
    cols = []
    for f in feats:
        C, N, Q = f.G.shape
        blk = torch.einsum("np,cnq->ncpq", f.A, f.G).reshape(N * C, -1)
        cols.append(blk)
    return torch.cat(cols, 1)
