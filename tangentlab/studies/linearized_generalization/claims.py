"""The claims of ``linearized-generalization`` (E1–E8, Theorem 1, Lemma 1), computed from the stored
tables only, and the reader they share with the figures.

Each claim states the paper's finding (Ortiz-Jiménez, Moosavi-Dezfooli & Frossard, NeurIPS 2021),
what this run measured and the criterion it was judged by; rank correlations are Spearman's
(:func:`~.tasks.spearman`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..framework.report import Claim
from ..framework.store import to_number
from .config import EXACT_TOL, LinGenConfig
from .tasks import spearman

#: ``(part, setting, index, model) → {metric: value}`` from ``tables/results.csv``.
Results = dict[tuple[str, str, str, str], dict[str, float]]
#: ``(part, setting, index, model, metric) → [(epoch, value)]`` from ``tables/curves.csv``.
Curves = dict[tuple[str, str, str, str, str], list[tuple[int, float]]]
#: ``name → {(row, col): value}`` from ``tables/arrays.csv``.
Arrays = dict[str, dict[tuple[int, int], float]]


def load_results(store) -> tuple[Results, Curves, Arrays]:
    """The three tables of a run, keyed for lookup (see :data:`Results`, :data:`Curves`, :data:`Arrays`)."""
    R: Results = defaultdict(dict)
    for r in store.read("results"):
        R[(r["part"], r["setting"], r["index"], r["model"])][r["metric"]] = to_number(r["value"])
    C: Curves = defaultdict(list)
    for r in store.read("curves"):
        key = (r["part"], r["setting"], r["index"], r["model"], r["metric"])
        C[key].append((int(r["epoch"]), to_number(r["value"])))
    A: Arrays = defaultdict(dict)
    for r in store.read("arrays"):
        A[r["name"]][(int(r["row"]), int(r["col"]))] = to_number(r["value"])
    return R, C, A


def series(R: Results, part: str, setting: str, model: str, metric: str) -> tuple[list[int], list[float]]:
    """``metric`` of the units ``(part, setting, ·, model)`` with an integer index, sorted by that index."""
    pts = sorted((int(k[2]), v[metric]) for k, v in R.items()
                 if k[0] == part and k[1] == setting and k[3] == model and metric in v and k[2].lstrip("-").isdigit())
    return [p[0] for p in pts], [p[1] for p in pts]


def _f(v: float, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def eigen_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E1/E2 (Figs. 2, 3, 13, 14): accuracy falls and training slows as the eigenfunction index grows."""
    claims: list[Claim] = []
    j_nn, acc_nn = series(R, "eigen", "phi", "nn", "test_accuracy")
    j_lin, acc_lin = series(R, "eigen", "phi", "lin", "test_accuracy")
    if len(j_nn) >= 3 and j_nn == j_lin:
        r_nn, r_lin = spearman(j_nn, acc_nn), spearman(j_lin, acc_lin)
        claims.append(Claim("E1 eigenfunction tasks", "Test accuracy of the network and of its linearization "
                            "decreases as the eigenfunction index j grows (Fig. 2).",
                            f"Spearman(j, acc) = {r_nn:.2f} (network), {r_lin:.2f} (linearization) over j = "
                            f"{', '.join(map(str, j_nn))}; criterion ≤ −0.8 for both.",
                            bool(r_nn <= -0.8 and r_lin <= -0.8)))
        wins = sum(a_l >= a_n for a_n, a_l in zip(acc_nn, acc_lin))
        claims.append(Claim("E1 linear advantage", "On the eigenfunction tasks the linearized model generalizes "
                            "better than the network (a 'non-linear disadvantage').",
                            f"linearization ≥ network on {wins} of {len(j_nn)} indices; mean gap (lin − nn) "
                            f"{np.mean(np.subtract(acc_lin, acc_nn)):+.3f}; criterion: at least 2/3 of the indices.",
                            bool(wins >= math.ceil(2 * len(j_nn) / 3))))
        _, conv = series(R, "eigen", "phi", "nn", "converged_iteration")
        conv_r = [math.inf if math.isnan(c) else c for c in conv]
        _, l2 = series(R, "eigen", "phi", "nn", "l2_distance")
        _, cd = series(R, "eigen", "phi", "nn", "cosine_distance")
        r_c, r_l2, r_cd = spearman(j_nn, conv_r), spearman(j_nn, l2), spearman(j_nn, cd)
        claims.append(Claim("E2 training dynamics", "Networks need more iterations to reach training loss 0.01 and "
                            "travel further from θ₀ (ℓ2 and cosine distance) for higher eigenfunction indices "
                            "(Figs. 3, 13, 14).",
                            f"Spearman with j: iterations to loss < {cfg.loss_threshold} {r_c:.2f} (never = last; "
                            f"{sum(math.isinf(c) for c in conv_r)} never), ‖θ−θ₀‖ {r_l2:.2f}, cosine distance "
                            f"{r_cd:.2f}; criterion: ≥ 0.8 for the distances, > 0.5 for the iterations.",
                            bool(r_l2 >= 0.8 and r_cd >= 0.8 and (r_c > 0.5 if not math.isnan(r_c) else False))))
    return claims


