"""The wall-clock comparison of ``ekfac`` (thesis Fig. 4.3b) and the seed-paired claims, on
hand-made curves whose answers are known."""

from __future__ import annotations

import math

import pytest

from tangentlab.studies.ekfac.claims import beats_all, binding, gaps, log_auc
from tangentlab.studies.ekfac.wallclock import at_budget, budgets, loss_at, wallclock_claims


def run(seed: int, cpu_per_epoch: float, losses: list[float]) -> list[dict[str, float]]:
    """Epoch rows of one run: 10 steps per epoch, CPU time ``cpu_per_epoch`` per epoch, wall twice that."""
    return [{"seed": seed, "epoch": e, "step": 10 * e, "cpu_s": cpu_per_epoch * e, "time_s": 2 * cpu_per_epoch * e,
             "train_loss": v, "val_loss": v, "val_acc": math.nan} for e, v in enumerate(losses)]


def test_loss_at_interpolates_log_linearly_between_epoch_ends():
    rows = run(0, 2.0, [100.0, 10.0, 1.0])
    assert loss_at(rows, 0.0) == pytest.approx(100.0)
    assert loss_at(rows, 2.0) == pytest.approx(10.0)
    assert loss_at(rows, 1.0) == pytest.approx(math.sqrt(100.0 * 10.0))  # halfway in log loss
    assert loss_at(rows, 3.5) == pytest.approx(10.0 ** (1 - 0.75))
    assert math.isnan(loss_at(rows, 4.5))  # beyond the run
    assert loss_at(run(0, 2.0, [100.0, 10.0, math.inf]), 3.0) == math.inf  # diverged before t


def test_budget_is_the_cheapest_finished_run_per_seed():
    main = {"ekfac_ra": {0: run(0, 3.0, [9, 4, 1]), 1: run(1, 3.0, [9, 5, 2])},
            "kfac": {0: run(0, 2.0, [9, 6, 3]), 1: run(1, 2.5, [9, 6, 3])},
            "sgd": {0: run(0, 1.0, [9, 8, 7]), 1: run(1, 1.0, [9, 8, math.inf])}}
    b = budgets(main)
    assert b == {0: 2.0, 1: 5.0}  # seed 1: SGD diverged, the cheapest finished run is KFAC's (2 × 2.5 s)
    # seed 0: T = 2 s is 2/3 of EKFAC-ra's first epoch (3 s), log-linear from 9 to 4
    assert at_budget(main["ekfac_ra"], b)[0] == pytest.approx(9 * (4 / 9) ** (2 / 3))


def _bases(fast_losses, slow_losses, n_seeds=4):
    main = {"ekfac_ra": {}, "kfac": {}, "sgd": {}, "adam": {}}
    for s in range(n_seeds):
        jitter = 1 + 0.01 * s
        main["ekfac_ra"][s] = run(s, 1.0, [v * jitter for v in fast_losses])
        for m in ("kfac", "sgd", "adam"):
            main[m][s] = run(s, 1.0, [v * jitter for v in slow_losses])
    return main


def test_equal_cpu_time_claim_holds_fails_and_is_decided_on_every_baseline():
    good = _bases([10, 4, 2, 1], [10, 8, 6, 5])
    claims = {c.topic: c for c in wallclock_claims("autoencoder", good, 1.5)}
    c = claims["auto-encoder: EKFAC-ra loss at equal CPU time"]
    assert c.verdict == "yes" and c.kind == "finding"
    assert c.value == pytest.approx(math.log(5 / 1))  # at T = 3 s every run is at its last epoch
    assert c.low <= c.value <= c.high
    bad = _bases([10, 8, 6, 5], [10, 4, 2, 1])
    assert {c.topic: c for c in wallclock_claims("autoencoder", bad, 1.5)}[
        "auto-encoder: EKFAC-ra loss at equal CPU time"].verdict == "NO"
    # the same loss per epoch but EKFAC-ra three times as costly: at equal CPU time it is behind
    slow = _bases([10, 4, 2, 1], [10, 8, 6, 5])
    for s in slow["ekfac_ra"]:
        slow["ekfac_ra"][s] = run(s, 3.0, [v * (1 + 0.01 * s) for v in (10, 4, 2, 1)])
    claims = {c.topic: c for c in wallclock_claims("autoencoder", slow, 1.5)}
    c = claims["auto-encoder: EKFAC-ra loss at equal CPU time"]
    # T = 3 s: EKFAC-ra is at its first epoch end (4), the baselines at their last (5)
    assert c.value == pytest.approx(math.log(5 / 4))
    cost = claims["auto-encoder: EKFAC-ra cost per update"]
    assert cost.value == pytest.approx(3.0) and cost.verdict == "NO"


def test_binding_picks_the_comparison_that_decides_the_conjunction():
    assert binding({"a": (1.0, 0.5, 1.5), "b": (0.3, 0.1, 0.5)}) == "b"  # all hold: lowest lower end
    assert binding({"a": (0.0, -1.0, 1.0), "b": (-0.3, -0.5, -0.1)}) == "b"  # one fails outright: NO
    assert binding({"a": (0.0, -1.0, 1.0), "b": (0.3, 0.1, 0.5)}) == "a"  # straddles: inconclusive
    assert binding({"a": (0.2, math.nan, math.nan), "b": (0.1, math.nan, math.nan)}) == "b"


def test_per_epoch_claim_on_paired_seeds():
    main = _bases([10, 4, 2, 1], [10, 8, 6, 5])
    g = gaps(main["ekfac_ra"], main["kfac"], log_auc)
    want = (math.log(8) + math.log(6) + math.log(5) - math.log(4) - math.log(2) - math.log(1)) / 3
    assert g == pytest.approx([want] * 4)  # the seeds' common jitter cancels in the paired gap
    c = beats_all("t", "p", "", "ekfac_ra", main, ["kfac", "sgd"], log_auc, "mean log loss", "x")
    assert c.verdict == "yes" and c.value == pytest.approx(want)


def test_cnn_baselines_are_fig_4_5s():
    """Fig. 4.5 compares EKFAC-ra with KFAC and SGD (no Adam): a better Adam does not decide the CNN claim."""
    main = _bases([10, 4, 2, 1], [10, 8, 6, 5])
    for s in main["adam"]:
        main["adam"][s] = run(s, 1.0, [10, 2, 0.5, 0.1])
    cnn = {c.topic: c for c in wallclock_claims("cnn", main, 1.5)}
    ae = {c.topic: c for c in wallclock_claims("autoencoder", main, 1.5)}
    assert cnn["CNN: EKFAC-ra loss at equal CPU time"].verdict == "yes"
    assert "Adam" not in cnn["CNN: EKFAC-ra loss at equal CPU time"].criterion.split("budget")[0]
    assert ae["auto-encoder: EKFAC-ra loss at equal CPU time"].verdict == "NO"


def test_a_diverged_run_weighs_against_its_method():
    main = _bases([10, 4, 2, 1], [10, 8, 6, 5])
    main["ekfac_ra"][0] = run(0, 1.0, [10, 4, math.inf])
    g = gaps(main["ekfac_ra"], main["kfac"], log_auc)
    assert g[0] == -1e3 and all(x > 0 for x in g[1:])
    c = beats_all("t", "p", "", "ekfac_ra", main, ["kfac"], log_auc, "mean log loss", "x")
    assert c.verdict != "yes" and "diverged" in c.measured
