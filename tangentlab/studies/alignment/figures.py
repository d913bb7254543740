"""The figures and the report of the alignment study (paper 000 Figs. 1-4, 13, 14), drawn from
the stored tables only (through :class:`~.claims.Results`). One function per figure; each
returns its :class:`~tangentlab.studies.framework.report.FigureSpec` in a list, empty when the
run holds none of the figure's data. :func:`build_report` assembles the report, items 6 and 7
and the distance to the infinite-width limit included (:mod:`.supernat`, :mod:`.complexity`,
:mod:`.limit`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..framework.datasets import DISK_RADIUS
from ..framework.report import FigureSpec, ReportContent, TableSpec
from . import appendix_hierarchy, channel_sweep, complexity, limit, norm_capacity, spectral_bias, supernat
from .claims import Results, alignment_claims, noise_runs
from .claims_more import limit_claims
from .config import TITLE, AlignmentConfig


def _xlog(ax: Any, steps: np.ndarray) -> None:
    """Symmetric-log iteration axis, linear up to the first probe step after 0."""
    ax.set_xscale("symlog", linthresh=max(1.0, float(steps[1]) if steps.size > 1 else 1.0))
    ax.set_xlim(left=0, right=max(1.0, float(steps.max())) if steps.size else None)
    ax.set_xlabel("iteration")


def eigenfunction_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Fig. 1 (left): the top eigenvectors of the disk task's grid kernel as images, one row per
    snapshot iteration."""
    if not R.eig:
        return []
    steps = sorted(R.eig)
    comps = sorted({c for s in steps for c in R.eig[s]})

    def draw_eig(fig: Any) -> None:
        import matplotlib

        axes = fig.subplots(len(steps), len(comps), squeeze=False)
        res = cfg.disk_grid
        for i, s in enumerate(steps):
            for j, c in enumerate(comps):
                pts = sorted(R.eig[s][c])
                img = np.array([v for _, v in pts]).reshape(res, res)
                m = np.abs(img).max() or 1.0
                ax = axes[i, j]
                ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m, origin="lower", extent=(-1, 1, -1, 1))
                ax.add_patch(matplotlib.patches.Circle((0, 0), DISK_RADIUS, fill=False, lw=0.6, ls="--"))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"u_{c}", fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"it {s}", fontsize=9)

    return [FigureSpec("fig1_eigenfunctions", "Fig. 1: top NTK eigenfunctions on the disk task",
                       f"Top {len(comps)} eigenvectors of the centered NTK on a {cfg.disk_grid}×"
                       f"{cfg.disk_grid} grid (columns) at iterations {', '.join(map(str, steps))} (rows); "
                       "dashed circle: the class boundary.", draw_eig,
                       (1.6 * len(comps) + 0.8, 1.6 * len(steps) + 0.6))]