def nad_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E3 (Fig. 4) and Theorem 1: the NAD order predicts the accuracy on the linear tasks."""
    claims: list[Claim] = []
    jn, nad_nn = series(R, "nad", "linear", "nn", "test_accuracy")
    jl, nad_lin = series(R, "nad", "linear", "lin", "test_accuracy")
    _, alph = series(R, "nad", "linear", "kernel", "alpha")
    if len(jn) >= 3 and jn == jl:
        r_nn, r_lin = spearman(alph, nad_nn), spearman(alph, nad_lin)
        claims.append(Claim("E3 NAD ordering", "The NAD order (predicted alignment α(g_{v_j}) = s_j², Theorem 1) "
                            "predicts the accuracy of both models on the linear tasks sign(v_jᵀx) (Fig. 4).",
                            f"Spearman(α_j, acc) = {r_nn:.2f} (network), {r_lin:.2f} (linearization); accuracies "
                            f"first/last NAD: network {nad_nn[0]:.3f}/{nad_nn[-1]:.3f}, linearization "
                            f"{nad_lin[0]:.3f}/{nad_lin[-1]:.3f}; criterion ≥ 0.6 for both.",
                            bool(r_nn >= 0.6 and r_lin >= 0.6)))
        gap = np.subtract(nad_nn, nad_lin)
        claims.append(Claim("E3 non-linear advantage", "On the NAD linear tasks the networks beat their "
                            "linearizations (non-linear advantage).",
                            f"network − linearization per NAD: {', '.join(f'{g:+.3f}' for g in gap)}; mean "
                            f"{gap.mean():+.3f}; criterion: mean > 0.", bool(gap.mean() > 0)))
    th = [(int(k[2]), v) for k, v in R.items() if k[0] == "nad" and k[1] == "theorem1" and k[3] == "check"]
    if th:
        th.sort()
        rel = [abs(v["predicted"] - v["mc_unbiased"]) / abs(v["predicted"]) for _, v in th]
        claims.append(Claim("Theorem 1", "α(g_u) = E_{x,x'}[uᵀx Θ(x,x') uᵀx'] equals ‖E_x[∇²_{x,θ} f(x)] u‖² "
                            "for x ∼ N(0, I) (Stein's lemma).",
                            "NAD " + "; ".join(f"{i}: predicted {v['predicted']:.3g}, MC {v['mc_unbiased']:.3g}"
                                               for i, v in th)
                            + f"; max relative difference {max(rel):.2f} (criterion ≤ 0.25, Monte-Carlo noise).",
                            bool(max(rel) <= 0.25)))
    return claims


def size_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E4 (Fig. 5): the non-linear advantage and the distance to θ₀ grow with the training-set size."""
    claims: list[Claim] = []
    for setting, label in (("half_s", "half-classes task"), ("xor_s", "XOR task")):
        per_n: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
        for k, v in R.items():
            if k[0] == "size" and k[1].startswith(setting) and k[3] == "nn":
                lin = R.get((k[0], k[1], k[2], "lin"))
                if lin and "test_accuracy" in lin:
                    per_n[int(k[2])].append((v["test_accuracy"], lin["test_accuracy"], v["l2_distance"],
                                             lin["l2_distance"]))
        if len(per_n) >= 3:
            ns = sorted(per_n)
            gaps = [float(np.mean([a - b for a, b, _, _ in per_n[n]])) for n in ns]
            dn = [float(np.mean([c for _, _, c, _ in per_n[n]])) for n in ns]
            dl = [float(np.mean([d for _, _, _, d in per_n[n]])) for n in ns]
            r_gap = spearman(ns, gaps)
            held = bool(gaps[-1] > gaps[0] and r_gap > 0)
            claims.append(Claim(f"E4 sample size ({label})", "The non-linear advantage (network − linearization "
                                "test accuracy) grows with the training-set size (Fig. 5 top).",
                                f"gap at n = {', '.join(map(str, ns))}: {', '.join(f'{g:+.3f}' for g in gaps)}; "
                                f"Spearman(n, gap) {r_gap:.2f}; criterion: gap(largest n) > gap(smallest n) and "
                                "positive rank correlation.", held))
            claims.append(Claim(f"E4 distance ({label})", "Solutions move further from θ₀ as n grows "
                                "(Fig. 5 bottom).",
                                f"‖θ−θ₀‖ network {dn[0]:.2f}→{dn[-1]:.2f} (Spearman {spearman(ns, dn):.2f}), "
                                f"linearization {dl[0]:.2f}→{dl[-1]:.2f} (Spearman {spearman(ns, dl):.2f}); "
                                "criterion ≥ 0.8 for both.", bool(spearman(ns, dn) >= 0.8 and spearman(ns, dl) >= 0.8)))
    return claims


