"""Claims of the ``adaptive-tangent`` study, computed from the stored tables only: the
deterministic checks (Fig. 2, Proposition 3, Theorem 1, App. A.1, Theorem 2 on one block), the
kernel alignment of Figs. 1 and 3, the Model A solver (Theorem 2) and the Fig. 4 sweep."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..framework.report import Claim
from ..framework.store import to_number
from .config import DIGITS_REFERENCE, FAMILIES, KERNELS, SWEEP_ARCHS, SWEEP_MODELS, TARGETS, AdaptiveTangentConfig


def parse_rows(rows: list[dict[str, str]], *cols: str) -> list[dict[str, Any]]:
    """Table rows with the columns ``cols`` parsed as numbers."""
    out = []
    for r in rows:
        d: dict[str, Any] = dict(r)
        for c in cols:
            d[c] = to_number(r[c])
        out.append(d)
    return out


def mean(xs: list[float]) -> float:
    """Mean of the non-NaN values (NaN if none)."""
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else math.nan


@dataclass
class Results:
    """The study's tables with their numeric columns parsed."""

    checks: list[dict[str, str]]
    align: list[dict[str, Any]]
    quad: list[dict[str, Any]]
    diag: list[dict[str, Any]]
    maps: list[dict[str, Any]]
    pens: list[dict[str, Any]]
    solver: list[dict[str, Any]]
    smet: list[dict[str, Any]]
    sspec: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    training: list[dict[str, Any]]


def read_results(store: Any) -> Results:
    """Every table of a run store, parsed."""
    return Results(
        checks=store.read("checks"),
        align=parse_rows(store.read("alignment"), "seed", "value"),
        quad=parse_rows(store.read("quadrature"), "seed", "n", "rel_error"),
        diag=parse_rows(store.read("diagonal"), "seed", "point", "y", "target_value", "diag_K0", "diag_Kbar",
                        "diag_Kfinal"),
        maps=parse_rows(store.read("kernel_maps"), "row", "col", "value"),
        pens=parse_rows(store.read("penalties"), "v", "value"),
        solver=parse_rows(store.read("solver"), "step", "objective"),
        smet=parse_rows(store.read("solver_metrics"), "value"),
        sspec=parse_rows(store.read("solver_spectrum"), "layer", "index", "value"),
        sweep=parse_rows(store.read("sweep"), "n_train", "seed", "value"),
        training=parse_rows(store.read("training"), "seed", "step", "loss"))


@dataclass
class Alignment:
    """Alignment values by (seed, family, target, kernel, metric), the seeds and families
    present, and the mean over seeds per (family, target, kernel)."""

    values: dict[tuple, float]
    seeds: list[Any]
    fams: list[str]
    summary_rows: list[dict[str, Any]]


