"""The claims of ``ekfac``, computed from the stored tables only: the results readers
(training curves per run, medians over seeds, the selected search rows, the period study and
the spectrum / EWC summaries) and the checks of the thesis' statements (§4.4: Figs. 4.3,
4.4a–c, 4.5) and of the EWC demo."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..framework.claims import interval_text as ival
from ..framework.claims import mean_interval
from ..framework.report import Claim
from ..framework.store import RunStore, to_number
from .config import EkfacConfig, nan_inf, selection_key

#: Display names of the methods.
LABELS = {"ekfac": "EKFAC", "ekfac_ra": "EKFAC-ra", "kfac": "KFAC (amortized)", "kfac_every": "KFAC (every step)",
          "sgd": "SGD + momentum", "adam": "Adam"}
#: Display names of the diagonals of the spectrum tracking.
SPECTRUM_NAMES = {"kfac": "KFAC", "ekfac": "EKFAC", "ekfac_ra": "EKFAC-ra", "kfe_optimum": "diag(QᵀGQ)"}

#: The gap of a seed where one of the two compared runs diverged (in the units of the statistic).
DIVERGED_GAP = 1e3

#: ``{(task, method, period): {seed: rows sorted by epoch}}``.
Curves = dict[tuple[str, str, int], dict[int, list[dict[str, float]]]]


def median(vals: list[float]) -> float:
    """Median with NaN read as ``inf`` (NaN if empty)."""
    vals = [nan_inf(v) for v in vals]
    return statistics.median(vals) if vals else math.nan


def read_curves(store: RunStore) -> Curves:
    """The ``curves`` table as :data:`Curves`."""
    out: dict[tuple[str, str, int], dict[int, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in store.read("curves"):
        row = {k: to_number(r.get(k, "nan")) for k in ("epoch", "step", "time_s", "cpu_s", "train_loss", "val_loss",
                                                       "val_acc")}
        row["seed"] = int(r["seed"])
        out[(r["task"], r["method"], int(r["period"]))][int(r["seed"])].append(row)
    for runs in out.values():
        for rows in runs.values():
            rows.sort(key=lambda x: x["epoch"])
    return out


def final(runs: dict[int, list[dict[str, float]]], key: str = "train_loss", epoch: int | None = None) -> float:
    """Median over seeds of ``key`` at ``epoch`` (default: the last epoch; a diverged run counts as inf)."""
    vals = []
    for rows in runs.values():
        match = [r for r in rows if epoch is None or r["epoch"] == epoch]
        vals.append(match[-1][key] if match else math.inf)
    return median(vals)


def selected_row(search: list[dict[str, str]], task: str, method: str, period: int) -> dict[str, str]:
    """The search row selected for ``(task, method, period)`` (the order of :func:`.config.selection_key`)."""
    sel = [r for r in search if r["task"] == task and r["method"] == method and r.get("period") == str(period)]
    return min(sel, key=selection_key) if sel else {}


def log_auc(rows: list[dict[str, float]]) -> float:
    """Mean over epochs 1..E of the log training loss of one run (the area under Fig. 4.3a's
    log-scale curve; ``inf`` when the run diverged)."""
    vals = [nan_inf(r["train_loss"]) for r in rows[1:]]
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        return math.inf
    return statistics.fmean(math.log(v) for v in vals)


def last(rows: list[dict[str, float]], key: str = "train_loss") -> float:
    """``key`` at the last epoch of one run (a diverged run counts as ``inf``)."""
    return nan_inf(rows[-1][key]) if rows else math.inf


def cpu_per_step(rows: list[dict[str, float]]) -> float:
    """Training CPU seconds per step of one run (``time.process_time`` over the steps)."""
    return rows[-1]["cpu_s"] / rows[-1]["step"] if rows and rows[-1]["step"] > 0 else math.nan


def ms_per_step(runs: dict[int, list[dict[str, float]]]) -> float:
    """Median over seeds of the training CPU milliseconds per step."""
    return 1e3 * median([cpu_per_step(r) for r in runs.values()])


def gaps(fast: dict[int, list[dict[str, float]]], base: dict[int, list[dict[str, float]]],
         stat: Any) -> list[float]:
    """Per seed present in both, ``stat(base run) − stat(fast run)`` (seeds are paired: the same
    seed gives every method the same initialization and minibatch order). A run that diverged
    (``inf``) gives a gap of ``±DIVERGED_GAP``, so that it weighs against its method instead
    of dropping out of the interval; ``nan`` when both diverged."""
    out = []
    for s in sorted(set(fast) & set(base)):
        a, b = stat(fast[s]), stat(base[s])
        g = b - a if math.isfinite(a) or math.isfinite(b) else math.nan
        out.append(max(-DIVERGED_GAP, min(DIVERGED_GAP, g)) if not math.isnan(g) else g)
    return out


def binding(stats: dict[str, tuple[float, float, float]]) -> str:
    """The comparison that decides "every value > 0": one that fails outright if any (the
    lowest upper end), else the one with the lowest lower end (the lowest value without
    intervals). :meth:`Claim.compare` on it gives the verdict of the conjunction."""
    def end(v: tuple[float, float, float], i: int) -> float:
        x = v[i] if math.isfinite(v[i]) else v[0]
        return x if math.isfinite(x) else -math.inf

    failed = [k for k, v in stats.items() if end(v, 2) <= 0]
    if failed:
        return min(failed, key=lambda k: end(stats[k], 2))
    return min(stats, key=lambda k: end(stats[k], 1))




def seeds_note(n: int) -> str:
    """How the interval was formed."""
    return (f"mean over {n} paired seeds with its Student-t 95% interval" if n > 1 else
            "one seed: point value, no interval")


def beats_all(topic: str, paper: str, what: str, fast: str, main: dict[str, Any], bases: list[str], stat: Any,
              stat_text: str, part: str, extra: Any = None) -> Claim:
    """``fast`` has a lower ``stat`` than every method of ``bases`` (``> 0`` on the mean of the
    per-seed gaps, interval over seeds, decided on the binding baseline)."""
    res = {b: mean_interval(gaps(main[fast], main[b], stat)) for b in bases}
    key = binding(res)
    n = len(set(main[fast]))
    crit = (f"per seed Δ = {stat_text}(baseline) − {stat_text}({LABELS[fast]}); held when the {seeds_note(n)} "
            "is > 0 for every baseline (" + ", ".join(LABELS[b] for b in bases) + f"); value/interval: the binding "
            f"baseline ({LABELS[key]}). {what}")
    measured = "; ".join(f"vs {LABELS[b]}: Δ {ival(*v)} (loss ratio {LABELS[fast]} / {LABELS[b]} "
                         f"{math.exp(-v[0]) if abs(v[0]) < 700 else math.nan:.3g})" + (extra(b) if extra else "")
                         for b, v in res.items())
    if any(abs(g) == DIVERGED_GAP for b in bases for g in gaps(main[fast], main[b], stat)):
        measured += f" (a diverged run counts as a gap of ±{DIVERGED_GAP:g})"
    m, lo, hi = res[key]
    return Claim.compare(topic, paper, crit, measured, m, ">", 0.0, low=lo, high=hi, part=part)


def baselines(task: str) -> tuple[str, ...]:
    """The baselines of the thesis' figure for ``task``: amortized KFAC, SGD and Adam for the
    auto-encoder (Fig. 4.3); amortized KFAC and SGD for the CNN (Fig. 4.5 has no Adam)."""
    return ("kfac", "sgd", "adam") if task == "autoencoder" else ("kfac", "sgd")


def optimization_claims(cfg: EkfacConfig, task: str, main: dict[str, Any]) -> list[Claim]:
    """Figs. 4.3a/c, 4.4a/b (every-step KFAC) and 4.5a/c on the final runs of ``task`` (``main``:
    :data:`Curves` entries by method)."""
    out = []
    name = "auto-encoder" if task == "autoencoder" else "CNN"
    fig = "Fig. 4.3a" if task == "autoencoder" else "Fig. 4.5a"
    bases = [m for m in baselines(task) if m in main]
    for fast in (m for m in ("ekfac", "ekfac_ra") if m in main and bases):
        def fin(b: str, f: str = fast) -> str:
            return (f", final loss median {final(main[f]):.4g} vs {final(main[b]):.4g}")
        out.append(beats_all(
            f"{name}: {LABELS[fast]} loss per epoch",
            "\"EKFAC and EKFAC-ra both minimize faster the training loss per epoch than KFAC and the other "
            f"baselines\" ({fig}; thesis §4.4.1" + (", and §4.4.2: EKFAC yields better optimization than the SGD "
                                                    "baselines and KFAC in training loss per epoch)" if task == "cnn"
                                                    else ")"),
            "The statistic is the mean over epochs 1..E of log training loss (the area under the log-scale curve "
            "of the figure); the thesis gives no number, so any positive gap counts. SGD and Adam run without BN "
            "here (the thesis adds BN to them).",
            fast, main, bases, log_auc, "mean log loss", name, fin))
    if task == "autoencoder" and "kfac_every" in main and "kfac" in main:
        out.append(beats_all(
            "auto-encoder: every-step KFAC per epoch",
            "\"a strong KFAC baseline where we reestimate and compute the inverse at each update … outperforms the "
            "amortized version (as a function of number of epochs)\" (Fig. 4.4a)",
            "Statistic as for Fig. 4.3a: mean over epochs of log training loss; no number in the thesis.",
            "kfac_every", main, ["kfac"], log_auc, "mean log loss", name))
        ratios = [cpu_per_step(main["kfac_every"][s]) / cpu_per_step(main["kfac"][s])
                  for s in sorted(set(main["kfac_every"]) & set(main["kfac"]))]
        v = mean_interval(ratios)
        n = len(ratios)
        out.append(Claim.compare(
            "auto-encoder: every-step KFAC cost", "the every-update KFAC baseline \"comes at a high computational "
            "cost, as seen in Figure 4 (b). Amortizing the eigendecomposition allows to strongly decrease the "
            "computational cost\" (Fig. 4.4b)",
            f"per seed, training CPU seconds per step (time.process_time over the steps) of every-step KFAC / "
            f"amortized KFAC (period {cfg.period}); held when the {seeds_note(n)} is ≥ {cfg.cost_ratio:g} "
            "('high' cost read as at least 1.5×: the thesis gives no number; CPU time rather than wall time "
            "because the machine is shared, see the wall-clock claims)",
            f"ratio {ival(*v)}; CPU ms/step (medians) every-step KFAC {ms_per_step(main['kfac_every']):.3g}, "
            f"amortized KFAC {ms_per_step(main['kfac']):.3g}",
            v[0], ">=", cfg.cost_ratio, low=v[1], high=v[2], part=name))
    if "kfac" in main and "ekfac" in main:
        def best_val(rows: list[dict[str, float]]) -> float:
            return min(nan_inf(r["val_loss"]) for r in rows)
        common = sorted(set(main["ekfac"]) & set(main["kfac"]))
        rel = [(best_val(main["ekfac"][s]) - best_val(main["kfac"][s])) / max(best_val(main["kfac"][s]), 1e-300)
               for s in common]
        v = mean_interval(rel)
        tol = cfg.similar_tol
        out.append(Claim.compare(
            f"{name}: validation loss", "\"KFAC and EKFAC achieve a similar validation performance\" (Fig. 4.3c"
            + ("; §4.4.2: EKFAC maintains good generalization, Fig. 4.5c)" if task == "cnn" else ")"),
            f"per seed, relative gap of the best validation loss (EKFAC − KFAC) / KFAC; held when the "
            f"{seeds_note(len(rel))} lies within ±{tol:.0%} ('similar': the thesis gives no number)",
            f"relative gap {ival(*v)}; best validation loss medians EKFAC "
            f"{median([best_val(r) for r in main['ekfac'].values()]):.4g}, KFAC "
            f"{median([best_val(r) for r in main['kfac'].values()]):.4g}", v[0], "in", (-tol, tol), low=v[1],
            high=v[2], part=name))
    return out


@dataclass
class PeriodStudy:
    """The recompute period study of the auto-encoder: ``periods`` run, the median final
    training loss ``fin[(method, period)]`` of amortized KFAC and EKFAC and the runs by seed
    ``runs[(method, period)]``."""

    periods: list[int]
    fin: dict[tuple[str, int], float]
    runs: dict[tuple[str, int], dict[int, list[dict[str, float]]]]


def read_period_study(curves: Curves) -> PeriodStudy | None:
    """The period study (``None`` when fewer than two periods were run)."""
    periods = sorted({p for (t, m, p) in curves if t == "autoencoder" and m in ("kfac", "ekfac")})
    if len(periods) < 2:
        return None
    runs = {(m, p): curves[("autoencoder", m, p)] for m in ("kfac", "ekfac") for p in periods
            if ("autoencoder", m, p) in curves}
    return PeriodStudy(periods, {k: final(v) for k, v in runs.items()}, runs)


def period_claims(study: PeriodStudy) -> list[Claim]:
    """Fig. 4.4a: amortization hurts EKFAC less than KFAC as the period grows."""
    periods, fin, runs = study.periods, study.fin, study.runs
    lo, hi = periods[0], periods[-1]
    if not all((m, p) in runs for m in ("kfac", "ekfac") for p in (lo, hi)):
        return []

    def degradation(m: str) -> dict[int, float]:
        a, b = runs[(m, lo)], runs[(m, hi)]
        return {s: math.log(last(b[s]) / last(a[s])) if math.isfinite(last(b[s]) / last(a[s])) else math.nan
                for s in sorted(set(a) & set(b))}

    dk, de = degradation("kfac"), degradation("ekfac")
    d = [dk[s] - de[s] for s in sorted(set(dk) & set(de))]
    v = mean_interval(d)
    return [Claim.compare(
        "auto-encoder: amortization",
        "\"amortized EKFAC preserves better the optimization performance than amortized KFAC\" as the "
        "eigendecomposition / inverse is recomputed less often (Fig. 4.4a)",
        f"per seed, degradation = log(final training loss at period {hi} / at period {lo}) of each method ((η, ε) "
        f"selected per method and period); Δ = degradation(KFAC) − degradation(EKFAC); held when the "
        f"{seeds_note(len(d))} is > 0 (the thesis gives no number)",
        f"Δ {ival(*v)}; final loss medians per period: " + "; ".join(
            f"{LABELS[m]} " + ", ".join(f"{p}: {fin[(m, p)]:.4g}" for p in periods if (m, p) in fin)
            for m in ("ekfac", "kfac")), v[0], ">", 0.0, low=v[1], high=v[2], part="auto-encoder")]


@dataclass
class SpectrumSeries:
    """The ``spectrum`` table by diagonal: ``by[approximation]`` is the list of
    ``(step, {rel_distance, diag_rel_error, trace_ratio})`` sorted by step."""

    by: dict[str, list[tuple[int, dict[str, float]]]]

    def mean(self, a: str, key: str, first: int | None = None) -> float:
        """Mean of ``key`` over the tracked steps after step 0 (the first ``first`` of them)."""
        vals = [d[key] for s, d in self.by.get(a, []) if s > 0][:first]
        return statistics.fmean(vals) if vals else math.nan


def read_spectrum(spectrum: list[dict[str, str]]) -> SpectrumSeries:
    """The rows of the ``spectrum`` table as a :class:`SpectrumSeries`."""
    by: dict[str, list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for r in spectrum:
        by[r["approximation"]].append((int(r["step"]), {k: to_number(r[k]) for k in
                                                        ("rel_distance", "diag_rel_error", "trace_ratio")}))
    for v in by.values():
        v.sort(key=lambda t: t[0])
    return SpectrumSeries(by)


def spectrum_claims(series: SpectrumSeries, much_closer: float) -> list[Claim]:
    """Fig. 4.4c: in a fixed KFE, EKFAC (and EKFAC-ra) track the exact spectrum much better
    than KFAC (mean distance over the tracked steps at most ``much_closer`` × KFAC's); and the
    identity ``tr diag(QᵀGQ) = tr G`` (orthogonal Q) of the reference diagonal."""
    names, mean = SPECTRUM_NAMES, series.mean
    dist = {a: mean(a, "rel_distance") for a in series.by}
    floor = (f"; floor of any diagonal in the fixed KFE, diag(QᵀGQ): {dist['kfe_optimum']:.3g}"
             if "kfe_optimum" in dist else "")
    k = dist.get("kfac", math.nan)
    n = max((len([1 for s, _ in v if s > 0]) for v in series.by.values()), default=0)
    claims = []
    for a, paper in (("ekfac", "with a fixed KFE, \"the spectrum of G_KFAC quickly diverges from the spectrum of G, "
                      "whereas the cheap frequent reestimation of the diagonal scaling for G_EKFAC … allows their "
                      "spectrum to stay much closer to that of G\" (Fig. 4.4c)"),
                     ("ekfac_ra", "the spectrum of G_EKFAC-ra also \"stay[s] much closer to that of G\" than "
                      "G_KFAC's (Fig. 4.4c)")):
        if a not in dist:
            continue
        extra = ""
        if a == "ekfac_ra":
            extra = (f"; its trace is {mean('ekfac_ra', 'trace_ratio'):.3g}× tr G on average "
                     f"({mean('ekfac_ra', 'trace_ratio', 10):.3g}× over the first 10 steps; EKFAC "
                     f"{mean('ekfac', 'trace_ratio'):.3g}×): the running average of N·(minibatch-mean gradient)² — "
                     "the reference implementation's estimator — overestimates s* by up to N while the per-example "
                     "gradients are aligned")
        ratio = dist[a] / k if k > 0 else math.nan
        claims.append(Claim.compare(
            f"spectrum tracking ({SPECTRUM_NAMES[a]})", paper,
            f"ratio of the mean relative ℓ2 distance between the sorted eigenvalues of the layer's exact empirical "
            f"Fisher G and those of {names[a]}, over the {n} tracked steps of one training run, to KFAC's; held when "
            f"≤ {much_closer:g} ('much closer': the thesis gives no number). One trajectory: no interval",
            f"mean relative distance {names[a]} {dist[a]:.3g}, KFAC {k:.3g} (ratio {ratio:.3g}){floor}" + extra,
            ratio, "<=", much_closer, part="spectrum"))
    if "kfe_optimum" in series.by:
        err = max((abs(d["trace_ratio"] - 1) for _, d in series.by["kfe_optimum"]), default=math.nan)
        claims.append(Claim.identity(
            "spectrum tracking: trace of EKFAC's optimal diagonal",
            "s* = diag(QᵀGQ) is the Frobenius-optimal diagonal in the KFE and keeps the trace of G, tr(QᵀGQ) = "
            "tr G for the orthogonal Q = U_A ⊗ U_B (thesis §4.3.2; digest §0: the trace of EKFAC equals the exact "
            "trace)", f"max over the tracked steps of |Σ diag(QᵀGQ) / tr G − 1| = {err:.2g}", err, 1e-9,
            criterion="max over steps of |tr diag(QᵀGQ) / tr G − 1| ≤ 1e-9 (float64)", part="spectrum"))
    return claims


def ewc_summary(ewc: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Medians over seeds of the ``ewc`` table, one row per (penalty, strength)."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in ewc:
        groups[(r["penalty"], r["strength"])].append(r)
    rows = []
    for (p, lam), rs in sorted(groups.items()):
        rows.append({"penalty": p, "strength": to_number(lam), "seeds": len(rs),
                     **{k: median([to_number(r[k]) for r in rs]) for k in ("acc_a_before", "acc_a_after",
                                                                            "acc_b_after", "forgetting")}})
    return rows


def ewc_claims(ewc: list[dict[str, str]], summary: list[dict[str, Any]]) -> list[Claim]:
    """The EWC demo: every Fisher penalty forgets less of task A than no penalty (per-seed
    paired differences, decided on the binding penalty)."""
    by: dict[str, dict[int, float]] = defaultdict(dict)
    for r in ewc:
        key = "none" if r["penalty"] == "none" else f"{r['penalty']} (λ={to_number(r['strength']):g})"
        by[key][int(r["seed"])] = to_number(r["forgetting"])
    if "none" not in by or len(by) < 2:
        return []
    none = by.pop("none")
    res = {k: mean_interval([none[s] - v[s] for s in sorted(set(v) & set(none))]) for k, v in by.items()}
    key = binding(res)
    n = len(none)
    med = {f"{r['penalty']} (λ={r['strength']:g})": r["forgetting"] for r in summary if r["penalty"] != "none"}
    none_med = [r["forgetting"] for r in summary if r["penalty"] == "none"]
    m, lo, hi = res[key]
    return [Claim.compare(
        "EWC demo", "\"elastic weight consolidation (Kirkpatrick et al., 2017) proposes to fight catastrophic "
        "forgetting in continual learning\" and could \"benefit for more efficient representations such as KFAC "
        "… or EKFAC\" (thesis §3.1; no figure: a demo that the penalty (λ/2)(θ − θ_A)ᵀ F_A (θ − θ_A) reduces "
        "forgetting with a diag, KFAC or EKFAC F_A)",
        f"per seed, Δ = forgetting without penalty − forgetting with the penalty (accuracy on task A's test digits "
        f"before − after task B); held when the {seeds_note(n)} is > 0 for every penalty; value/interval: the "
        f"binding penalty ({key})",
        f"median forgetting without penalty {none_med[0] if none_med else math.nan:.3f}; " + "; ".join(
            f"{k}: median {med.get(k, math.nan):.3f}, Δ {ival(*v)}" for k, v in res.items()),
        m, ">", 0.0, low=lo, high=hi, part="EWC")]