def energy_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E5–E8 (Figs. 6–9, 15, 16, Table 1): energy concentration, single-axis rotation, late linearizations."""
    claims: list[Claim] = []
    for setting, label in (("half", "half-classes labels"), ("phi", f"sign(φ_{cfg.rotation_target})")):
        ep, _ = series(R, "energy", setting, "kernel", f"E{max(cfg.energy_ks)}")
        if len(ep) >= 2:
            # the smallest K on real labels (already aligned at init, so the top eigenvectors show the
            # change), the largest K on the eigenfunction target (far down the spectrum)
            kc, need = (min(cfg.energy_ks), 0.1) if setting == "half" else (max(cfg.energy_ks), 0.2)
            parts = []
            for k in cfg.energy_ks:
                _, v = series(R, "energy", setting, "kernel", f"E{k}")
                parts.append(f"E_{k}: {v[0]:.3f} → {v[-1]:.3f} (max {max(v):.3f})")
            _, vc = series(R, "energy", setting, "kernel", f"E{kc}")
            claims.append(Claim(f"E5 energy concentration ({label})", "The energy ‖Φ_K y‖/‖y‖ of the training labels "
                                "on the top-K eigenvectors of the network's NTK grows during training (Fig. 6, "
                                "Table 1); it is constant for a linearized model.",
                                f"epochs {ep[0]}→{ep[-1]}: " + "; ".join(parts)
                                + f"; criterion: E_{kc} increases by ≥ {need}.",
                                bool(vc[-1] - vc[0] >= need)))
    rot = R.get(("energy", "rotation", str(cfg.rotation_target), "kernel"))
    if rot:
        tgt = cfg.rotation_target
        ok_split = [s for s in ("all", "train") if f"{s}_argmax" in rot and int(rot[f"{s}_argmax"]) == tgt
                    and rot[f"{s}_ratio_target"] >= 1.5 * rot[f"{s}_ratio_median_other"]]
        claims.append(Claim("E6 single-axis rotation", f"After training on sign(φ_{tgt}), α_T(φ_{tgt})/α_0(φ_{tgt}) "
                            "grows much more than α_T(φ_j)/α_0(φ_j) for any other j; all grow with the Jacobian "
                            "norm (Figs. 7, 15, 16).",
                            "; ".join(f"{s}: r_target {rot[f'{s}_ratio_target']:.3g}, median other "
                                      f"{rot[f'{s}_ratio_median_other']:.3g}, max other "
                                      f"{rot[f'{s}_ratio_max_other']:.3g}, argmax j = {int(rot[f'{s}_argmax'])}"
                                      for s in ("all", "train", "test") if f"{s}_argmax" in rot)
                            + f"; E‖∇f‖² {rot['jacobian_energy_0']:.3g} → {rot['jacobian_energy_T']:.3g}; criterion "
                            "(all or train points): argmax = target, r_target ≥ 1.5 × median, energy grows.",
                            bool(ok_split and rot["jacobian_energy_T"] > rot["jacobian_energy_0"])))
    late = {int(k[2]): v for k, v in R.items() if k[0] == "energy" and k[1] == "late_phi" and k[3] == "lin"}
    nn_phi = R.get(("eigen", "phi", str(cfg.rotation_target), "nn"))
    if 0 in late and cfg.epochs in late:
        a0, aT = late[0]["test_accuracy"], late[cfg.epochs]["test_accuracy"]
        l0, lT = late[0]["train_loss"], late[cfg.epochs]["train_loss"]
        c0, cT = late[0]["converged_epoch"], late[cfg.epochs]["converged_epoch"]
        claims.append(Claim("E7 rotation speeds up training", "The linearization at the trained network θ* fits the "
                            "training set much faster than the linearization at θ₀ (Fig. 8 left).",
                            f"final training loss: LIN@θ₀ {l0:.4f} (loss < {cfg.loss_threshold} at epoch "
                            f"{_f(c0, '.0f')}), LIN@θ* {lT:.4f} (epoch {_f(cT, '.0f')}); criterion: LIN@θ* lower.",
                            bool(lT < l0)))
        nn_acc = nn_phi["test_accuracy"] if nn_phi else math.nan
        claims.append(Claim("E7 rotation hurts generalization here", "On an eigenfunction target the linearization "
                            "at θ* generalizes worse than the one at θ₀, close to the network (Fig. 8 right).",
                            f"test accuracy LIN@θ₀ {a0:.3f}, LIN@θ* {aT:.3f}, network {nn_acc:.3f}; criterion: "
                            "LIN@θ₀ − LIN@θ* ≥ 0.03.", bool(a0 - aT >= 0.03)))
        ts = sorted(late)
        early = [t for t in ts if 0 < t <= 3]
        if early:
            drop = a0 - max(late[t]["test_accuracy"] for t in early)
            claims.append(Claim("E8 kernels after a few epochs", "The test accuracy of linearizations at θ_t drops "
                                "within the first few epochs on the eigenfunction target ('the NTK overfits to the "
                                "training labels in a few iterations', Fig. 9).",
                                "LIN@θ_t accuracy: " + ", ".join(f"t={t}: {late[t]['test_accuracy']:.3f}" for t in ts)
                                + f"; drop by t ≤ 3: {drop:+.3f}; criterion ≥ 0.03.", bool(drop >= 0.03)))
    late_h = {int(k[2]): v for k, v in R.items() if k[0] == "energy" and k[1] == "late_half" and k[3] == "lin"}
    if 0 in late_h and cfg.epochs in late_h:
        ts = sorted(late_h)
        accs = [late_h[t]["test_accuracy"] for t in ts]
        losses = [late_h[t]["train_loss"] for t in ts]
        claims.append(Claim("Later kernels, real labels", "Kernels taken after more epochs of training give better "
                            "linearized models on the real (half-classes) task: they fit faster and generalize at "
                            "least as well (§4.3, Fort et al.).",
                            "LIN@θ_t test accuracy " + ", ".join(f"t={t}: {a:.3f}" for t, a in zip(ts, accs))
                            + "; final training loss " + ", ".join(f"{v:.4f}" for v in losses)
                            + "; criterion: accuracy(θ_end) ≥ accuracy(θ₀) − 0.005 and loss(θ_end) < loss(θ₀).",
                            bool(accs[-1] >= accs[0] - 0.005 and losses[-1] < losses[0])))
    return claims


def lemma_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """Lemma 1 and the identity α(u_j) = λ_j (deterministic)."""
    claims: list[Claim] = []
    lem = {k[2]: v for k, v in R.items() if k[0] == "lemma" and k[1] == "vectors"}
    if lem:
        worst = max(v["ratio"] for v in lem.values())
        eq = [abs(v["ratio"] - 1) for k, v in lem.items() if k.startswith("u_")]
        claims.append(Claim("Lemma 1", "‖f‖²_Θ ≥ ‖f‖⁴₂/α(f) for every f, with equality for eigenfunctions.",
                            f"{len(lem)} vectors on the {cfg.dataset} support: max bound/‖f‖²_Θ = {worst:.6f}; "
                            f"eigenvectors: max |ratio − 1| = {max(eq) if eq else math.nan:.2e}; sign(φ_j) ratios "
                            + ", ".join(f"{k}: {v['ratio']:.3f}" for k, v in lem.items() if k.startswith("sign_"))
                            + ".", bool(worst <= 1 + EXACT_TOL and (not eq or max(eq) <= EXACT_TOL)),
                            kind="identity"))
    ident = R.get(("lemma", "identity", "0", "kernel"))
    if ident:
        js = [k[len("lambda_"):] for k in ident if k.startswith("lambda_")]
        rel = [abs(ident[f"alpha_u{j}_backward"] - ident[f"lambda_{j}"]) / ident[f"lambda_{j}"] for j in js]
        claims.append(Claim("α(u_j) = λ_j", "The alignment of an eigenvector, ‖Jᵀu_j‖² computed with one backward "
                            "product and no Gram matrix (eq. 10), equals its eigenvalue.",
                            "; ".join(f"j={j}: {ident[f'alpha_u{j}_backward']:.10g} vs {ident[f'lambda_{j}']:.10g}"
                                      for j in js) + f"; max relative error {max(rel):.1e}.",
                            bool(max(rel) <= 1e-6), kind="identity"))
    return claims


def build_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """Every claim whose results exist, part by part (eigen, nad, size, energy, lemma)."""
    return [c for part_claims in (eigen_claims, nad_claims, size_claims, energy_claims, lemma_claims)
            for c in part_claims(cfg, R)]
