"""``tangentlab run linearized-generalization --preset tiny`` end to end (tidy tables, the
deterministic claims, the report, resume after a kill), the configuration errors, and the
study's helpers against oracles (same-step network/linearization updates, unbiased
linearization at a checkpoint, the eq. 5 task geometry)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import pytest
import torch
from torch import nn

from tangentlab.cli import main
from tangentlab.linearize import Linearized
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.store import read_table
from tangentlab.studies.linearized_generalization import study as lg
from tangentlab.studies.linearized_generalization.tasks import (
    Recipe,
    build_scalar_model,
    distances,
    flat_params,
    half_classes,
    make_lenet,
    nad_task,
    spearman,
    stratified_subset,
    train_binary,
    xor_task,
)

D = torch.float64


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
    cfg = build_config(lg.LinGenConfig, preset="tiny")
    for name, cols in (("results", lg.RESULT_COLUMNS), ("curves", lg.CURVE_COLUMNS), ("arrays", lg.ARRAY_COLUMNS)):
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


def test_deterministic_claims_hold_and_report(tiny_run, capsys):
    cfg = build_config(lg.LinGenConfig, preset="tiny")
    from tangentlab.studies.framework.store import RunStore

    content = lg.build_report(cfg, RunStore.open(tiny_run))
    det = [c for c in content.claims if c.kind == "deterministic"]
    assert {c.topic for c in det} == {"Lemma 1", "α(u_j) = λ_j"}
    assert all(c.held for c in det), [(c.topic, c.measured) for c in det]
    topics = {c.topic for c in content.claims}
    for t in ("E1 eigenfunction tasks", "E2 training dynamics", "E3 NAD ordering", "Theorem 1",
              "E6 single-axis rotation", "E7 rotation speeds up training", "E8 kernels after a few epochs"):
        assert t in topics
    html = (tiny_run / "report.html").read_text()
    assert "Lemma 1" in html and "<img" in html
    for fig in ("fig2_eigenfunctions", "fig10_nads", "fig4_nad_tasks", "fig5_sample_size", "fig6_energy",
                "fig7_rotation", "fig8_9_late_linearization", "lemma1"):
        assert (tiny_run / "figures" / f"{fig}.png").exists(), fig
    assert main(["report", str(tiny_run)]) == 0
    assert "claims held" in capsys.readouterr().out


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
    eig = {r["index"]: float(r["value"]) for r in _table(tiny_run, "results")
           if r["part"] == "eigen" and r["metric"] == "eigenvalue"}
    for j, lam in eig.items():
        assert arr["alpha0_all"][int(j)] == pytest.approx(lam, rel=1e-8)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = lg.train_binary

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed while training the 4th unit
        return original(*a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(lg, "train_binary", failing)
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


@pytest.mark.parametrize("sets, field", [
    (["dataset=imagenet"], "dataset"),
    (["model=vgg"], "model"),
    (["sizes=[32, 5000]"], "sizes"),
    (["eigen_indices=[1, 1800]"], "eigen_indices"),
    (["rotation_target=3"], "rotation_target"),
    (["binary_lin_epochs=[4]"], "binary_lin_epochs"),
    (["checkpoint_epochs=[1, 60]"], "checkpoint_epochs"),
    (["nad_indices=[0, 64]"], "nad_indices"),
    (["energy_ks=[2000]"], "energy_ks"),
    (["dataset=cifar10", "model=lenet"], "data_dir"),
    (["parts=eigen,oops"], "parts"),
])
def test_bad_configurations_are_one_line_errors(sets, field):
    with pytest.raises(ConfigError) as e:
        build_config(lg.LinGenConfig, sets=sets)
    assert e.value.field == field
    assert "\n" not in str(e.value) and "accepted" in str(e.value)


def test_paper_preset_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    with pytest.raises(ConfigError) as e:
        build_config(lg.LinGenConfig, preset="paper")
    assert e.value.field in ("device", "data_dir")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def test_one_step_of_network_and_linearization_coincide():
    """At θ₀ the network and its linearization have the same outputs and gradients, so one
    full-batch step of the shared recipe moves them to the same θ (float64)."""
    torch.manual_seed(0)
    model = build_scalar_model("mlp", (5,), hidden=(7, 6), seed=3).to(D).eval()
    x = torch.randn(16, 5, dtype=D)
    y = torch.where(torch.randn(16, dtype=D) > 0, 1.0, -1.0).to(D)
    recipe = Recipe(epochs=1, batch_size=16, lr=0.1, momentum=0.9, threads=1)
    nn_m, lin = build_scalar_model("mlp", (5,), hidden=(7, 6), seed=3).to(D), Linearized(model)
    torch.testing.assert_close(lin(x), nn_m(x), rtol=0, atol=0)
    o1 = train_binary(nn_m, x, y, x, y, recipe, seed=1)
    o2 = train_binary(lin, x, y, x, y, recipe, seed=1)
    torch.testing.assert_close(flat_params(nn_m), flat_params(lin), rtol=1e-12, atol=1e-14)
    assert o1["steps_per_epoch"] == 1 and len(o1["history"]["train_loss"]) == 1
    # the loss reported is the full training loss after the step, for each model
    with torch.no_grad():
        l1, l2 = (float(nn.functional.softplus(-y * m(x).reshape(-1)).mean()) for m in (nn_m, lin))
    assert o1["train_loss"] == pytest.approx(l1)
    assert o2["train_loss"] == pytest.approx(l2)
    assert l1 != l2  # after the step the network and its linearization differ (second order)
    d = distances(flat_params(lin), flat_params(model))
    assert d["l2_distance"] > 0 and 0 <= d["cosine_distance"] < 1


def test_unbiased_linearization_starts_at_zero_and_drops_last_batch():
    model = build_scalar_model("mlp", (4,), hidden=(6,), seed=0).to(D).eval()
    lin = Linearized(model)
    x = torch.randn(10, 4, dtype=D)
    y = torch.ones(10, dtype=D)
    off = lin.initial_output(x).reshape(-1)
    seen = []
    out = train_binary(lin, x, y, x, y, Recipe(epochs=2, batch_size=4, lr=0.0, threads=1), seed=0, offset=off,
                       offset_test=off, on_epoch=lambda e, m: seen.append(e))
    assert out["steps_per_epoch"] == 2  # 10 // 4: the partial batch is dropped
    assert seen == [0, 1, 2]
    # lr = 0: θ = θ_c, so the unbiased logits are exactly 0 and the loss is log 2
    assert out["train_loss"] == pytest.approx(math.log(2), rel=1e-12)
    assert math.isnan(out["converged_epoch"]) and math.isnan(out["converged_iteration"])


def test_nad_task_geometry_and_other_tasks():
    u = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=D)
    x, y = nad_task(u, 500, (1, 4, 4), eps=0.7, sigma=1.3, seed=1)
    assert x.shape == (500, 1, 4, 4) and set(y.unique().tolist()) == {-1.0, 1.0}
    un = (u / u.norm()).float()
    proj = x.reshape(500, -1) @ un
    torch.testing.assert_close(proj, 0.7 * y, atol=1e-5, rtol=0)  # the signal: exactly ε y along u
    noise = x.reshape(500, -1) - proj.unsqueeze(1) * un
    assert abs(float(noise.var()) * 16 / 15 - 1.3 ** 2) < 0.15  # σ² per direction of u^⊥
    yc = torch.arange(10).repeat(5)
    torch.testing.assert_close(half_classes(yc, 10), torch.where(yc <= 4, 1.0, -1.0).float())
    idx = stratified_subset(yc, 20, seed=0)
    assert idx.numel() == 20 and torch.bincount(yc[idx], minlength=10).tolist() == [2] * 10
    assert stratified_subset(yc, 100, seed=0).numel() == 50
    xx, yy = xor_task(100, 3, seed=0)
    torch.testing.assert_close(yy, torch.where(xx[:, 0] * xx[:, 1] >= 0, 1.0, -1.0).float())
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 2, math.inf, math.inf]) > 0.9
    assert math.isnan(spearman([1, 2], [1, 2]))
    net = make_lenet((1, 8, 8), "gelu")
    assert sum(p.numel() for p in net.parameters()) == 18989  # the digest's LeNetS
    with pytest.raises(ConfigError):
        make_lenet((1, 8, 8), "swish")
