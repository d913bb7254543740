"""Claims of Figs. 1 and 3 and of the average-feature identity (§1.2) of the ``adaptive-tangent``
study, from the ``alignment`` and ``quadrature`` tables: one value per seed, then a Student-t
interval over the seeds (:func:`~tangentlab.studies.framework.claims.mean_interval`); a finding
is ``yes`` only when the whole interval satisfies its criterion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..framework.claims import Claim, decide, mean_interval
from ..framework.claims import all_hold as worst
from ..framework.claims import interval_text as ci
from .config import DIGITS_REFERENCE, FAMILIES, KERNELS, TARGETS, AdaptiveTangentConfig

#: Paper's quadrature size (App. B.1: "50 points along the linear path") and the spec's bound there (S8).
PAPER_T, PAPER_IDENTITY_TOL = 50, 1e-2
#: Fig. 1 (left): K̄ ≈ a K0 + c K_ŷ up to this relative least-squares residual (spec S5: "≈ 10%", 9.5% measured).
LSQ_RESIDUAL_MAX = 0.2
#: §1.2 quadrature convergence: log-log slope of the identity's error vs T expected in this range (≈ 1/T).
SLOPE_RANGE = (-1.3, -0.7)


def mean(xs: list[float]) -> float:
    """Mean of the non-NaN values (NaN if none)."""
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else math.nan






@dataclass
class Alignment:
    """Alignment values by (seed, family, target, kernel, metric), the seeds and families
    present, and the mean over seeds per (family, target, kernel)."""

    values: dict[tuple, float]
    seeds: list[Any]
    fams: list[str]
    summary_rows: list[dict[str, Any]]

    def get(self, seed: Any, fam: str, tgt: str, kernel: str, metric: str) -> float:
        return self.values.get((seed, fam, tgt, kernel, metric), math.nan)

    def avg(self, fam: str, targets: tuple[str, ...], kernel: str, metric: str) -> float:
        """Mean over seeds and ``targets`` of one metric."""
        return mean([self.get(s, fam, t, kernel, metric) for s in self.seeds for t in targets])

    def per_seed(self, fn) -> list[float]:
        """``fn(seed)`` for every seed."""
        return [float(fn(s)) for s in self.seeds]


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


def identity_claims(cfg: AdaptiveTangentConfig, align: list[dict[str, Any]],
                    quad: list[dict[str, Any]], al: Alignment) -> list[Claim]:
    """§1.2: the average-feature identity (an identity up to the quadrature error) and the
    quadrature's convergence order (a finding: the rule is first order, its constant depends
    on the path)."""
    claims: list[Claim] = []
    T = cfg.quadrature_points
    for fam in al.fams:
        idents = [r["value"] for r in align if r["metric"] == "identity_rel_error" and r["family"] == fam]
        mses = [r["value"] for r in align if r["metric"] == "train_mse" and r["family"] == fam]
        if not idents:
            continue
        claims.append(Claim.identity(
            f"§1.2 average-feature identity ({fam} targets)",
            "§1.2: f_θ(x) − f_θ0(x) = ∇̄f_θ(x)(θ − θ0) with the average tangent features over the linear path; "
            "App. B.1 averages them at 50 points along θ0 → θ̂",
            f"{cfg.quadrature} × {T}: relative error max {max(idents):.2e} over {len(idents)} trained networks "
            f"(final training MSE ≤ {max(mses):.1e})" + ("" if T >= PAPER_T else
                                                         f"; n/a: T = {T} < the paper's {PAPER_T} points"),
            max(idents) if T >= PAPER_T else math.nan, PAPER_IDENTITY_TOL,
            criterion=f"with T ≥ {PAPER_T} quadrature points (the paper's), max over networks of ‖f0 + J̄(θ̂ − θ0) − "
                      f"f_θ̂‖/‖f_θ̂‖ ≤ {PAPER_IDENTITY_TOL:g} (spec S8; reference run 4.5e-3, 3.2e-3); the identity is "
                      "exact, the bound is the quadrature error of the endpoint-inclusive mean (first order in 1/T)"))
    per_seed: dict[Any, list[float]] = {}
    for key in sorted({(r["seed"], r["family"], r["target"]) for r in quad}):
        pts = sorted((r["n"], r["rel_error"]) for r in quad if (r["seed"], r["family"], r["target"]) == key)
        if len(pts) >= 2 and pts[0][1] > 0 and pts[-1][1] > 0 and pts[-1][0] > pts[0][0]:
            per_seed.setdefault(key[0], []).append(math.log(pts[-1][1] / pts[0][1]) / math.log(pts[-1][0] / pts[0][0]))
    if per_seed and cfg.quadrature in ("linspace", "left"):
        slopes = [sl for v in per_seed.values() for sl in v]
        m, lo, hi = mean_interval([float(np.mean(v)) for v in per_seed.values()])
        ns = sorted({int(r["n"]) for r in quad})
        claims.append(Claim.compare(
            "§1.2 quadrature convergence",
            "not stated in the paper; the spec (S8) expects the endpoint-inclusive mean's error to shrink roughly "
            "like 1/T (unverified there)",
            f"log-log slope of the identity's relative error between T = {ns[0]} and T = {ns[-1]}, averaged over the "
            f"networks of each seed; mean over {len(per_seed)} seeds with a 95% t-interval in {SLOPE_RANGE} (≈ 1/T)",
            f"slope {ci(m, lo, hi, '.2f')}; per network {min(slopes):.2f} … {max(slopes):.2f} ({len(slopes)} networks)",
            m, "in", SLOPE_RANGE, low=lo, high=hi))
    return claims


def alignment_claims(cfg: AdaptiveTangentConfig, align: list[dict[str, Any]], quad: list[dict[str, Any]],
                     al: Alignment) -> list[Claim]:
    """Claims of Figs. 1 and 3 and of the average-feature identity (§1.2)."""
    if not align:
        return []
    claims = identity_claims(cfg, align, quad, al)
    n = len(al.seeds)
    over = f"mean over {n} seed(s) with its 95% Student-t interval"
    scale = ("digits stand-in (8×8, N = 360): absolute values differ from the paper's MNIST ones (spec S5: 'the "
             "digits task is much easier')" if cfg.dataset == "digits" else "MNIST, the paper's data")
    for fam in al.fams:
        g = al.get

        def gap(s: Any, kern: str, tgt: str, fam: str = fam) -> float:
            return g(s, fam, tgt, kern, "cos") - g(s, fam, tgt, "K0", "cos")

        # premise: sign(y) is the harder task (Theorem 1's difficulty ‖β̂‖² = rᵀK0⁻¹r)
        hard = al.per_seed(lambda s, fam=fam: math.log(g(s, fam, "sign", "", "ntk_norm2")
                                                            / g(s, fam, "y", "", "ntk_norm2")))
        m, lo, hi = mean_interval(hard)
        claims.append(Claim.compare(
            f"Premise: sign(y) is the harder task ({fam} targets)",
            "§3.2: sign(y_i) 'are poorly represented by the initial NTK features', so they need larger B̂_ℓ; "
            "Theorem 1 measures difficulty by ‖β̂‖₂ (the ridgeless NTK norm)",
            f"log(‖β̂‖²[sign] / ‖β̂‖²[y]) with ‖β̂‖² = rᵀK0⁻¹r, r = f_θ̂ − f_θ0; {over} > 0",
            f"log ratio {ci(m, lo, hi)}; ‖β̂‖² y {al.avg(fam, ('y',), '', 'ntk_norm2'):.1f} vs sign "
            f"{al.avg(fam, ('sign',), '', 'ntk_norm2'):.1f}", m, ">", 0.0,
            low=lo, high=hi))
        # Fig. 1: training aligns the kernel
        aligned = al.per_seed(lambda s: min(gap(s, k, t) for k in ("Kbar", "Kfinal") for t in TARGETS))
        m, lo, hi = mean_interval(aligned)
        claims.append(Claim.compare(
            f"Fig. 1: training aligns the kernel ({fam} targets)",
            "§3.1: the adapted kernel 'is a low rank perturbation to the original kernel that directly captures the "
            "model output as the label kernel K_ŷ' (kernel alignment); Fig. 1 reports cos(K, K_ŷ)",
            f"per seed, the smallest of cos(K, K_ŷ) − cos(K0, K_ŷ) over K ∈ {{K̄, K_final}} and both targets; {over} "
            "> 0",
            f"smallest gain {ci(m, lo, hi)}; mean cos K0 {al.avg(fam, TARGETS, 'K0', 'cos'):.3f}, K̄ "
            f"{al.avg(fam, TARGETS, 'Kbar', 'cos'):.3f}, K_final {al.avg(fam, TARGETS, 'Kfinal', 'cos'):.3f}", m, ">",
            0.0,
            low=lo, high=hi))
        for kern, label in (("Kbar", "K̄"), ("Kfinal", "K_final")):
            gaps = al.per_seed(lambda s, kern=kern: g(s, fam, "sign", kern, "cos") - g(s, fam, "y", kern, "cos"))
            ny, ns = (al.avg(fam, (t,), kern, "cos") for t in TARGETS)
            ref = DIGITS_REFERENCE[fam].get(kern)
            m, lo, hi = mean_interval(gaps)
            claims.append(Claim.compare(
                f"Fig. 1: harder target, higher alignment ({label}, {fam} targets)",
                "Fig. 1: 'The harder task of regression with binarized labels has a higher label kernel alignment' "
                "(cos(K, K_ŷ) 0.17 for y vs 0.40 for sign(y) on MNIST, read from the figure)",
                f"per-seed gap cos({label}, K_ŷ)[sign(y)] − cos({label}, K_ŷ)[y]; {over} > 0 ({scale}"
                + (f"; reference run on digits {ref[0]:.3f} → {ref[1]:.3f}" if ref and cfg.dataset == "digits"
                   else "") + ")",
                f"y {ny:.3f} → sign(y) {ns:.3f}; gap {ci(m, lo, hi)}; sign higher in "
                f"{sum(x > 0 for x in gaps)}/{len(gaps)} seeds", m, ">", 0.0, low=lo, high=hi))
        claims.append(diagonal_claim(cfg, al, fam, over))
        res = al.per_seed(lambda s: g(s, fam, "y", "Kbar", "lsq_residual"))
        m, lo, hi = mean_interval(res)
        claims.append(Claim.compare(
            f"Fig. 1: K̄ ≈ a K0 + c K_ŷ for linear targets ({fam} family)",
            "§3.2 / Fig. 1 (left): for the linear targets y 'the adapted kernel very closely resembles a linear "
            "combination of the initial NTK and the label kernel'",
            f"relative residual ‖K̄ − aK0 − cK_ŷ‖_F/‖K̄‖_F of the least-squares fit (y targets); {over} < "
            f"{LSQ_RESIDUAL_MAX:g} (spec S5: '≈ 10%', 9.5% on seed 0 of the reference run; 0.2 allows the '≈')",
            f"y: K̄ ≈ {al.avg(fam, ('y',), 'Kbar', 'lsq_a'):.2f} K0 + {al.avg(fam, ('y',), 'Kbar', 'lsq_c'):.2f} K_ŷ, "
            f"residual {ci(m, lo, hi)}; sign(y): residual {al.avg(fam, ('sign',), 'Kbar', 'lsq_residual'):.3f}", m, "<",
            LSQ_RESIDUAL_MAX, low=lo, high=hi))
    return claims


def diagonal_claim(cfg: AdaptiveTangentConfig, al: Alignment, fam: str, over: str) -> Claim:
    """Fig. 3: the diagonal of K̄ near y ≈ 0 relative to far from it, larger for sign(y) than for y
    and above 1 for sign(y) (both intervals must hold)."""
    g = al.get
    ry = [g(s, fam, "y", "Kbar", "diag_ratio") for s in al.seeds]
    rs = [g(s, fam, "sign", "Kbar", "diag_ratio") for s in al.seeds]
    m, lo, hi = mean_interval([b - a for a, b in zip(ry, rs)])
    ms, los, his = mean_interval(rs)
    verdict = worst(decide(m, ">", 0.0, lo, hi), decide(ms, ">", 1.0, los, his))
    ref = DIGITS_REFERENCE[fam]["diag"]
    return Claim(
        f"Fig. 3: diagonal of K̄ amplified near y ≈ 0 for sign(y) ({fam} targets)",
        "Fig. 3 (right): the kernel is 'highly influenced by difficult training points (near y = 0)'; on MNIST diag K "
        "≈ 5–8 for |y| ≳ 0.5 and ≈ 20–32 near y = 0 (read from the figure)",
        criterion=f"ratio of the mean diag K̄ over the {cfg.near_fraction:.0%} smallest |y| to that over the largest "
        f"|y|: the per-seed difference sign(y) − y > 0 and the sign(y) ratio > 1, each as the {over} (reference run "
        f"on digits {ref[0]:.2f} → {ref[1]:.2f}; the paper's ratio ≈ 4 is an MNIST value)",
        measured=f"y {mean(ry):.3f} → sign(y) {ci(ms, los, his)}; difference {ci(m, lo, hi)}; larger in "
        f"{sum(b > a for a, b in zip(ry, rs))}/{len(rs)} seeds", value=m, low=lo, high=hi, verdict=verdict)
