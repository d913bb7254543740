"""The alignment study's distance to the infinite-width NTK (:mod:`tangentlab.studies.alignment.limit`):
the tiny preset's tables (columns, finite values, the distance falling with the width, one row
per probe step), the stored numbers against a float64 ``torch.func`` oracle of the empirical
NTK, the probe's limit kept fixed during training, and the ViT skipping the part cleanly."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from tangentlab import limits
from tangentlab.analysis.kernels import cka
from tangentlab.cli import main
from tangentlab.studies.alignment import limit as AL
from tangentlab.studies.alignment.config import AlignmentConfig
from tangentlab.studies.alignment.data import load_alignment_split
from tangentlab.studies.alignment.figures import build_report
from tangentlab.studies.framework.config import build_config
from tangentlab.studies.framework.probes import ProbeSet, log_schedule
from tangentlab.studies.framework.store import RunStore, read_table

SETS = ["--set", "progress=off", "--set", "threads=1"]


@pytest.fixture
def float32():
    """The command line runs in float32 (the suite's default dtype is float64)."""
    torch.set_default_dtype(torch.float32)


def oracle_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``K[n, m, c, d] = Σ_θ ∂f_c(x_n)/∂θ ∂f_d(x_m)/∂θ`` by ``torch.func.jacrev`` (float64 ``model``)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    n, c = x.shape[0], jac[next(iter(jac))].shape[1]
    J = torch.cat([j.reshape(n, c, -1) for j in jac.values()], dim=2)
    return torch.einsum("ncp,mdp->nmcd", J, J)


def rel_frobenius(K: torch.Tensor, L: torch.Tensor) -> float:
    return float(torch.linalg.norm(K - L) / torch.linalg.norm(L))


def test_tiny_preset_tables_oracle_and_claims(tmp_path, float32, capsys):
    cfg = build_config(AlignmentConfig, preset="tiny", sets=["items=2", "noise=0.0"])
    out = tmp_path / "run"
    assert main(["run", "alignment", "--preset", "tiny", *SETS, "--set", "items=2", "--set", "noise=0.0",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    rows = read_table(os.path.join(out, "tables", f"{AL.LIMIT_WIDTH_TABLE}.csv"))
    assert rows and list(rows[0]) == AL.LIMIT_WIDTH_COLUMNS == ["width", "seed", "rel_frobenius", "cka"]
    assert sorted((int(r["width"]), int(r["seed"])) for r in rows) == [
        (w, s) for w in sorted(cfg.limit_widths) for s in range(cfg.limit_seeds)]
    for r in rows:
        assert math.isfinite(float(r["rel_frobenius"])) and float(r["rel_frobenius"]) > 0
        assert 0 < float(r["cka"]) <= 1 + 1e-9
    mean = {w: np.mean([float(r["rel_frobenius"]) for r in rows if int(r["width"]) == w]) for w in cfg.limit_widths}
    assert mean[max(mean)] < mean[min(mean)]

    # part (a) against the oracle: the empirical NTK by torch.func, the limit of the same draw
    split = load_alignment_split(cfg)
    x = AL.limit_inputs(cfg, split)
    w = min(cfg.limit_widths)
    model = AL.init_model(cfg, split, w, 1)
    K, L = oracle_ntk(model, x), limits.ntk(model, x, parameterization="standard").to_dense()
    stored = next(r for r in rows if int(r["width"]) == w and int(r["seed"]) == 1)
    assert float(stored["rel_frobenius"]) == pytest.approx(rel_frobenius(K, L), rel=1e-9)
    assert float(stored["cka"]) == pytest.approx(cka(K, L, centering="examples", n_outputs=10), rel=1e-9)

    # part (b): both numbers at every probe step of the label-noise run, on both probe sets
    probes = read_table(os.path.join(out, "tables", "probes.csv"))
    sched = log_schedule(cfg.schedule, cfg.train_steps, cfg.schedule_base)
    for metric in AL.LIMIT_METRICS:
        for pr in ("train", "test"):
            got = {int(r["step"]): float(r["value"]) for r in probes
                   if r["run"] == "noise_0" and r["probe"] == pr and r["metric"] == metric}
            assert sorted(got) == sched, (metric, pr)
            assert all(math.isfinite(v) for v in got.values())
            if metric == "cka_limit":
                assert all(-1e-9 <= v <= 1 + 1e-9 for v in got.values())

    page = (out / "report.html").read_text()
    assert "Distance to the infinite-width NTK" in page and (out / "figures" / "limit_distance.png").exists()
    claims = {c.topic: c for c in build_report(cfg, RunStore.open(out)).claims}
    assert "Distance to the limit at initialization" in claims
    assert "Distance to the limit during training (0% random labels)" in claims


def test_limit_probe_matches_the_oracle_and_keeps_the_initial_limit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 24), nn.ReLU(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    probe = AL.LimitProbe([ProbeSet("train", x, y)], groups={}, ks=(2,), centering="examples", n_pca=2)
    probe.set_reference(model)
    L = limits.ntk(model, x, parameterization="standard").to_dense()
    for step in (0, 1):
        if step:  # the parameters move; the limit stays that of the initial network
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
        res = probe.evaluate(model, step)
        K = oracle_ntk(model, x)
        assert res.value("train", "rel_frobenius_limit") == pytest.approx(rel_frobenius(K, L), rel=1e-9)
        assert res.value("train", "cka_limit") == pytest.approx(cka(K, L, centering="examples", n_outputs=3),
                                                                rel=1e-9)
    assert res.value("train", "rel_frobenius_limit") > 0.1


def test_vit_skips_the_part_with_a_reason(tmp_path):
    cfg = build_config(AlignmentConfig, preset="transformer-tiny")
    assert AL.wanted(cfg)
    split = load_alignment_split(cfg)
    store = RunStore.create(tmp_path / "run", {})
    logs: list[str] = []
    AL.run_limit_widths(store, cfg, split, logs.append)
    assert store.read(AL.LIMIT_WIDTH_TABLE) == []
    assert len(logs) == 1 and "skipped" in logs[0] and "ViT" in logs[0]
    report = build_report(cfg, store)
    assert any("Distance to the infinite-width limit: skipped" in n and "ViT" in n for n in report.notes)
    assert not any(c.topic.startswith("Distance to the limit") for c in report.claims)
    assert AL.limit_refusal(AL.init_model(cfg, split, cfg.width, 0), AL.limit_inputs(cfg, split)) is not None
