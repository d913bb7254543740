"""Figures, tables and the report of the ``compression`` study (from the stored tables only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...analysis.compression import beta_feature, beta_lazy
from ..framework.report import FigureSpec, ReportContent, TableSpec
from .claims import Fit, cnn_learning_curves, median_by, parse_rows, read_results, scaling_claims, signature_claims
from .claims_extra import alpha_scan_claims, fixed_point_claims
from .config import CNN_CURVES, CNN_NAMES, CNN_PAPER_BETA, TITLE, CompressionConfig
from .figures_extra import alpha_figure, fixed_point_figure


def build_report(cfg: CompressionConfig, store: Any) -> ReportContent:
    """Summary, claims, tables and figures of a run (its stored tables only)."""
    res = read_results(store)
    runs, traj, kern, spec = res.runs, res.traj, res.kern, res.spec
    scaling = scaling_claims(cfg, runs)
    models, fits = scaling.models, scaling.fits
    sig_models, sig_rows, sig_claims = signature_claims(cfg, models, kern, spec)
    cnn_rows, cnn_fits, cnn_claims = cnn_learning_curves(cfg, [r for r in kern if r["model"] == "cnn"],
                                                         [r for r in traj if r["model"] == "cnn"])
    fp_rows = parse_rows(store.read("fixed_points"))
    fp_table, fp_claims = fixed_point_claims(cfg, fp_rows) if cfg.fixed_points or fp_rows else ([], [])
    alpha_rows = parse_rows(store.read("alpha_scan"), skip=("stop",))
    claims = scaling.claims + sig_claims + fp_claims + alpha_scan_claims(cfg, alpha_rows) + cnn_claims
    summary_rows = scaling.summary_rows
    cnn_net = [r for r in kern if r["model"] == "cnn" and r["kernel"] == "network"]
    summary = [
        f"Models: {', '.join(models)}; width h = {cfg.width}, α = {cfg.alpha:g}, {cfg.seeds} seeds per p "
        f"(+ {cfg.lambda_seeds} seeds trained up to t* only, for Λ*; Λ*-only runs with every seed at p = "
        f"{', '.join(map(str, cfg.lambda_p_values)) or 'none'}), "
        f"{cfg.n_test} test points; gradient descent on the hinge loss in the paper's time t (reported in units of h), "
        f"adaptive dt (max_dgrad {cfg.max_dgrad:g}, max_dout {cfg.max_dout:g}, dgrad rule waived below "
        f"{cfg.dt_min:g}·h); stop at {cfg.stop_fraction:.0%} of margins met or {cfg.max_steps} steps.",
        "Lazy regime: kernel learning with the frozen finite-width NTK of f₀ (tl.ntk), by "
        + ("the kernel SVC of the lazy-regime theory" if cfg.kernel_solver == "svc" else
           "hinge kernel gradient descent until all margins are met (the paper's)")
        + "; compressed lazy: the same on x_⊥/Λ* with the run's own Λ*.",
    ]
    if cnn_net:
        ps = sorted({int(r["p"]) for r in cnn_net})
        seeds = sorted({int(r["seed"]) for r in cnn_net})
        steps = [int(r["steps"]) for r in cnn_net]
        summary.append(f"CNN part: the 16-convolution MnasNet-like CNN (h = {cfg.cnn_width}) on {cfg.cnn_dataset} "
                       f"parity, p = {', '.join(map(str, ps))} training images (each with an independent kernel set "
                       f"of p images), {len(seeds)} seed(s), α = {cfg.cnn_alpha:g}, soft hinge β = "
                       f"{cfg.cnn_loss_beta:g}, adaptive full-batch gradient descent until {cfg.stop_fraction:.0%} of "
                       f"the margins are met or {cfg.cnn_steps} steps ({min(steps)}–{max(steps)} steps taken).")
    stops = {}
    for r in runs:
        stops[r["stop"]] = stops.get(r["stop"], 0) + 1
    if stops:
        summary.append("Training stopped by: " + ", ".join(f"{k} ({v} runs)" for k, v in sorted(stops.items())))
    notes = [
        "Exponents are least-squares slopes of log(median over seeds) vs log p; intervals are 95 % percentile "
        "intervals of a bootstrap over seeds at each p (with a single seed: the OLS t-interval of the slope). "
        "Claims are decided on their intervals: 'inconclusive' when the interval straddles the threshold.",
        "stripe_hd is the single stripe in the paper's higher dimension d = 10 (Fig. 2, Fig. 5), with the same "
        "width, seeds and stopping rule as the d = 5 stripe.",
        "Kernel PCA (the label-concentration claims, Fig. 9) uses the Gram matrix on the independent kernel set of "
        "p points (the released code computes its evolving kernels on that set) with the network at its stopping "
        "point; the 'at least doubles' criterion is the change seen at h = 500 after 6000 steps.",
        "CNN exponents: the 'predicted' column holds the paper's measured MNIST values (Fig. 8: network and final "
        "NTK ≈ 0.5, initial NTK ≈ 0.3), not a theoretical prediction; digits are 8×8 and p is far smaller.",
        "The network is stopped at stop_fraction of the margins (paper: all margins): "
        "the paper's criterion needs ~10⁴ steps at p = 512 on CPU, so the feature test error is that of the "
        "stopped network.",
    ]
    tables = [
        TableSpec("Medians over seeds", ["model", "metric", "p", "median", "q1", "q3", "n"], summary_rows,
                  max_rows=None, link="tables/runs.csv"),
        TableSpec("Predicted and fitted exponents", ["model", "quantity", "fitted", "ci_low", "ci_high", "ci",
                                                     "predicted"],
                  _exponent_rows(cfg, models, fits), max_rows=None),
    ]
    if cnn_rows:
        tables.append(TableSpec(f"CNN on {cfg.cnn_dataset} parity: test error vs p (network and kernel learning with "
                                "frozen kernels)", ["kernel", "p", "median", "min", "max", "seeds", "fitted (min)"],
                                cnn_rows, max_rows=None, link="tables/kernels.csv",
                                caption="fitted (min): the smallest fraction of training margins y F ≥ 1 met when the "
                                "network stopped, over seeds."))
        tables[1].rows += _cnn_exponent_rows(cnn_fits)
    if sig_rows:
        tables.append(TableSpec(f"NTK signatures at p = {cfg.ntk_p} (CNN: p = {cfg.cnn_p}; medians over seeds)",
                                list(sig_rows[0].keys()), sig_rows, max_rows=None, link="tables/spectra.csv"))
    if fp_table:
        tables.append(TableSpec(f"Fixed points (d = {cfg.fp_d}): predicted attractors and the amplified neurons near "
                                "them", list(fp_table[0].keys()), fp_table, max_rows=None,
                                link="tables/fixed_points.csv"))
    if alpha_rows:
        tables.append(TableSpec("α-scan (Fig. 11): one row per α and seed", ["alpha", "seed", "t_star", "lambda_star",
                                                                             "lambda_max", "test_error", "lazy_error",
                                                                             "steps", "stop"],
                                alpha_rows, max_rows=None, link="tables/alpha_scan.csv"))
    figures = _figures(cfg, models, runs, traj, spec, fits, sig_models)
    if fp_rows:
        figures.append(fixed_point_figure(cfg, fp_rows))
    if alpha_rows:
        figures.append(alpha_figure(cfg, alpha_rows))
    if cnn_rows:
        figures.append(_cnn_figure(cfg, cnn_rows, cnn_fits))
    return ReportContent(title=TITLE, summary=summary, claims=claims, figures=figures, tables=tables,
                         notes=notes)




def _cnn_exponent_rows(fits: dict[str, Fit | None]) -> list[dict[str, Any]]:
    return [{"model": "cnn", "quantity": f"β {CNN_NAMES[k]}", "fitted": f["value"], "ci_low": f["lo"],
             "ci_high": f["hi"], "ci": f["ci"], "predicted": CNN_PAPER_BETA.get(k, math.nan)}
            for k in CNN_CURVES if (f := fits.get(k)) is not None]


def _cnn_figure(cfg: CompressionConfig, rows: list[dict[str, Any]],
                fits: dict[str, Fit | None]) -> FigureSpec:
    style = {"network": ("tab:blue", "-"), "ntk_init": ("tab:red", "--"), "ntk_final": ("tab:orange", "-"),
             "last_init": ("tab:green", "--"), "last_final": ("tab:green", "-")}

    def draw(fig):
        ax = fig.subplots()
        for name in CNN_CURVES:
            pts = sorted((r["p"], r["median"]) for r in rows if r["kernel"] == name and r["median"] > 0)
            if not pts:
                continue
            f = fits.get(name)
            col, ls = style[name]
            ax.plot(*zip(*pts), ls, marker="o", color=col,
                    label=f"{CNN_NAMES[name]}: β = {f['value']:.2f}" if f else CNN_NAMES[name])
        ps = sorted({r["p"] for r in rows})
        if len(ps) >= 2:
            top = max(r["median"] for r in rows if r["p"] == ps[0])
            for b, ls in ((0.5, ":"), (0.3, "-.")):
                ax.plot(ps, top * 1.15 * (np.asarray(ps) / ps[0]) ** (-b), "k" + ls, lw=0.8, label=f"p^−{b} (paper)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("p (training images)")
        ax.set_ylabel("test error")
        ax.legend(fontsize=7)

    return FigureSpec("cnn_learning_curves", f"CNN on {cfg.cnn_dataset} parity: learning curves (Fig. 8)",
                      "Median test error over seeds of the MnasNet-like CNN (feature regime) and of kernel learning "
                      "with its NTK and last-layer kernel frozen at initialization (dashed) and after training "
                      "(solid), each trained on an independent set of p images; dotted/dash-dotted: the paper's "
                      "MNIST slopes −1/2 and −1/3.", draw, (6.5, 4.5))


def _exponent_rows(cfg: CompressionConfig, models: list[str], fits: dict) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        d, d_par = cfg.dims(m)
        pred = {"lambda_star": 0.5, "lambda_max": 0.5, "test_error": beta_feature(d, d_par), "lazy_error": beta_lazy(d),
                "compressed_error": beta_feature(d, d_par)}
        names = {"lambda_star": "slope of Λ*", "lambda_max": "slope of Λ_max", "test_error": "β feature (network)",
                 "lazy_error": "β lazy (initial NTK)", "compressed_error": "β compressed lazy"}
        for k, name in names.items():
            f = fits.get((m, k))
            if f is not None:
                rows.append({"model": m, "quantity": name, "fitted": f["value"], "ci_low": f["lo"], "ci_high": f["hi"],
                             "ci": f["ci"], "predicted": pred[k]})
    return rows


_P_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def _figures(cfg: CompressionConfig, models: list[str], runs: list[dict[str, Any]], traj: list[dict[str, Any]],
             spec: list[dict[str, Any]], fits: dict, sig_models: list[str] | None = None) -> list[FigureSpec]:
    figs: list[FigureSpec] = []
    smodels = [m for m in (sig_models or models) if any(r["model"] == m for r in spec)]
    if not models:
        return figs

    def draw_lambda_t(fig):
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, m in zip(axes, models):
            ps = sorted({r["p"] for r in traj if r["model"] == m})
            for i, p in enumerate(ps):
                for s in sorted({r["seed"] for r in traj if r["model"] == m and r["p"] == p and r["seed"] < cfg.seeds}):
                    pts = sorted((r["t"], r["lambda"]) for r in traj if r["model"] == m and r["p"] == p
                                 and r["seed"] == s and r["t"] > 0)
                    if pts:
                        ax.plot(*zip(*pts), color=_P_COLORS[i % len(_P_COLORS)], lw=0.8,
                                label=f"p = {int(p)}" if s == 0 else None)
                star = [(r["t_star"], r["lambda_star"]) for r in runs if r["model"] == m and r["p"] == p
                        and math.isfinite(r["t_star"])]
                if star:
                    ax.plot(*zip(*star), "o", color=_P_COLORS[i % len(_P_COLORS)], ms=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("t / h")
            ax.set_ylabel("Λ(t)")
            ax.set_title(m, fontsize=9)
            ax.legend(fontsize=7)

    figs.append(FigureSpec("lambda_t", "Λ(t): amplification factor during training",
                           "Global amplification factor Λ (Eq. 9; d_∥ > 1 form for the cylinder) vs time, one line per "
                           "full-run seed (at the Λ*-only sizes these stop at t*); dots: Λ* at t* (10 % of the margins "
                           "met), every seed.", draw_lambda_t, (5 * len(models), 4)))

    def draw_lambda_p(fig):
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, m in zip(axes, models):
            rr = [r for r in runs if r["model"] == m]
            for metric, col, lab in (("lambda_star", "tab:blue", "Λ*"), ("lambda_max", "tab:orange", "Λ_max")):
                xs, med, samples = median_by(rr, "p", metric)
                if not xs:
                    continue
                lo = [med[i] - np.quantile(s, 0.25) for i, s in enumerate(samples)]
                hi = [np.quantile(s, 0.75) - med[i] for i, s in enumerate(samples)]
                f = fits.get((m, metric))
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", color=col, capsize=2,
                            label=f"{lab} (slope {f['value']:.2f})" if f else lab)
                if metric == "lambda_star":
                    ref = med[0] * np.sqrt(np.asarray(xs) / xs[0])
                    ax.plot(xs, ref, "k--", lw=0.8, label="∝ √p")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("p")
            ax.set_title(m, fontsize=9)
            ax.legend(fontsize=7)

    figs.append(FigureSpec("lambda_p", "Λ* and Λ_max vs p", "Medians over seeds (bars: quartiles), with the √p "
                           "reference slope.", draw_lambda_p, (5 * len(models), 4)))

    def draw_curves(fig):
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, m in zip(axes, models):
            d, d_par = cfg.dims(m)
            rr = [r for r in runs if r["model"] == m]
            for metric, col, lab, pred in (("test_error", "tab:blue", "feature (network)", beta_feature(d, d_par)),
                                           ("lazy_error", "tab:red", "lazy (initial NTK)", beta_lazy(d)),
                                           ("compressed_error", "tab:purple", "compressed lazy",
                                            beta_feature(d, d_par))):
                xs, med, samples = median_by(rr, "p", metric)
                if not xs:
                    continue
                f = fits.get((m, metric))
                ax.plot(xs, med, "o-" if metric != "compressed_error" else "o--", color=col,
                        label=f"{lab}: β = {f['value']:.2f}" if f else lab)
                if metric != "compressed_error" and med[0] > 0:
                    ax.plot(xs, med[0] * (np.asarray(xs) / xs[0]) ** (-pred), ":", color=col, lw=1,
                            label=f"predicted β = {pred:.3f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("p")
            ax.set_ylabel("test error")
            ax.set_title(f"{m} (d = {d}, d_∥ = {d_par})", fontsize=9)
            ax.legend(fontsize=7)

    figs.append(FigureSpec("learning_curves", "Learning curves: feature vs lazy vs compressed lazy",
                           "Median test error over seeds; dotted: the predicted exponents anchored at the smallest p.",
                           draw_curves, (5.5 * len(models), 4.2)))

    if smodels:
        def draw_spec(fig):
            axes = fig.subplots(len(smodels), 2, squeeze=False)
            for row, m in enumerate(smodels):
                ax1, ax2 = axes[row]
                sp = cfg.cnn_p if m == "cnn" else cfg.ntk_p
                for name, col, ls in (("ntk_init", "tab:red", "-"), ("ntk_final", "tab:orange", "-"),
                                      ("last_init", "tab:red", "--"), ("last_final", "tab:orange", "--")):
                    sel = [r for r in spec if r["model"] == m and r["kernel"] == name and r["p"] == sp]
                    xs, med, _ = median_by(sel, "r", "cumulative")
                    if xs:
                        ax1.plot(xs, med, ls, marker=".", color=col, label=name)
                    xs, med, _ = median_by(sel, "r", "mi")
                    if xs:
                        ax2.plot(xs, med, ls, marker="o", ms=3, color=col, label=name)
                ax1.set_xscale("log")
                ax1.set_xlabel("r (eigenvector rank)")
                ax1.set_ylabel("Σ_(r'≤r) ω_r'²")
                ax1.set_title(f"{m}: cumulative label projection", fontsize=9)
                ax2.set_xlabel("r")
                ax2.set_ylabel("I(φ_r; y) (bits)")
                ax2.set_title(f"{m}: label information per eigenvector", fontsize=9)
                ax1.legend(fontsize=7)

        figs.append(FigureSpec("ntk_label_projections", "Labels on NTK eigenvectors: initialization vs end",
                               "Kernel PCA of the NTK (solid) and the last-layer kernel (dashed) on an independent "
                               f"set of p = {cfg.ntk_p} points (CNN: {cfg.cnn_p} images), at initialization (red) and "
                               "after training (orange); medians over seeds. Left: cumulative label projection; "
                               "right: k-NN mutual information.",
                               draw_spec, (11, 4 * len(smodels))))
    return figs


