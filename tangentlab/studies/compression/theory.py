"""Fixed points of the compressing regime of the single-stripe model (paper 004, §3.2.1,
Eq. (6), App. C.2), in closed form.

In the limit ``|λ| → ∞`` a neuron's hyperplane ``x₁ = ζ`` sees the data on one side only:
``+`` (λ > 0, active for ``x₁ > ζ``) or ``−`` (λ < 0, active for ``x₁ < ζ``). With
``x₁ ~ N(0, 1)`` and the stripe label ``y = −1`` on ``x_min < x₁ < x_max``, ``+1`` outside,

    C₁^±(ζ) = ⟨y x₁ Θ(±(x₁ − ζ))⟩,    C_b^±(ζ) = ⟨y Θ(±(x₁ − ζ))⟩,

and ``dζ/dt ∝ −[d C_b^±(ζ) + ζ C₁^±(ζ)] = −G^±(ζ)`` (Eq. 6; the factor β/(τ ω₁), dropped by
the paper, has the sign of C₁ asymptotically). A fixed point ``z*`` is a zero of ``G^±``;
it is stable along e₁ when ``sign(C₁) G'(z*) > 0`` and compressing (λ diverges) when
``λ C₁(z*) y(z*) < 0`` or ``√(2π)|C₁(z*)| > e^{−z*²/2}`` (App. C.2; the 2π of Eq. (15) is a
typo for √(2π)). Its growth time is ``τ*/τ = 1/(|C₁(z*)| √(1 + z*²/d))`` (Eq. 14).
The Gaussian averages are closed forms: ``⟨x₁ 1[a<x₁<b]⟩ = φ(a) − φ(b)`` and
``⟨1[a<x₁<b]⟩ = Φ(b) − Φ(a)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import STRIPE_X_MAX, STRIPE_X_MIN

_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


def _phi(x: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x) if math.isfinite(x) else 0.0


def _Phi(x: float) -> float:  # noqa: N802 - the normal CDF's usual name
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _mass(a: float, b: float) -> tuple[float, float]:
    """``(⟨1[a<x<b]⟩, ⟨x 1[a<x<b]⟩)`` for ``x ~ N(0, 1)`` (zero when ``a ≥ b``)."""
    if a >= b:
        return 0.0, 0.0
    return _Phi(b) - _Phi(a), _phi(a) - _phi(b)


def stripe_averages(zeta: float, side: int, x_min: float = STRIPE_X_MIN, x_max: float = STRIPE_X_MAX
                    ) -> tuple[float, float]:
    """``(C_b^±(ζ), C₁^±(ζ))`` of the single stripe for ``side = +1`` (x₁ > ζ) or ``−1`` (x₁ < ζ)."""
    lo, hi = (zeta, math.inf) if side > 0 else (-math.inf, zeta)
    m_all, x_all = _mass(lo, hi)
    m_in, x_in = _mass(max(lo, x_min), min(hi, x_max))
    return m_all - 2 * m_in, x_all - 2 * x_in


def stripe_label(x1: float, x_min: float = STRIPE_X_MIN, x_max: float = STRIPE_X_MAX) -> float:
    """The single-stripe label ``y(x₁)``."""
    return -1.0 if x_min < x1 < x_max else 1.0


def g_function(zeta: float, side: int, d: int) -> float:
    """``G^±(ζ) = d C_b^±(ζ) + ζ C₁^±(ζ)`` (Eq. 6: its zeros are the fixed points)."""
    cb, c1 = stripe_averages(zeta, side)
    return d * cb + zeta * c1


@dataclass(frozen=True)
class FixedPoint:
    """A zero of ``G^±``: location, side (+1: λ > 0), stability, compression and growth time."""

    z: float
    side: int
    stable: bool
    compressing: bool
    tau_ratio: float

    @property
    def attractor(self) -> bool:
        """Stable along e₁ and compressing (λ diverges): an attractor of Fig. 3c."""
        return self.stable and self.compressing


def fixed_points(d: int, lo: float = -4.0, hi: float = 4.0, n_grid: int = 4001) -> list[FixedPoint]:
    """Every zero of ``G^+`` and ``G^−`` on ``[lo, hi]`` (sign changes on a grid refined by
    bisection to machine precision), with its stability, compression condition and ``τ*/τ``."""
    out = []
    grid = np.linspace(lo, hi, n_grid)
    for side in (1, -1):
        vals = [g_function(float(z), side, d) for z in grid]
        for a, b, ga, gb in zip(grid[:-1], grid[1:], vals[:-1], vals[1:]):
            if ga == 0.0 or ga * gb > 0:
                continue
            a, b = float(a), float(b)
            for _ in range(200):
                m = 0.5 * (a + b)
                if m in (a, b):
                    break
                gm = g_function(m, side, d)
                if (gm > 0) == (ga > 0):
                    a, ga = m, gm
                else:
                    b = m
            z = 0.5 * (a + b)
            _, c1 = stripe_averages(z, side)
            eps = 1e-6
            slope = (g_function(z + eps, side, d) - g_function(z - eps, side, d)) / (2 * eps)
            stable = math.copysign(1.0, c1) * slope > 0
            compressing = (side * c1 * stripe_label(z) < 0
                           or math.sqrt(2 * math.pi) * abs(c1) > math.exp(-0.5 * z * z))
            tau = 1.0 / (abs(c1) * math.sqrt(1 + z * z / d)) if c1 != 0 else math.inf
            out.append(FixedPoint(z, side, stable, compressing, tau))
    return out


def attractors(d: int) -> list[FixedPoint]:
    """The stable, compressing fixed points (the attractors of the compressing regime)."""
    return [f for f in fixed_points(d) if f.attractor]