def disk_metrics_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Fig. 1 (right): λ20/λ1, effective rank and CKA with the labels of the disk grid kernel."""
    if not R.eig:
        return []

    def draw_disk(fig: Any) -> None:
        axes = fig.subplots(1, 3)
        for ax, metric, lab in ((axes[0], "ratio20", "λ20/λ1"), (axes[1], "erank", "effective rank"),
                                (axes[2], "cka", "CKA with labels")):
            s, v = R.series("disk", "grid", metric)
            if s.size:
                ax.plot(s, v, "o-", ms=3, label="grid")
                _xlog(ax, s)
            if metric == "cka":
                s2, v2 = R.series("disk", "train", "cka")
                if s2.size:
                    ax.plot(s2, v2, "s--", ms=3, label="training points")
                ax.legend(fontsize=7)
            if metric == "ratio20":
                ax.set_yscale("log")
            ax.set_ylabel(lab)

    return [FigureSpec("fig1_disk_metrics", "Fig. 1: anisotropy and alignment on the disk task",
                       "λ20/λ1, effective rank and CKA with the ±1 labels of the grid kernel during "
                       "full-batch gradient descent.", draw_disk, (12, 3.4))]


def _run_columns(fig: Any, n_rows: int, n_runs: int) -> tuple[Any, Any]:
    """The ``n_rows × n_runs`` axes of a figure with one column per label-noise run, and the
    colormap of its per-k / per-layer curves."""
    import matplotlib

    return fig.subplots(n_rows, n_runs, squeeze=False), matplotlib.colormaps["viridis"]


def spectrum_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Fig. 2: accuracy, eigenvalues, effective rank and trace ratios of each label-noise run."""
    runs = noise_runs(cfg, R)
    if not runs:
        return []

    def draw_spec(fig: Any) -> None:
        axes, cmap = _run_columns(fig, 4, len(runs))
        for j, (p, run) in enumerate(runs):
            ax = axes[0, j]
            for metric, col in (("train_accuracy", "tab:blue"), ("test_accuracy", "tab:orange")):
                s, v = R.train_series(run, metric)
                if s.size:
                    ax.plot(s, v, "-" if metric.startswith("train") else "--", color=col, label=metric)
            ax.set_title(f"{round(100 * p)}% random labels", fontsize=9)
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
            ax = axes[1, j]
            for metric, col in (("max", "tab:red"), ("mean", "tab:green"), ("median", "tab:purple")):
                for pr, ls in (("train", "-"), ("test", "--")):
                    s, v = R.series(run, pr, metric)
                    if s.size:
                        ax.plot(s, np.maximum(v, 1e-300), ls, color=col, label=f"{metric} ({pr})")
            ax.set_yscale("log")
            ax.set_ylabel("eigenvalue")
            ax.legend(fontsize=6, ncol=2)
            ax = axes[2, j]
            for pr, ls in (("train", "-"), ("test", "--")):
                s, v = R.series(run, pr, "erank")
                ax.plot(s, v, ls, color="k", label=pr)
            ax.set_ylabel("effective rank")
            ax.legend(fontsize=7)
            ax = axes[3, j]
            steps = sorted({st for (r, pr, st) in R.spectra if r == run and pr == "train"})
            if steps:
                lam = np.array([[v for _, v in sorted(R.spectra[(run, "train", st)])] for st in steps])
                cum = np.cumsum(lam, 1) / np.maximum(lam.sum(1, keepdims=True), 1e-300)
                r = cum.shape[1]
                ks = np.unique(np.geomspace(1, r, 40).astype(int))
                for k in ks:
                    ax.plot(steps, cum[:, k - 1], color=cmap(np.log(k) / np.log(r)), lw=0.6)
                for k in cfg.ks:
                    if k <= r:
                        ax.plot(steps, cum[:, k - 1], color="red", lw=1.3)
                        ax.annotate(f"T{k}", (steps[-1], cum[-1, k - 1]), fontsize=7, color="red")
            ax.set_ylabel("trace ratio T_k (train)")
            for i in range(4):
                s0, _ = R.series(run, "train", "erank")
                if s0.size:
                    _xlog(axes[i, j], s0)

    return [FigureSpec("fig2_spectrum", "Fig. 2: spectrum of the NTK during training",
                       f"Centered NTK ({cfg.centering}) on {cfg.n_probe} train (solid) and {cfg.n_probe} test "
                       "(dashed) examples: accuracy; λ_max, mean and median eigenvalue; effective rank; trace "
                       "ratios T_k for k = 1..N·C (viridis by log k; red: "
                       + ", ".join(f"T{k}" for k in cfg.ks) + ").", draw_spec,
                       (4.2 * len(runs) + 1, 12))]


