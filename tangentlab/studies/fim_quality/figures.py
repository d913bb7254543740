"""The figures and the report of ``fim-quality`` (analogues of thesis Figs. 3.3–3.6, 4.2
right and 4.4c), built from the stored tables only."""

from __future__ import annotations

import numpy as np

from ..framework.report import FigureSpec, ReportContent, TableSpec
from ..framework.store import RunStore, atomic_write_text, cell
from .claims import Results, build_claims, label, read_results
from .claims_parts import DRIFT_LABELS
from .config import KRON, TITLE, FimQualityConfig
from .figures_parts import decorrelation_figure, ntk_figure, part_tables, trace_figure

_COLORS = {"diag": "tab:blue", "quasidiag": "tab:orange", "blockdiag": "tab:gray", "kfac": "tab:red",
           "ekfac": "tab:green", "ekfac_mb": "tab:olive", "lowrank": "tab:purple", "dense": "black"}

#: Columns of ``tables/quality_summary.csv`` (one row per group of :func:`.claims.summarize_quality`).
SUMMARY_COLUMNS = ["step", "fisher", "representation", "method", "metric", "lambda_rel", "median", "q1", "q3", "n"]


def build_report(cfg: FimQualityConfig, store: RunStore) -> ReportContent:
    """The report: summary, claims, figures, tables (and ``tables/quality_summary.csv``)."""
    res = read_results(cfg, store)
    summary, steps, kinds, reps, drift_rows = res.summary, res.steps, res.kinds, res.reps, res.drift_rows
    claims = build_claims(cfg, res)
    figures = build_figures(cfg, res)
    at = next((i + 1 for i, f in enumerate(figures) if f.name == "fig3_6_trace"), len(figures))
    figures[at:at] = trace_figure(res) + ntk_figure(store, res)
    figures += decorrelation_figure(store)
    p_info = [s for s in summary if s["metric"] == "trace" and s["representation"] == cfg.reference]
    intro = [
        "Part 1 (Figs. 3.3–3.6): a " + (f"{cfg.model} (width {cfg.width})" if cfg.model != "mlp" else "MLP")
        + f" trained on {cfg.dataset} with SGD (lr {cfg.lr}, momentum {cfg.momentum}, batch {cfg.batch_size}) "
        f"for {cfg.train_steps} steps; at steps {', '.join(map(str, steps))} the Fisher on {cfg.n_probe} training "
        f"examples ({', '.join(kinds)}; mc = {cfg.mc_samples} sampled labels per example, the same samples for F and "
        f"every approximation) in {cfg.dtype}, reference {cfg.reference}, against "
        f"{', '.join(label(r, '') for r in reps)}; medians and quartiles over {cfg.n_vectors} random unit "
        "vectors.",
        f"Part 2 (Figs. 4.2 right, 4.4c): a sigmoid MLP 64-{'-'.join(map(str, cfg.drift_hidden))}-10 trained with "
        f"SGD (lr {cfg.drift_lr}, batch {cfg.drift_batch_size}) for {cfg.drift_steps} steps; empirical Fisher "
        f"layer blocks on a fixed batch of {cfg.drift_eval_size} examples; KFAC / EKFAC basis recomputed every "
        f"{cfg.recompute_every} steps on that batch; EKFAC's s* re-estimated every step on "
        + " and ".join({"eval": "the evaluation batch (EKFAC)", "minibatch": "the training minibatch (EKFAC mb)"}[d]
                       for d in cfg.sstar_data) + "."
        if cfg.drift else "Part 2 (drift) was not run (drift = false).",
    ]
    if cfg.ntk:
        intro.append(f"Part 3 (Fig. 3.7): at the same checkpoints, the NTK Gram of f_c2 − f_c1 on {cfg.ntk_per_class} "
                     f"held-out examples of each class of {cfg.ntk_pairs} class pairs drawn with the seed; its "
                     "cosine normalization and the projections on its first 2 kernel principal components.")
    if cfg.drift:
        intro.append(f"Fig. 4.2 (left): at the first and last step of part 2, the off-diagonal share of each "
                     f"layer's empirical Fisher block in the parameter basis and in the KFE, on the evaluation batch "
                     f"and on {cfg.decor_splits} disjoint parts of it.")
    if p_info:
        intro.append("Reference traces: " + "; ".join(f"step {s['step']} {s['fisher']}: {s['median']:.4g}"
                                                      for s in p_info))
    headline = [s for s in summary if s["metric"] in ("trace_rel_err", "fro_rel_err", "mv_cos", "vTMv_rel_err")]
    tables = [
        TableSpec("Headline metrics (median over probe vectors)", ["step", "fisher", "representation", "metric",
                  "median", "q1", "q3", "n"], headline, max_rows=None, link="tables/quality_summary.csv"),
        TableSpec("Solve cosine cos(v, (F̂+λI)⁻¹(F+λI)v), median",
                  ["step", "fisher", "representation", "method", "lambda_rel", "median", "q1", "q3"],
                  [s for s in summary if s["metric"] == "solve_cos"], max_rows=400,
                  link="tables/quality_summary.csv"),
    ]
    tables += part_tables(res)
    if drift_rows:
        tables.append(TableSpec("Drift at recompute points and just before them",
                                ["step", "layer", "approximation", "basis", "metric", "value", "since_recompute"],
                                [{"step": r["step"], "layer": r["layer"], "approximation": r["a"], "basis": r["basis"],
                                  "metric": r["metric"], "value": r["value"], "since_recompute": r["since"]}
                                 for r in drift_rows if r["basis"] == "amortized" and r["metric"] == "fro_rel_err"
                                 and (r["since"] == 0 or r["since"] == cfg.recompute_every - 1)],
                                max_rows=300, link="tables/drift.csv"))
    cols = SUMMARY_COLUMNS
    atomic_write_text(store.tables_dir / "quality_summary.csv",
                      ",".join(cols) + "\n" + "".join(",".join(cell(s[c]) for c in cols) + "\n" for s in summary))
    notes = [
        "mc: Monte-Carlo Fisher with the same sampled labels for F and the approximations, so the traces of Diag, "
        "QuasiDiag, BlockDiag and EKFAC equal tr F exactly (an identity). mc_indep: as in the thesis, each "
        f"approximation built on {cfg.trace_realizations} independent Monte-Carlo draws and compared with the "
        "exact-expectation trace (its 'fluctuation from Monte-Carlo sampling'); these draws decide the Fig. 3.6 "
        "findings.",
        "Intervals: over the probe vectors (percentile bootstrap) for Figs. 3.3–3.5; over the independent "
        "Monte-Carlo realizations for Fig. 3.6; over the class pairs for Fig. 3.7; over the recompute windows for "
        "Fig. 4.2 (right); over disjoint parts of the evaluation batch for Fig. 4.2 (left). Fig. 4.4c is one "
        "training run (no interval).",
        "Solves: KFAC (exact) is (A⊗B + λI)⁻¹ through the factors' eigenbases; KFAC (factored) is Tikhonov damping "
        "split over the factors with π (what the thesis-era library did); EKFAC (exact) divides by s* + λ, EKFAC "
        "(factored) by s* + λ + √λ(λ_A + λ_B) (thesis appendix A.4).",
        "BlockDiag is not in the thesis' figures; it is the exact layer-diagonal part that KFAC and EKFAC "
        "approximate, shown as a reference. The claims 'best for …' compare Diag, QuasiDiag, KFAC and EKFAC.",
        "Residuals: mv_residual = ‖Fv − F̂v‖/‖Fv‖; solve_residual = ‖v − v'‖/‖v'‖ (thesis Fig. 3.3).",
        "QuasiDiag (diagonal plus the bias–weight cross terms of each output unit) is not positive semi-definite "
        "in general: when its smallest eigenvalue is negative, F̂ + λI is nearly singular for λ close to it, which "
        "shows as dips of its solve cosine at some λ (its solve itself is exact).",
        "Part 2 measures ‖F_l − EKFAC_l‖_F without densifying EKFAC: with Q = U_B ⊗ U_A orthogonal, "
        "‖F − Q S Qᵀ‖² = ‖F‖² − ‖diag(QᵀFQ)‖² + ‖diag(QᵀFQ) − s‖², diag(QᵀFQ) computed from F.",
    ]
    return ReportContent(title=TITLE, summary=intro, claims=claims, figures=figures, tables=tables,
                         notes=notes)


