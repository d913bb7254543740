"""The figures and the report of ``ekfac`` (analogues of thesis Figs. 4.3, 4.4a–c and 4.5),
built from the stored tables only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..framework.report import Claim, FigureSpec, ReportContent, TableSpec
from ..framework.store import RunStore, to_number
from .claims import (
    LABELS,
    SPECTRUM_NAMES,
    Curves,
    PeriodStudy,
    SpectrumSeries,
    ewc_claims,
    ewc_summary,
    final,
    median,
    optimization_claims,
    period_claims,
    read_curves,
    read_period_study,
    read_spectrum,
    selected_row,
    spectrum_claims,
)
from .config import TITLE, EkfacConfig, nan_inf, period_tag
from .wallclock import wallclock_claims, wallclock_figure, wallclock_table


def build_report(cfg: EkfacConfig, store: RunStore) -> ReportContent:
    """The report: per task the claims, curves, selected hyperparameters and sensitivity map;
    then the period study, the spectrum tracking and the EWC demo."""
    curves = read_curves(store)
    search = store.read("search")
    spectrum = store.read("spectrum")
    ewc = store.read("ewc")
    claims: list[Claim] = []
    figures: list[FigureSpec] = []
    tables: list[TableSpec] = []
    notes = [
        "Training loss = mean per-example loss over the whole training set after each epoch (eval mode); "
        "training time = the training steps only (not the evaluations), measured per step as CPU time of the "
        "process (time.process_time; the wall-clock claims use it) and as wall time (perf_counter), on a shared "
        "CPU: wall / CPU in the wall-clock table shows how long the process waited for a core.",
        "KFAC-family optimizers approximate the empirical Fisher of the minibatch (thesis' choice); damping: "
        f"{cfg.kron_damping}; EKFAC-ra decay {cfg.ra_decay}.",
    ]
    for task in ("autoencoder", "cnn"):
        main = {m: curves[(task, m, period_tag(m, cfg.period))] for m in cfg.methods
                if (task, m, period_tag(m, cfg.period)) in curves}
        if not main:
            continue
        claims += optimization_claims(cfg, task, main)
        claims += wallclock_claims(task, main, cfg.cost_ratio)
        figures.append(curve_figure(task, main))
        figures.append(wallclock_figure(task, main))
        wall = wallclock_table(task, main)
        if wall is not None:
            tables.append(wall)
        rows = []
        for m, runs in main.items():
            best = selected_row(search, task, m, period_tag(m, cfg.period))
            rows.append({"method": LABELS[m], "lr": best.get("lr", ""), "damping": best.get("damping", ""),
                         "seeds": len(runs), "final train loss (median)": final(runs),
                         "best val loss (median)": median([min(nan_inf(r["val_loss"]) for r in rows_) for rows_ in
                                                            runs.values()]),
                         "train CPU s (median)": final(runs, "cpu_s"),
                         "train wall s (median)": final(runs, "time_s")})
        tables.append(TableSpec(f"{task}: selected hyperparameters and final results", list(rows[0]), rows))
        at_period = [r for r in search if r.get("period") == str(period_tag(r["method"], cfg.period))]
        fig = sensitivity_figure(task, at_period, cfg)
        if fig is not None:
            figures.append(fig)
    period = read_period_study(curves)
    if period is not None:
        claims += period_claims(period)
        figures.append(period_figure(period))
        rows = period_rows(period, curves, search)
        tables.append(TableSpec("auto-encoder: recompute period study", list(rows[0]), rows))
    if spectrum:
        series = read_spectrum(spectrum)
        tables.append(spectrum_table(series))
        claims += spectrum_claims(series, cfg.much_closer)
        figures.append(spectrum_figure(series))
    if ewc:
        rows = ewc_summary(ewc)
        claims += ewc_claims(ewc, rows)
        tables.append(TableSpec("EWC: accuracy on task A (digits 0–4) before/after task B (5–9)", list(rows[0]),
                                rows))
    summary = [f"{sum(len(v) for v in curves.values())} final training runs and {len(search)} search runs; "
               f"{cfg.n_seeds} seed(s): claims on the mean of per-seed paired differences with Student-t 95% "
               "intervals, tables and figures show medians."]
    return ReportContent(TITLE, summary, claims, figures, tables, notes)


def period_rows(study: PeriodStudy, curves: Curves, search: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The table of the period study: selected (η, ε), final loss and training time per run."""
    return [{"method": LABELS[m], "period": p, "lr": selected_row(search, "autoencoder", m, p).get("lr", ""),
             "damping": selected_row(search, "autoencoder", m, p).get("damping", ""), "final train loss (median)": v,
             "train CPU s (median)": final(curves[("autoencoder", m, p)], "cpu_s")}
            for (m, p), v in study.fin.items()]


def period_figure(study: PeriodStudy) -> FigureSpec:
    """Fig. 4.4a analogue: final training loss against the recompute period."""
    periods, fin = study.periods, study.fin

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        for m in ("kfac", "ekfac"):
            ps = [p for p in periods if (m, p) in fin]
            ax.plot(ps, [fin[(m, p)] for p in ps], "o-", label=LABELS[m])
        ax.set_xscale("log")
        ax.set_xlabel("recompute period (steps)")
        ax.set_ylabel("final training loss (median)")
        ax.legend()

    return FigureSpec("period", "Effect of the recompute period (Fig. 4.4a analogue)",
                      "Final training loss of amortized KFAC and EKFAC against the period of the "
                      "eigendecomposition / inverse.", draw, (6.0, 4.0))


