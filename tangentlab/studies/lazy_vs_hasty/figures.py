"""The figures and the report of ``lazy-vs-hasty`` (from the stored tables only).

Figures: the yin-yang training curves and ``Δloss`` maps (Fig. 5.1), per-group loss and accuracy
against training progress for each digits part (Figs. 5.2, 5.3), the linearity metrics during
training, and the quadratic model's per-group squared errors with the 2-layer counterpart
(Fig. 5.4, Fig. C.9). :func:`build_report` assembles them with the claims of :mod:`.claims`.
"""

from __future__ import annotations

import numpy as np

from ..framework.report import FigureSpec, ReportContent, TableSpec
from .claims import (
    LINEARITY_KEYS,
    GroupComparison,
    Histories,
    ToySummary,
    build_claims,
    final_linearity,
    group_comparisons,
    group_gaps,
    read_histories,
    toy_summary,
)
from .config import CHECK_COLUMNS, TITLE, LazyVsHastyConfig
from .data import DISK_RADIUS, DISKS
from .learning_rate_report import LIN, lr_figure, read_lr, summary_rows


def toy_figure(toy: ToySummary) -> FigureSpec:
    """Fig. 5.1: training loss of every seed and regime, and the seed-averaged ``Δloss`` map per milestone."""
    mean_maps, train = toy.mean_maps, toy.train

    def draw(fig):
        from matplotlib.patches import Circle

        ms = sorted(mean_maps, reverse=True)
        axes = fig.subplots(1, len(ms) + 1, squeeze=False)[0]
        ax = axes[0]
        for a, style in ((1.0, "-"), (100.0, "--")):
            for seed in sorted({r["seed"] for r in train}):
                pts_ = sorted((int(r["step"]), float(r["value"])) for r in train
                              if r["seed"] == seed and float(r["alpha"]) == a)
                if pts_:
                    ax.plot([max(p[0], 1) for p in pts_], [p[1] for p in pts_], style,
                            color="tab:blue" if a == 1.0 else "tab:red", alpha=0.5, lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("GD step")
        ax.set_ylabel("training loss")
        ax.set_title("α=1 (solid) / α=100 (dashed)", fontsize=9)
        vmax = max((float(np.abs(mean_maps[m]).max()) for m in ms), default=1.0) or 1.0
        for ax, m in zip(axes[1:], ms):
            im = ax.imshow(mean_maps[m], origin="lower", extent=(-1, 1, -1, 1), cmap="RdYlGn_r", vmin=-vmax,
                           vmax=vmax)
            for cx, cy in DISKS:
                ax.add_patch(Circle((cx, cy), DISK_RADIUS, fill=False, color="k", lw=0.8))
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(f"Δloss at train loss {m:g}", fontsize=9)
        if ms:
            fig.colorbar(im, ax=list(axes[1:]), shrink=0.8)

    return FigureSpec("toy", "Yin-yang (Fig. 5.1): training curves and Δloss maps",
                      "Red: the non-linear run (α=1) has the higher loss; green: lower. Circles: flipped disks.",
                      draw, size=(4 + 3.2 * max(1, len(mean_maps)), 3.4))


def plotted_groups(cfg: LazyVsHastyConfig, hists: Histories, part: str) -> list[str]:
    """The groups drawn for ``part``: deciles 0, 2, 7, 9 (scaled to ``n_bins``, as the thesis), the
    noise groups, or the spurious groups."""
    if part == "cscores":
        groups = sorted({k.split("/")[0] for h in hists.get((part, 1.0), [])[:1] for k in h if k.endswith("/loss")})
        top = cfg.n_bins - 1
        picks = sorted({0, round(top * 2 / 9), round(top * 7 / 9), top})
        return [g for g in (f"decile{b}" for b in picks) if g in groups]
    if part == "noise":
        return ["clean", "noisy", "test"]
    return ["with", "without", "test_with", "test_without"]


def group_figure(hists: Histories, c: GroupComparison, groups: list[str]) -> FigureSpec:
    """Figs. 5.2/5.3: loss and accuracy of each group against the cumulative minimum of the progress loss."""
    part, progress_key = c.part, c.progress_key

    def draw(fig):
        from matplotlib import colormaps

        ax1, ax2 = fig.subplots(1, 2)
        colors = colormaps["viridis"](np.linspace(0, 0.9, len(groups)))
        alphas = sorted(a for (p, a) in hists if p == part)
        styles = {1.0: "-", 100.0: "--", 0.5: ":"}
        for a in alphas:
            h = hists[(part, a)]
            x = np.minimum.accumulate([r[progress_key] for r in h])
            for col, g in zip(colors, groups):
                if f"{g}/loss" in h[0]:
                    ax1.plot(x, [r[f"{g}/loss"] for r in h], styles.get(a, "-."), color=col,
                             label=f"{g} α={a:g}" if a == 1.0 or len(alphas) == 1 else None)
                    ax2.plot(x, [r[f"{g}/accuracy"] for r in h], styles.get(a, "-."), color=col)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel(f"{progress_key} (cumulative min)")
        ax1.set_ylabel("loss")
        ax2.set_ylabel("accuracy")
        ax1.legend(fontsize=7)
        ax1.set_title("solid α=1, dashed α=100" + (", dotted α=0.5" if 0.5 in alphas else ""), fontsize=9)

    return FigureSpec(part, f"{c.title}: groups against training progress",
                      "x-axis reversed (training goes right); same colour per group.", draw, size=(11, 4))


def linearity_figure(hists: Histories, part: str) -> FigureSpec:
    """Sign similarity, ``KA(K_t, K_0)`` and representation alignment against the step, α = 1 vs 100."""

    def draw(fig):
        axes = fig.subplots(1, 3)
        for ax, k in zip(axes, LINEARITY_KEYS):
            for a, style in ((1.0, "-"), (100.0, "--")):
                h = [r for r in hists.get((part, a), []) if k in r]
                ax.plot([max(r["step"], 1) for r in h], [r[k] for r in h], style, label=f"α={a:g}")
            ax.set_xscale("log")
            ax.set_title(k.split("/")[1], fontsize=9)
            ax.set_xlabel("step")
        axes[0].legend(fontsize=8)

    return FigureSpec(f"{part}_linearity", f"{part}: linearity metrics vs initialization", "", draw, size=(11, 3.2))


def quadratic_figure(curves: list[dict[str, str]]) -> FigureSpec:
    """Fig. 5.4 / Fig. C.9: per-example (Ex 1) or per-group (Ex 2, 3) squared error of seed 0."""

    def draw(fig):
        from matplotlib import colormaps

        axes = fig.subplots(2, 3)
        for row, source in enumerate(("closed_form", "two_layer")):
            for col, ex in enumerate(("ex1", "ex2", "ex3")):
                ax = axes[row, col]
                sel = [r for r in curves if r["example"] == ex and r["source"] == source and r["seed"] == "0"]
                groups = sorted({r["group"] for r in sel})
                colors = colormaps["viridis"](np.linspace(0, 0.9, max(1, len(groups))))
                for c, gname in zip(colors, groups):
                    for regime, style in (("nonlinear", "-"), ("linear", "--")):
                        pts_ = [(float(r["t"]), float(r["value"])) for r in sel
                                if r["group"] == gname and r["regime"] == regime]
                        if pts_:
                            tmax = max(p[0] for p in pts_) or 1.0
                            ax.plot([p[0] / tmax for p in pts_], [p[1] for p in pts_], style, color=c,
                                    label=gname if regime == "nonlinear" else None)
                ax.set_title(f"{ex} ({'closed form' if source == 'closed_form' else '2-layer net'})", fontsize=9)
                ax.set_xlabel("t / t_max (solid non-linear, dashed linear)", fontsize=8)
                if groups:
                    ax.legend(fontsize=6)

    return FigureSpec("quadratic", "Quadratic model (Fig. 5.4) and 2-layer counterpart (Fig. C.9)",
                      "Per-example (Ex 1) or per-group (Ex 2, 3) squared error; time axes rescaled per regime.",
                      draw, size=(12, 6.5))


NOTES = (
    "The quadratic model's linearized rate is 2μθ⁰ (the thesis' eq. 5.4.6 misses the factor 2); θ⁰ = σ/2 from "
    "w⁰ = √σ.",
    "The 2-layer counterpart is the dense linear network aᵀWx of the authors' code (App. C.7); with one "
    "output its input–output correlation Xᵀy is rank one, so unlike the diagonal quadratic model it has no "
    "per-mode sequential learning, and example 1's order reversal need not carry over (measured above).",
    "For the BN-free ResNet-18 (cifar10 preset) the sign similarity covers the nn.ReLU modules only (the stem); "
    "the block-internal ReLUs are functional calls.",
    "Resume granularity: one work unit (a toy seed, one regime of a digits part, one quadratic example); "
    "tables/units.csv lists the finished ones.",
    "Timings are wall-clock on the machine that ran the study; the default run targets ≤ 15 minutes on 2 CPU "
    "cores.",
)


def build_report(cfg: LazyVsHastyConfig, store) -> ReportContent:
    """The report of a run: summary, claims (:func:`~.claims.build_claims`), figures, tables, notes."""
    figures: list[FigureSpec] = []
    tables: list[TableSpec] = []
    summary = [
        "Regimes: AlphaScaled f^α = " + ("α(f − f₀)" if cfg.subtract_initial_output else "f₀ + α(f − f₀)")
        + " trained with lr/α² from the same initialization and minibatch order; comparisons at equal training "
        "progress (first probe at which the cumulative-minimum progress loss crosses each threshold).",
    ]
    hists = read_histories(store)
    if "toy" in cfg.parts:
        toy = toy_summary(cfg, store)
        g = cfg.toy_grid
        tables.append(TableSpec("Yin-yang: Δloss = loss(α=1) − loss(α=100) by region, at equal training loss",
                                ["milestone", "seeds", "delta_easy", "delta_disks", "median_steps_alpha1",
                                 "median_steps_alpha100"], toy.rows, link="tables/toy_maps.csv"))
        summary.append(f"Toy: yin-yang, {cfg.toy_n} points, MLP 2-{'-'.join(map(str, cfg.toy_hidden))}-1 (ReLU, "
                       f"float64), full-batch GD lr {cfg.toy_lr}/α², {cfg.toy_seeds} seeds, milestones "
                       f"{list(cfg.toy_milestones)}, {g}×{g} grid.")
        figures.append(toy_figure(toy))
    for c in group_comparisons(cfg):
        rows, extra_rows = group_gaps(hists, c)
        steps = {a: (h[-1]["step"] if h else 0) for (p, a), h in hists.items() if p == c.part}
        summary.append(f"{c.title}: α ∈ {sorted(steps)} trained for {steps} steps (SGD lr {cfg.lr}/α², momentum "
                       f"{cfg.momentum}, batch {cfg.batch_size}, MLP hidden {list(cfg.hidden)}, {cfg.dtype}); "
                       f"progress = {c.progress_key}.")
        cols = ["alpha", "threshold", f"{c.easy}_nl", f"{c.easy}_lin", f"{c.hard}_nl", f"{c.hard}_lin", "gap_nl",
                "gap_lin"]
        tables.append(TableSpec(f"{c.title}: group losses at equal progress ({c.progress_key})", cols,
                                rows + extra_rows, link="tables/curves.csv"))
        figures.append(group_figure(hists, c, plotted_groups(cfg, hists, c.part)))
    for part in ("cscores", "noise", "spurious"):
        if part in cfg.parts and len(final_linearity(hists, part)) == 2:
            figures.append(linearity_figure(hists, part))
    if "lr" in cfg.parts:
        lr_hists, _ = read_lr(store)
        summary.append(f"Learning rate vs α (App. C.5): label noise {cfg.noise_fraction:g}, {cfg.lr_seeds} seeds; "
                       f"α = 1 at lr {cfg.lr:g} × {list(cfg.lr_factors)}, α ∈ {list(cfg.lr_alphas)} at lr/α²; "
                       f"every run stops at clean training loss {min(cfg.lr_milestones):g}; compared at "
                       f"{list(cfg.lr_milestones)}.")
        tables.append(TableSpec("Learning rate vs α: seed means at equal clean loss (lr = SGD step size)",
                                ["alpha", "lr", "milestone", "steps", "noisy_loss", "test_loss", "noisy_acc",
                                 "test_acc", *(k.split("/")[1] for k in LIN)], summary_rows(cfg, lr_hists),
                                link="tables/lr_curves.csv"))
        figures.append(lr_figure(cfg, lr_hists))
    if "quadratic" in cfg.parts:
        checks = store.read("quadratic_checks")
        summary.append(f"Quadratic model: σ = {cfg.quad_sigma:g}; Ex 1 μ = [9, 8, 7, 6, 5]; Ex 2/3 n = 20, q = 5, "
                       f"d = {cfg.quad_d}, η = {cfg.quad_eta:g}, λ = {cfg.quad_lambda:g}, {cfg.quad_seeds} seeds; "
                       f"2-layer linear net: α = {list(cfg.mlp_alphas)}, steps {list(cfg.mlp_steps)}, lr "
                       f"{cfg.mlp_lr:g}/α², d = {cfg.mlp_d} for Ex 2/3, {cfg.mlp_seeds} seeds.")
        tables.append(TableSpec("Quadratic model checks", CHECK_COLUMNS, [dict(r) for r in checks],
                                link="tables/quadratic_checks.csv"))
        figures.append(quadratic_figure(store.read("quadratic")))
    notes = [
        "C-scores are estimated by their definition with multinomial logistic regressions trained on random subsets "
        f"of sizes {', '.join(f'{r:g}' for r in cfg.cscore_ratios)}·N ({cfg.cscore_subsets} subsets each) that "
        "exclude the example; ties broken by the held-out probability of the label (tables/cscores.csv).",
        *NOTES,
    ]
    return ReportContent(title=TITLE, summary=summary, claims=build_claims(cfg, store), figures=figures,
                         tables=tables, notes=notes)