def cka_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Fig. 3: CKA with the labels, whole network and per layer, of each label-noise run (and per
    block part, attention and feed-forward, for a transformer)."""
    runs = noise_runs(cfg, R)
    if not runs:
        return []
    rows = 3 if any(R.blocks(run, "train") for _, run in runs) else 2

    def draw_cka(fig: Any) -> None:
        axes, cmap = _run_columns(fig, rows, len(runs))
        for j, (p, run) in enumerate(runs):
            ax = axes[0, j]
            for pr, ls in (("train", "-"), ("test", "--")):
                s, v = R.series(run, pr, "cka")
                ax.plot(s, v, ls, color="k", label=pr)
            ax.set_title(f"{round(100 * p)}% random labels", fontsize=9)
            ax.set_ylabel("CKA(K, YYᵀ)")
            ax.legend(fontsize=7)
            layers = R.layers(run, "train")
            ax = axes[1, j]
            for i, la in enumerate(layers):
                col = cmap(i / max(1, len(layers) - 1))
                for pr, ls in (("train", "-"), ("test", "--")):
                    s, v = R.series(run, pr, "cka", la)
                    ax.plot(s, v, ls, color=col, label=f"layer {la}" if pr == "train" else None)
            ax.set_ylabel("layer-wise CKA")
            ax.legend(fontsize=6)
            parts = R.blocks(run, "train")
            if rows == 3:
                ax = axes[2, j]
                for i, la in enumerate(parts):
                    col = cmap(i / max(1, len(parts) - 1))
                    for pr, ls in (("train", "-"), ("test", "--")):
                        s, v = R.series(run, pr, "cka", la)
                        ax.plot(s, v, ls, color=col, label=la if pr == "train" else None)
                ax.set_ylabel("CKA per block part")
                ax.legend(fontsize=6)
            for i in range(rows):
                s0, _ = R.series(run, "train", "cka")
                if s0.size:
                    _xlog(axes[i, j], s0)

    return [FigureSpec("fig3_cka", "Fig. 3: alignment with the labels",
                       "CKA of the NTK with the one-hot label kernel, train probe (solid, training labels) "
                       "and test probe (dashed); below, per layer (dark: input, light: output)"
                       + ("; bottom, per block part (the summed kernels of each encoder block's attention and "
                          "feed-forward layers)." if rows == 3 else "."), draw_cka,
                       (4.2 * len(runs) + 1, 3.25 * rows))]


def kernel_pca_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Kernel-PCA coordinates of the train-probe rows of the first label-noise run."""
    runs = noise_runs(cfg, R)
    if not runs:
        return []
    p, run = runs[0]
    pca_steps = sorted({st for (r, pr, st) in R.pca if r == run and pr == "train"})
    if not pca_steps:
        return []

    def draw_pca(fig: Any) -> None:
        axes = fig.subplots(1, len(pca_steps), squeeze=False)[0]
        labels = R.labels.get((run, "train"), {})
        sc = None
        for ax, st in zip(axes, pca_steps):
            comps = R.pca[(run, "train", st)]
            if 1 not in comps or 2 not in comps:
                continue
            c1 = np.array([v for _, v in sorted(comps[1])])
            c2 = np.array([v for _, v in sorted(comps[2])])
            n_cls = 10
            rows = np.arange(c1.size)
            n, c = rows // n_cls, rows % n_cls
            lab = np.array([labels.get(int(i), -1) for i in n])
            on = c == lab  # the label row (n, y_n) of each example
            ax.scatter(c1[~on], c2[~on], c="0.8", s=2, alpha=0.5)
            sc = ax.scatter(c1[on], c2[on], c=lab[on], cmap="tab10", vmin=-0.5, vmax=9.5, s=9)
            ax.set_title(f"iteration {st}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if sc is not None:
            fig.colorbar(sc, ax=axes[-1], label="training label y_n")

    return [FigureSpec("kernel_pca", "Kernel PCA of the train-probe NTK",
                       "Coordinates √λ_j u_j of the N·C rows (n, c) on the first two principal "
                       f"components of the centered NTK ({round(100 * p)}% random labels): the label "
                       "rows (n, y_n) coloured by their training label y_n, the other rows in grey.",
                       draw_pca, (3.2 * len(pca_steps) + 1, 3.3))]


def hierarchy_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Fig. 4: CKA of easy and difficult examples, their ratio, and their training accuracy."""
    hier = [(r, w) for r, w in (("hier_random", "random labels"), ("hier_other", "other dataset")) if R.has(r)]
    if not hier:
        return []

    def draw_hier(fig: Any) -> None:
        axes = fig.subplots(3, len(hier), squeeze=False)
        for j, (run, what) in enumerate(hier):
            se, ce = R.series(run, "easy", "cka")
            sd, cd = R.series(run, "difficult", "cka")
            ax = axes[0, j]
            ax.plot(se, ce, "-", color="tab:blue", label="easy")
            ax.plot(sd, cd, "-", color="tab:red", label="difficult")
            ax.set_title(f"difficult = {what}", fontsize=9)
            ax.set_ylabel("CKA with training labels")
            ax.legend(fontsize=7)
            axes[1, j].plot(se, ce / np.maximum(np.abs(cd), 1e-12), color="k")
            axes[1, j].set_ylabel("CKA_easy / CKA_diff")
            for metric, col in (("easy_accuracy", "tab:blue"), ("difficult_accuracy", "tab:red"),
                                ("test_accuracy", "tab:gray")):
                s, v = R.train_series(run, metric)
                axes[2, j].plot(s, v, color=col, label=metric.replace("_", " "))
            axes[2, j].set_ylabel("accuracy")
            axes[2, j].legend(fontsize=7)
            for i in range(3):
                if se.size:
                    _xlog(axes[i, j], se)

    return [FigureSpec("fig4_hierarchical", "Fig. 4: easy vs difficult examples",
                       f"CKA of the NTK with the training labels on {cfg.hier_subset} easy and "
                       f"{cfg.hier_subset} difficult training examples, their ratio, and training accuracy "
                       "of each group.", draw_hier, (4.5 * len(hier) + 1, 8))]


def ablation_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Figs. 13-14: the easy/difficult CKA ratio by depth, the effective rank by learning rate."""
    depth_runs = [r for r in R.runs if r.startswith("depth_")]
    lr_runs = [r for r in R.runs if r.startswith("lr_")]
    if not (depth_runs or lr_runs):
        return []

    def draw_abl(fig: Any) -> None:
        axes = fig.subplots(1, 2)
        for r in depth_runs:
            se, ce = R.series(r, "easy", "cka")
            _, cd = R.series(r, "difficult", "cka")
            if ce.size:
                axes[0].plot(se, ce / np.maximum(np.abs(cd), 1e-12), label=r, lw=0.9)
        axes[0].set_ylabel("CKA_easy / CKA_diff")
        axes[0].legend(fontsize=6)
        for r in lr_runs:
            s, er = R.series(r, "train", "erank")
            if er.size:
                axes[1].plot(s, er / er[0], label=r, lw=0.9)
        axes[1].set_ylabel("erank / initial (train probe)")
        axes[1].legend(fontsize=6)
        for ax in axes:
            ax.set_xscale("symlog", linthresh=5)
            ax.set_xlabel("iteration")

    return [FigureSpec("fig13_14_ablations", "Figs. 13-14: depth and learning-rate ablations",
                       "Left: easy/difficult CKA ratio for each depth and seed (item 4(a) setting). "
                       "Right: effective rank relative to its initial value for each learning rate.",
                       draw_abl, (11, 4))]


def training_figure(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """The minibatch loss of every run."""
    train_runs = [r for r in dict.fromkeys(k[0] for k in R.t) if (r, "train_loss") in R.t]
    if not train_runs:
        return []

    def draw_loss(fig: Any) -> None:
        ax = fig.subplots(1, 1)
        for r in train_runs:
            s, v = R.train_series(r, "train_loss")
            ax.plot(s + 1, v, lw=0.7, label=r)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("iteration + 1")
        ax.set_ylabel("minibatch loss")
        ax.legend(fontsize=6, ncol=2)

    return [FigureSpec("training", "Training curves", "Minibatch loss of every run.", draw_loss, (9, 3.6))]


#: The figures of items 1-5, in report order.
FIGURES = (eigenfunction_figure, disk_metrics_figure, spectrum_figure, cka_figure, kernel_pca_figure,
           hierarchy_figure, ablation_figure, training_figure)


def alignment_figures(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    """Every figure of :data:`FIGURES` that the stored tables support."""
    return [spec for figure in FIGURES for spec in figure(cfg, R)]


def alignment_tables(cfg: AlignmentConfig, R: Results) -> list[TableSpec]:
    """One summary row per run: effective rank and CKA of each probe (initial / extreme / final)
    and the test accuracy."""
    rows = []
    for run in R.runs:
        row: dict[str, Any] = {"run": run}
        for pr in ("train", "test", "grid", "easy", "difficult"):
            s, er = R.series(run, pr, "erank")
            if er.size:
                row[f"erank {pr} (init/min/final)"] = f"{er[0]:.1f} / {er.min():.1f} / {er[-1]:.1f}"
            s, c = R.series(run, pr, "cka")
            if c.size:
                row[f"CKA {pr} (init/max/final)"] = f"{c[0]:.3f} / {c.max():.3f} / {c[-1]:.3f}"
        s, a = R.train_series(run, "test_accuracy")
        if a.size:
            row["test acc (max/final)"] = f"{a.max():.3f} / {a[-1]:.3f}"
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [TableSpec("Per-run summary", cols, rows, link="tables/probes.csv",
                      caption="From tables/probes.csv and tables/training.csv."), *layer_table(cfg, R)]


def layer_table(cfg: AlignmentConfig, R: Results) -> list[TableSpec]:
    """For a model with block parts (a transformer): one row per layer and block part of the
    label-noise runs, its CKA with the labels (initial / max / final) on the train and test probes."""
    runs = [run for _, run in noise_runs(cfg, R) if R.blocks(run, "train")]
    rows = []
    for run in runs:
        for la in [*R.layers(run, "train"), *R.blocks(run, "train")]:
            row: dict[str, Any] = {"run": run, "layer or block part": la}
            for pr in ("train", "test"):
                _, c = R.series(run, pr, "cka", la)
                if c.size:
                    row[f"CKA {pr} (init/max/final)"] = f"{c[0]:.3f} / {c.max():.3f} / {c[-1]:.3f}"
            rows.append(row)
    if not rows:
        return []
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [TableSpec("Per-layer and per-block CKA", cols, rows, link="tables/probes.csv",
                      caption="Layer-wise CKA(K^ℓ, YYᵀ) of each layer's NTK K^ℓ, then of each encoder block's "
                              "attention (query/key/value and output projections) and feed-forward parts (the "
                              "sums of their layers' kernels).")]


def build_report(cfg: AlignmentConfig, store: Any) -> ReportContent:
    """The report of a run: claims, figures and tables of items 1-5, then of items 6 and 7."""
    R = Results(store)
    claims = alignment_claims(cfg, R)
    figures = alignment_figures(cfg, R)
    tables = alignment_tables(cfg, R) if R.runs else []
    runs = noise_runs(cfg, R)
    claims += limit_claims(store, R, runs)
    figures += limit.limit_figures(store, R, runs)
    tables += limit.limit_tables(store)
    notes: list[str] = limit.skipped_notes(store)
    if 6 in cfg.items:
        claims += supernat.supernat_claims(store, cfg)
        figures += supernat.supernat_figures(store, cfg)
        tables += supernat.supernat_tables(store, cfg)
    if 7 in cfg.items:
        claims += complexity.complexity_claims(store, cfg)
        figures += complexity.complexity_figures(store, cfg)
        tables += complexity.complexity_tables(store, cfg)
    for item, mod, name in ((8, appendix_hierarchy, "hierarchy"), (9, spectral_bias, "bias"),
                            (10, norm_capacity, "capacity"), (11, channel_sweep, "channel")):
        if item in cfg.items:
            claims += getattr(mod, f"{name}_claims")(store, cfg)
            figures += getattr(mod, f"{name}_figures")(store, cfg)
            tables += getattr(mod, f"{name}_tables")(store, cfg)
    summary = [
        f"Items run: {', '.join(map(str, cfg.items))}. Items 2-5: {cfg.dataset}, "
        + (f"ReLU MLP with {cfg.depth} Linear layers of width {cfg.width}" if cfg.model == "mlp" else cfg.model_label)
        + f", SGD lr {cfg.lr}, momentum {cfg.momentum}, batch {cfg.batch_size}, {cfg.train_steps} steps; NTK probes "
        f"of {cfg.n_probe} train and {cfg.n_probe} test examples (all 10 outputs, so (N·C)² = "
        f"{(cfg.n_probe * 10) ** 2:,} entries), centering {cfg.centering}, at {cfg.schedule} log-spaced steps "
        f"(base {cfg.schedule_base}).",
        f"Item 1: disk task, {cfg.disk_n} points, ReLU MLP 2-{cfg.disk_width}×{cfg.disk_depth}-1, full-batch GD lr "
        f"{cfg.disk_lr}, {cfg.disk_steps} steps, NTK on a {cfg.disk_grid}×{cfg.disk_grid} grid.",
        "Absolute CKA values at this scale are small (≈ 0.1); the paper's claims are about trends.",
    ]
    return ReportContent(TITLE, summary=summary, claims=claims, figures=figures, tables=tables,
                         notes=notes)
