"""Figures of the fixed-point (Fig. 3b/c) and α-scan (Fig. 11) parts of the ``compression`` report."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..framework.report import FigureSpec
from .config import CompressionConfig
from .theory import attractors, g_function


def fixed_point_figure(cfg: CompressionConfig, rows: list[dict[str, Any]]) -> FigureSpec:
    """Left: ``G^±(ζ)`` with the attractors; right: histograms of the amplified neurons' z₁."""
    att = attractors(cfg.fp_d)

    def draw(fig):
        ax1, ax2 = fig.subplots(1, 2)
        z = np.linspace(-3, 3, 601)
        for side, col, lab in ((1, "tab:blue", "λ > 0"), (-1, "tab:red", "λ < 0")):
            ax1.plot(z, [-g_function(float(v), side, cfg.fp_d) for v in z], color=col, label=f"−G^± ({lab})")
            amp = [r["z1"] for r in rows if abs(r["lam"]) > cfg.fp_lambda_min and (r["lam"] > 0) == (side > 0)]
            if amp:
                ax2.hist(np.clip(amp, -3, 3), bins=np.arange(-3, 3.05, 0.1), color=col, alpha=0.6,
                         label=f"neurons, {lab}")
        for a in att:
            col = "tab:blue" if a.side > 0 else "tab:red"
            ax1.plot([a.z], [0], "o", color=col, ms=6)
            ax2.axvline(a.z, color=col, ls="--", lw=0.8)
        ax1.axhline(0, color="k", lw=0.5)
        ax1.set_xlabel("ζ₁")
        ax1.set_ylabel("∝ dζ₁/dt (|λ| → ∞)")
        ax1.legend(fontsize=7)
        ax2.set_xlabel("z₁ of neurons with |λ_n| > " + f"{cfg.fp_lambda_min:g}")
        ax2.set_ylabel("neurons (all seeds)")
        ax2.legend(fontsize=7)

    return FigureSpec("fixed_points", f"Fixed points of the compressing regime (Fig. 3b/c), d = {cfg.fp_d}",
                      "Left: the fixed-point function of Eq. (6) in the limit |λ| → ∞ (its sign is that of dζ₁/dt up "
                      "to the factor β/(τω₁)); dots: the predicted attractors. Right: z₁ = −√d b ω₁/‖ω‖² of the "
                      f"neurons amplified at t* (p = {cfg.fp_p}, h = {cfg.fp_width}), by sign of λ; dashed: the "
                      "attractors.", draw, (11, 4))


def alpha_figure(cfg: CompressionConfig, rows: list[dict[str, Any]]) -> FigureSpec:
    """Fig. 11: test error, t* and Λ*, Λ_max vs α (mean over seeds)."""
    alphas = sorted({r["alpha"] for r in rows})

    def mean(key: str) -> list[float]:
        return [float(np.nanmean([r[key] for r in rows if r["alpha"] == a])) for a in alphas]

    def draw(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        ax1.plot(alphas, mean("test_error"), "o-", label="network")
        ax1.axhline(float(np.nanmean([r["lazy_error"] for r in rows])), color="tab:red", ls="--",
                    label="frozen initial NTK")
        ax1.set_ylabel("test error")
        ax2.plot(alphas, mean("t_star"), "o-")
        ax2.set_yscale("log")
        ax2.set_ylabel("t* / h")
        ax3.plot(alphas, mean("lambda_star"), "o-", label="Λ*")
        ax3.plot(alphas, mean("lambda_max"), "s--", label="Λ_max")
        ax3.set_yscale("log")
        for ax in (ax1, ax2, ax3):
            ax.set_xscale("log")
            ax.set_xlabel("α")
        ax1.legend(fontsize=7)
        ax3.legend(fontsize=7)

    return FigureSpec("alpha_scan", "α-scan from the feature to the lazy regime (Fig. 11)",
                      f"Single stripe, d = {cfg.alpha_d}, p = {cfg.alpha_p}, h = {cfg.alpha_width}, mean over "
                      f"{cfg.alpha_seeds} seeds (data and initialization shared by every α of a seed). Left: test "
                      "error and (dashed) kernel learning with the frozen initial NTK; center: t* (10 % of the "
                      "margins met); "
                      "right: Λ* and Λ_max.", draw, (13, 4))
