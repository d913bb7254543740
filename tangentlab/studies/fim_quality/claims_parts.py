"""Claims of ``fim-quality``'s parts 2 and 3: the drift of amortized KFAC / EKFAC (Theorem 2 at
the recompute points, Fig. 4.2 right, Fig. 4.4c), the decorrelation in the KFE (Fig. 4.2 left)
and the NTK kernel PCA (Fig. 3.7)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.claims import bootstrap_interval, mean_interval
from ..framework.claims import interval_text as ival
from ..framework.report import Claim
from .config import FimQualityConfig

#: Display names of the approximations of part 2.
DRIFT_LABELS = {"kfac": "KFAC", "ekfac": "EKFAC", "ekfac_mb": "EKFAC (s* on minibatches)"}
#: "drifts far less quickly": EKFAC's mean growth since a recompute at most this share of KFAC's.
DRIFT_RATIO = 0.5
#: "stays much closer": EKFAC's spectrum distance at most this share of KFAC's (Fig. 4.4c).
SPECTRUM_RATIO = 0.5
#: "quickly diverges": KFAC's spectrum distance grows at least this factor (Fig. 4.4c).
SPECTRUM_GROWTH = 2.0
#: "largely decorrelated": off-diagonal mass in the KFE at most this share of the parameter basis'.
DECOR_RATIO = 0.5
#: Kernel-PCA separability after training ("linearly separable") and at initialization ("merely mixed").
SEPARABLE, MIXED = 0.95, 0.75




def drift_claims(drift_rows: list[dict[str, Any]]) -> list[Claim]:
    """Theorem 2 at the recompute points, Fig. 4.2 (right) and Fig. 4.4c, from the ``drift`` rows;
    the recompute windows are the realizations of Fig. 4.2 (right)."""
    claims: list[Claim] = []
    fro = [r for r in drift_rows if r["metric"] == "fro_rel_err" and r["basis"] == "amortized"]
    by = {(r["step"], r["layer"], r["a"]): r for r in fro}
    rec = [(st, la) for (st, la, a) in by if a == "kfac" and by[(st, la, a)]["since"] == 0
           and (st, la, "ekfac") in by]
    if rec:
        excess = [by[(st, la, "ekfac")]["value"] - by[(st, la, "kfac")]["value"] for st, la in rec]
        claims.append(Claim.identity(
            "Thm 2 (recompute points)", "Theorem 2 per layer: ‖F_l − EKFAC_l‖_F ≤ ‖F_l − KFAC_l‖_F",
            f"{sum(e <= 1e-12 for e in excess)}/{len(rec)} (step, layer) pairs at recompute points hold; largest "
            f"excess {max(excess):.2e}", max(max(excess), 0.0), 1e-12,
            criterion="at every recompute point (KFAC and the EKFAC basis and s* fresh on the evaluation batch "
                      "that defines F), largest excess of EKFAC's relative error over KFAC's ≤ 1e-12"))
    base = {(r["step"], r["layer"], r["a"]): r["value"] for r in fro if r["since"] == 0}
    # per recompute window: mean over layers and in-between steps of the error and of its growth
    win: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for r in fro:
        if r["since"] > 0:
            start = r["step"] - r["since"]
            win[(r["a"], start)].append((r["value"], r["value"] - base.get((start, r["layer"], r["a"]), math.nan)))
    starts = sorted({s for a, s in win if a == "kfac"})
    for a in ("ekfac", "ekfac_mb"):
        if not any((a, s) in win for s in starts):
            continue
        ws = [s for s in starts if (a, s) in win]
        grow = np.array([[np.mean([g for _, g in win[(x, s)]]) for x in ("kfac", a)] for s in ws])
        err = np.array([[np.mean([e for e, _ in win[(x, s)]]) for x in ("kfac", a)] for s in ws])
        how = ("s* on the evaluation batch, only the basis is stale" if a == "ekfac" else
               "s* on each training minibatch, as in Algorithm 1")
        v, lo, hi = bootstrap_interval(lambda p: float(p[:, 1].mean() / p[:, 0].mean()), grow, n_boot=2000)
        claims.append(Claim.compare(
            f"Fig. 4.2 right: {DRIFT_LABELS[a]} drifts far less quickly",
            "Fig. 4.2 (right): 'EKFAC's cheap tracking of s* allows it to drift far less quickly than amortized KFAC "
            "from the exact empirical Fisher' (KFE and KFAC recomputed every 100 iterations)",
            f"{how}: mean growth of ‖F_l−F̂_l‖/‖F_l‖ since the last recompute (mean over layers and in-between "
            f"steps of each window), EKFAC / KFAC, over {len(ws)} recompute windows; 95% percentile bootstrap over "
            f"the windows; ≤ {DRIFT_RATIO:g} ('far less' read as at most half)",
            f"mean growth KFAC {grow[:, 0].mean():+.3g} vs EKFAC {grow[:, 1].mean():+.3g}: ratio {ival(v, lo, hi)}",
            v, "<=", DRIFT_RATIO, low=lo, high=hi))
        v, lo, hi = mean_interval(err[:, 0] - err[:, 1])
        claims.append(Claim.compare(
            f"Fig. 4.2 right: {DRIFT_LABELS[a]} below KFAC between recomputations",
            "Fig. 4.2 (right): between recomputations the EKFAC error curve stays below the amortized KFAC one",
            f"{how}: KFAC's minus EKFAC's relative error, mean over layers and in-between steps of each window, "
            f"mean over {len(ws)} windows (Student-t 95%) > 0",
            f"KFAC {err[:, 0].mean():.3f} vs EKFAC {err[:, 1].mean():.3f}: difference {ival(v, lo, hi)}",
            v, ">", 0.0, low=lo, high=hi))
    claims += _spectrum_claims(drift_rows)
    return claims


def _spectrum_claims(drift_rows: list[dict[str, Any]]) -> list[Claim]:
    spec = [r for r in drift_rows if r["metric"] == "spectrum_l2_rel" and r["basis"] == "fixed"]
    if not spec:
        return []
    claims: list[Claim] = []
    steps = sorted({r["step"] for r in spec})
    first, last = steps[0], steps[-1]
    late = set(steps[len(steps) // 2:])
    d = {(r["step"], r["a"]): r["value"] for r in spec}
    growth = d[(last, "kfac")] / d[(first, "kfac")] if d[(first, "kfac")] > 0 else math.inf
    claims.append(Claim.compare(
        "Fig. 4.4c: KFAC's spectrum diverges", "Fig. 4.4c: with the KFE computed once and kept fixed, 'the spectrum "
        "of G_KFAC quickly diverges from the spectrum of G'",
        f"ℓ2 distance of sorted eigenvalues / ‖eig(G)‖ of KFAC (factors fixed at step 0) at step {last} over step "
        f"{first} ≥ {SPECTRUM_GROWTH:g} (one training run: no interval)",
        f"KFAC {d[(first, 'kfac')]:.3f} → {d[(last, 'kfac')]:.3f}: ×{growth:.3g}", growth, ">=", SPECTRUM_GROWTH))
    for a in ("ekfac", "ekfac_mb"):
        if (last, a) not in d:
            continue
        mk = float(np.mean([d[(s, "kfac")] for s in late]))
        ma = float(np.mean([d[(s, a)] for s in late]))
        claims.append(Claim.compare(
            f"Fig. 4.4c: {DRIFT_LABELS[a]} spectrum stays closer",
            "Fig. 4.4c: the spectra of G_EKFAC (s* updated each step in the fixed KFE) 'stay much closer' to the "
            "spectrum of G than G_KFAC's",
            f"mean over the second half of the steps ({min(late)}–{last}) of the ℓ2 distance / ‖eig(G)‖, EKFAC / "
            f"KFAC ≤ {SPECTRUM_RATIO:g} ('much closer' read as at most half; one training run: no interval)",
            f"EKFAC {ma:.3f} vs KFAC {mk:.3f}: ratio {ma / mk:.3g}", ma / mk if mk > 0 else math.nan, "<=",
            SPECTRUM_RATIO))
    return claims


def decorrelation_claims(rows: list[dict[str, Any]], cfg: FimQualityConfig) -> list[Claim]:
    """Fig. 4.2 (left): the identity mass_KFE = EKFAC's squared relative error, and the ratio of the
    off-diagonal masses (KFE / parameter basis) of the thesis' layer at the first and last step, the
    disjoint parts of the evaluation batch being the realizations."""
    if not rows:
        return []
    claims: list[Claim] = []
    val = {(r["step"], r["layer"], r["split"], r["basis"], r["metric"]): r["value"] for r in rows}
    whole = [(st, la) for (st, la, sp, b, m) in val if sp == -1 and m == "ekfac_fro_rel_err_sq"]
    err = max(abs(val[(st, la, -1, "kfe", "offdiag_mass")] - val[(st, la, -1, "kfe", "ekfac_fro_rel_err_sq")])
              for st, la in whole)
    claims.append(Claim.identity(
        "Fig. 4.2 left: KFE mass = EKFAC error²",
        "§4.3 / Theorem 1: s* = diag(Qᵀ F Q) is the Frobenius-optimal diagonal in the KFE, so what a diagonal in "
        "the KFE misses is exactly F's off-diagonal part there",
        f"off-diagonal mass of F_l in the KFE vs EKFAC's squared relative Frobenius error (same examples), "
        f"{len(whole)} (step, layer) pairs: largest difference {err:.2e}", err, 1e-8,
        criterion="|‖QᵀF_lQ − diag‖²/‖F_l‖² − (‖F_l − EKFAC_l‖/‖F_l‖)²| ≤ 1e-8 at every (step, layer): our dense "
                  "rotation against the library's EKFAC"))
    layers = sorted({la for _, la in whole}, key=lambda x: int(x) if x.isdigit() else 0)
    layer = cfg.spectrum_layer or layers[min(1, len(layers) - 1)]
    steps = sorted({st for st, _ in whole})
    splits = sorted({sp for (_, _, sp, _, _) in val if sp >= 0})
    for st, when in ((steps[0], "at initialization"), (steps[-1], "at the end of training")):
        ratios = [val[(st, layer, sp, "kfe", "offdiag_mass")] / val[(st, layer, sp, "parameter", "offdiag_mass")]
                  for sp in splits]
        v, lo, hi = mean_interval(ratios)
        others = ", ".join(f"layer {la} {val[(st, la, -1, 'kfe', 'offdiag_mass')]:.3g}/"
                           f"{val[(st, la, -1, 'parameter', 'offdiag_mass')]:.3g}" for la in layers)
        claims.append(Claim.compare(
            f"Fig. 4.2 left: decorrelated in the KFE ({when})",
            "Fig. 4.2 (left): gradient correlation matrices of layer 2 of a 4-sigmoid-layer MLP: 'components are "
            "largely decorrelated in the KFE'",
            f"off-diagonal share of ‖F_l‖²_F of the empirical Fisher block of layer {layer} (the second Linear), KFE "
            f"over parameter basis, step {st}, on {len(splits)} disjoint parts of the evaluation batch (Student-t "
            f"95%) ≤ {DECOR_RATIO:g} ('largely' read as at least halved)",
            f"ratio {ival(v, lo, hi)}; whole batch, KFE/parameter mass per layer: {others}", v, "<=", DECOR_RATIO,
            low=lo, high=hi))
    return claims


def ntk_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    """Fig. 3.7: the class pairs are the realizations."""
    if not rows:
        return []
    val = {(r["step"], r["pair"], r["metric"]): r["value"] for r in rows}
    steps = sorted({r["step"] for r in rows})
    pairs = sorted({(r["pair"], r["c1"], r["c2"]) for r in rows})
    first, last = steps[0], steps[-1]
    names = ", ".join(f"{c1}/{c2}" for _, c1, c2 in pairs)
    gap = [val[(last, p, "gap")] - val[(first, p, "gap")] for p, _, _ in pairs]
    acc_last = [val[(last, p, "pca_accuracy")] for p, _, _ in pairs]
    acc_first = [val[(first, p, "pca_accuracy")] for p, _, _ in pairs]
    where = f"over {len(pairs)} class pairs ({names}; Student-t 95%)"
    v, lo, hi = mean_interval(gap)
    claims = [Claim.compare(
        "Fig. 3.7: the NTK highlights intra-class examples",
        "Fig. 3.7 (top): 'the NTK encodes some information about the task later in training, since it highlights "
        "intra-class examples' (Gram matrix normalized by 1/√diag(G))",
        f"mean intra- minus inter-class entry of the normalized Gram of f_c2 − f_c1 on held-out examples, step "
        f"{last} minus step {first}, mean {where} > 0",
        f"increase {ival(v, lo, hi)}", v, ">", 0.0, low=lo, high=hi)]
    v, lo, hi = mean_interval(acc_last)
    claims.append(Claim.compare(
        "Fig. 3.7: linearly separable after training",
        "Fig. 3.7 (bottom): 'examples become linearly separable as training progresses' in the plane of the first "
        "2 kernel principal components",
        f"training accuracy of a logistic regression on the 2 kernel-PCA projections at step {last}, mean {where} "
        f"≥ {SEPARABLE:g} (the digest's '≈100%')",
        f"accuracy {ival(v, lo, hi)}", v, ">=", SEPARABLE, low=lo, high=hi))
    v, lo, hi = mean_interval(acc_first)
    claims.append(Claim.compare(
        "Fig. 3.7: mixed at initialization",
        "Fig. 3.7 (bottom): 'points are merely mixed at initialization'",
        f"the same accuracy at step {first}, mean {where} ≤ {MIXED:g} (halfway between chance 0.5 and 1; the "
        "digest: 'about chance')",
        f"accuracy {ival(v, lo, hi)}", v, "<=", MIXED, low=lo, high=hi))
    return claims