def build_figures(cfg: FimQualityConfig, res: Results) -> list[FigureSpec]:
    """The figures of the report (those whose data the run has)."""
    S, steps, kinds, reps, lams = res.S, res.steps, res.kinds, res.reps, res.lams
    drift_rows, training = res.drift_rows, res.training
    figs: list[FigureSpec] = []

    def series(kind, rep, metric, method="", lam=""):
        xs, m, lo, hi = [], [], [], []
        for s in steps:
            st = S.get((s, kind, rep, method, metric, lam))
            if st:
                xs.append(s)
                m.append(st["median"])
                lo.append(st["q1"])
                hi.append(st["q3"])
        return np.array(xs), np.array(m), np.array(lo), np.array(hi)

    def xstep(ax):
        ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
        ax.set_xlabel("training step")

    variants = [(r, m) for r in reps for m in (cfg.solve_methods if r in KRON else ("exact",))]

    if lams:
        for kind in kinds:
            def draw_solve(fig, kind=kind):
                axes = fig.subplots(2, len(steps), squeeze=False, sharex=True)
                for j, s in enumerate(steps):
                    for rep, method in variants:
                        for i, metric in enumerate(("solve_cos", "solve_residual")):
                            pts = [(lam, S[(s, kind, rep, method, metric, lam)]) for lam in lams
                                   if (s, kind, rep, method, metric, lam) in S]
                            if not pts:
                                continue
                            x = [p[0] for p in pts]
                            ax = axes[i, j]
                            ls = "--" if method == "factored" else "-"
                            ax.plot(x, [p[1]["median"] for p in pts], ls, marker="o", ms=3,
                                    color=_COLORS.get(rep), label=label(rep, method))
                            ax.fill_between(x, [p[1]["q1"] for p in pts], [p[1]["q3"] for p in pts],
                                            color=_COLORS.get(rep), alpha=0.12)
                    axes[0, j].set_title(f"step {s}", fontsize=9)
                    axes[1, j].set_yscale("log")
                    for i in range(2):
                        axes[i, j].set_xscale("log")
                    axes[1, j].set_xlabel("λ / (tr F / P)")
                axes[0, 0].set_ylabel("cos(v, v')")
                axes[1, 0].set_ylabel("‖v − v'‖ / ‖v'‖")
                axes[0, -1].legend(fontsize=7)

            figs.append(FigureSpec(f"fig3_3_solve_{kind}", f"Fig. 3.3 analogue: solve quality ({kind} Fisher)",
                                   "v' = (F̂ + λI)⁻¹(F + λI)v for random unit v: cosine (top, higher is better) and "
                                   "residual (bottom, lower is better) vs Tikhonov λ, at each checkpoint; median and "
                                   "interquartile band over the probe vectors; dashed: factored damping.",
                                   draw_solve, (3.0 * len(steps) + 1.5, 5.5)))

    def draw_forward(fig, metrics, ylabels, logs):
        axes = fig.subplots(len(metrics), len(kinds), squeeze=False)
        for j, kind in enumerate(kinds):
            for i, metric in enumerate(metrics):
                ax = axes[i, j]
                for rep in reps:
                    x, m, lo, hi = series(kind, rep, metric)
                    if x.size == 0:
                        continue
                    if logs[i]:
                        m, lo, hi = (np.maximum(a, 1e-17) for a in (m, lo, hi))
                    ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", ms=4, capsize=2,
                                color=_COLORS.get(rep), label=label(rep, ""))
                if logs[i]:
                    ax.set_yscale("log")
                xstep(ax)
                ax.set_ylabel(ylabels[i])
                ax.set_title(f"{kind} Fisher", fontsize=9)
        axes[0, -1].legend(fontsize=7)

    figs.append(FigureSpec("fig3_4_mv", "Fig. 3.4 analogue: Fv",
                           "cos(Fv, F̂v) (higher is better) and ‖Fv − F̂v‖/‖Fv‖ (lower is better) during training; "
                           "median and quartiles over the probe vectors.",
                           lambda fig: draw_forward(fig, ("mv_cos", "mv_residual"), ("cos(Fv, F̂v)", "residual"),
                                                    (False, True)), (4.5 * len(kinds) + 1, 6)))
    figs.append(FigureSpec("fig3_5_vTMv", "Fig. 3.5 analogue: vᵀFv",
                           "|vᵀF̂v − vᵀFv| / |vᵀFv| (lower is better); median and quartiles over the probe vectors.",
                           lambda fig: draw_forward(fig, ("vTMv_rel_err",), ("relative error",), (True,)),
                           (4.5 * len(kinds) + 1, 3.5)))
    figs.append(FigureSpec("fig3_6_trace", "Fig. 3.6 analogue: trace",
                           "|tr F̂ − tr F| / |tr F| (lower is better); values at 1e-17 are exact to round-off "
                           "(shared samples).",
                           lambda fig: draw_forward(fig, ("trace_rel_err",), ("relative error",), (True,)),
                           (4.5 * len(kinds) + 1, 3.5)))

    fro = [r for r in drift_rows if r["metric"] == "fro_rel_err"]
    if fro:
        layers = list(dict.fromkeys(r["layer"] for r in fro))

        def draw_drift(fig):
            axes = fig.subplots(1, len(layers), squeeze=False, sharey=False)[0]
            for ax, la in zip(axes, layers):
                for a in DRIFT_LABELS:
                    for basis, ls in (("amortized", "-"), ("fixed", ":")):
                        pts = sorted((r["step"], r["value"]) for r in fro if r["layer"] == la and r["a"] == a
                                     and r["basis"] == basis)
                        if pts:
                            ax.plot(*zip(*pts), ls, color=_COLORS[a], lw=1.2 if basis == "amortized" else 0.9,
                                    label=f"{DRIFT_LABELS[a]} ({basis})")
                for s in sorted({r["step"] for r in fro if r["since"] == 0}):
                    ax.axvline(s, color="0.85", lw=0.6, zorder=0)
                ax.set_title(f"layer {la}", fontsize=9)
                ax.set_xlabel("step")
            axes[0].set_ylabel("‖F_l − F̂_l‖_F / ‖F_l‖_F")
            axes[-1].legend(fontsize=7)

        figs.append(FigureSpec("fig4_2_drift", "Fig. 4.2 (right) analogue: approximation error during training",
                               f"Per-layer relative Frobenius error against the exact empirical Fisher block; KFAC "
                               f"factors and the EKFAC basis recomputed every {cfg.recompute_every} steps (grey "
                               "lines), EKFAC's s* every step. Dotted: basis fixed at step 0.",
                               draw_drift, (3.2 * len(layers) + 1, 3.6)))
    spec = [r for r in drift_rows if r["metric"] == "spectrum_l2"]
    if spec:
        def draw_spec(fig):
            ax1, ax2 = fig.subplots(1, 2)
            for ax, metric in ((ax1, "spectrum_l2"), (ax2, "spectrum_l2_rel")):
                for a in DRIFT_LABELS:
                    for basis, ls in (("fixed", "-"), ("amortized", ":")):
                        pts = sorted((r["step"], r["value"]) for r in drift_rows if r["metric"] == metric
                                     and r["a"] == a and r["basis"] == basis)
                        if pts:
                            ax.plot(*zip(*pts), ls, color=_COLORS[a], label=f"{DRIFT_LABELS[a]} ({basis} basis)")
                ax.set_xlabel("step")
            ax1.set_ylabel("‖eig(G_l) − eig(Ĝ_l)‖₂")
            ax2.set_ylabel("relative to ‖eig(G_l)‖₂")
            ax2.legend(fontsize=7)

        la = spec[0]["layer"]
        figs.append(FigureSpec("fig4_4c_spectrum", "Fig. 4.4c analogue: spectrum tracking with a fixed basis",
                               f"ℓ2 distance between the sorted eigenvalues of the exact empirical-Fisher block of "
                               f"layer {la} and those of KFAC (factors fixed at step 0) and EKFAC (basis fixed at "
                               "step 0, s* re-estimated every step); dotted: amortized basis.",
                               draw_spec, (10, 3.8)))
    if training:
        def draw_training(fig):
            axes = fig.subplots(1, 2)
            for ax, phase in zip(axes, ("quality", "drift")):
                pts = sorted((r["step"], r["value"]) for r in training if r["phase"] == phase
                             and r["metric"] == "train_loss")
                if pts:
                    ax.plot(*zip(*pts), lw=0.8, label="minibatch loss")
                acc = sorted((r["step"], r["value"]) for r in training if r["phase"] == phase
                             and r["metric"] == "test_accuracy")
                if acc:
                    ax2 = ax.twinx()
                    ax2.plot(*zip(*acc), "o-", color="tab:green", label="test accuracy")
                    ax2.set_ylabel("test accuracy")
                ax.set_title(f"part {'1 (CNN)' if phase == 'quality' else '2 (sigmoid MLP)'}", fontsize=9)
                ax.set_xlabel("step")
                ax.set_ylabel("training loss")

        figs.append(FigureSpec("training", "Training curves", "Minibatch cross-entropy (and test accuracy at the "
                               "probe points).", draw_training, (10, 3.3)))
    return figs