def check_claims(checks: list[dict[str, str]]) -> list[Claim]:
    """Claims of the deterministic checks (Fig. 2, Proposition 3, Theorem 1, App. A.1, Lemma 5)."""
    claims: list[Claim] = []
    by_part: dict[str, list[dict[str, str]]] = defaultdict(list)
    for c in checks:
        by_part[c["part"]].append(c)
    pen = [c for c in by_part.get("penalties", []) if c["check"].startswith(("w1", "w2", "w3", "joint"))]
    if pen:
        bad = [c["check"] for c in pen if c["held"] != "true"]
        worst = max(abs(float(c["measured"]) - float(c["reference"])) for c in pen)
        vals = {c["check"]: float(c["measured"]) for c in pen}
        claims.append(Claim("Fig. 2 penalty values", "ω̃1, ω̃2, ω̃3 = (ω1⊕ω2)~ at v = 0.1…10 as in the reference table "
                            "(e.g. v = 5: 6.2465, 4.5260, 3.3674); (ω1⊕ω2)(2, 3, 6) = 0.581, 1.235, 2.965",
                            f"v = 5: {vals.get('w1(5)', math.nan):.4f}, {vals.get('w2(5)', math.nan):.4f}, "
                            f"{vals.get('w3(5)', math.nan):.4f}; largest deviation from the table {worst:.1e} "
                            f"over {len(pen)} values" + (f"; failed: {', '.join(bad)}" if bad else ""),
                            not bad, "identity"))
    prop = [c for c in by_part.get("penalties", []) if c not in pen]
    if prop:
        claims.append(Claim("Proposition 3", "ω̃ ≤ v², ω̃(v) = v² + o(v²) at 0, concave in v² (sub-quadratic tails)",
                            "; ".join(f"{c['check']} = {float(c['measured']):.2e}" for c in prop),
                            all(c["held"] == "true" for c in prop), "identity"))
    th = by_part.get("theory", [])
    if th:
        d = {c["check"]: c for c in th}
        t1 = [c for k, c in d.items() if k.startswith("Theorem 1")]
        s_, b_, o_ = (float(d[k]["measured"]) for k in ("Theorem 1: s", "Theorem 1: ‖β̂‖",
                                                         "Theorem 1: closed-form objective ω̃(‖β̂‖)"))
        claims.append(Claim("Theorem 1 (structureless M)", "closed form M̂ = I + (s−1)β̂β̂ᵀ/‖β̂‖², θ̂ = θ0 + β̂/s "
                            "equals the direct minimum of Ω(M) + rᵀ(GMMᵀGᵀ)⁻¹r (all restarts agree to "
                            "1e-9; kernel identity to 1e-15)",
                            f"G 4×10: ‖β̂‖ = {b_:.4f}, s = {s_:.4f}, objective {o_:.6f}; direct − closed form = "
                            f"{float(d['Theorem 1: direct L-BFGS min − closed form']['measured']):.1e}; kernel "
                            f"identity {float(d['Theorem 1: max|GM̂²Gᵀ − K0 − (s²−1)/‖β̂‖² rrᵀ|']['measured']):.1e}",
                            all(c["held"] == "true" for c in t1), "identity"))
        dg = [c for k, c in d.items() if k.startswith("diagonal")]
        claims.append(Claim("App. A.1 (diagonal M)", "ω(m) = m² with diagonal M gives Ω̃ = 2‖β‖₁ (reweighted solver "
                            "= ℓ1 LP)", "; ".join(f"{c['check']}: {float(c['measured']):.1e}" for c in dg),
                            all(c["held"] == "true" for c in dg), "identity"))
        ma = [c for k, c in d.items() if k.startswith("Model A")]
        claims.append(Claim("Lemma 5 / Theorem 2 on one block", "alternating solver ≤ direct bilinear minimization + "
                            "1e-2, monotone", "; ".join(f"{c['check']}: {float(c['measured']):.1e}"
                                                                  for c in ma),
                            all(c["held"] == "true" for c in ma), "identity"))

    return claims


def alignment_summary(align: list[dict[str, Any]]) -> Alignment:
    """Index the ``alignment`` rows and average them over seeds."""
    A: dict[tuple, float] = {(r["seed"], r["family"], r["target"], r["kernel"], r["metric"]): r["value"] for r in align}
    seeds = sorted({r["seed"] for r in align})
    fams = [f for f in FAMILIES if any(r["family"] == f for r in align)]
    summary_rows = []
    for fam in fams:
        for tgt in TARGETS:
            for kern in KERNELS:
                vals = {m: mean([A.get((s, fam, tgt, kern, m), math.nan) for s in seeds])
                        for m in ("cos", "cka", "norm_ratio", "lsq_a", "lsq_c", "lsq_residual", "diag_ratio")}
                summary_rows.append({"family": fam, "target": tgt, "kernel": kern, **vals})
    return Alignment(A, seeds, fams, summary_rows)


