"""Part lr of ``lazy-vs-hasty`` (thesis App. C.5, Fig. C.1): the first-step identities against plain autograd,
training to the clean-loss milestones, the equal-progress statistics by brute force, and the claims' verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tangentlab.analysis.linearity import LinearityProbe, group_metrics
from tangentlab.linearize import AlphaScaled
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.lazy_vs_hasty import LazyVsHastyConfig
from tangentlab.studies.lazy_vs_hasty.learning_rate import (
    first_step_checks,
    lr_regimes,
    matched_alpha,
    step_budget,
    train_to_milestones,
)
from tangentlab.studies.lazy_vs_hasty.learning_rate_report import (
    LIN,
    at_milestone,
    linearity_gap,
    lr_claims,
    read_lr,
    spread_and_effect,
)


def _net(seed=0, d=5, h=7, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).double()


def _data(n=40, d=5, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


def test_first_step_identities_against_plain_autograd(monkeypatch):
    net0, (x, y) = _net(), _data()
    ce = nn.functional.cross_entropy
    checks = first_step_checks(net0, 10.0, 0.05, 0.9, x, y, x[:10], ce, False)
    assert checks["param_step_alpha"] < 1e-12 and checks["param_step_lr"] < 1e-12
    # function steps: O(1) in α, and the small lr is α² slower, to first order (tiny steps here)
    assert checks["function_step_alpha"] == pytest.approx(1.0, abs=0.05)
    assert checks["function_step_lr"] == pytest.approx(1.0, abs=0.05)
    # independent oracle: the α-scaled first SGD step is −(lr/α)·∇L of the plain network (momentum buffer = gradient)
    net = _net()
    ce(net(x), y).backward()
    grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    model = AlphaScaled(_net(), 10.0)
    opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(0.05), momentum=0.9)
    p0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ce(model(x), y).backward()
    opt.step()
    step = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - p0
    assert torch.allclose(step, -(0.05 / 10.0) * grads, rtol=1e-10, atol=1e-14)
    # a wrong rescaling (lr/α instead of lr/α²) is caught: α·Δθ_α = 10·Δθ_1, relative error 9
    monkeypatch.setattr(AlphaScaled, "scaled_lr", lambda self, lr: lr / self.alpha)
    wrong = first_step_checks(net0, 10.0, 0.05, 0.9, x, y, x[:10], ce, False)
    assert wrong["param_step_alpha"] == pytest.approx(9.0)


def test_regimes_budget_and_matched_alpha():
    cfg = build_config(LazyVsHastyConfig, sets=["lr_factors=1,0.1,0.01", "lr_alphas=10,100"])
    assert lr_regimes(cfg) == [(1.0, 1.0), (1.0, 0.1), (1.0, 0.01), (10.0, 1.0), (100.0, 1.0)]
    assert matched_alpha(cfg) == 10.0
    assert step_budget(cfg, 1.0, 0.01) == 100 * cfg.lr_max_steps
    assert step_budget(cfg, 100.0, 1.0) == 10 * cfg.lr_max_steps
    with pytest.raises(ConfigError, match="'lr_alphas'.*10"):
        build_config(LazyVsHastyConfig, sets=["lr_factors=1,0.01", "lr_alphas=100"])
    with pytest.raises(ConfigError, match="'lr_alphas'.*factor 1"):
        build_config(LazyVsHastyConfig, sets=["lr_factors=0.1,0.01", "lr_alphas=10"])


def test_train_to_milestones_stops_at_the_last_and_measures_linearity_at_each():
    cfg = build_config(LazyVsHastyConfig, sets=["lr_milestones=0.9,0.6", "lr_max_steps=300", "batch_size=20",
                                                "lr=0.05", "lr_eval_every=1"])
    net0, (x, y) = _net(), _data()
    noisy = torch.zeros(x.shape[0], dtype=torch.bool)
    noisy[:5] = True

    def evaluate(model):
        return group_metrics(model(x), y, {"clean": ~noisy, "noisy": noisy})

    rows = train_to_milestones(cfg, net0, 1.0, 1.0, x, y, evaluate, nn.functional.cross_entropy,
                               LinearityProbe(net0, x[:8]), 0)
    probes: dict[int, dict] = {}
    for r in rows:
        probes.setdefault(r["probe"], {"step": r["step"]})[f"{r['group']}/{r['metric']}"] = r["value"]
    hist = [probes[k] for k in sorted(probes)]
    clean = [h["clean/loss"] for h in hist]
    assert clean[-1] <= 0.6 < min(clean[:-1])  # stops at the first evaluation at or below the last milestone
    with_lin = [i for i, h in enumerate(hist) if LIN[0] in h]
    first_09 = next(i for i, c in enumerate(clean) if c <= 0.9)
    assert with_lin[0] == 0 and first_09 in with_lin and len(hist) - 1 in with_lin
    assert hist[0][LIN[0]] == 1.0 and hist[0][LIN[1]] == pytest.approx(1.0)


class _Store:
    def __init__(self, rows):
        self.rows = rows

    def read(self, name):
        assert name == "lr_curves"
        return self.rows


def _rows(values):
    """lr_curves rows from ``{(seed, alpha, factor): [probe dicts]}``."""
    out = []
    for (seed, a, f), probes in values.items():
        for i, p in enumerate(probes):
            for key, v in p.items():
                group, metric = key.split("/")
                out.append({"seed": str(seed), "alpha": str(a), "lr_factor": str(f), "probe": str(i),
                            "step": str(10 * i), "group": group, "metric": metric, "value": repr(v)})
    return out


def _fake(noisy_lr, noisy_alpha, lin_small, lin_matched, seeds=4, rng_scale=0.01):
    """Histories with two milestones (1.0, 0.5) where the small lr's noisy loss differs from lr's by
    ``noisy_lr`` and α=100's by ``noisy_alpha``; linearity of the small lr / matched α at the end; every
    run's noisy loss (below clean loss 1) and linearity shifted by its own N(0, rng_scale) draw."""
    rng = np.random.default_rng(0)
    values = {}
    for s in range(seeds):
        for a, f, dn, lin in ((1.0, 1.0, 0.0, 0.8), (1.0, 0.01, noisy_lr, lin_small), (10.0, 1.0, 0.0, lin_matched),
                              (100.0, 1.0, -noisy_alpha, 0.99)):
            jit = float(rng.normal(0, rng_scale))
            probes = []
            for clean in (2.0, 0.9, 0.4):
                p = {"clean/loss": clean, "noisy/loss": 3.0 + dn + jit * (clean < 1), "test/loss": clean + dn / 10}
                if clean < 0.5:
                    p.update({k: lin + jit for k in LIN})
                probes.append(p)
            values[(s, a, f)] = probes
    values[(0, 10.0, 0.01)] = []  # unused key: ignored by the statistics
    rows = _rows({k: v for k, v in values.items() if v})
    rows += [{"seed": str(s), "alpha": "10.0", "lr_factor": "0.01", "probe": "-1", "step": "0", "group": "check",
              "metric": m, "value": "1e-13" if m.startswith("param") else "1.001"}
             for s in range(seeds) for m in ("param_step_alpha", "param_step_lr", "function_step_alpha",
                                             "function_step_lr")]
    return _Store(rows)


