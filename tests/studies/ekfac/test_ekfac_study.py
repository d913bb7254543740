"""``tangentlab run ekfac --preset tiny`` end to end: tidy tables, the spectrum identities,
the report's claims, configuration errors, and resume after a kill."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tangentlab.cli import main
from tangentlab.studies.ekfac.claims import selected_row
from tangentlab.studies.ekfac.config import (
    CURVE_COLUMNS,
    EWC_COLUMNS,
    SEARCH_COLUMNS,
    SPECTRUM_APPROXIMATIONS,
    SPECTRUM_COLUMNS,
    EkfacConfig,
    period_tag,
    selection_key,
)
from tangentlab.studies.ekfac.models import make_autoencoder, make_vgg11
from tangentlab.studies.ekfac.run import EkfacStudy
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.store import read_table


def _run(out, *extra: str) -> int:
    return main(["run", "ekfac", "--preset", "tiny", "--out", str(out), "--set", "progress=off", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ek") / "tiny"
    assert _run(out) == 0
    return out


def _table(run, name):
    return read_table(run / "tables" / f"{name}.csv")


def test_tables_are_tidy_and_complete(tiny_run):
    cfg = build_config(EkfacConfig, preset="tiny")
    for name, cols in (("search", SEARCH_COLUMNS), ("curves", CURVE_COLUMNS), ("spectrum", SPECTRUM_COLUMNS),
                       ("ewc", EWC_COLUMNS)):
        with open(tiny_run / "tables" / f"{name}.csv") as fh:
            assert fh.readline().strip().split(",") == cols
    search = _table(tiny_run, "search")
    # one grid point per method, task and recompute period (tiny grid, no random perturbation): (η, ε)
    # is selected again for each period of the period study
    want_search = [(t, m, str(period_tag(m, cfg.period))) for t in ("autoencoder", "cnn")
                   for m in cfg.methods]
    want_search += [("autoencoder", m, "5") for m in ("kfac", "ekfac")]
    assert sorted((r["task"], r["method"], r["period"]) for r in search) == sorted(want_search)
    curves = _table(tiny_run, "curves")
    runs = {(r["task"], r["method"], r["period"], r["seed"]) for r in curves}
    seeds = [str(k) for k in range(cfg.n_seeds)]
    want = {("autoencoder", m, str(period_tag(m, cfg.period)), s) for m in cfg.methods for s in seeds}
    want |= {("autoencoder", m, "5", s) for m in ("kfac", "ekfac") for s in seeds}
    want |= {("cnn", m, str(period_tag(m, cfg.period)), s) for m in cfg.methods for s in seeds}
    assert runs == want
    for r in curves:
        n_ep = cfg.epochs if r["task"] == "autoencoder" else cfg.cnn_epochs
        assert 0 <= int(r["epoch"]) <= n_ep
        if int(r["epoch"]) == 0:  # same initialization for every method of a task and seed
            assert float(r["time_s"]) == 0.0 and float(r["cpu_s"]) == 0.0
        else:  # CPU and wall time of the training steps, accumulated per step
            assert float(r["cpu_s"]) > 0 and float(r["time_s"]) > 0
    init = {(r["task"], r["seed"], r["train_loss"]) for r in curves if r["epoch"] == "0"}
    assert len(init) == 2 * cfg.n_seeds
    assert len(curves) == sum((cfg.epochs if t == "autoencoder" else cfg.cnn_epochs) + 1 for (t, *_rest) in want)
    assert all(r["val_acc"] == "nan" or r["task"] == "cnn" for r in curves)
    ewc = _table(tiny_run, "ewc")
    assert {r["penalty"] for r in ewc} == set(cfg.ewc_penalties)


def test_spectrum_identities(tiny_run):
    """diag(QᵀGQ) is the reference of the diagonals (zero error) and keeps the trace of G
    (Σ_i (QᵀGQ)_ii = tr G for an orthogonal Q); at step 0 the fixed KFE is fresh and that
    Frobenius-optimal diagonal is at least as close to the exact spectrum as KFAC's."""
    rows = _table(tiny_run, "spectrum")
    by = {(int(r["step"]), r["approximation"]): r for r in rows}
    cfg = build_config(EkfacConfig, preset="tiny")
    assert {s for s, _ in by} == set(range(cfg.spectrum_steps + 1))
    assert {a for _, a in by} == set(SPECTRUM_APPROXIMATIONS)
    for s in range(cfg.spectrum_steps + 1):
        opt = by[(s, "kfe_optimum")]
        assert float(opt["diag_rel_error"]) == 0.0
        assert math.isclose(float(opt["trace_ratio"]), 1.0, rel_tol=1e-9)
        for a in ("kfac", "ekfac", "ekfac_ra"):
            assert float(by[(s, a)]["diag_rel_error"]) > 0
            assert float(by[(s, a)]["rel_distance"]) >= 0
    assert float(by[(0, "kfe_optimum")]["distance"]) <= float(by[(0, "kfac")]["distance"]) + 1e-12