def curve_figure(task: str, main: dict[str, Any]) -> FigureSpec:
    """Figs. 4.3a–c / 4.5 analogue: training loss per epoch and per second, validation loss."""

    def draw(fig):
        axes = fig.subplots(1, 3)
        for m, runs in main.items():
            seeds = sorted(runs)
            n_ep = min(len(runs[s]) for s in seeds)
            ep = [runs[seeds[0]][i]["epoch"] for i in range(n_ep)]
            med = [median([runs[s][i]["train_loss"] for s in seeds]) for i in range(n_ep)]
            val = [median([runs[s][i]["val_loss"] for s in seeds]) for i in range(n_ep)]
            tt = [median([runs[s][i]["cpu_s"] for s in seeds]) for i in range(n_ep)]
            axes[0].plot(ep, med, label=LABELS[m])
            axes[1].plot(tt, med, label=LABELS[m])
            axes[2].plot(ep, val, label=LABELS[m])
        for ax, xl, yl in zip(axes, ("epoch", "training CPU seconds", "epoch"),
                              ("training loss", "training loss", "validation loss")):
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_yscale("log")
        axes[0].legend(fontsize=7)

    name = "auto-encoder" if task == "autoencoder" else "CNN"
    return FigureSpec(f"curves_{task}", f"{name}: training loss per epoch / per CPU second, validation loss",
                      "Medians over seeds with the selected (η, ε) (thesis Fig. 4.3a–c"
                      + (", 4.5)" if task == "cnn" else ")"), draw, (12.0, 4.0))


def sensitivity_figure(task: str, search: list[dict[str, str]], cfg: EkfacConfig) -> FigureSpec | None:
    """Fig. 4.3d analogue: final training loss on the (η, ε) grid of EKFAC and KFAC."""
    methods = [m for m in ("ekfac", "kfac") if any(r["task"] == task and r["method"] == m and r["kind"] == "grid"
                                                  for r in search)]
    if not methods:
        return None

    def draw(fig):
        axes = fig.subplots(1, len(methods), squeeze=False)[0]
        for ax, m in zip(axes, methods):
            rows = [r for r in search if r["task"] == task and r["method"] == m and r["kind"] == "grid"]
            lrs = sorted({to_number(r["lr"]) for r in rows})
            ds = sorted({to_number(r["damping"]) for r in rows})
            grid = np.full((len(ds), len(lrs)), np.nan)
            for r in rows:
                v = to_number(r["final_train_loss"])
                cell_v = v if math.isfinite(v) else np.nan
                grid[ds.index(to_number(r["damping"])), lrs.index(to_number(r["lr"]))] = cell_v
            im = ax.imshow(np.log10(grid), origin="lower", cmap="viridis_r", aspect="auto")
            ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
            ax.set_yticks(range(len(ds)), [f"{v:g}" for v in ds])
            ax.set_xlabel("learning rate η")
            ax.set_ylabel("damping ε")
            ax.set_title(LABELS[m])
            fig.colorbar(im, ax=ax, label="log10 final training loss")

    return FigureSpec(f"sensitivity_{task}", f"{task}: (η, ε) sensitivity (Fig. 4.3d analogue)",
                      "Final training loss after the search epochs on the grid (blank: diverged).", draw,
                      (5.0 * len(methods), 4.0))


def spectrum_table(series: SpectrumSeries) -> TableSpec:
    """Means over the tracked steps of each diagonal of the spectrum tracking."""
    names, mean = SPECTRUM_NAMES, series.mean
    rows = [{"approximation": names[a], "spectrum rel. distance (mean)": mean(a, "rel_distance"),
             "diagonal rel. error vs diag(QᵀGQ) (mean)": mean(a, "diag_rel_error"),
             "trace / tr G (mean)": mean(a, "trace_ratio"), "trace / tr G (first 10 steps)":
             mean(a, "trace_ratio", 10)} for a in names if a in series.by]
    return TableSpec("spectrum tracking: means over the tracked steps", list(rows[0]), rows)


def spectrum_figure(series: SpectrumSeries) -> FigureSpec:
    """Fig. 4.4c analogue: spectrum distance and diagonal error of each diagonal in the fixed KFE."""
    by, names = series.by, SPECTRUM_NAMES

    def draw(fig):
        axes = fig.subplots(1, 2)
        for a, v in by.items():
            for ax, key in zip(axes, ("rel_distance", "diag_rel_error")):
                if key == "diag_rel_error" and a == "kfe_optimum":
                    continue
                ax.plot([s for s, _ in v], [max(d[key], 1e-16) for _, d in v], label=names[a])
        axes[0].set_ylabel("‖λ(G) − sort(d)‖ / ‖λ(G)‖")
        axes[1].set_ylabel("‖d − diag(QᵀGQ)‖ / ‖diag(QᵀGQ)‖")
        for ax in axes:
            ax.set_xlabel("training step")
            ax.set_yscale("log")
        axes[0].legend()

    return FigureSpec("spectrum", "Spectrum tracking in a fixed KFE (Fig. 4.4c analogue)",
                      "Left: distance between the sorted eigenvalues of the layer's exact empirical Fisher G and "
                      "each diagonal d in the KFE computed once at step 0; right: the error of d against the true "
                      "Fisher projected in that basis, diag(QᵀGQ).", draw, (11.0, 4.0))