def alignment_claims(cfg: AdaptiveTangentConfig, align: list[dict[str, Any]], quad: list[dict[str, Any]],
                     al: Alignment) -> list[Claim]:
    """Claims of Figs. 1 and 3 and of the average-feature identity (§1.2)."""
    claims: list[Claim] = []
    A, seeds, fams = al.values, al.seeds, al.fams
    if align:
        for fam in fams:
            idents = [r["value"] for r in align if r["metric"] == "identity_rel_error" and r["family"] == fam]
            mses = [r["value"] for r in align if r["metric"] == "train_mse" and r["family"] == fam]
            claims.append(Claim(f"§1.2 average-feature identity ({fam} targets)",
                                "f_θ̂ − f_θ0 = ∇̄f (θ̂ − θ0); the 50-point linspace mean is accurate to < 1e-2 "
                                "(reference run, paper-protocol targets: 4.5e-3, 3.2e-3)",
                                f"{cfg.quadrature} × {cfg.quadrature_points}: relative error max {max(idents):.2e} "
                                f"over {len(idents)} trained networks (final training MSE ≤ {max(mses):.1e})",
                                max(idents) < 1e-2 if cfg.quadrature_points >= 50 else None))
        slopes = []
        for key in sorted({(r["seed"], r["family"], r["target"]) for r in quad}):
            pts = sorted((r["n"], r["rel_error"]) for r in quad if (r["seed"], r["family"], r["target"]) == key)
            if len(pts) >= 2 and pts[0][1] > 0 and pts[-1][1] > 0:
                slopes.append(math.log(pts[-1][1] / pts[0][1]) / math.log(pts[-1][0] / pts[0][0]))
        if slopes and cfg.quadrature in ("linspace", "left"):
            claims.append(Claim("§1.2 quadrature convergence", "the endpoint-inclusive mean converges like 1/T "
                                "(expected)",
                                f"log-log slope of the relative error vs T: median {float(np.median(slopes)):.2f} "
                                f"(range {min(slopes):.2f} … {max(slopes):.2f}) over {len(slopes)} networks",
                                all(-1.3 <= sl <= -0.7 for sl in slopes)))
        for fam in fams:
            c0 = [A.get((s, fam, t, "K0", "cos"), math.nan) for s in seeds for t in TARGETS]
            cb = [A.get((s, fam, t, "Kbar", "cos"), math.nan) for s in seeds for t in TARGETS]
            cf = [A.get((s, fam, t, "Kfinal", "cos"), math.nan) for s in seeds for t in TARGETS]
            held = all(b > a and f > a for a, b, f in zip(c0, cb, cf))
            claims.append(Claim(f"Fig. 1: training aligns the kernel ({fam} targets)",
                                "cos(K̄, K_ŷ) and cos(K_final, K_ŷ) exceed cos(K0, K_ŷ)",
                                f"mean cos K0 {mean(c0):.3f}, K̄ {mean(cb):.3f}, K_final {mean(cf):.3f} "
                                f"({len(c0)} networks)", held))
            for kern, label in (("Kbar", "K̄"), ("Kfinal", "K_final")):
                gaps = [A.get((s, fam, "sign", kern, "cos"), math.nan) - A.get((s, fam, "y", kern, "cos"), math.nan)
                        for s in seeds]
                ny, ns = (mean([A.get((s, fam, t, kern, "cos"), math.nan) for s in seeds]) for t in TARGETS)
                ref = DIGITS_REFERENCE[fam].get(kern)
                wins = sum(g > 0 for g in gaps)
                need = len(gaps) if len(gaps) < 4 else math.ceil(0.75 * len(gaps))
                claims.append(Claim(f"Fig. 1: harder target, higher alignment ({label}, {fam} targets)",
                                    f"cos({label}, K_ŷ) higher for sign(y) than for y (paper MNIST 0.17 → 0.40 for K̄; "
                                    f"reference on digits {ref[0]:.3f} → {ref[1]:.3f})" if ref else
                                    f"cos({label}, K_ŷ) higher for sign(y) than for y",
                                    f"y {ny:.3f} → sign(y) {ns:.3f}; sign higher in {wins}/{len(gaps)} seeds "
                                    f"(gaps {', '.join(f'{g:+.3f}' for g in gaps)})", wins >= need))
            dr = [(A.get((s, fam, "y", "Kbar", "diag_ratio"), math.nan),
                   A.get((s, fam, "sign", "Kbar", "diag_ratio"), math.nan)) for s in seeds]
            wins = sum(b > a for a, b in dr)
            ref = DIGITS_REFERENCE[fam]["diag"]
            claims.append(Claim(f"Fig. 3: diagonal of K̄ amplified near y ≈ 0 for sign(y) ({fam} targets)",
                                f"mean diag K̄ over the {cfg.near_fraction:.0%} smallest |y| / over the largest |y| is "
                                f"larger for sign(y) than for y (reference on digits {ref[0]:.2f} → {ref[1]:.2f})",
                                f"y {mean([a for a, _ in dr]):.3f} → sign(y) {mean([b for _, b in dr]):.3f}; "
                                f"larger in {wins}/{len(dr)} seeds", wins == len(dr) and mean([b for _, b in dr]) > 1))
            res = [A.get((s, fam, "y", "Kbar", "lsq_residual"), math.nan) for s in seeds]
            res_sign = [A.get((s, fam, "sign", "Kbar", "lsq_residual"), math.nan) for s in seeds]
            aa = mean([A.get((s, fam, "y", "Kbar", "lsq_a"), math.nan) for s in seeds])
            cc = mean([A.get((s, fam, "y", "Kbar", "lsq_c"), math.nan) for s in seeds])
            claims.append(Claim(f"Fig. 1: K̄ ≈ a K0 + c K_ŷ for linear targets ({fam} family)",
                                "for the linear targets y, K̄ looks like a combination of K0 and K_ŷ (reference "
                                "run: 2.09 K0 + 0.37 K_ŷ, relative residual ≈ 10%); for sign(y) more structure remains",
                                f"y: K̄ ≈ {aa:.2f} K0 + {cc:.2f} K_ŷ, relative residual mean {mean(res):.1%} (max "
                                f"{max(res):.1%}); sign(y): residual mean {mean(res_sign):.1%}", max(res) < 0.2))
    return claims