def test_equal_progress_statistics_by_brute_force():
    cfg = build_config(LazyVsHastyConfig, sets=["lr_milestones=1.0,0.5", "lr_factors=1,0.01", "lr_alphas=10,100"])
    hists, checks = read_lr(_fake(0.1, 0.6, 0.85, 0.95))
    assert set(checks) == {0, 1, 2, 3} and checks[0]["param_step_alpha"] == 1e-13
    h = hists[(0, 1.0, 1.0)]
    assert at_milestone(h, 1.0) is h[1] and at_milestone(h, 0.5) is h[2] and at_milestone(h, 0.1) is None
    spread, effect = spread_and_effect(cfg, hists, 1, "noisy/loss")
    assert spread == pytest.approx(0.1, abs=0.03) and effect == pytest.approx(0.6, abs=0.03)
    # brute force from the probes: milestone 1.0 → probe 1, 0.5 → probe 2
    v = {k: [p["noisy/loss"] for p in hists[(1, *k)]] for k in ((1.0, 1.0), (1.0, 0.01), (100.0, 1.0))}
    assert spread == pytest.approx(np.mean([abs(v[(1.0, 0.01)][i] - v[(1.0, 1.0)][i]) for i in (1, 2)]))
    assert effect == pytest.approx(np.mean([v[(1.0, 1.0)][i] - v[(100.0, 1.0)][i] for i in (1, 2)]))
    lin = {k: hists[(2, *k)][2] for k in ((1.0, 1.0), (1.0, 0.01), (10.0, 1.0))}
    assert linearity_gap(cfg, hists, 2, (1.0, 0.01), (1.0, 1.0)) == pytest.approx(
        min(lin[(1.0, 0.01)][k] - lin[(1.0, 1.0)][k] for k in LIN))
    assert linearity_gap(cfg, hists, 2, (10.0, 1.0), (1.0, 0.01)) == pytest.approx(0.10, abs=0.05)


def test_claims_verdicts_follow_the_data():
    cfg = build_config(LazyVsHastyConfig, sets=["lr_milestones=1.0,0.5", "lr_factors=1,0.01", "lr_alphas=10,100"])
    good = lr_claims(cfg, _fake(0.1, 0.6, 0.85, 0.95))
    assert [c.kind for c in good].count("identity") == 1 and len(good) == 7
    assert all(c.verdict == "yes" for c in good), [(c.topic, c.verdict, c.value) for c in good]
    assert all(c.criterion and c.paper and math.isfinite(c.low) for c in good if c.kind == "finding")
    # the lr spread as large as the α effect, a small lr less linear, α-scaling not more linear: NO
    bad = lr_claims(cfg, _fake(0.6, 0.6, 0.75, 0.70))
    v = {c.topic: c.verdict for c in bad}
    topic = "lr: the learning rate does not change the trajectory: noisy-example loss (noisy labels) (Fig. C.1 left)"
    assert v[topic] == "NO"
    assert v["lr: a smaller learning rate is more linear (Fig. C.1 right)"] == "NO"
    assert v["lr: at the same rescaled learning rate, α-scaling is more linear than a small lr (App. C.5)"] == "NO"
    # noise larger than the effect: inconclusive
    noisy = lr_claims(cfg, _fake(0.1, 0.6, 0.81, 0.95, rng_scale=0.5))
    assert {c.topic: c.verdict for c in noisy}["lr: a smaller learning rate is more linear (Fig. C.1 right)"] \
        == "inconclusive"
