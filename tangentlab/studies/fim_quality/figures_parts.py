"""Figures and tables of ``fim-quality``'s newer parts: the trace with independent Monte-Carlo
samples (Fig. 3.6), the NTK kernel PCA (Fig. 3.7) and the decorrelation in the KFE (Fig. 4.2
left), built from the stored tables only."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.report import FigureSpec, TableSpec
from ..framework.store import RunStore, to_number
from .claims import Results, label
from .config import INDEP

_COLORS = {"diag": "tab:blue", "quasidiag": "tab:orange", "kfac": "tab:red", "ekfac": "tab:green"}


def trace_figure(res: Results) -> list[FigureSpec]:
    """Fig. 3.6 with independent samples: each approximation's relative trace error against the
    exact-expectation trace, mean and range over the realizations."""
    reps = [r for r in ("diag", "quasidiag", "kfac", "ekfac")
            if any(res.per_probe(s, INDEP, r, "trace_rel_err").size for s in res.steps)]
    if not reps:
        return []

    def draw(fig):
        ax = fig.subplots()
        for r in reps:
            xs = [s for s in res.steps if res.per_probe(s, INDEP, r, "trace_rel_err").size]
            vals = [res.per_probe(s, INDEP, r, "trace_rel_err") for s in xs]
            m = np.array([v.mean() for v in vals])
            ax.errorbar(xs, m, yerr=[m - [v.min() for v in vals], [v.max() for v in vals] - m], marker="o", ms=4,
                        capsize=2, color=_COLORS.get(r), label=label(r, ""), alpha=0.8)
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=max(1, res.steps[1] if len(res.steps) > 1 else 1))
        ax.set_xlabel("training step")
        ax.set_ylabel("|tr F̂ − tr F| / tr F")
        ax.legend(fontsize=7)

    return [FigureSpec("fig3_6_trace_independent", "Fig. 3.6 analogue with independent samples (as in the thesis)",
                       "Relative trace error of each approximation built on independent Monte-Carlo labels, against "
                       "the trace of the exact-expectation Fisher; mean and range over the realizations. Diag, "
                       "QuasiDiag and EKFAC coincide (their trace is the Monte-Carlo trace: only sampling noise).",
                       draw, (6, 3.6))]


def ntk_figure(store: RunStore, res: Results) -> list[FigureSpec]:
    """Fig. 3.7: the normalized Gram of the first pair (top) and every checkpoint's kernel-PCA
    projections (bottom)."""
    if not res.ntk:
        return []
    gram = defaultdict(dict)
    for r in store.read("ntk_gram"):
        gram[int(r["step"])][(int(r["i"]), int(r["j"]))] = to_number(r["value"])
    pts = [r for r in store.read("ntk_points") if r["pair"] == "0"]
    steps = sorted({r["step"] for r in res.ntk})
    c1, c2 = next((r["c1"], r["c2"]) for r in res.ntk if r["pair"] == 0)
    acc = {r["step"]: r["value"] for r in res.ntk if r["pair"] == 0 and r["metric"] == "pca_accuracy"}

    def draw(fig):
        axes = fig.subplots(2, len(steps), squeeze=False)
        for j, s in enumerate(steps):
            cells = gram.get(s, {})
            if cells:
                n = 1 + max(i for i, _ in cells)
                m = np.full((n, n), np.nan)
                for (i, k), v in cells.items():
                    m[i, k] = v
                axes[0, j].imshow(m, cmap="viridis", vmin=-1, vmax=1)
            axes[0, j].set_title(f"step {s}", fontsize=9)
            axes[0, j].set_xticks([])
            axes[0, j].set_yticks([])
            for lab, color, cls in ((0, "tab:blue", c1), (1, "tab:red", c2)):
                p = [(to_number(r["pc1"]), to_number(r["pc2"])) for r in pts if int(r["step"]) == s
                     and int(r["label"]) == lab]
                if p:
                    axes[1, j].scatter(*zip(*p), s=8, color=color, label=f"class {cls}")
            axes[1, j].set_title(f"separability {acc.get(s, float('nan')):.2f}", fontsize=8)
            axes[1, j].set_xlabel("PC 1")
        axes[0, 0].set_ylabel(f"normalized Gram ({c1} then {c2})")
        axes[1, 0].set_ylabel("PC 2")
        axes[1, -1].legend(fontsize=7)

    return [FigureSpec("fig3_7_ntk_pca", "Fig. 3.7 analogue: NTK of f_c2 − f_c1 during training",
                       f"Top: the NTK Gram of f_{c2} − f_{c1} on held-out examples (class {c1} first), each row and "
                       "column normalized by 1/√diag(G). Bottom: the examples projected on the first 2 principal "
                       "components of the centered Gram; title: training accuracy of a logistic regression on "
                       "them.", draw, (2.6 * len(steps) + 1, 5.4))]


def decorrelation_figure(store: RunStore) -> list[FigureSpec]:
    """Fig. 4.2 (left): |correlation| of the highest-variance coordinates in each basis."""
    cells: dict[tuple[int, str], dict[tuple[int, int], float]] = defaultdict(dict)
    for r in store.read("decorrelation_block"):
        cells[(int(r["step"]), r["basis"])][(int(r["i"]), int(r["j"]))] = abs(to_number(r["value"]))
    if not cells:
        return []
    steps = sorted({s for s, _ in cells})

    def draw(fig):
        axes = fig.subplots(len(steps), 2, squeeze=False)
        for i, s in enumerate(steps):
            for j, basis in enumerate(("parameter", "kfe")):
                c = cells.get((s, basis), {})
                if not c:
                    continue
                n = 1 + max(a for a, _ in c)
                m = np.zeros((n, n))
                for (a, b), v in c.items():
                    m[a, b] = v
                im = axes[i, j].imshow(m, cmap="magma", vmin=0, vmax=1)
                axes[i, j].set_title(f"step {s}, {'parameter basis' if basis == 'parameter' else 'KFE'}", fontsize=9)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="|correlation|")

    return [FigureSpec("fig4_2_left_decorrelation", "Fig. 4.2 (left) analogue: decorrelation in the KFE",
                       "|Correlation| of the empirical-Fisher block of the second Linear layer of the sigmoid MLP, "
                       "for its highest-variance coordinates (descending variance), in the parameter basis and in "
                       "the Kronecker-factored eigenbasis (the thesis shows 250 parameters).", draw,
                       (7, 3.3 * len(steps)))]


def part_tables(res: Results) -> list[TableSpec]:
    """The tables of Fig. 3.7 and Fig. 4.2 (left)."""
    tables = []
    if res.ntk:
        by: dict[tuple, dict[str, Any]] = {}
        for r in res.ntk:
            by.setdefault((r["step"], r["pair"]), {"step": r["step"], "pair": r["pair"], "c1": r["c1"],
                                                   "c2": r["c2"]})[r["metric"]] = r["value"]
        tables.append(TableSpec("Fig. 3.7: NTK of f_c2 − f_c1 (per checkpoint and class pair)",
                                ["step", "pair", "c1", "c2", "gap", "pca_accuracy", "trace"],
                                [by[k] for k in sorted(by)], max_rows=200, link="tables/ntk.csv",
                                caption="gap: mean intra- minus inter-class normalized kernel; pca_accuracy: "
                                        "logistic regression on the 2 kernel-PCA projections."))
    if res.decor:
        rows: dict[tuple, dict[str, Any]] = {}
        for r in res.decor:
            if r["metric"] != "offdiag_mass":
                continue
            d = rows.setdefault((r["step"], r["layer"], r["split"]), {"step": r["step"], "layer": r["layer"],
                                                                      "split": "all" if r["split"] < 0 else
                                                                      r["split"]})
            d[r["basis"]] = r["value"]
        for d in rows.values():
            d["ratio"] = d.get("kfe", np.nan) / d.get("parameter", np.nan)
        tables.append(TableSpec("Fig. 4.2 (left): off-diagonal share of ‖F_l‖²_F",
                                ["step", "layer", "split", "parameter", "kfe", "ratio"],
                                [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1], k[2]))], max_rows=200,
                                link="tables/decorrelation.csv"))
    return tables
