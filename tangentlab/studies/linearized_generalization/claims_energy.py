"""The claims E5–E8 of ``linearized-generalization`` (Figs. 6–9, 15, 16, Table 1): energy concentration,
single-axis rotation and linearizations after ``t`` epochs, over the replicates ``seeds`` (see
:mod:`.verdicts` for how a verdict is reached; criteria from the spec digest's S4–S6).
"""

from __future__ import annotations

import math

from ..framework.claims import all_hold as combine
from ..framework.claims import every_seed
from ..framework.claims import interval_text as iv
from ..framework.report import Claim
from .config import LinGenConfig
from .verdicts import Results, finding, fmt_num, seeds_text, series, settings_by_seed, stat

#: The paper's statement of E7 (training speed).
E7_SPEED_PAPER = ("§4.3, Fig. 8 left: 'the kernelized model constructed using the pretrained NTK of the network has "
                  "also a faster convergence' than the linearization at θ₀ ('it is indeed the transformation of the "
                  "kernel ... that makes these models converge so quickly').")


def _units(R: Results, part: str, base: str, model: str) -> dict[int, dict[int, dict[str, float]]]:
    """``{seed: {integer index: metrics}}`` of the units ``(part, base[_s{seed}], ·, model)``."""
    return {s: {int(k[2]): v for k, v in R.items() if k[0] == part and k[1] == st and k[3] == model
                and k[2].lstrip("-").isdigit()}
            for s, st in settings_by_seed(R, part, base).items()}


