"""Figures, tables and the report of the ``adaptive-tangent`` study (from the stored tables only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..framework.report import FigureSpec, ReportContent, TableSpec
from .alignment_claims import Alignment, alignment_claims, alignment_summary
from .claims import Results, check_claims, read_results, solver_claims, sweep_claims, sweep_summary
from .config import KERNELS, SWEEP_ARCHS, SWEEP_MODELS, TARGETS, TITLE, AdaptiveTangentConfig


def build_report(cfg: AdaptiveTangentConfig, store: Any) -> ReportContent:
    """Summary, claims, tables and figures of a run (its stored tables only)."""
    res = read_results(store)
    checks, smet = res.checks, res.smet
    al = alignment_summary(res.align)
    summary_rows = al.summary_rows
    sweep_rows = sweep_summary(res.sweep)
    claims = (check_claims(checks, res.pens) + alignment_claims(cfg, res.align, res.quad, al) + solver_claims(smet)
              + sweep_claims(cfg, res.sweep))
    summary = [f"dataset {cfg.dataset} (2 vs 3, {cfg.normalization} normalization), MLP width {cfg.width}, "
               f"{cfg.seeds} seed(s), {cfg.train_steps} GD steps, quadrature {cfg.quadrature} × "
               f"{cfg.quadrature_points}."]
    figures = make_figures(cfg, res, al)
    tables = [TableSpec("Deterministic checks", ["part", "check", "measured", "reference", "tolerance", "held"],
                        [dict(c) for c in checks], link="tables/checks.csv")]
    if summary_rows:
        tables.append(TableSpec("Kernel alignment with K_ŷ (mean over seeds)",
                                ["family", "target", "kernel", "cos", "cka", "norm_ratio", "lsq_a", "lsq_c",
                                 "lsq_residual", "diag_ratio"], summary_rows, link="tables/alignment.csv"))
    if smet:
        tables.append(TableSpec("Model A solver (first seed)", ["family", "target", "metric", "value"],
                                [dict(r) for r in smet], link="tables/solver_metrics.csv"))
    if sweep_rows:
        tables.append(TableSpec(f"Fig. 4 sweep on {cfg.sweep_dataset}: best test error over seeds",
                                ["arch", "n_train", "model", "mean", "std", "seeds", "mean_epochs"], sweep_rows,
                                max_rows=None, link="tables/sweep.csv"))
    notes = ["Kernels live on the N training points (C = 1); cos is the Frobenius cosine (the paper's 'sim'), cka the "
             "alignment after centering over examples.",
             "Ktheorem1 = K0 + (s²−1)/‖β̂‖²·K_ŷ is Theorem 1's structureless adapted kernel for r = f_θ̂ − f_θ0.",
             "The solver uses r = f_θ̂ − f_θ0 of the trained network (= ŷ − f0 at interpolation) and ω = "
             f"{cfg.solver_penalty} for every factor, the last layer's M2 fixed (χ_{{1}}), λ = {cfg.solver_scale:g}.",
             "Fig. 4 is supplementary (arXiv v1/v2 and the authors' repo, not the CPAL text); early stopping selects "
             "on the test set, as in the repo. Fixed = f0 + J0δ; adaptive = f0 + J0δ with δ_ℓ = M1 W M2 per Linear "
             "layer and, per Conv2d, "
             + ("δ[s,i,o] = Ms[s,s'] M1[i,i'] W[s',i',o'] M2[o',o] (spatial, in- and out-channel factors: the "
                "repo's Tucker-style extension)" if cfg.sweep_conv_factors == "tucker" else
                "δ = M1 W M2 on the (c_in·kh·kw) × c_out matricization")
             + f"; CNN: {len(cfg.sweep_channels)} blocks [conv 3×3, ReLU, avg-pool 2×2] with channels "
             f"{', '.join(map(str, cfg.sweep_channels))}, then {cfg.sweep_depth} Linear layers (width "
             f"{cfg.sweep_width}); the preset fig4_cifar is the repo's CIFAR-10 CNN."]
    return ReportContent(TITLE, summary, claims, figures, tables, notes)




def make_figures(cfg: AdaptiveTangentConfig, res: Results, al: Alignment) -> list[FigureSpec]:
    """Figs. 1-4 of the paper and the preprint, the quadrature, solver and training curves."""
    pens, maps, diag, align, quad = res.pens, res.maps, res.diag, res.align, res.quad
    solver, sspec, sweep, training = res.solver, res.sspec, res.sweep, res.training
    A, seeds, fams = al.values, al.seeds, al.fams
    figs: list[FigureSpec] = []
    if pens:
        def draw_pen(fig):
            ax1, ax2 = fig.subplots(1, 2)
            labels = {"w1": "ω̃₁, ω₁=(v−1)²", "w2": "ω̃₂, ω₂=|v−1|", "w3": "(ω₁⊕ω₂)~", "v2": "v²"}
            for k, lab in labels.items():
                pts = sorted((r["v"], r["value"]) for r in pens if r["penalty"] == k)
                ax1.plot(*zip(*pts), "--" if k == "v2" else "-", color="0.5" if k == "v2" else None, label=lab)
            ax1.set_ylim(0, 8)
            ax1.set_xlabel("v")
            ax1.legend(fontsize=7)
            pts = sorted((r["v"], r["value"]) for r in pens if r["penalty"] == "joint")
            ax2.plot(*zip(*pts))
            ax2.set_xlabel("v")
            ax2.set_title("joint penalty (ω₁⊕ω₂)(v)", fontsize=9)

        figs.append(FigureSpec("fig2_penalties", "Fig. 2: effective penalties",
                               "Effective penalties are ≈ v² near 0 and sub-quadratic for large v (left); the joint "
                               "penalty ω₁⊕ω₂ (right).", draw_pen, (10, 3.6)))
    for fam in fams:
        sub = [r for r in maps if r["family"] == fam]
        if not sub:
            continue

        def draw_maps(fig, sub=sub, fam=fam):
            axes = fig.subplots(2, 4, squeeze=False)
            for i, tgt in enumerate(TARGETS):
                for j, kern in enumerate(("K0", "Kbar", "Kfinal", "Ky")):
                    pts = [r for r in sub if r["target"] == tgt and r["kernel"] == kern]
                    if not pts:
                        continue
                    n = int(max(r["row"] for r in pts)) + 1
                    M = np.zeros((n, n))
                    for r in pts:
                        M[int(r["row"]), int(r["col"])] = r["value"]
                    lim = np.abs(M).max()
                    ax = axes[i, j]
                    ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    sim = A.get((seeds[0], fam, tgt, {"Ky": "", "K0": "K0", "Kbar": "Kbar",
                                                      "Kfinal": "Kfinal"}[kern], "cos")) if kern != "Ky" else 1.0
                    ax.set_title(f"{kern} ({'y' if tgt == 'y' else 'sign(y)'}) sim={sim:.2f}", fontsize=8)

        figs.append(FigureSpec(f"fig1_kernels_{fam}", f"Fig. 1: kernels, {fam} targets (seed {int(seeds[0])})",
                               "Kernels on the training points sorted by y (block-averaged), symmetric colour limits; "
                               "sim = cosine with K_ŷ. Top: linear targets y; bottom: sign(y).", draw_maps, (11, 5.6)))
    for fam in fams:
        sub = [r for r in diag if r["family"] == fam and r["seed"] == seeds[0]]
        if not sub:
            continue

        def draw_diag(fig, sub=sub):
            ax1, ax2 = fig.subplots(1, 2)
            s = sorted((r["y"], r["target_value"]) for r in sub if r["target"] == "sign")
            ax1.plot([a for a, _ in s], [b for _, b in s], ".", ms=3, label="ŷ = sign(y)")
            ax1.plot([a for a, _ in s], [a for a, _ in s], "k:", label="y")
            ax1.set_xlabel("y")
            ax1.legend(fontsize=7)
            for tgt, mk in (("y", "o"), ("sign", "x")):
                pts = [(r["y"], r["diag_Kbar"]) for r in sub if r["target"] == tgt]
                ax2.plot(*zip(*pts), mk, ms=3, alpha=0.6, label=f"diag K̄ ({tgt})")
            ax3 = ax2.twinx()
            ax3.plot([a for a, _ in s], [b - a for a, b in s], "r--", lw=0.8)
            ax3.set_ylabel("sign(y) − y", color="r")
            ax2.set_xlabel("y")
            ax2.legend(fontsize=7)

        figs.append(FigureSpec(f"fig3_diagonal_{fam}", f"Fig. 3: targets and diag K̄ vs y ({fam} targets)",
                               "Left: the binarized target against y. Right: diagonal of the average-feature kernel "
                               "for the two targets, and the residual sign(y) − y (red).", draw_diag, (10, 3.6)))
    if align:
        def draw_align(fig):
            axes = fig.subplots(1, len(fams), squeeze=False)[0]
            for ax, fam in zip(axes, fams):
                for j, kern in enumerate(KERNELS):
                    for i, tgt in enumerate(TARGETS):
                        vals = [A.get((s, fam, tgt, kern, "cos"), math.nan) for s in seeds]
                        ax.bar(j * 3 + i, np.nanmean(vals), color="tab:blue" if tgt == "y" else "tab:orange",
                               label=("y" if tgt == "y" else "sign(y)") if j == 0 else None)
                        ax.plot([j * 3 + i] * len(vals), vals, "k.", ms=3)
                ax.set_xticks([j * 3 + 0.5 for j in range(len(KERNELS))], KERNELS, fontsize=8)
                ax.set_ylabel("cos(K, K_ŷ)")
                ax.set_title(f"{fam} targets", fontsize=9)
                ax.legend(fontsize=7)

        figs.append(FigureSpec("alignment", "Alignment with the label kernel",
                               "Cosine of each kernel with K_ŷ (bars: mean over seeds; dots: seeds).", draw_align,
                               (5 * len(fams) + 1, 3.6)))
    if quad:
        def draw_quad(fig):
            ax = fig.subplots()
            for key in sorted({(r["seed"], r["family"], r["target"]) for r in quad}):
                pts = sorted((r["n"], r["rel_error"]) for r in quad if (r["seed"], r["family"], r["target"]) == key)
                ax.loglog(*zip(*pts), "o-", ms=3, lw=0.8, label=f"s{int(key[0])} {key[1]}/{key[2]}")
            ax.set_xlabel("quadrature points")
            ax.set_ylabel("‖f0 + J̄Δθ − f_θ̂‖ / ‖f_θ̂‖")
            ax.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("quadrature", "Average-feature identity vs quadrature size",
                               f"Relative error of the {cfg.quadrature} quadrature.", draw_quad, (6, 3.6)))
    if solver:
        def draw_solver(fig):
            ax1, ax2 = fig.subplots(1, 2)
            for key in sorted({(r["family"], r["target"]) for r in solver}):
                pts = sorted((r["step"] / 2, r["objective"]) for r in solver if (r["family"], r["target"]) == key)
                ax1.semilogy(*zip(*pts), ".-", ms=3, label=f"{key[0]}/{key[1]}")
            ax1.set_xlabel("round")
            ax1.set_ylabel("objective")
            ax1.legend(fontsize=7)
            for key in sorted({(r["family"], r["target"], r["layer"]) for r in sspec}):
                for method, ls in (("ntk", ":"), ("adaptive", "-")):
                    pts = sorted((r["index"], r["value"]) for r in sspec
                                 if (r["family"], r["target"], r["layer"]) == key and r["method"] == method)
                    if pts and key[0] == sorted({r["family"] for r in sspec})[-1]:
                        top = max(pts[0][1], 1e-300)
                        ax2.semilogy([p[0] for p in pts], [max(p[1] / top, 1e-6) for p in pts], ls, lw=0.9,
                                     label=f"{key[1]} L{int(key[2])} {method}")
            ax2.set_ylim(1e-4, 1.5)
            ax2.set_xlabel("index")
            ax2.set_ylabel(f"σ_j(B_ℓ) / σ_1 ({sorted({r['family'] for r in sspec})[-1]} targets)")
            ax2.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("solver", "Model A solver on the initial tangent features",
                               "Left: objective after every half step (starts at the NTK value). Right: singular "
                               "values "
                               "of B̂_ℓ (solid) vs the ridgeless NTK solution's (dotted).", draw_solver, (10, 3.8)))
    archs = [a for a in SWEEP_ARCHS if any((r.get("arch") or "mlp") == a for r in sweep)]
    if archs:
        rows = sweep_summary(sweep)

        def draw_sweep(fig):
            axes = fig.subplots(1, len(archs), squeeze=False)[0]
            for ax, arch in zip(axes, archs):
                for model in SWEEP_MODELS:
                    pts = [(r["n_train"], r["mean"], r["std"]) for r in rows if r["arch"] == arch
                           and r["model"] == model]
                    if pts:
                        n, m, sd = zip(*pts)
                        ax.errorbar(n, m, yerr=[0 if v != v else v for v in sd], marker="o", capsize=2,
                                    label={"standard": "NN", "fixed": "Fixed", "adaptive": "Adaptive"}[model])
                ax.set_xscale("log")
                ax.set_xlabel("training examples")
                ax.set_ylabel("test error")
                ax.set_title(f"{arch.upper()} on {cfg.sweep_dataset}", fontsize=9)
                ax.legend()

        figs.append(FigureSpec("fig4_sweep", "Fig. 4 (preprint): fixed vs adaptive vs standard",
                               "Best test error (early stopping on test accuracy, as the repo), mean ± std over seeds; "
                               "one panel per architecture (MLP; CNN with factorized conv kernels).",
                               draw_sweep, (5.5 * len(archs), 3.8)))
    if training:
        def draw_training(fig):
            ax = fig.subplots()
            for key in sorted({(r["seed"], r["family"], r["target"]) for r in training}):
                pts = sorted((r["step"], r["loss"]) for r in training if (r["seed"], r["family"], r["target"]) == key)
                ax.semilogy(*zip(*pts), lw=0.8, label=f"s{int(key[0])} {key[1]}/{key[2]}")
            ax.set_xlabel("GD step")
            ax.set_ylabel("training MSE")
            ax.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("training", "Training curves (Figs. 1/3 networks)", "Full-batch MSE.", draw_training,
                               (6, 3.6)))
    return figs
