"""Claims, table and figure of part ``lr`` (thesis App. C.5, Fig. C.1), from ``tables/lr_curves.csv`` only.

Every comparison is at equal progress: the first evaluation at which a run's clean training loss
is at or below a milestone (:func:`at_milestone`). Per seed:

* the learning-rate spread ``S = max_f |noisy(α=1, lr·f) − noisy(α=1, lr)|`` and the α effect
  ``A = noisy(α=1, lr) − noisy(α_max, lr)`` (noisy-example loss, noisy labels), averaged over the
  milestones; the finding "the learning rate leaves the trajectory unchanged, α does not" is
  ``mean S / mean |A| < 0.5`` (and the same on the test loss);
* the linearity gaps at the last milestone (the minimum over the three metrics of a difference):
  smallest lr vs lr, and the matched α (same SGD step size lr/α²) vs the smallest lr;
* the first-step identities of :func:`.learning_rate.first_step_checks`.

Intervals: Student t over the seeds (:func:`~tangentlab.studies.framework.claims.mean_interval`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.claims import Claim, mean_interval
from ..framework.report import FigureSpec
from ..framework.store import to_number
from .config import LazyVsHastyConfig
from .learning_rate import matched_alpha

#: ``(seed, alpha, lr_factor) → probes`` (``{"step", "group/metric": value}``, in probe order).
LrHistories = dict[tuple[int, float, float], list[dict[str, Any]]]
LIN = ("linearity/sign_similarity", "linearity/ntk_alignment", "linearity/representation_alignment")
#: Threshold of the trajectory claims: the lr spread below half the α effect (fixed before any run; the
#: thesis states no number, "all runs follow the same trajectory").
SPREAD_RATIO = 0.5
#: Tolerance of the exact first-step identities (float64 rounding).
STEP_TOL = 1e-10
PART = "lr (App. C.5, Fig. C.1)"


def read_lr(store) -> tuple[LrHistories, dict[int, dict[str, float]]]:
    """The probes of every run and the first-step checks per seed."""
    acc: dict[tuple[int, float, float, int], dict[str, Any]] = {}
    checks: dict[int, dict[str, float]] = defaultdict(dict)
    for r in store.read("lr_curves"):
        seed = int(r["seed"])
        if r["group"] == "check":
            checks[seed][r["metric"]] = float(r["value"])
            continue
        d = acc.setdefault((seed, float(r["alpha"]), float(r["lr_factor"]), int(r["probe"])), {"step": int(r["step"])})
        d[f"{r['group']}/{r['metric']}"] = to_number(r["value"])
    hists: LrHistories = defaultdict(list)
    for (seed, a, f, _), d in sorted(acc.items()):
        hists[(seed, a, f)].append(d)
    return dict(hists), dict(checks)


def at_milestone(hist: list[dict[str, Any]], milestone: float) -> dict[str, Any] | None:
    """The first probe whose clean training loss is ``≤ milestone`` (``None``: never reached)."""
    return next((h for h in hist if h.get("clean/loss", math.inf) <= milestone), None)


def _value(hists: LrHistories, seed: int, alpha: float, factor: float, m: float, key: str) -> float:
    p = at_milestone(hists.get((seed, alpha, factor), []), m)
    return float(p.get(key, math.nan)) if p is not None else math.nan


def seeds_of(hists: LrHistories) -> list[int]:
    return sorted({k[0] for k in hists})


def spread_and_effect(cfg: LazyVsHastyConfig, hists: LrHistories, seed: int, key: str) -> tuple[float, float]:
    """``(mean S, mean A)`` of one seed over the milestones for the loss ``key`` (see the module docstring)."""
    a_max = max(cfg.lr_alphas)
    spreads, effects = [], []
    for m in cfg.lr_milestones:
        base = _value(hists, seed, 1.0, 1.0, m, key)
        spreads.append(max(abs(_value(hists, seed, 1.0, f, m, key) - base) for f in cfg.lr_factors))
        effects.append(base - _value(hists, seed, a_max, 1.0, m, key))
    return float(np.mean(spreads)), float(np.mean(effects))


def linearity_gap(cfg: LazyVsHastyConfig, hists: LrHistories, seed: int, a: tuple[float, float],
                  b: tuple[float, float]) -> float:
    """``min_k (lin_k(a) − lin_k(b))`` over the three linearity metrics at the last milestone."""
    m = min(cfg.lr_milestones)
    return min(_value(hists, seed, *a, m, k) - _value(hists, seed, *b, m, k) for k in LIN)


def summary_rows(cfg: LazyVsHastyConfig, hists: LrHistories) -> list[dict[str, Any]]:
    """Per run (α, lr factor) and milestone: seed means of the steps, losses and linearity metrics."""
    rows = []
    for alpha, factor in sorted({(k[1], k[2]) for k in hists}, key=lambda t: (t[0], -t[1])):
        for m in sorted(cfg.lr_milestones, reverse=True):
            row: dict[str, Any] = {"alpha": alpha, "lr": cfg.lr * factor / alpha ** 2, "milestone": m}
            for key, col in (("step", "steps"), ("noisy/loss", "noisy_loss"), ("test/loss", "test_loss"),
                             ("noisy/accuracy", "noisy_acc"), ("test/accuracy", "test_acc"),
                             *((k, k.split("/")[1]) for k in LIN)):
                row[col] = float(np.nanmean([_value(hists, s, alpha, factor, m, key) for s in seeds_of(hists)]
                                            or [math.nan]))
            rows.append(row)
    return rows


def lr_claims(cfg: LazyVsHastyConfig, store) -> list[Claim]:
    """The claims of part lr (see the module docstring)."""
    hists, checks = read_lr(store)
    seeds = seeds_of(hists)
    if not seeds:
        return []
    a_max, a_m, f_min = max(cfg.lr_alphas), matched_alpha(cfg), min(cfg.lr_factors)
    lrs = ", ".join(f"{cfg.lr * f:g}" for f in sorted(cfg.lr_factors, reverse=True))
    miles = ", ".join(f"{m:g}" for m in sorted(cfg.lr_milestones, reverse=True))
    n = len(seeds)
    claims = []
    for key, what in (("noisy/loss", "noisy-example loss (noisy labels)"), ("test/loss", "test loss")):
        se = [spread_and_effect(cfg, hists, s, key) for s in seeds]
        effect = mean_interval([e for _, e in se])
        ratio = mean_interval([s / abs(e) if e else math.nan for s, e in se])
        if key == "noisy/loss":
            claims.append(Claim.compare(
                "lr: α changes the trajectory (Fig. 5.2, Fig. C.1)",
                "Fig. 5.2 / App. C.5: \"modulating the value of α causes the trajectories to diverge\": at equal "
                "clean loss the noisy examples are fitted less in the linearized regime (α = 100)",
                f"A = noisy loss(α=1) − noisy loss(α={a_max:g}) at equal clean loss, mean over the milestones {miles}; "
                "its mean over seeds > 0 for the whole 95 % interval",
                f"A = {effect[0]:.3f} over {n} seeds", effect[0], ">", 0.0, low=effect[1], high=effect[2], part=PART))
        claims.append(Claim.compare(
            f"lr: the learning rate does not change the trajectory: {what} (Fig. C.1 left)",
            "Fig. C.1 (α = 1, lr ∈ {0.01, 0.003, 1e-4, 1e-6}): \"regardless of the learning rate, all runs follow "
            "the same trajectory as measured by noisy examples accuracy during training, and test examples accuracy "
            "during training. This shows that modulating the learning rate plays a different role as the α scaling\"",
            f"per seed R = mean_m max_lr |L(lr') − L(lr)| / |mean_m L(α=1) − L(α={a_max:g})| for the {what} L at the "
            f"clean-loss milestones m = {miles}, α = 1 at lr ∈ {{{lrs}}} (CPU scale: {math.log10(1 / f_min):.1f} "
            f"orders of magnitude, the thesis 4); the seeds' mean R < {SPREAD_RATIO} for the whole interval (the "
            "thesis gives no number: the lr spread must stay below half the α effect)",
            f"R = {ratio[0]:.3f} over {n} seeds (α effect on the {what} {effect[0]:+.3f})", ratio[0], "<",
            SPREAD_RATIO, low=ratio[1], high=ratio[2], part=PART))
    small = mean_interval([linearity_gap(cfg, hists, s, (1.0, f_min), (1.0, 1.0)) for s in seeds])
    claims.append(Claim.compare(
        "lr: a smaller learning rate is more linear (Fig. C.1 right)",
        "App. C.5: \"using a smaller learning rate keeps the training dynamics in a more linearized regime\"",
        f"per seed min over sign similarity, KA(K_t, K_0) and representation alignment of lin(lr·{f_min:g}) − "
        f"lin(lr) at clean loss {min(cfg.lr_milestones):g}; the seeds' mean > 0 for the whole interval",
        f"min-metric gap {small[0]:+.4f} over {n} seeds", small[0], ">", 0.0, low=small[1], high=small[2], part=PART))
    matched = mean_interval([linearity_gap(cfg, hists, s, (a_m, 1.0), (1.0, f_min)) for s in seeds])
    claims.append(Claim.compare(
        "lr: at the same rescaled learning rate, α-scaling is more linear than a small lr (App. C.5)",
        "App. C.5: \"compare the lr = 10⁻⁶ to the α = 100 run [...] since both use the same learning rate once "
        "rescaled by α, but the linearity metrics stay close to 1 in the α scaled run, whereas [...] the "
        "lr = 10⁻⁶ run [...] is in a slightly non-linear regime as the linearity metrics drop to 0.9\"",
        f"CPU scale: α = {a_m:g} at lr {cfg.lr:g} (SGD step size {cfg.lr / a_m ** 2:g}) vs α = 1 at lr "
        f"{cfg.lr * f_min:g} (the same step size); per seed min over the three metrics of lin(α={a_m:g}) − "
        f"lin(α=1, lr·{f_min:g}) at clean loss {min(cfg.lr_milestones):g}; the seeds' mean > 0 for the whole interval",
        f"min-metric gap {matched[0]:+.4f} over {n} seeds", matched[0], ">", 0.0, low=matched[1], high=matched[2],
        part=PART))
    m = min(cfg.lr_milestones)
    close = mean_interval([min(_value(hists, s, a_max, 1.0, m, k) for k in LIN) for s in seeds])
    claims.append(Claim.compare(
        f"lr: the α = {a_max:g} run stays linear (App. C.5)",
        "App. C.5: \"the linearity metrics stay close to 1 in the α scaled run\" (the lr = 1e-6 run drops to 0.9)",
        f"per seed the minimum of the three linearity metrics of α = {a_max:g} at clean loss {m:g}; the seeds' mean "
        "> 0.9 (the level the thesis quotes for the small-lr run) for the whole interval",
        f"min metric {close[0]:.4f} over {n} seeds", close[0], ">", 0.9, low=close[1], high=close[2], part=PART))
    if checks:
        errs = [max(c.get("param_step_alpha", math.nan), c.get("param_step_lr", math.nan)) for c in checks.values()]
        fa = [c.get("function_step_alpha", math.nan) for c in checks.values()]
        fl = [c.get("function_step_lr", math.nan) for c in checks.values()]
        claims.append(Claim.identity(
            "lr: α rescales parameter steps by 1/α, a learning rate lr/α² by 1/α² (§5.2)",
            "§5.2 (eq. 5.2.4, η_α = η/α²): \"gradient descent steps in parameter space are rescaled by 1/α while steps "
            "in function space (up to first order) are in O(1) in α\"",
            f"first SGD step from θ₀ (seed's first minibatch): max over {len(errs)} seeds of ‖αΔθ_α − Δθ_1‖/‖Δθ_1‖ "
            f"and ‖α²Δθ_(lr/α²) − Δθ_1‖/‖Δθ_1‖ (α = {a_m:g}); function steps on held-out inputs: ‖Δf_α‖/‖Δf_1‖ = "
            f"{np.nanmean(fa):.4f} (O(1) in α) while α²‖Δf_(lr/α²)‖/‖Δf_1‖ = {np.nanmean(fl):.4f}: the small lr "
            "moves the function α² times less per step",
            max(errs) if all(map(math.isfinite, errs)) else math.nan, STEP_TOL,
            criterion=f"relative error ≤ {STEP_TOL:g} (float64 rounding)", part=PART))
    return claims


def lr_figure(cfg: LazyVsHastyConfig, hists: LrHistories) -> FigureSpec:
    """Fig. C.1: noisy-example and test loss against the clean loss (seed 0, every run), and the linearity
    metrics at the milestones (seed means)."""

    def draw(fig):
        from matplotlib import colormaps

        axes = fig.subplots(1, 3)
        runs = sorted({(k[1], k[2]) for k in hists}, key=lambda t: (t[0], -t[1]))
        colors = colormaps["viridis"](np.linspace(0, 0.9, max(1, len(runs))))
        seeds = seeds_of(hists)
        for col, (a, f) in zip(colors, runs):
            label = f"α=1, lr·{f:g}" if a == 1.0 else f"α={a:g}"
            style = "-" if a == 1.0 else "--"
            h = hists.get((seeds[0], a, f), []) if seeds else []
            x = np.minimum.accumulate([r["clean/loss"] for r in h]) if h else []
            axes[0].plot(x, [r["noisy/loss"] for r in h], style, color=col, label=label)
            axes[1].plot(x, [r["test/loss"] for r in h], style, color=col)
            ms = sorted(cfg.lr_milestones, reverse=True)
            axes[2].plot(ms, [np.nanmean([_value(hists, s, a, f, m, LIN[0]) for s in seeds]) for m in ms], style + "o",
                         color=col)
        titles = ("noisy examples (noisy labels)", "test", "sign similarity (seed mean)")
        for i, (ax, t) in enumerate(zip(axes, titles)):
            if i < 2:
                ax.set_xscale("log")
            else:
                ax.set_xticks(sorted(cfg.lr_milestones))
            ax.invert_xaxis()
            ax.set_xlabel("clean training loss")
            ax.set_title(t, fontsize=9)
        axes[0].set_ylabel("loss")
        axes[0].legend(fontsize=7)

    return FigureSpec("lr_vs_alpha", "The learning rate is not α (Fig. C.1)",
                      "Solid: α = 1 at several learning rates; dashed: α-scaled runs at lr/α². x-axis reversed.",
                      draw, size=(12, 3.8))
