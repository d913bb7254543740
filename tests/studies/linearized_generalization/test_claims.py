"""The claims of ``linearized-generalization`` on hand-made result tables: the spec's criteria and their
numbers, ties that are not wins, intervals over seeds against a hand-computed Student-t interval."""

from __future__ import annotations

import math

import pytest

from tangentlab.studies.framework.claims import all_hold, every_seed
from tangentlab.studies.framework.config import build_config
from tangentlab.studies.linearized_generalization import LinGenConfig
from tangentlab.studies.linearized_generalization.claims import build_claims
from tangentlab.studies.linearized_generalization.verdicts import seed_of, stat


def _cfg():
    return build_config(LinGenConfig)


def _eigen(R, seed, js, nn, lin, l2=None):
    st = "phi" if seed == 0 else f"phi_s{seed}"
    for i, j in enumerate(js):
        d = float(i + 1) if l2 is None else l2[i]
        for model, acc in (("nn", nn[i]), ("lin", lin[i])):
            R[("eigen", st, str(j), model)] = {"test_accuracy": acc, "l2_distance": d, "cosine_distance": d / 10,
                                               "converged_iteration": math.nan if i == len(js) - 1 else 10.0 * (i + 1)}


def _by_topic(R):
    return {c.topic: c for c in build_claims(_cfg(), R)}


def test_helpers():
    assert seed_of("phi", "phi") == 0 and seed_of("phi_s12", "phi") == 12
    assert seed_of("late_phi", "phi") is None and seed_of("phi_sx", "phi") is None
    m, lo, hi, v = stat([1.0, 2.0, 3.0], ">", 0.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · s / √n with s = 1
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half)) and v == "inconclusive"
    assert stat([1.0, 1.1, 0.9], ">", 0.5)[3] == "yes" and stat([1.0, math.nan], ">", 0.5)[3] == "n/a"
    assert every_seed([True, True]) == "yes" and every_seed([False]) == "NO" and every_seed([True, False]) == \
        "inconclusive"
    assert all_hold("yes", "yes") == "yes" and all_hold("yes", "inconclusive") == "inconclusive"
    assert all_hold("inconclusive", "NO") == "NO" and all_hold("yes", "n/a") == "n/a"


def test_e1_ties_are_not_wins_and_use_seven_of_nine():
    js = [1, 2, 5, 10, 20, 50, 100, 200, 400]
    nn = [0.99 - 0.04 * i for i in range(9)]
    R = {}
    for s in (0, 1, 2):
        _eigen(R, s, js, nn, list(nn))  # the linearization ties everywhere
    c = _by_topic(R)
    assert c["E1 linear advantage"].verdict == "NO" and c["E1 linear advantage"].value == 0.0
    assert c["E1 eigenfunction tasks"].verdict == "yes"  # Spearman −1 for both models in every seed
    assert c["E2 training dynamics"].verdict == "yes"
    # 6 of 9 wins in every seed: 0.667 < 7/9 -> NO; 7 of 9 -> yes
    for wins, verdict in ((6, "NO"), (7, "yes")):
        R = {}
        for s in (0, 1, 2):
            _eigen(R, s, js, nn, [a + (0.01 if i < wins else -0.01) for i, a in enumerate(nn)])
        assert _by_topic(R)["E1 linear advantage"].verdict == verdict, wins
    # a distance that falls with j in one seed: Spearman far below 0.8 there -> not yes
    R = {}
    for s in (0, 1, 2):
        _eigen(R, s, js, nn, nn, l2=list(range(9, 0, -1)) if s == 1 else None)
    assert _by_topic(R)["E2 training dynamics"].verdict != "yes"


def _late(R, seed, accs, conv_star=5.0):
    T = _cfg().epochs
    for t, a in accs.items():
        st = "late_phi" if seed == 0 else f"late_phi_s{seed}"
        R[("energy", st, str(t), "lin")] = {"test_accuracy": a, "train_loss": 0.001 if t == T else 0.3,
                                            "converged_epoch": conv_star if t == T else math.nan}


def test_e7_e8_use_the_spec_thresholds():
    cfg = _cfg()
    T = cfg.epochs
    for drop, verdict in ((0.04, "NO"), (0.06, "yes")):  # spec S6: ≥ 0.05 (main had 0.03)
        R = {}
        for s, jitter in ((0, 0.0), (1, 0.002), (2, -0.002)):
            _late(R, s, {0: 0.9, 1: 0.9 - drop + jitter, 2: 0.8, 3: 0.8, T: 0.9 - drop + jitter})
            R[("eigen", "phi" if s == 0 else f"phi_s{s}", str(cfg.rotation_target), "nn")] = {"test_accuracy": 0.85}
        c = _by_topic(R)
        assert c["E8 kernels after a few epochs"].verdict == verdict, drop
        assert c["E7 rotation hurts generalization here"].verdict == verdict, drop
        assert c["E7 rotation speeds up training"].verdict == "yes"
    R = {}
    for s in (0, 1):
        _late(R, s, {0: 0.9, 1: 0.8, T: 0.8}, conv_star=31.0)  # spec S6: within ≤ 30 epochs
    assert _by_topic(R)["E7 rotation speeds up training"].verdict == "NO"


def test_e3_e4_xor_criteria():
    R = {}
    js = [0, 1, 3, 10, 30, 63]
    for s in (0, 1, 2):
        st = "linear" if s == 0 else f"linear_s{s}"
        nn, lin = [1.0, 0.99, 0.99, 0.95, 0.6, 0.5], [0.99, 0.97, 0.93, 0.7, 0.53, 0.52]
        for j, a, b in zip(js, nn, lin):
            R[("nad", st, str(j), "nn")], R[("nad", st, str(j), "lin")] = {"test_accuracy": a}, {"test_accuracy": b}
            R[("nad", st, str(j), "kernel")] = {"alpha": 1.0 / (j + 1)}
        for n, gap in ((250, 0.01), (500, 0.1), (1000, 0.15), (2000, 0.2), (4000, 0.12)):
            for model, acc, d in (("nn", 0.6 + gap, n / 100), ("lin", 0.6, n / 120)):
                R[("size", f"xor_s{s}", str(n), model)] = {"test_accuracy": acc, "l2_distance": d}
    c = _by_topic(R)
    assert c["E3 NAD ordering"].verdict == "yes" and c["E3 non-linear advantage"].verdict == "yes"
    assert c["E4 sample size (XOR task)"].verdict == "yes" and c["E4 distance (XOR task)"].verdict == "yes"
    # the linearization rising by 0.03 (> the 0.02 tolerance) between two NADs breaks the ordering
    for s in (0, 1, 2):
        st = "linear" if s == 0 else f"linear_s{s}"
        R[("nad", st, "10", "lin")] = {"test_accuracy": 0.96}
    assert _by_topic(R)["E3 NAD ordering"].verdict == "NO"
    # gap at n ≥ 1000 below 0.1 in every seed: NO
    for s in (0, 1, 2):
        R[("size", f"xor_s{s}", "4000", "nn")] = {"test_accuracy": 0.65, "l2_distance": 40.0}
    assert _by_topic(R)["E4 sample size (XOR task)"].verdict == "NO"
