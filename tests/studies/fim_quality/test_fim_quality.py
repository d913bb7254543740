"""``tangentlab run fim-quality --preset tiny`` end to end: the tidy tables, the
deterministic claims (exact traces, Theorem 2), the report, and resume after a kill."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import pytest

from tangentlab.cli import main
from tangentlab.pmat import NAMES
from tangentlab.studies.fim_quality.config import (
    DRIFT_COLUMNS,
    EXACT_TOL,
    QUALITY_COLUMNS,
    TRAINING_COLUMNS,
    FimQualityConfig,
)
from tangentlab.studies.fim_quality.run import FimQuality, checkpoint_steps
from tangentlab.studies.framework.config import build_config
from tangentlab.studies.framework.store import read_table

NEEDED = ("diag", "quasidiag", "blockdiag", "kfac", "ekfac")
MISSING = [r for r in NEEDED if r not in NAMES]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"representations {MISSING} are not registered yet")


def _run(out, *extra: str) -> int:
    return main(["run", "fim-quality", "--preset", "tiny", "--out", str(out), "--set", "progress=off", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fq") / "tiny"
    assert _run(out) == 0
    return out


def _table(run, name):
    return read_table(os.path.join(run, "tables", f"{name}.csv"))


def test_tables_are_tidy_and_complete(tiny_run):
    cfg = build_config(FimQualityConfig, preset="tiny")
    for name, cols in (("quality", QUALITY_COLUMNS), ("drift", DRIFT_COLUMNS), ("training", TRAINING_COLUMNS)):
        with open(tiny_run / "tables" / f"{name}.csv") as fh:
            assert fh.readline().strip().split(",") == cols
    q_all = _table(tiny_run, "quality")
    steps = checkpoint_steps(cfg.train_steps, cfg.checkpoints)
    assert sorted({int(r["step"]) for r in q_all}) == steps
    assert {r["fisher"] for r in q_all} == {*cfg.fisher_kinds, "mc_indep"}
    q = [r for r in q_all if r["fisher"] != "mc_indep"]
    assert {r["representation"] for r in q} == {*cfg.representations, cfg.reference}
    keys = [(r["step"], r["fisher"], r["representation"], r["method"], r["metric"], r["lambda_rel"], r["probe"])
            for r in q]
    assert len(keys) == len(set(keys))  # one row per step × fisher × representation × method × metric × λ × probe
    # expected row count
    per_rep_matrix = 4  # build_s, trace, trace_rel_err, fro_rel_err
    per_probe = 3 * cfg.n_vectors
    n_solve = sum(len(cfg.solve_methods) if r in ("kfac", "ekfac") else 1 for r in cfg.representations)
    per_kind = 3 + len(cfg.representations) * (per_rep_matrix + per_probe) + n_solve * len(cfg.lambdas) * 2 * \
        cfg.n_vectors
    assert len(q) == len(steps) * len(cfg.fisher_kinds) * per_kind
    metrics = {r["metric"] for r in q}
    assert metrics == {"build_s", "trace", "fro_norm", "trace_rel_err", "fro_rel_err", "mv_cos", "mv_residual",
                       "vTMv_rel_err", "solve_cos", "solve_residual"}
    for r in q:
        assert math.isfinite(float(r["value"])), r
        if r["metric"].startswith("solve"):
            assert float(r["lambda_rel"]) in cfg.lambdas and float(r["lambda"]) > 0
        if r["metric"].endswith("_cos"):
            assert -1 - 1e-12 <= float(r["value"]) <= 1 + 1e-12
    assert sorted({int(r["probe"]) for r in q if r["metric"] == "mv_cos"}) == list(range(cfg.n_vectors))

    d = _table(tiny_run, "drift")
    assert sorted({int(r["step"]) for r in d}) == list(range(cfg.drift_steps + 1))
    assert {r["approximation"] for r in d} == {"exact", "kfac", "ekfac", "ekfac_mb"}
    assert {r["basis"] for r in d} == {"", "amortized", "fixed"}
    assert {r["layer"] for r in d} == {"0", "2", "4"}
    spec = [r for r in d if r["metric"] == "spectrum_l2"]
    assert {r["layer"] for r in spec} == {"2"}  # the second Linear by default
    assert {int(r["since_recompute"]) for r in d} == set(range(cfg.recompute_every))
    t = _table(tiny_run, "training")
    assert {(r["phase"], r["metric"]) for r in t} >= {("quality", "train_loss"), ("quality", "test_accuracy"),
                                                      ("drift", "train_loss")}
    assert len([r for r in t if r["phase"] == "quality" and r["metric"] == "train_loss"]) == cfg.train_steps
    # Fig. 3.6 with independent samples: one row per checkpoint × approximation × realization, plus the reference
    ind = [r for r in q_all if r["fisher"] == "mc_indep"]
    reps = [r for r in cfg.representations if r != "blockdiag"]
    assert len(ind) == len(steps) * (1 + len(reps) * cfg.trace_realizations)
    # Fig. 3.7: every checkpoint × pair × metric; Fig. 4.2 left: first and last step × layers × (splits + whole)
    n = _table(tiny_run, "ntk")
    assert {(int(r["step"]), int(r["pair"])) for r in n} == {(s, p) for s in steps for p in range(cfg.ntk_pairs)}
    assert {r["metric"] for r in n} == {"gap", "pca_accuracy", "trace"}
    pts = _table(tiny_run, "ntk_points")
    assert len(pts) == len(steps) * cfg.ntk_pairs * 2 * cfg.ntk_per_class
    dec = _table(tiny_run, "decorrelation")
    assert {int(r["step"]) for r in dec} == {0, cfg.drift_steps}
    assert {int(r["split"]) for r in dec} == {-1, *range(cfg.decor_splits)}
    for r in dec:
        assert 0 <= float(r["value"]) <= 1, r


def test_deterministic_claims_hold(tiny_run):
    q = _table(tiny_run, "quality")
    trace_err = defaultdict(list)
    fro = {}
    for r in q:
        if r["metric"] == "trace_rel_err":
            trace_err[(r["fisher"], r["representation"])].append(float(r["value"]))
        if r["metric"] == "fro_rel_err":
            fro[(r["step"], r["fisher"], r["representation"])] = float(r["value"])
    for kind in ("exact", "mc"):  # mc too: F and the approximations share the sampled labels
        for rep in ("diag", "quasidiag", "blockdiag", "ekfac"):
            assert max(trace_err[(kind, rep)]) <= EXACT_TOL, (kind, rep, trace_err[(kind, rep)])
        assert min(trace_err[(kind, "kfac")]) > 1e3 * EXACT_TOL  # KFAC's trace is not exact
    for (step, kind, rep), v in fro.items():
        if rep == "ekfac":
            assert v <= fro[(step, kind, "kfac")] + 1e-12  # Theorem 2, whole matrix
    # Theorem 2 per layer at the recompute points of part 2
    d = _table(tiny_run, "drift")
    at = {(r["step"], r["layer"], r["approximation"]): float(r["value"]) for r in d
          if r["metric"] == "fro_rel_err" and r["basis"] == "amortized" and r["since_recompute"] == "0"}
    pairs = [(k, at[(k[0], k[1], "ekfac")]) for k in at if k[2] == "kfac"]
    assert len(pairs) == 4 * 3  # recompute steps 0, 4, 8, 12 × 3 layers
    for (step, layer, _), e in pairs:
        assert e <= at[(step, layer, "kfac")] + 1e-12, (step, layer)


def test_report_and_claims(tiny_run, capsys):
    page = (tiny_run / "report.html").read_text()
    for fig in ("fig3_3_solve_mc", "fig3_3_solve_exact", "fig3_4_mv", "fig3_5_vTMv", "fig3_6_trace",
                "fig3_6_trace_independent", "fig3_7_ntk_pca", "fig4_2_left_decorrelation", "fig4_2_drift",
                "fig4_4c_spectrum", "training"):
        assert (tiny_run / "figures" / f"{fig}.png").stat().st_size > 1000, fig
        assert f"figures/{fig}.png" in page
    for needle in ("the paper says", "Fig. 3.6 trace", "Thm 2 (recompute points)", "Fig. 4.2 right",
                   "Fig. 4.4c", "Headline metrics", "tables/quality.csv", "Fig. 3.7", "Fig. 4.2 left",
                   "tables/ntk.csv", "tables/decorrelation.csv"):
        assert needle in page, needle
    summary = read_table(tiny_run / "tables" / "quality_summary.csv")
    assert {"median", "q1", "q3", "n"} <= set(summary[0])
    assert main(["report", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("[")]  # "[verdict] topic  (kind)"
    for topic in ("Fig. 3.6 trace, shared", "Thm 2 (checkpoints)", "Thm 2 (recompute", "Fig. 4.2 left: KFE mass"):
        line = next(h for h in heads if h.split("] ", 1)[1].startswith(topic))
        assert line.startswith("[yes]") and line.endswith("(identity)"), line
    claims = read_table(tiny_run / "tables" / "claims.csv")
    by_topic = {c["topic"]: c for c in claims}
    assert sum(c["kind"] == "identity" for c in claims) == 4
    for c in claims:
        assert c["criterion"] and c["paper"] and c["verdict"] in ("yes", "NO", "inconclusive", "n/a"), c
    # the findings decided on realizations carry an interval
    for topic in ("Fig. 3.6 trace, independent samples: KFAC less accurate",
                  "Fig. 3.6 trace, independent samples: Diag/QuasiDiag/EKFAC accurate", "Fig. 3.4 Fv",
                  "Fig. 3.7: linearly separable after training", "Fig. 4.2 left: decorrelated in the KFE "
                  "(at initialization)", "Fig. 4.2 right: EKFAC drifts far less quickly"):
        c = by_topic[topic]
        assert c["kind"] == "finding"
        assert math.isfinite(float(c["low"])) and float(c["low"]) <= float(c["high"]), c
    assert "≥ 2" in by_topic["Fig. 3.6 trace, independent samples: KFAC less accurate"]["criterion"]
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["status"] == "finished"


def test_metrics_are_exact_for_the_exact_matrix(tmp_path):
    """With F̂ = F (representation dense) every metric is perfect: checks the metric code."""
    out = tmp_path / "exact"
    assert main(["run", "fim-quality", "--out", str(out), "--set", "progress=off", "--set", "drift=false",
                 "--set", "train_steps=3", "--set", "checkpoints=2", "--set", "n_probe=24", "--set", "width=3",
                 "--set", "representations=dense,diag", "--set", "n_vectors=3", "--set", "lambdas=1e-3,1"]) == 0
    for r in _table(out, "quality"):
        if r["representation"] != "dense" or r["fisher"] == "mc_indep":  # mc_indep: Monte-Carlo noise by design
            continue
        v = float(r["value"])
        if r["metric"] in ("mv_cos", "solve_cos"):
            assert v == pytest.approx(1.0, abs=1e-10)
        elif r["metric"] in ("mv_residual", "solve_residual", "vTMv_rel_err", "trace_rel_err", "fro_rel_err"):
            assert v < 1e-8, r
    assert not (out / "tables" / "drift.csv").exists()


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    calls = {"probe": 0, "drift": 0}
    probe, drift_rows = FimQuality._probe, FimQuality._drift_rows

    def failing_probe(self, *a, **k):
        calls["probe"] += 1
        if calls["probe"] == 2:
            raise KeyboardInterrupt  # as if the run were killed while probing the 2nd checkpoint
        return probe(self, *a, **k)

    def failing_drift(self, step, *a, **k):
        if step == 6 and calls["drift"] == 0:
            calls["drift"] += 1
            raise RuntimeError("killed in part 2")
        return drift_rows(self, step, *a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(FimQuality, "_probe", failing_probe)
    monkeypatch.setattr(FimQuality, "_drift_rows", failing_drift)
    assert _run(out) == 130  # KeyboardInterrupt
    assert json.loads((out / "state.json").read_text())["status"] == "interrupted"
    with pytest.raises(RuntimeError, match="killed in part 2"):
        _run(out, "--resume")
    assert _run(out, "--resume") == 0

    def content(run, name):
        rows = _table(run, name)
        return sorted(tuple((k, v) for k, v in r.items() if not (k == "value" and r.get("metric") == "build_s"))
                      for r in rows)

    for name in ("quality", "drift", "training", "ntk", "ntk_points", "decorrelation"):
        assert content(out, name) == content(tiny_run, name), name
    sessions = json.loads((out / "state.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "failed", "finished"]