def _energy(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E5: the label energy on the top-K eigenvectors of the network's NTK grows during training."""
    claims: list[Claim] = []
    for base, label in (("half", "half-classes labels"), ("phi", f"sign(φ_{cfg.rotation_target})")):
        # the smallest K on real labels (already aligned at init, so the top eigenvectors show the change),
        # the largest K on the eigenfunction target (far down the spectrum): spec S4
        kc, need = (min(cfg.energy_ks), 0.1) if base == "half" else (max(cfg.energy_ks), 0.2)
        per = {s: series(R, "energy", st, "kernel", f"E{kc}") for s, st in settings_by_seed(R, "energy", base).items()}
        per = {s: v for s, v in per.items() if len(v[0]) >= 2}
        if not per:
            continue
        rise = [v[1][-1] - v[1][0] for v in per.values()]
        m, lo, hi, v = stat(rise, ">=", need)
        s0 = next(iter(per))
        ep = per[s0][0]
        parts = []
        for k in cfg.energy_ks:
            _, e = series(R, "energy", settings_by_seed(R, "energy", base)[s0], "kernel", f"E{k}")
            parts.append(f"E_{k} {e[0]:.3f} → {e[-1]:.3f} (max {max(e):.3f})")
        crit = ("spec S4 pass criterion: " + ("'E_10(end) − E_10(init) ≥ 0.1 on DIGITS2'" if base == "half" else
                                              "'E_50 increases ≥ 0.2 on the φ_100 task'")
                + f", here E_{kc}(epoch {ep[-1]}) − E_{kc}(0) ≥ {need} per seed, mean over seeds with its 95 % "
                "t-interval.")
        claims.append(finding(
            f"E5 energy concentration ({label})", "§4.2, Fig. 6, Table 1: 'training a neural network rotates Θt in a "
            "way that increases ‖Φty‖2/‖y‖2' (Table 1, K = 50, Θ0 → Θ200: MLP 26.0 % → 63.6 %, LeNet 25.8 % → "
            "83.0 %, ResNet18 22.7 % → 96.7 %); constant for a linearized model.", crit,
            f"{seeds_text(per)}; increase of E_{kc} per seed " + ", ".join(f"{r:+.3f}" for r in rise)
            + f", mean {iv(m, lo, hi, '+.3f')}; seed {s0}, epochs {ep[0]} → {ep[-1]}: " + "; ".join(parts) + ".",
            v, m, lo, hi, "energy"))
    return claims


def _rotation(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E6: after training on sign(φ_target) the target's alignment grows far more than the others'."""
    tgt = cfg.rotation_target
    rots = {s: R[("energy", st, str(tgt), "kernel")] for s, st in settings_by_seed(R, "energy", "rotation").items()
            if ("energy", st, str(tgt), "kernel") in R}
    if not rots:
        return []
    splits = [sp for sp in ("all", "train") if all(f"{sp}_argmax" in r for r in rots.values())]
    q = [max(r[f"{sp}_ratio_target"] / r[f"{sp}_ratio_median_other"] for sp in splits) for r in rots.values()]
    m, lo, hi, v_q = stat(q, ">=", 1.5)
    v_arg = every_seed(any(int(r[f"{sp}_argmax"]) == tgt for sp in splits) for r in rots.values())
    v_jac = every_seed(r["jacobian_energy_T"] > r["jacobian_energy_0"] for r in rots.values())
    s0, r0 = next(iter(rots.items()))
    detail = "; ".join(f"{sp}: r_target {r0[f'{sp}_ratio_target']:.3g}, median other "
                       f"{r0[f'{sp}_ratio_median_other']:.3g}, max other {r0[f'{sp}_ratio_max_other']:.3g}, argmax "
                       f"j = {int(r0[f'{sp}_argmax'])}" for sp in ("all", "train", "test") if f"{sp}_argmax" in r0)
    return [finding(
        "E6 single-axis rotation", "§4.2, Fig. 7 (Figs. 15, 16): 'after training to predict φ500, α(φ500) increases "
        "much more than α(φj) for any other eigenfunction φj ... the absolute values of all alignments have also "
        "grown ... due to a general increase in the Jacobian norm'.",
        "spec S5 pass criteria (all points or train points): 'argmax_j r_j = target; r_target / median(r_other) ≥ "
        "1.5; Jacobian energy increases', r_j = α_T(φ_j)/α_0(φ_j): per seed the larger r_target/median(r_other) of "
        "the two splits, mean over seeds with its 95 % t-interval ≥ 1.5; argmax = target (in one split) and the "
        "Jacobian energy grows in every seed; all must hold.",
        f"{seeds_text(rots)}; r_target/median per seed " + ", ".join(f"{x:.2f}" for x in q)
        + f" (mean {iv(m, lo, hi, '.2f')}); argmax = target: {v_arg}; Jacobian energy grows: {v_jac}. Seed {s0}: "
        + detail + f"; E‖∇f‖² {r0['jacobian_energy_0']:.3g} → {r0['jacobian_energy_T']:.3g}.",
        combine(v_q, v_arg, v_jac), m, lo, hi, "energy")]


def _late(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E7, E8 and the half-classes task: linearizations at the checkpoints θ_t of the network."""
    claims: list[Claim] = []
    T = cfg.epochs
    late = {s: u for s, u in _units(R, "energy", "late_phi", "lin").items() if 0 in u and T in u}
    nn_phi = {s: u.get(cfg.rotation_target) for s, u in _units(R, "eigen", "phi", "nn").items()}
    if late:
        conv_star = [u[T]["converged_epoch"] for u in late.values()]
        conv_0 = [u[0]["converged_epoch"] for u in late.values()]
        flags = [(not math.isnan(a)) and a <= 30 and math.isnan(b) for a, b in zip(conv_star, conv_0)]
        worst = max(math.inf if math.isnan(a) else a for a in conv_star)
        claims.append(Claim(
            "E7 rotation speeds up training", E7_SPEED_PAPER, "; ".join(
                f"seed {s}: LIN@θ* below {cfg.loss_threshold} at epoch {fmt_num(a, '.0f')} (final loss "
                f"{u[T]['train_loss']:.4f}), LIN@θ₀ at epoch {fmt_num(b, '.0f')} (final loss {u[0]['train_loss']:.4f})"
                for (s, u), a, b in zip(late.items(), conv_star, conv_0)) + ".",
            kind="finding", criterion="spec S6 pass criterion 'LIN@θ_100 reaches loss < 0.01 within ≤ 30 epochs, while "
            f"LIN@θ0 does not within 100', in every seed ('does not' here: not within the run's {T} epochs).",
            value=worst, part="energy", verdict=every_seed(flags)))
        d = [u[0]["test_accuracy"] - u[T]["test_accuracy"] for u in late.values()]
        close = [abs(u[T]["test_accuracy"] - nn_phi[s]["test_accuracy"]) if nn_phi.get(s) else math.nan
                 for s, u in late.items()]
        m, lo, hi, v1 = stat(d, ">=", 0.05)
        m2, lo2, hi2, v2 = stat(close, "<=", 0.05)
        claims.append(finding(
            "E7 rotation hurts generalization here", "§4.3, Fig. 8 right: the model on the pretrained kernel "
            "'converges much faster than the randomly initialized one, but has a much lower test accuracy "
            "(comparable to the one of the neural network)'.",
            "spec S6 pass criteria 'acc(LIN@θ0) − acc(LIN@θ_100) ≥ 0.05' and '|acc(LIN@θ_100) − acc(NN)| ≤ 0.05' "
            "(θ_100 = θ* the trained network), each per seed, mean over seeds with its 95 % t-interval; both must "
            "hold.",
            "acc(LIN@θ₀) − acc(LIN@θ*) per seed " + ", ".join(f"{x:+.3f}" for x in d) + f", mean "
            f"{iv(m, lo, hi, '+.3f')}; |acc(LIN@θ*) − acc(network)| {iv(m2, lo2, hi2)}.",
            combine(v1, v2), m, lo, hi, "energy"))
        early = [t for t in sorted(next(iter(late.values()))) if 0 < t <= 3]
        if early:
            drop = [u[0]["test_accuracy"] - max(u[t]["test_accuracy"] for t in early) for u in late.values()]
            m, lo, hi, v = stat(drop, ">=", 0.05)
            s0, u0 = next(iter(late.items()))
            claims.append(finding(
                "E8 kernels after a few epochs", "§4.3, Fig. 9: 'the NTK overfits to the training labels in just a "
                "few iterations ... the performance of the linearized models with kernels extracted after a few "
                "epochs of non-linear pretraining decays very rapidly'.",
                "spec S6 pass criterion 'acc(LIN@θ_t) for t ≤ 3 already ≤ acc(LIN@θ0) − 0.05': per seed acc(LIN@θ₀) − "
                f"max over t ∈ {{{', '.join(map(str, early))}}} of acc(LIN@θ_t) ≥ 0.05, mean over seeds with its "
                "95 % t-interval.",
                "drop per seed " + ", ".join(f"{x:+.3f}" for x in drop) + f", mean {iv(m, lo, hi, '+.3f')}; seed "
                f"{s0}: " + ", ".join(f"t={t}: {u0[t]['test_accuracy']:.3f}" for t in sorted(u0)) + ".",
                v, m, lo, hi, "energy"))
    late_h = {s: u for s, u in _units(R, "energy", "late_half", "lin").items() if 0 in u and T in u}
    if late_h:
        gain = [u[T]["test_accuracy"] - u[0]["test_accuracy"] for u in late_h.values()]
        m, lo, hi, v1 = stat(gain, ">", 0.0)
        v2 = every_seed(u[T]["train_loss"] < u[0]["train_loss"] for u in late_h.values())
        s0, u0 = next(iter(late_h.items()))
        claims.append(finding(
            "Later kernels, real labels", "§4.3: 'on CIFAR2 (see Sec. 4.1) the kernel rotation does greatly improve "
            "test accuracy for some models' (as in Fort et al. [21], the opposite of Fig. 9).",
            "per seed acc(LIN@θ_end) − acc(LIN@θ₀) on the half-classes task > 0 (an improvement, ties are not "
            "improvements), mean over seeds with its 95 % t-interval; and the final training loss of LIN@θ_end below "
            "LIN@θ₀'s in every seed; both must hold.",
            "accuracy gain per seed " + ", ".join(f"{g:+.3f}" for g in gain) + f", mean {iv(m, lo, hi, '+.3f')}; "
            f"lower loss: {v2}; seed {s0} LIN@θ_t accuracy "
            + ", ".join(f"t={t}: {u0[t]['test_accuracy']:.3f}" for t in sorted(u0)) + ".",
            combine(v1, v2), m, lo, hi, "energy"))
    return claims


def energy_claims(cfg: LinGenConfig, R: Results) -> list[Claim]:
    """E5–E8 (Figs. 6–9, 15, 16, Table 1): energy concentration, single-axis rotation, late linearizations."""
    return [*_energy(cfg, R), *_rotation(cfg, R), *_late(cfg, R)]
