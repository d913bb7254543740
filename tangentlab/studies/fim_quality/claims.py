"""The claims of ``fim-quality``, computed from the stored tables only: the results reader
(:func:`read_results`: medians and quartiles over the probe vectors, the drift and training
rows) and the checks of the thesis' statements (Figs. 3.3–3.6, Theorem 2, Figs. 4.2 right
and 4.4c)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..framework.report import Claim
from ..framework.store import RunStore, to_number
from .config import EXACT_TOL, KRON, PAPER_REPRESENTATIONS, FimQualityConfig


def _quality_frame(store) -> list[dict[str, Any]]:
    out = []
    for r in store.read("quality"):
        out.append({"step": int(r["step"]), "fisher": r["fisher"], "rep": r["representation"],
                    "method": r["method"], "metric": r["metric"], "lam_rel": to_number(r["lambda_rel"]),
                    "probe": int(r["probe"]), "value": to_number(r["value"])})
    return out


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "n": 0}
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(a.size)}


def summarize_quality(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and quartiles over probe vectors: one row per step × fisher × representation ×
    method × metric × λ."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        lam = r["lam_rel"]
        groups[(r["step"], r["fisher"], r["rep"], r["method"], r["metric"], "" if math.isnan(lam) else lam)].append(
            r["value"])
    out = []
    for (step, fisher, rep, method, metric, lam), vals in sorted(groups.items(), key=lambda kv: tuple(
            (str(k) if not isinstance(k, (int, float)) else f"{k:020.10f}") for k in kv[0])):
        out.append({"step": step, "fisher": fisher, "representation": rep, "method": method, "metric": metric,
                    "lambda_rel": lam, **_stats(vals)})
    return out


def label(rep: str, method: str) -> str:
    """The display name of a representation (and of its solve method, when not exact)."""
    names = {"diag": "Diag", "quasidiag": "QuasiDiag", "blockdiag": "BlockDiag", "kfac": "KFAC", "ekfac": "EKFAC",
             "dense": "Dense", "lowrank": "LowRank"}
    base = names.get(rep, rep)
    return f"{base} ({method})" if method and method != "exact" else base


#: Display names of the approximations of part 2.
DRIFT_LABELS = {"kfac": "KFAC", "ekfac": "EKFAC", "ekfac_mb": "EKFAC (s* on minibatches)"}


@dataclass
class Results:
    """The stored tables of a run, as the claims and figures read them.

    ``S`` maps ``(step, fisher, representation, method, metric, lambda_rel)`` to the median and
    quartiles over the probe vectors (``lambda_rel`` is ``""`` for the metrics without λ);
    ``steps``, ``kinds``, ``reps`` and ``lams`` are the checkpoints, Fisher kinds,
    representations and relative λ present; ``paper`` the representations of the thesis'
    figures among them."""

    summary: list[dict[str, Any]]
    S: dict[tuple, dict[str, Any]]
    steps: list[int]
    kinds: list[str]
    reps: list[str]
    paper: list[str]
    lams: list[float]
    drift_rows: list[dict[str, Any]]
    training: list[dict[str, Any]]

    def med(self, step, kind, rep, metric, method="", lam="") -> float:
        """The median of one group (NaN when absent)."""
        s = self.S.get((step, kind, rep, method, metric, lam))
        return s["median"] if s else math.nan


def read_results(cfg: FimQualityConfig, store: RunStore) -> Results:
    """Read the ``quality``, ``drift`` and ``training`` tables of ``store``."""
    summary = summarize_quality(_quality_frame(store))
    S = {(s["step"], s["fisher"], s["representation"], s["method"], s["metric"], s["lambda_rel"]): s
         for s in summary}
    reps = [r for r in cfg.representations if any(s["representation"] == r for s in summary)]
    drift_rows = [{"step": int(r["step"]), "layer": r["layer"], "a": r["approximation"], "basis": r["basis"],
                   "metric": r["metric"], "value": to_number(r["value"]), "since": int(r["since_recompute"])}
                  for r in store.read("drift")]
    training = [{"phase": r["phase"], "step": int(r["step"]), "metric": r["metric"], "value": to_number(r["value"])}
                for r in store.read("training")]
    return Results(summary=summary, S=S, steps=sorted({s["step"] for s in summary}),
                   kinds=[k for k in cfg.fisher_kinds if any(s["fisher"] == k for s in summary)], reps=reps,
                   paper=[r for r in PAPER_REPRESENTATIONS if r in reps],
                   lams=sorted({s["lambda_rel"] for s in summary if s["lambda_rel"] != ""}),
                   drift_rows=drift_rows, training=training)


def _fmt_e(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.2e}"


def build_claims(cfg: FimQualityConfig, res: Results) -> list[Claim]:
    """The claims table of the report (see each claim's figure or theorem)."""
    S, steps, kinds, reps, paper, lams, med = res.S, res.steps, res.kinds, res.reps, res.paper, res.lams, res.med
    drift_rows = res.drift_rows
    claims: list[Claim] = []
    # --- Fig. 3.6: trace
    exact_tr = [r for r in ("diag", "quasidiag", "blockdiag", "ekfac") if r in reps]
    if exact_tr:
        worst = {r: max(med(s, k, r, "trace_rel_err") for s in steps for k in kinds) for r in exact_tr}
        held = all(v <= EXACT_TOL for v in worst.values())
        claims.append(Claim("Fig. 3.6 trace (Diag, QuasiDiag, EKFAC)",
                            "Diag, QuasiDiag and EKFAC estimate the trace 'very accurately': only Monte-Carlo "
                            "fluctuation remains (zero with the same samples)",
                            "max relative trace error over checkpoints and kinds: "
                            + ", ".join(f"{label(r, '')} {_fmt_e(v)}" for r, v in worst.items()),
                            held, "identity"))
    if "kfac" in reps:
        errs = [med(s, k, "kfac", "trace_rel_err") for s in steps for k in kinds]
        lo, hi = min(errs), max(errs)
        claims.append(Claim("Fig. 3.6 trace (KFAC)", "the KFAC trace tr(A)·tr(B) is less accurate",
                            f"KFAC relative trace error {_fmt_e(lo)} … {_fmt_e(hi)} over checkpoints and kinds",
                            lo > 1e3 * EXACT_TOL, "identity"))
    # --- Fig. 3.4 / 3.5: forward operations
    for metric, fig, what, best_is_max in (("mv_cos", "Fig. 3.4 Fv", "cos(Fv, F̂v)", True),
                                           ("vTMv_rel_err", "Fig. 3.5 vᵀFv", "relative error of vᵀF̂v", False)):
        if "ekfac" not in paper or len(paper) < 2:
            continue
        wins, points, detail = 0, 0, []
        for k in kinds:
            for s in steps:
                vals = {r: med(s, k, r, metric) for r in paper}
                best = (max if best_is_max else min)(vals, key=lambda r: vals[r])
                wins += best == "ekfac"
                points += 1
            mean_by_rep = {r: float(np.nanmedian([med(s, k, r, metric) for s in steps])) for r in paper}
            detail.append(f"{k}: " + ", ".join(f"{label(r, '')} {mean_by_rep[r]:.3g}" for r in paper))
        claims.append(Claim(fig, f"EKFAC is the best representation for forward operations ({what})",
                            f"EKFAC best at {wins}/{points} (checkpoint, kind) points; median over checkpoints of "
                            f"the median {what}: " + "; ".join(detail), wins == points))
    # --- Fig. 3.3: solve
    if "kfac" in paper and lams:
        wins = points = 0
        per_rep: dict[str, list[float]] = defaultdict(list)
        for k in kinds:
            for s in steps:
                for lam in lams:
                    vals = {}
                    for r in paper:
                        methods = cfg.solve_methods if r in KRON else ("exact",)
                        vals[r] = max(med(s, k, r, "solve_cos", m, lam) for m in methods)
                        per_rep[r].append(vals[r])
                    if min(vals.values()) >= 0.999:
                        continue  # every representation solves well: no ranking
                    best = max(vals, key=lambda r: vals[r])
                    wins += best == "kfac"
                    points += 1
        held = points > 0 and wins >= points / 2
        claims.append(Claim("Fig. 3.3 solve", "use KFAC for inverse-FIM operations: best cos(v, (F̂+λI)⁻¹(F+λI)v)",
                            f"KFAC (best of its solve methods) best at {wins}/{points} (checkpoint, kind, λ) points "
                            "where some representation has cos < 0.999; mean median cos over all points: "
                            + ", ".join(f"{label(r, '')} {np.nanmean(per_rep[r]):.3f}" for r in paper),
                            held if points else None))
        top, bottom = max(lams), min(lams)

        def worst(lam: float, factored: bool) -> float:
            vals = [med(s, k, r, "solve_cos", m, lam) for s in steps for k in kinds for r in reps
                    for m in ((cfg.solve_methods if r in KRON else ("exact",)) if not factored else
                              (("factored",) if r in KRON and "factored" in cfg.solve_methods else ()))]
            return float(np.nanmin(vals)) if vals else math.nan

        fac = ("; with factored damping (not (F̂+λI)⁻¹, so slower to reach 1): "
               f"{worst(top, True):.4f}" if "factored" in cfg.solve_methods else "")
        exact_top = min(med(s, k, r, "solve_cos", "exact", top) for s in steps for k in kinds for r in reps)
        claims.append(Claim("Fig. 3.3 solve vs λ", "the solve cosine tends to 1 as λ grows and degrades as λ → 0",
                            f"min median cos, exact damping, at λ = {top:g}·tr/P: {exact_top:.4f}; at λ = "
                            f"{bottom:g}·tr/P: {worst(bottom, False):.4f}" + fac,
                            bool(exact_top >= 0.99 and worst(bottom, False) < exact_top)))
    # --- Theorem 2 on the whole matrix at the checkpoints
    if "kfac" in reps and "ekfac" in reps and any(S.get((s, k, "ekfac", "", "fro_rel_err", "")) for s in steps
                                                   for k in kinds):
        pairs = [(med(s, k, "ekfac", "fro_rel_err"), med(s, k, "kfac", "fro_rel_err")) for s in steps for k in kinds]
        claims.append(Claim("Thm 2 (checkpoints)", "‖F − F_EKFAC‖_F ≤ ‖F − F_KFAC‖_F",
                            "relative Frobenius errors EKFAC vs KFAC: "
                            + ", ".join(f"{e:.3f} ≤ {k_:.3f}" for e, k_ in pairs),
                            all(e <= k_ + 1e-12 for e, k_ in pairs), "identity"))
    # --- Fig. 4.2 right / Theorem 2 at recompute points / Fig. 4.4c
    if drift_rows:
        claims += _drift_claims(drift_rows)
    return claims


def _drift_claims(drift_rows: list[dict[str, Any]]) -> list[Claim]:
    """Theorem 2 at the recompute points, Fig. 4.2 (right) and Fig. 4.4c, from the ``drift`` rows."""
    claims: list[Claim] = []
    fro = [r for r in drift_rows if r["metric"] == "fro_rel_err" and r["basis"] == "amortized"]
    by = {(r["step"], r["layer"], r["a"]): r for r in fro}
    rec = [(st, la) for (st, la, a) in by if a == "kfac" and by[(st, la, a)]["since"] == 0
           and (st, la, "ekfac") in by]
    if rec:
        viol = [(st, la) for st, la in rec if by[(st, la, "ekfac")]["value"] > by[(st, la, "kfac")]["value"] + 1e-12]
        claims.append(Claim("Thm 2 (recompute points)", "per layer, ‖F_l − EKFAC_l‖_F ≤ ‖F_l − KFAC_l‖_F",
                            f"{len(rec) - len(viol)}/{len(rec)} (step, layer) pairs at recompute points hold",
                            not viol, "identity"))
    layers = list(dict.fromkeys(r["layer"] for r in fro))
    base = {(r["step"], r["layer"], r["a"]): r["value"] for r in fro if r["since"] == 0}

    def mean(vals: list[float]) -> float:
        return float(np.mean(vals)) if vals else math.nan

    def between(a: str, layer: str | None = None) -> list[dict[str, Any]]:
        return [r for r in fro if r["a"] == a and r["since"] > 0 and (layer is None or r["layer"] == layer)]

    kfac_err = mean([r["value"] for r in between("kfac")])
    kfac_growth = mean([r["value"] - base[(r["step"] - r["since"], r["layer"], "kfac")] for r in between("kfac")])
    for a in ("ekfac", "ekfac_mb"):
        if not between(a):
            continue
        err = mean([r["value"] for r in between(a)])
        growth = mean([r["value"] - base.get((r["step"] - r["since"], r["layer"], a), math.nan)
                       for r in between(a)])
        per_layer = {la: (mean([r["value"] for r in between("kfac", la)]), mean([r["value"] for r in between(a, la)]))
                     for la in layers}
        held = all(e < k for k, e in per_layer.values()) and growth < kfac_growth
        how = ("s* on the evaluation batch, only the basis is stale" if a == "ekfac" else
               "s* on each training minibatch, as in Algorithm 1")
        claims.append(Claim(f"Fig. 4.2 right (drift), {DRIFT_LABELS[a]}",
                            "between recomputations, EKFAC (s* tracked every step) drifts far less from the exact "
                            "empirical Fisher than amortized KFAC",
                            f"{how}: mean ‖F−F̂‖/‖F‖ between recomputations KFAC {kfac_err:.3f} vs EKFAC {err:.3f}; "
                            f"mean growth since the last recompute KFAC {kfac_growth:+.3f} vs EKFAC {growth:+.3f}; "
                            "per layer (KFAC/EKFAC): "
                            + ", ".join(f"{la} {k:.3f}/{e:.3f}" for la, (k, e) in per_layer.items()), held))
    spec = [r for r in drift_rows if r["metric"] == "spectrum_l2_rel" and r["basis"] == "fixed"]
    if spec:
        last = max(r["step"] for r in spec)
        first = min(r["step"] for r in spec)
        d = {(r["step"], r["a"]): r["value"] for r in spec}
        avg = {a: mean([r["value"] for r in spec if r["a"] == a]) for a in DRIFT_LABELS}
        for a in ("ekfac", "ekfac_mb"):
            if (last, a) not in d:
                continue
            held = d[(last, a)] < d[(last, "kfac")] and avg[a] < avg["kfac"] and d[(last, "kfac")] > d[(first, "kfac")]
            claims.append(Claim(f"Fig. 4.4c (spectrum, fixed basis), {DRIFT_LABELS[a]}",
                                "with a basis fixed at the start, KFAC's spectrum quickly diverges from the exact "
                                "one; EKFAC's stays much closer",
                                f"ℓ2 distance of sorted eigenvalues / ‖eig(G)‖ at step {first} → {last}: KFAC "
                                f"{d[(first, 'kfac')]:.3f} → {d[(last, 'kfac')]:.3f}, EKFAC "
                                f"{d[(first, a)]:.3f} → {d[(last, a)]:.3f} (means {avg['kfac']:.3f} vs "
                                f"{avg[a]:.3f})", held))
    return claims