def test_selection_prefers_runs_that_did_not_diverge():
    rows = [{"diverged": "true", "best_train_loss": "0.1", "lr": "1.0"},
            {"diverged": "false", "best_train_loss": "0.5", "lr": "0.3"},
            {"diverged": "false", "best_train_loss": "0.5", "lr": "0.1"},
            {"diverged": "false", "best_train_loss": "nan", "lr": "0.01"}]
    assert min(rows, key=selection_key)["lr"] == "0.1"
    tagged = [{**r, "task": "t", "method": "kfac", "period": "5"} for r in rows]
    assert selected_row(tagged, "t", "kfac", 5)["lr"] == "0.1"
    assert selected_row(tagged, "t", "kfac", 20) == {}  # selection is per recompute period


def test_report_and_claims(tiny_run, capsys):
    assert main(["report", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "identities " in out
    html = (tiny_run / "report.html").read_text()
    for needle in ("loss per epoch", "amortization", "spectrum tracking", "EWC demo", "validation loss"):
        assert needle in html
    for fig in ("curves_autoencoder", "curves_cnn", "sensitivity_autoencoder", "spectrum", "period",
                "wallclock_autoencoder", "wallclock_cnn"):
        assert (tiny_run / "figures" / f"{fig}.png").exists(), fig
    assert "wall-clock comparison" in html and "CPU ms/step" in html
    claims = {r["topic"]: r for r in _table(tiny_run, "claims")}
    for topic in ("auto-encoder: EKFAC-ra loss at equal CPU time", "auto-encoder: EKFAC loss at equal CPU time",
                  "auto-encoder: EKFAC-ra cost per update", "CNN: EKFAC-ra loss at equal CPU time",
                  "auto-encoder: every-step KFAC cost", "auto-encoder: EKFAC loss per epoch",
                  "auto-encoder: amortization", "EWC demo", "auto-encoder: validation loss"):
        r = claims[topic]
        assert r["kind"] == "finding" and r["criterion"] and r["paper"], topic
        # the tiny preset runs 2 seeds: every seed-based claim carries a Student-t interval
        assert "2 paired seeds" in r["criterion"], topic
        lo, hi = float(r["low"]), float(r["high"])
        assert math.isfinite(lo) and lo <= float(r["value"]) <= hi, topic
        assert r["verdict"] in ("yes", "NO", "inconclusive"), topic
    assert "process_time" in claims["auto-encoder: EKFAC-ra loss at equal CPU time"]["criterion"]
    ident = claims["spectrum tracking: trace of EKFAC's optimal diagonal"]
    assert ident["kind"] == "identity" and ident["verdict"] == "yes"
    assert claims["spectrum tracking (EKFAC)"]["kind"] == "finding"


@pytest.mark.parametrize("sets, field", [
    (["dataset=imagenet"], "dataset"),
    (["dataset=mnist"], "data_dir"),
    (["methods=ekfac,lbfgs"], "methods"),
    (["spectrum_layer=3"], "spectrum_layer"),
    (["batch_size=5000"], "batch_size"),
    (["methods=sgd,adam"], "methods"),
    (["cnn_model=vgg11"], "cnn_model"),
])
def test_bad_configuration_is_refused_before_work(sets, field):
    with pytest.raises(ConfigError) as err:
        build_config(EkfacConfig, preset="tiny", sets=sets)
    assert err.value.field == field
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("preset", ["mnist", "cifar-vgg11", "cifar-resnet34"])
def test_paper_presets_are_refused_without_files_or_gpu(preset, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the refusal path, on any machine
    with pytest.raises(ConfigError) as err:
        build_config(EkfacConfig, preset=preset)
    assert err.value.field in ("data_dir", "device")
    (tmp_path / "mnist.npz").write_bytes(b"")
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConfigError) as err:
        build_config(EkfacConfig, preset=preset, sets=[f"data_dir={tmp_path}"])
    assert err.value.field == "device"


def test_models():
    ae = make_autoencoder(64, (32, 16, 8, 16, 32), torch.float64)
    assert [m.out_features for m in ae if isinstance(m, torch.nn.Linear)] == [32, 16, 8, 16, 32, 64]
    vgg = make_vgg11(10, torch.float32)
    convs = [m for m in vgg if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(float(c.bias.detach().abs().max()) == 0 for c in convs)
    # A.3: He initialization (variance 2/fan-in) after a ReLU
    w = convs[3].weight
    assert abs(float(w.detach().var()) * w[0].numel() / 2 - 1) < 0.05
    assert vgg(torch.randn(2, 3, 32, 32, dtype=torch.float32)).shape == (2, 10)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    evaluate = EkfacStudy._evaluate

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 43:  # inside the second final run, after its first checkpoint
            raise KeyboardInterrupt
        return evaluate(self, *a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(EkfacStudy, "_evaluate", failing)
    assert _run(out) == 130
    assert json.loads((out / "state.json").read_text())["status"] == "interrupted"
    assert _run(out, "--resume") == 0

    def content(run, name, drop=("time_s", "cpu_s", "seconds")):
        return sorted(tuple((k, v) for k, v in r.items() if k not in drop) for r in _table(run, name))

    for name in ("search", "curves", "spectrum", "ewc"):
        assert content(out, name) == content(tiny_run, name), name
