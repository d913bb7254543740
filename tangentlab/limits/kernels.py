"""Dual activations: the Gaussian expectations that carry a kernel through a nonlinearity.

For a pre-activation pair ``(u, v) ~ N(0, [[k11, k12], [k12, k22]])`` an activation ``φ``
maps the covariance ``k12`` to its *dual* ``T(k) = E[φ(u) φ(v)]`` (the next NNGP) and the
NTK is multiplied by the *derivative kernel* ``Ṫ(k) = E[φ'(u) φ'(v)]`` (Jacot et al. 2018,
Lee et al. 2019). Every function here takes three broadcastable tensors ``k11, k12, k22``
(entries of any shape: examples × spatial positions) and returns ``(T, Ṫ)`` of their
broadcast shape, in the dtype of the inputs.

Closed forms:

* ReLU (Cho & Saul 2009, arc-cosine kernel of order 1): with ``ρ = k12/√(k11 k22)``
  (``ρ = 0`` and ``T = Ṫ = 0`` where a variance is zero),
  ``θ = arccos ρ``, ``T = √(k11 k22) (sin θ + (π − θ) cos θ) / (2π)`` and
  ``Ṫ = (π − θ) / (2π)``.
* leaky ReLU of slope ``α``: ``φ(u) = (1 − α) relu(u) + α u``, hence (using
  ``E[relu(u) v] = k12/2``) ``T = (1 − α)² T_relu + α(1 − α) k12 + α² k12`` and
  ``Ṫ = (1 − α)² Ṫ_relu + α(1 − α) + α²``.
* erf (Williams 1997): ``T = (2/π) arcsin(2 k12 / √((1 + 2 k11)(1 + 2 k22)))`` and
  ``Ṫ = (4/π) / √((1 + 2 k11)(1 + 2 k22) − 4 k12²)``.
* identity: ``T = k12``, ``Ṫ = 1``.

Any other elementwise activation (tanh, GELU, sigmoid, SiLU, softplus, ELU) is integrated
by Gauss–Hermite quadrature over the 2-D Gaussian: with ``z1, z2`` independent standard
normals, ``u = √k11 z1`` and ``v = (k12/√k11) z1 + √(k22 − k12²/k11) z2`` (a Cholesky
factor of the covariance), and the probabilists' Gauss–Hermite rule of ``order`` nodes per
axis (nodes and weights by Golub–Welsch), exact for polynomials of degree ``2·order − 1``
in each variable. ``φ'`` is taken by autograd through the module itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Dual", "relu_dual", "leaky_relu_dual", "erf_dual", "identity_dual", "quadrature_dual",
           "hermite_rule", "dual_for", "Erf", "QUADRATURE_ORDER", "scaled_slope_dual"]

QUADRATURE_ORDER = 64
_CHUNK = 1 << 22  # quadrature evaluations held at once (entries × order²)

Tensor = torch.Tensor


class Erf(nn.Module):
    """The activation ``erf(x)`` as a module (its dual kernel is Williams' closed form)."""

    def forward(self, x: Tensor) -> Tensor:
        """``erf(x)`` elementwise.

        Parameters
        ----------
        x : Tensor
            Any shape.
        """
        return torch.erf(x)


@dataclass(frozen=True)
class Dual:
    """An activation's dual map ``(k11, k12, k22) ↦ (T, Ṫ)``.

    ``odd``: ``φ(−u) = −φ(u)``, so features keep a zero mean across units (what a
    following LayerNorm needs); ``act``: ``φ`` itself, elementwise; ``homogeneous``:
    ``φ(λu) = λφ(u)`` for ``λ > 0``, hence ``u φ'(u) = φ(u)``. ``derivative=False`` skips
    ``Ṫ`` (returned as ``None``).
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]
    odd: bool
    act: Callable[[Tensor], Tensor]
    homogeneous: bool = False

    def __call__(self, k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool = True
                 ) -> tuple[Tensor, Tensor | None]:
        return self.fn(k11, k12, k22, derivative)


def _inv_sqrt(k: Tensor) -> Tensor:
    """``1/√k`` where ``k > 0``, else 0 (computed on the variances before broadcasting)."""
    return torch.where(k > 0, k.clamp_min(torch.finfo(k.dtype).tiny).rsqrt(), torch.zeros_like(k))


def _relu(k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
    # ρ = k12/√(k11 k22), clipped; a zero variance gives ρ = 0 and √(k11 k22) = 0, hence T = 0
    r1, r2 = _inv_sqrt(k11), _inv_sqrt(k22)
    rho = (k12 * r1 * r2).clamp_(-1.0, 1.0)
    theta = torch.arccos(rho)
    t = torch.sqrt(1 - rho * rho).add_((math.pi - theta).mul_(rho)).mul_(torch.sqrt(k11 * k22) / (2 * math.pi))
    if not derivative:
        return t, None
    alive = (k11 > 0).to(k12.dtype) * (k22 > 0).to(k12.dtype)
    return t, (math.pi - theta).mul_(alive / (2 * math.pi))


def _erf(k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
    den = (1 + 2 * k11) * (1 + 2 * k22)
    t = (2 / math.pi) * torch.arcsin((2 * k12 / torch.sqrt(den)).clamp(-1.0, 1.0))
    if not derivative:
        return t, None
    return t, (4 / math.pi) / torch.sqrt((den - 4 * k12 * k12).clamp_min(torch.finfo(den.dtype).tiny))


def _identity(k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
    t = k12 + 0 * (k11 + k22)
    return t, (torch.ones_like(t) if derivative else None)


relu_dual = Dual("relu", _relu, odd=False, act=torch.relu, homogeneous=True)
erf_dual = Dual("erf", _erf, odd=True, act=torch.erf)
identity_dual = Dual("identity", _identity, odd=True, act=lambda u: u, homogeneous=True)


def leaky_relu_dual(alpha: float) -> Dual:
    """The dual of ``max(u, 0) + α min(u, 0)`` (``α`` = ``negative_slope``)."""
    a = float(alpha)

    def fn(k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        t, dt = _relu(k11, k12, k22, derivative)
        t = (1 - a) ** 2 * t + (a * (1 - a) + a * a) * k12
        if dt is not None:
            dt = (1 - a) ** 2 * dt + a * (1 - a) + a * a
        return t, dt

    return Dual(f"leaky_relu({a:g})", fn, odd=a == -1.0, act=lambda u: nn.functional.leaky_relu(u, a),
                homogeneous=True)


def hermite_rule(order: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the ``order``-point Gauss rule for ``E[g(z)]``, ``z ~ N(0, 1)``.

    Golub–Welsch: the nodes are the eigenvalues of the Jacobi matrix of the probabilists'
    Hermite polynomials (zero diagonal, off-diagonal ``√k``, ``k = 1..order−1``); the
    weights are the squared first components of its eigenvectors (they sum to 1).

    Parameters
    ----------
    order : int
        Number of nodes.
    dtype : torch.dtype
        Of the returned tensors (computed in float64).
    device : torch.device, optional
        Of the returned tensors.

    Returns
    -------
    tuple of Tensor
        ``(nodes, weights)``, each ``(order,)``.
    """
    k = torch.arange(1, order, dtype=torch.float64)
    jac = torch.diag(k.sqrt(), 1) + torch.diag(k.sqrt(), -1)
    nodes, vecs = torch.linalg.eigh(jac)
    weights = vecs[0] ** 2
    return nodes.to(dtype=dtype, device=device), (weights / weights.sum()).to(dtype=dtype, device=device)


def _values_and_slopes(fn: Callable[[Tensor], Tensor], u: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
    """``φ(u)`` and (elementwise) ``φ'(u)`` by one backward pass of ``Σ φ(u)``."""
    if not derivative:
        with torch.no_grad():
            return fn(u), None
    with torch.enable_grad():
        w = u.detach().requires_grad_(True)
        y = fn(w)
        (g,) = torch.autograd.grad(y.sum(), w)
    return y.detach(), g


def quadrature_dual(fn: Callable[[Tensor], Tensor], name: str, order: int = QUADRATURE_ORDER,
                    odd: bool = False) -> Dual:
    """The dual of an elementwise ``fn`` by ``order × order`` Gauss–Hermite quadrature.

    ``T = Σ_i Σ_j w_i w_j φ(u_i) φ(v_ij)`` with ``u_i = √k11 z_i`` and
    ``v_ij = (k12/√k11) z_i + √(k22 − k12²/k11) z_j`` (``u = 0``, ``v = √k22 z_j`` where
    ``k11 = 0``); ``Ṫ`` likewise with ``φ'``. Entries are processed in chunks of at most
    ``2²² / order²`` so the ``order²`` evaluations per entry stay bounded in memory.
    """

    def dual(k11: Tensor, k12: Tensor, k22: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        a, c, b = torch.broadcast_tensors(k11, k12, k22)
        shape = a.shape
        a, c, b = a.reshape(-1), c.reshape(-1), b.reshape(-1)
        z, w = hermite_rule(order, a.dtype, a.device)
        t = torch.empty_like(a)
        dt = torch.empty_like(a) if derivative else None
        step = max(1, _CHUNK // (order * order))
        for s in range(0, a.numel(), step):
            sl = slice(s, s + step)
            s11, s12, s22 = a[sl], c[sl], b[sl]
            r11 = s11.clamp_min(0).sqrt()
            pos = r11 > 0
            slope = torch.where(pos, s12 / torch.where(pos, r11, torch.ones_like(r11)), torch.zeros_like(r11))
            rest = (s22 - slope * slope).clamp_min(0).sqrt()
            u = r11[:, None] * z  # (m, q)
            v = slope[:, None, None] * z[None, :, None] + rest[:, None, None] * z[None, None, :]  # (m, q, q)
            fu, du = _values_and_slopes(fn, u, derivative)
            fv, dv = _values_and_slopes(fn, v, derivative)
            t[sl] = torch.einsum("i,mi,j,mij->m", w, fu, w, fv)
            if dt is not None:
                dt[sl] = torch.einsum("i,mi,j,mij->m", w, du, w, dv)
        return t.reshape(shape), (dt.reshape(shape) if dt is not None else None)

    return Dual(name, dual, odd, act=fn)


def scaled_slope_dual(dual: Dual, shift: float, scale: float, order: int = QUADRATURE_ORDER
                      ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(k11, k12, k22) ↦ E[ψ(u) ψ(v)]`` with ``ψ(u) = (u − shift)/scale · φ'(u)``.

    The NTK term of a per-unit gain ``γ`` feeding ``φ`` (``y = γ n + β``, ``∂y/∂γ = n =
    (y − β)/γ``), in which the forward feature and the backward slope are correlated. For a
    homogeneous ``φ`` and ``shift = 0`` it is ``T/scale²`` (``u φ'(u) = φ(u)``); otherwise
    ``ψ`` is integrated by Gauss–Hermite quadrature (a homogeneous ``φ`` has a kink there,
    which quadrature does not resolve, so that case is refused by the caller).
    """
    if dual.homogeneous and shift == 0:
        return lambda k11, k12, k22: dual(k11, k12, k22, False)[0] / scale ** 2

    def psi(u: Tensor) -> Tensor:
        slope = _values_and_slopes(dual.act, u, True)[1]
        assert slope is not None
        return (u - shift) / scale * slope

    q = quadrature_dual(psi, f"(u - b) {dual.name}'(u)", order)
    return lambda k11, k12, k22: q(k11, k12, k22, False)[0]


_QUADRATURE_TYPES: tuple[type[nn.Module], ...] = (nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.ELU)
_ODD_TYPES: tuple[type[nn.Module], ...] = (nn.Tanh,)


def dual_for(module: nn.Module, order: int = QUADRATURE_ORDER) -> Dual | None:
    """The dual of an activation module, or ``None`` if ``module`` is not a known activation.

    ``ReLU``, ``LeakyReLU``, :class:`Erf` and ``Identity`` in closed form; ``Tanh``,
    ``GELU`` (either approximation), ``Sigmoid``, ``SiLU``, ``Softplus`` and ``ELU`` by
    quadrature of the module's own function.

    Parameters
    ----------
    module : nn.Module
        The activation.
    order : int
        Gauss–Hermite nodes per axis for the quadrature.

    Returns
    -------
    Dual or None
    """
    if isinstance(module, nn.ReLU):
        return relu_dual
    if isinstance(module, nn.LeakyReLU):
        return leaky_relu_dual(module.negative_slope)
    if isinstance(module, Erf):
        return erf_dual
    if isinstance(module, nn.Identity):
        return identity_dual
    if isinstance(module, _QUADRATURE_TYPES):
        return quadrature_dual(module, type(module).__name__.lower(), order, odd=isinstance(module, _ODD_TYPES))
    return None