def solver_claims(smet: list[dict[str, Any]]) -> list[Claim]:
    """Claims of the Model A solver (Theorem 2) on the first seed's networks."""
    claims: list[Claim] = []
    S: dict[tuple, float] = {(r["family"], r["target"], r["metric"]): r["value"] for r in smet}
    if smet:
        pairs = sorted({(r["family"], r["target"]) for r in smet})
        below = all(S[(f, t, "final_objective")] < S[(f, t, "ntk_objective")] for f, t in pairs)
        mono = max(S[(f, t, "max_increase")] / S[(f, t, "ntk_objective")] for f, t in pairs)
        claims.append(Claim("Theorem 2 solver: objective below the NTK value",
                            "the Model A solution's objective is below the ridgeless NTK value rᵀK0⁻¹r (reference run: "
                            "59.5 → 42.9 for y, 48.6 → 35.9 for sign(y)); alternating steps never increase it",
                            "; ".join(f"{f}/{t}: {S[(f, t, 'ntk_objective')]:.1f} → {S[(f, t, 'final_objective')]:.1f}"
                                      for f, t in pairs) + f"; largest relative increase {mono:.1e}",
                            below and mono <= 1e-9, "identity"))
        lows = []
        for f, t in pairs:
            layers = sorted({int(k[2].split("_")[0][5:]) for k in S if k[0] == f and k[1] == t
                             and k[2].endswith("_adaptive_top1_energy")})
            for la in layers:
                lows.append((f, t, la, S[(f, t, f"layer{la}_ntk_top1_energy")],
                             S[(f, t, f"layer{la}_adaptive_top1_energy")]))
        held = all(b >= a - 1e-12 for *_, a, b in lows)
        claims.append(Claim("Theorem 2: B̂ approximately low rank",
                            "the leading singular values of B̂_ℓ are amplified relative to the rest (group "
                            "approximately-"
                            "low-rank penalty)", "top singular value's share of ‖B_ℓ‖²_F, NTK → adaptive: "
                            + "; ".join(f"{f}/{t} L{la} {a:.2f}→{b:.2f}" for f, t, la, a, b in lows), held))
        for fam in sorted({f for f, _ in pairs}):
            if (fam, "y", "norm_ratio") in S and (fam, "sign", "norm_ratio") in S:
                a, b = S[(fam, "y", "norm_ratio")], S[(fam, "sign", "norm_ratio")]
                claims.append(Claim(f"Theorem 2: kernel change grows with difficulty ({fam} targets)",
                                    "‖K_adapted‖/‖K0‖ larger for the harder target (reference run: 6.0 vs 14.4 on "
                                    "the hard digits targets; 1.11 vs 1.11 on the easy paper targets)",
                                    f"y {a:.2f} vs sign(y) {b:.2f}; rᵀK0⁻¹r {S[(fam, 'y', 'ntk_objective')]:.1f} vs "
                                    f"{S[(fam, 'sign', 'ntk_objective')]:.1f}",
                                    b > a if S[(fam, "sign", "ntk_objective")] > S[(fam, "y", "ntk_objective")]
                                    else None))
    return claims


