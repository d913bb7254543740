"""``tangentlab run linearized-generalization --preset tiny`` end to end: tidy tables, the claims (criteria,
kinds, intervals over the two tiny seeds), the replicates, the report, Lemma 1 rows against K₀'s spectrum,
and resume after a kill inside part size."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import pytest

from tangentlab.cli import main
from tangentlab.studies.framework.config import build_config
from tangentlab.studies.framework.store import RunStore, read_table
from tangentlab.studies.linearized_generalization import LinGenConfig
from tangentlab.studies.linearized_generalization import run as lg_run
from tangentlab.studies.linearized_generalization.config import ARRAY_COLUMNS, CURVE_COLUMNS, RESULT_COLUMNS
from tangentlab.studies.linearized_generalization.figures import build_report


def _run(out, *extra: str) -> int:
    return main(["run", "linearized-generalization", "--preset", "tiny", "--out", str(out), "--set", "progress=off",
                 "--set", "threads=1", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lg") / "tiny"
    assert _run(out) == 0
    return out


def _table(run, name):
    return read_table(os.path.join(run, "tables", f"{name}.csv"))


def test_tables_are_tidy_and_complete(tiny_run):
    cfg = build_config(LinGenConfig, preset="tiny")
    for name, cols in (("results", RESULT_COLUMNS), ("curves", CURVE_COLUMNS), ("arrays", ARRAY_COLUMNS)):
        with open(tiny_run / "tables" / f"{name}.csv") as fh:
            assert fh.readline().strip().split(",") == cols
    res = _table(tiny_run, "results")
    keys = [(r["part"], r["setting"], r["index"], r["model"], r["metric"]) for r in res]
    assert len(keys) == len(set(keys))
    units = defaultdict(dict)
    for r in res:
        units[(r["part"], r["setting"], r["index"], r["model"])][r["metric"]] = float(r["value"])
    for j in cfg.eigen_indices:
        for kind in ("nn", "lin"):
            u = units[("eigen", "phi", str(j), kind)]
            assert 0 <= u["test_accuracy"] <= 1 and u["l2_distance"] > 0
            assert u["l2_distance_sq"] == pytest.approx(u["l2_distance"] ** 2)
        assert units[("eigen", "phi", str(j), "kernel")]["eigenvalue"] > 0
    for j in cfg.nad_indices:
        assert ("nad", "linear", str(j), "lin") in units
    for n in cfg.sizes:
        assert ("size", "half_s0", str(n), "nn") in units
    for n in cfg.xor_sizes:
        assert ("size", "xor_s0", str(n), "lin") in units
    epochs = sorted({0, *cfg.checkpoint_epochs, cfg.epochs})
    for setting in ("half", "phi"):
        for e in epochs:
            u = units[("energy", setting, str(e), "kernel")]
            for k in cfg.energy_ks:
                assert 0 <= u[f"E{k}"] <= 1 + 1e-12 and u[f"E{k}_sq"] == pytest.approx(u[f"E{k}"] ** 2)
    for t in epochs:
        assert ("energy", "late_phi", str(t), "lin") in units
    # the curves: one row per epoch of each trained model
    curves = _table(tiny_run, "curves")
    ep = sorted({int(r["epoch"]) for r in curves if r["part"] == "eigen" and r["metric"] == "train_loss"})
    assert ep == list(range(1, cfg.epochs + 1))
    # NAD images: nad_show rows of d pixels, unit norm
    imgs = defaultdict(float)
    for r in _table(tiny_run, "arrays"):
        if r["name"] == "nad_images":
            imgs[int(r["row"])] += float(r["value"]) ** 2
    assert sorted(imgs) == list(range(cfg.nad_show))
    assert all(v == pytest.approx(1.0, rel=1e-9) for v in imgs.values())


def test_claims_carry_criteria_kinds_and_intervals(tiny_run, capsys):
    cfg = build_config(LinGenConfig, preset="tiny")
    content = build_report(cfg, RunStore.open(tiny_run))
    ident = {c.topic: c for c in content.claims if c.kind == "identity"}
    assert set(ident) == {"Lemma 1", "α(u_j) = λ_j", "Theorem 1"}
    # the float64 identities hold in any run; Theorem 1 is a Monte-Carlo check (64 draws in tiny: noisy)
    assert ident["Lemma 1"].held and ident["α(u_j) = λ_j"].held, [(c.topic, c.measured) for c in ident.values()]
    assert ident["Theorem 1"].verdict in ("yes", "NO") and "≤ 0.25" in ident["Theorem 1"].criterion
    topics = {c.topic for c in content.claims}
    for t in ("E1 eigenfunction tasks", "E1 linear advantage", "E2 training dynamics", "E3 NAD ordering",
              "E3 non-linear advantage", "E4 sample size (half-classes task)", "E4 distance (half-classes task)",
              "E6 single-axis rotation", "E7 rotation speeds up training", "E7 rotation hurts generalization here",
              "E8 kernels after a few epochs", "Later kernels, real labels"):
        assert t in topics
    for c in content.claims:
        assert c.criterion and c.paper and c.part, c.topic
        assert "§" in c.paper or "Lemma" in c.paper or "Theorem" in c.paper, c.topic
    # two seeds in tiny: the interval-decided findings carry an interval over them
    by = {c.topic: c for c in content.claims}
    for t in ("E1 eigenfunction tasks", "E1 linear advantage", "E3 non-linear advantage",
              "E4 sample size (half-classes task)", "E7 rotation hurts generalization here",
              "E8 kernels after a few epochs"):
        c = by[t]
        assert "95 %" in c.criterion, t
        assert math.isfinite(c.low) and c.low <= c.value <= c.high, (t, c.value, c.low, c.high)
    rows = read_table(os.path.join(tiny_run, "tables", "claims.csv"))
    assert len(rows) == len(content.claims) and {r["kind"] for r in rows} == {"identity", "finding"}
    html = (tiny_run / "report.html").read_text()
    assert "Lemma 1" in html and "<img" in html
    for fig in ("fig2_eigenfunctions", "fig10_nads", "fig4_nad_tasks", "fig5_sample_size", "fig6_energy",
                "fig7_rotation", "fig8_9_late_linearization", "lemma1"):
        assert (tiny_run / "figures" / f"{fig}.png").exists(), fig
    assert main(["report", str(tiny_run)]) == 0
    assert "identities " in capsys.readouterr().out


def test_seeds_are_independent_replicates(tiny_run):
    units = defaultdict(dict)
    for r in _table(tiny_run, "results"):
        units[(r["part"], r["setting"], r["index"], r["model"])][r["metric"]] = float(r["value"])
    cfg = build_config(LinGenConfig, preset="tiny")
    assert cfg.seeds == (0, 1)
    j = cfg.eigen_indices[0]
    # seed 1 has its own θ₀, hence its own K₀ spectrum, and every part's units
    assert units[("eigen", "phi", str(j), "kernel")]["eigenvalue"] != units[("eigen", "phi_s1", str(j), "kernel")][
        "eigenvalue"]
    for key in (("eigen", "phi_s1", str(j), "lin"), ("nad", "linear_s1", str(cfg.nad_indices[0]), "nn"),
                ("energy", "late_phi_s1", "0", "lin"), ("energy", "rotation_s1", str(cfg.rotation_target), "kernel"),
                ("energy", "half_s1", "0", "kernel")):
        assert key in units, key
    # the identities are checked once
    assert not any(k[0] == "lemma" and k[1].endswith("_s1") for k in units)
    assert not any(k[0] == "nad" and k[1].startswith("theorem1_") for k in units)


def test_lemma_rows_and_rotation_consistency(tiny_run):
    rows = defaultdict(dict)
    for r in _table(tiny_run, "results"):
        if r["part"] == "lemma" and r["setting"] == "vectors":
            rows[r["index"]][r["metric"]] = float(r["value"])
    assert rows
    for name, v in rows.items():
        assert v["bound"] <= v["rkhs_norm_sq"] * (1 + 1e-10), name
        if name.startswith("u_"):
            assert v["ratio"] == pytest.approx(1.0, abs=1e-8)
    # α_0 on the whole support is the spectrum of K₀ (the eigenvectors' own alignments)
    arr = defaultdict(dict)
    for r in _table(tiny_run, "arrays"):
        arr[r["name"]][int(r["row"])] = float(r["value"])
    for setting, name in (("phi", "alpha0_all"), ("phi_s1", "alpha0_all_s1")):  # each seed its own K₀
        eig = {r["index"]: float(r["value"]) for r in _table(tiny_run, "results")
               if r["part"] == "eigen" and r["setting"] == setting and r["metric"] == "eigenvalue"}
        assert eig
        for j, lam in eig.items():
            assert arr[name][int(j)] == pytest.approx(lam, rel=1e-8)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = lg_run.train_binary

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed while training the 4th unit
        return original(*a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(lg_run, "train_binary", failing)
    assert _run(out, "--set", "parts=size") == 130
    assert json.loads((out / "state.json").read_text())["status"] == "interrupted"
    assert _run(out, "--resume") == 0
    sessions = json.loads((out / "state.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]

    def size_rows(run):
        return {(r["setting"], r["index"], r["model"], r["metric"]): float(r["value"])
                for r in _table(run, "results") if r["part"] == "size"}

    got, ref = size_rows(out), size_rows(tiny_run)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12, nan_ok=True), k


