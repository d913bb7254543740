"""The new parts of the compression study: fixed points of the compressing regime (closed form
against quadrature), neuron vectors, the α-scan and learning-curve claims on constructed tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tangentlab.analysis.compression import NetParams
from tangentlab.studies.compression.claims import scaling_claims
from tangentlab.studies.compression.claims_extra import alpha_scan_claims, attractor_shares, fixed_point_claims
from tangentlab.studies.compression.config import CompressionConfig
from tangentlab.studies.compression.data import STRIPE_X_MAX, STRIPE_X_MIN
from tangentlab.studies.compression.experiments import neuron_rows
from tangentlab.studies.compression.theory import attractors, fixed_points, g_function, stripe_averages
from tangentlab.studies.framework.config import build_config


def _cfg(*sets: str) -> CompressionConfig:
    return build_config(CompressionConfig, sets=list(sets), study="compression")


def _quad_g(z: float, side: int, d: int) -> float:
    """G^± by numerical quadrature of the stripe label against the normal density (independent of theory.py)."""
    from scipy import integrate

    def y(x):
        return -1.0 if STRIPE_X_MIN < x < STRIPE_X_MAX else 1.0

    def pdf(x):
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    lo, hi = (z, 12.0) if side > 0 else (-12.0, z)
    pts = [p for p in (STRIPE_X_MIN, STRIPE_X_MAX) if lo < p < hi] or None
    cb = integrate.quad(lambda x: y(x) * pdf(x), lo, hi, points=pts, limit=200)[0]
    c1 = integrate.quad(lambda x: y(x) * x * pdf(x), lo, hi, points=pts, limit=200)[0]
    return d * cb + z * c1


@pytest.mark.parametrize("d", [2, 5, 10])
def test_fixed_points_match_quadrature_and_the_spec_table(d):
    from scipy import optimize

    for z in (-2.0, -0.7, 0.1, 0.9, 1.5):
        for side in (1, -1):
            assert g_function(z, side, d) == pytest.approx(_quad_g(z, side, d), abs=1e-9)
    att = attractors(d)
    assert len(att) == 3 and len(fixed_points(d)) == 3
    for a in att:  # each zero refined independently by brentq on the quadrature G
        ref = optimize.brentq(lambda z, a=a: _quad_g(z, a.side, d), a.z - 0.05, a.z + 0.05, xtol=1e-12)
        assert a.z == pytest.approx(ref, abs=1e-8)
    # the spec digest's table (§1.4): z* and τ*/τ to its printed precision
    table = {2: [(-1.226, 1, 4.21), (0.647, 1, 12.7), (0.450, -1, 2.37)],
             5: [(-1.481, 1, 3.56), (0.685, 1, 12.0), (0.571, -1, 2.29)],
             10: [(-1.687, 1, 3.25), (0.701, 1, 11.8), (0.633, -1, 2.25)]}[d]
    for (z, side, tau), a in zip(table, att):
        assert a.side == side and a.z == pytest.approx(z, abs=1e-3) and a.tau_ratio == pytest.approx(tau, abs=0.06)


def test_stripe_averages_limits():
    # the whole line: ⟨y⟩ = 0 (balanced classes) and ⟨y x⟩ = −2(φ(x_min) − φ(x_max))
    cb_p, c1_p = stripe_averages(-50.0, 1)
    cb_m, c1_m = stripe_averages(50.0, -1)
    phi = [math.exp(-x * x / 2) / math.sqrt(2 * math.pi) for x in (STRIPE_X_MIN, STRIPE_X_MAX)]
    assert cb_p == pytest.approx(0.0, abs=1e-6) and cb_m == pytest.approx(0.0, abs=1e-6)
    assert c1_p == pytest.approx(-2 * (phi[0] - phi[1]), abs=1e-12) == c1_m


def test_neuron_rows_on_constructed_weights():
    w = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    beta = torch.tensor([3.0, 0.5], dtype=torch.float64)
    rows = neuron_rows(NetParams(w, b, beta))
    # z = −√d b ω/‖ω‖²: (−√2/2, 0) and (√2, √2)
    assert rows[0]["z1"] == pytest.approx(-math.sqrt(2) / 2) and rows[0]["z_perp"] == 0
    assert rows[1]["z1"] == pytest.approx(math.sqrt(2)) and rows[1]["z_perp"] == pytest.approx(math.sqrt(2))
    assert math.isinf(rows[0]["lam"]) and rows[1]["lam"] == pytest.approx(1.0)
    assert rows[0]["norm"] == pytest.approx(math.sqrt(4 + 1 + 9))


def test_fixed_point_claims_on_constructed_neurons():
    cfg = _cfg()
    att = attractors(2)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        for i in range(90):  # 30 neurons at each attractor, 10 unamplified neurons anywhere
            a = att[i % 3]
            rows.append({"seed": float(s), "z1": a.z + rng.uniform(-0.05, 0.05), "lam": 50.0 * a.side, "norm": 1.0,
                         "lambda_star": 30.0})
        rows += [{"seed": float(s), "z1": rng.uniform(-3, 3), "lam": 0.5, "norm": 1.0, "lambda_star": 30.0}
                 for _ in range(10)]
    n, counts = attractor_shares(rows[:100], att, 5.0, 0.1)
    assert n == 90 and counts == [30, 30, 30]
    table, claims = fixed_point_claims(cfg, rows)
    assert [c.kind for c in claims] == ["identity", "finding", "finding"]
    assert [c.verdict for c in claims] == ["yes", "yes", "yes"] and len(table) == 3
    # neurons with the wrong λ sign do not count: every share is 0
    flipped = [{**r, "lam": -r["lam"]} for r in rows]
    _, claims = fixed_point_claims(cfg, flipped)
    assert [c.verdict for c in claims[1:]] == ["NO", "NO"]


def _scan_rows(seeds=3, lazy_factor=1.0, noise=0.02):
    rng = np.random.default_rng(1)
    rows = []
    for s in range(seeds):
        for a in (1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4):
            small = a <= 1e-2
            jitter = 1 + noise * rng.standard_normal()
            rows.append({"alpha": a, "seed": float(s),
                         "t_star": (3.0 + 1.6 * math.log(1 / a)) if small else 4.0 / a * jitter,
                         "lambda_star": 15.0 * jitter if small else 1.0 + 0.01 * s, "lambda_max": 30.0,
                         "test_error": 0.03 + 0.002 * s if small else 0.08 * lazy_factor + 0.001 * s,
                         "lazy_error": 0.08 + 0.001 * s})
    return rows


def test_alpha_scan_claims_decide_on_intervals():
    cfg = _cfg()
    claims = alpha_scan_claims(cfg, _scan_rows())
    assert [c.topic for c in claims] == ["α → ∞: test error → frozen initial NTK", "α → ∞: t* ∝ 1/α",
                                         "α → ∞: Λ* → 1 (no compression)", "α → 0: t* ∝ log(1/α)",
                                         "α → 0: Λ* reaches a plateau", "α → 0: error plateau below lazy"]
    assert all(c.verdict == "yes" and c.kind == "finding" and math.isfinite(c.low) for c in claims), \
        [(c.topic, c.verdict) for c in claims]
    # a network twice as bad as the frozen kernel at large α: the lazy-limit claim fails
    bad = alpha_scan_claims(cfg, _scan_rows(lazy_factor=2.0))
    assert bad[0].verdict == "NO" and bad[0].value == pytest.approx(2.0, rel=0.05)


def _runs(beta_f, beta_l, beta_c, spread, seeds=4, model="stripe"):
    rows = []
    for p in (128, 256, 512, 1024):
        for s in range(seeds):
            f = math.exp(spread * (s - (seeds - 1) / 2))
            rows.append({"model": model, "p": float(p), "seed": float(s), "lambda_star": math.sqrt(p) * f,
                         "lambda_max": 2 * math.sqrt(p) * f, "test_error": 3 * p ** -beta_f * f,
                         "lazy_error": 3 * p ** -beta_l / f, "compressed_error": 2.5 * p ** -beta_c * f})
    return rows


def test_scaling_claims_are_decided_on_seed_bootstrap_intervals():
    cfg = _cfg("models=stripe")
    out = scaling_claims(cfg, _runs(0.69, 0.385, 0.7, 0.0))
    got = {c.topic: c for c in out.claims}
    assert got["Λ* ∝ p^1/2 (stripe, d=5)"].verdict == "yes"
    assert got["β_feature > β_lazy (stripe, d=5)"].value == pytest.approx(0.69 - 0.385)
    assert got["β_feature > β_lazy (stripe, d=5)"].verdict == "yes"
    assert got["compressed lazy ≈ feature: error (stripe, d=5)"].verdict == "yes"
    assert got["compressed lazy ≈ feature: exponent (stripe, d=5)"].verdict == "yes"
    # a gap of 0.07 under seed noise that shuffles the medians: the ordering straddles 0 → inconclusive
    rng = np.random.default_rng(3)
    noisy = _runs(0.5, 0.43, 0.5, 0.0, seeds=3, model="stripe")
    for r in noisy:
        r["test_error"] *= math.exp(0.5 * rng.standard_normal())
        r["lazy_error"] *= math.exp(0.5 * rng.standard_normal())
    gap = {c.topic: c for c in scaling_claims(cfg, noisy).claims}["β_feature > β_lazy (stripe, d=5)"]
    assert gap.verdict == "inconclusive" and gap.low < 0 < gap.high
    # compressed lazy 3× worse than the network at every p: the error claim fails
    far = {c.topic: c for c in scaling_claims(cfg, _runs(0.69, 0.385, 0.69, 0.0)).claims}
    assert far["compressed lazy ≈ feature: error (stripe, d=5)"].value == pytest.approx(1.2)
    worse = _runs(0.69, 0.385, 0.69, 0.0)
    for r in worse:
        r["compressed_error"] = 3 * r["test_error"]
    assert {c.topic: c for c in scaling_claims(cfg, worse).claims}[
        "compressed lazy ≈ feature: error (stripe, d=5)"].verdict == "NO"