def sweep_claims(cfg: AdaptiveTangentConfig, sweep_rows: list[dict[str, Any]]) -> list[Claim]:
    """Claims of the preprint's Fig. 4 from :func:`sweep_summary` rows."""
    claims: list[Claim] = []
    ref = {"mlp": "MNIST MLP n = 125: 0.068 < 0.140 < 0.187", "cnn": "CIFAR-10 CNN n = 125: 0.544 < 0.613 < 0.697"}
    for arch in [a for a in SWEEP_ARCHS if any(r["arch"] == a for r in sweep_rows)]:
        mean_err = {(r["n_train"], r["model"]): r["mean"] for r in sweep_rows if r["arch"] == arch}
        ns = sorted({k[0] for k in mean_err})
        label = {"mlp": "MLP", "cnn": "CNN"}[arch]
        if not all((n, m) in mean_err for n in ns for m in SWEEP_MODELS):
            continue
        std_best = all(mean_err[(n, "standard")] <= min(mean_err[(n, "fixed")], mean_err[(n, "adaptive")])
                       for n in ns)
        claims.append(Claim(f"Fig. 4 (preprint, {label} on {cfg.sweep_dataset}): the standard network is best",
                            f"test error NN < Adaptive < Fixed ({ref[arch]})",
                            "; ".join(f"n={int(n)}: NN {mean_err[(n, 'standard')]:.3f}, adaptive "
                                      f"{mean_err[(n, 'adaptive')]:.3f}, fixed {mean_err[(n, 'fixed')]:.3f}"
                                      for n in ns), std_best))
        wins = sum(mean_err[(n, "adaptive")] < mean_err[(n, "fixed")] for n in ns)
        claims.append(Claim(f"Fig. 4 (preprint, {label} on {cfg.sweep_dataset}): adaptive beats fixed tangent "
                            "features",
                            "adaptive (factorized) < fixed (linearized) test error at small and medium n, ≈ 4–8× "
                            "sample-complexity gain"
                            + (" (not reproduced on 8×8 digits with depth 3)" if arch == "mlp" else ""),
                            f"adaptive better at {wins}/{len(ns)} sizes"
                            + (f" (conv kernels factorized: {cfg.sweep_conv_factors})" if arch == "cnn" else ""),
                            wins == len(ns)))
    return claims


def sweep_summary(sweep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of the best test error per (arch, n, model)."""
    errs: dict[tuple, list[float]] = defaultdict(list)
    epochs: dict[tuple, list[float]] = defaultdict(list)
    for r in sweep:
        key = (r.get("arch") or "mlp", r["n_train"], r["model"])
        if r["metric"] == "test_error":
            errs[key].append(r["value"])
        elif r["metric"] == "epochs":
            epochs[key].append(r["value"])
    order = {m: i for i, m in enumerate(SWEEP_MODELS)}
    return [{"arch": k[0], "n_train": int(k[1]), "model": k[2], "mean": mean(v),
             "std": float(np.std(v)) if len(v) > 1 else math.nan, "seeds": len(v),
             "mean_epochs": mean(epochs.get(k, []))}
            for k, v in sorted(errs.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9)))]

