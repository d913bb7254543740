"""``tangentlab run adaptive-tangent --preset tiny`` end to end: tables, deterministic checks,
report, resume after a failure, configuration errors; the factorized model and the targets."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from tangentlab.analysis.adaptive_factorized import Factorized
from tangentlab.cli import main
from tangentlab.studies.adaptive_tangent import AdaptiveTangent, AdaptiveTangentConfig
from tangentlab.studies.adaptive_tangent.config import COLS, SWEEP_ARCHS, SWEEP_MODELS
from tangentlab.studies.adaptive_tangent.data import make_targets, pair_data
from tangentlab.studies.adaptive_tangent.models import he_cnn, he_mlp
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.runner import run_study
from tangentlab.studies.framework.store import read_table


def _table(run, name):
    return read_table(os.path.join(run, "tables", f"{name}.csv"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("at") / "tiny"
    assert main(["run", "adaptive-tangent", "--preset", "tiny", "--out", str(out), "--set", "progress=off"]) == 0
    return out


def test_tables_and_deterministic_checks(tiny_run):
    cfg = build_config(AdaptiveTangentConfig, preset="tiny")
    for name, (cols, _) in COLS.items():
        with open(tiny_run / "tables" / f"{name}.csv") as fh:
            assert fh.readline().strip().split(",") == cols, name
    checks = _table(tiny_run, "checks")
    assert {c["part"] for c in checks} == {"penalties", "theory"}
    failed = [c["check"] for c in checks if c["held"] != "true"]
    assert not failed, failed
    align = _table(tiny_run, "alignment")
    combos = {(r["seed"], r["family"], r["target"]) for r in align}
    assert len(combos) == cfg.seeds * len(cfg.families) * 2
    for r in align:
        assert math.isfinite(float(r["value"])), r
        if r["metric"] == "cos":
            assert -1 - 1e-12 <= float(r["value"]) <= 1 + 1e-12
    # Theorem 1's kernel is exactly K0 + c·K_ŷ: zero least-squares residual
    assert all(float(r["value"]) < 1e-8 for r in align if r["kernel"] == "Ktheorem1" and r["metric"] == "lsq_residual")
    assert len(_table(tiny_run, "diagonal")) == len(combos) * cfg.n_points
    q = _table(tiny_run, "quadrature")
    assert {int(r["n"]) for r in q} == set(cfg.quadrature_check) | {cfg.quadrature_points}
    solver = _table(tiny_run, "solver")
    for fam in cfg.families:
        for tgt in ("y", "sign"):
            objs = [float(r["objective"]) for r in sorted(solver, key=lambda r: int(r["step"]))
                    if r["family"] == fam and r["target"] == tgt]
            assert len(objs) == 2 * cfg.solver_iters + 1
            assert all(b <= a + 1e-9 * objs[0] for a, b in zip(objs, objs[1:]))  # monotone
    sweep = _table(tiny_run, "sweep")
    assert {(r["arch"], r["model"]) for r in sweep} == {(a, m) for a in SWEEP_ARCHS for m in SWEEP_MODELS}
    assert all(0 <= float(r["value"]) <= 1 for r in sweep if r["metric"] == "test_error")
    html = (tiny_run / "report.html").read_text()
    assert "Theorem 1" in html and "Fig. 2 penalty values" in html
    assert "CNN on digits" in html and "fig4_sweep.png" in html and "best test error over seeds" in html


def test_resume_after_failure(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = AdaptiveTangent.align_one

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(AdaptiveTangent, "align_one", flaky)
    sets = ["progress=off", "parts=penalties,alignment", "families=paper", "seeds=1", "n_points=12", "width=6",
            "train_steps=20", "quadrature_points=3", "quadrature_check=3", "map_size=4"]
    with pytest.raises(RuntimeError, match="killed"):
        run_study("adaptive-tangent", out=str(out), sets=sets, report=False)
    assert len(_table(out, "penalties")) > 0 and len(_table(out, "alignment")) > 0  # first unit kept
    n_pen = len(_table(out, "penalties"))
    run_study("adaptive-tangent", out=str(out), resume=True, report=False)
    align = _table(out, "alignment")
    keys = [(r["seed"], r["family"], r["target"], r["kernel"], r["metric"]) for r in align]
    assert len(keys) == len(set(keys)) and {k[2] for k in keys} == {"y", "sign"}
    assert len(_table(out, "penalties")) == n_pen
    assert calls["n"] == 3  # the finished unit was not recomputed


@pytest.mark.parametrize("sets, field", [
    (["dataset=mnist"], "data_dir"),
    (["dataset=mnist", "data_dir=/nonexistent"], "data_dir"),
    (["n_points=400"], "n_points"),
    (["sweep_n=2000"], "sweep_n"),
    (["parts=solver"], "parts"),
    (["parts=bogus"], "parts"),
    (["solver_penalty=cube"], "solver_penalty"),
    (["quadrature=simpson"], "quadrature"),
    (["sweep_arch=rnn"], "sweep_arch"),
    (["sweep_channels=4,8,16,32"], "sweep_channels"),  # 4 pooling blocks do not fit 8×8 digits
    (["sweep_conv_factors=cp"], "sweep_conv_factors"),
    (["sweep_dataset=cifar10"], "data_dir"),
    (["sweep_dataset=imagenet"], "sweep_dataset"),
])
def test_config_errors(sets, field):
    with pytest.raises(ConfigError) as e:
        build_config(AdaptiveTangentConfig, sets=sets)
    assert e.value.field == field and "\n" not in str(e.value)


def test_gpu_and_file_presets_refused_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the refusal path, on any machine
    with pytest.raises(ConfigError) as e:
        build_config(AdaptiveTangentConfig, preset="fig4")
    assert e.value.field in ("device", "data_dir")
    with pytest.raises(ConfigError) as e:
        build_config(AdaptiveTangentConfig, preset="mnist")
    assert e.value.field == "data_dir"
    with pytest.raises(ConfigError) as e:
        build_config(AdaptiveTangentConfig, preset="fig4_cifar")
    assert e.value.field in ("device", "data_dir")


def test_cnn_sweep_end_to_end_matrix_factors(tmp_path):
    """A short sweep of the digits CNN with the matricized conv factorization: one row per
    (n, seed, model), finite errors, and the report's sweep table and figure."""
    out = tmp_path / "cnn"
    run_study("adaptive-tangent", out=str(out), sets=[
        "progress=off", "parts=training", "sweep_arch=cnn", "sweep_conv_factors=matrix", "sweep_channels=3,4",
        "sweep_width=8", "sweep_n=20,40", "sweep_seeds=1", "sweep_epochs=2", "sweep_patience=2", "sweep_test=60"])
    rows = [r for r in _table(out, "sweep") if r["metric"] == "test_error"]
    assert sorted((int(r["n_train"]), r["model"]) for r in rows) == sorted(
        (n, m) for n in (20, 40) for m in SWEEP_MODELS)
    assert all(r["arch"] == "cnn" and 0 <= float(r["value"]) <= 1 for r in rows)
    html = (out / "report.html").read_text()
    assert "matricization" in html and (out / "figures" / "fig4_sweep.png").is_file()


def test_factorized_model_is_f0_plus_j0_delta():
    from tangentlab.linearize import Linearized

    base = he_mlp(5, (4,), 3, seed=1, bias=True, dtype=torch.float64)
    x = torch.randn(6, 5, dtype=torch.float64)
    fac = Factorized(base)
    assert torch.allclose(fac(x), base(x), atol=1e-14)  # M = I, W = 0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in fac.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    # oracle: the linearized model at θ = θ0 + δ with δ built by hand
    lin = Linearized(base)
    with torch.no_grad():
        for (_name, p), (_, key, pname) in zip(lin.theta().items(), fac._plan):
            if pname == "weight":
                p.add_((fac.M1[key] @ fac.W[key] @ fac.M2[key]).T)
            else:
                p.add_(fac.M2[key].T @ fac.b[key])
    assert torch.allclose(fac(x), lin(x), atol=1e-12)
    # gradients reach the factors, and only them
    fac(x).sum().backward()
    assert all(p.grad is not None for p in fac.parameters())
    assert {n.split(".")[0] for n, _ in fac.named_parameters()} == {"M1", "M2", "W", "b"}
    with pytest.raises(TypeError):
        Factorized(nn.Sequential(nn.Conv1d(1, 1, 3)))


# ---- the factorized CNN (Fig. 4's CIFAR-10 model, conv kernels factorized) ---------------------
def _tiny_cnn(bias=True):
    return he_cnn(2, 4, (3,), (4,), 2, seed=3, bias=bias, dtype=torch.float64)


def _oracle_delta(fac, name, key, pname, shape):
    """δ from the Kronecker form: fan-in matricization (row i·S + s) δ_mat = (M1 ⊗ Ms) W_mat M2."""
    if pname == "bias":
        return fac.M2[key].T @ fac.b[key]
    if len(shape) == 2:
        return (fac.M1[key] @ fac.W[key] @ fac.M2[key]).T
    O, I, kh, kw = shape
    if key in fac.Ms:
        W_mat = fac.W[key].permute(1, 0, 2).reshape(I * kh * kw, O)  # (S, I, O) -> rows i·S + s
        left = torch.kron(fac.M1[key], fac.Ms[key])
    else:
        W_mat, left = fac.W[key], fac.M1[key]
    return (left @ W_mat @ fac.M2[key]).T.reshape(shape)


def _perturb(module, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("mode", ["tucker", "matrix"])
def test_factorized_cnn_shapes_and_start(mode):
    net = _tiny_cnn()
    fac = Factorized(net, mode)
    conv = net[0]
    key = "0"
    if mode == "tucker":
        assert fac.Ms[key].shape == (9, 9) and fac.M1[key].shape == (2, 2) and fac.W[key].shape == (9, 2, 3)
    else:
        assert key not in fac.Ms and fac.M1[key].shape == (18, 18) and fac.W[key].shape == (18, 3)
    assert fac.M2[key].shape == (3, 3) and fac.b[key].shape == (3,)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in fac.deltas().values())
    assert fac.deltas()["0.weight"].shape == conv.weight.shape
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    assert torch.equal(fac(x), net(x))  # M = I, W = 0, b = 0: exactly f0
    # the first gradient step: the factors get no gradient and ∂L/∂W, ∂L/∂b are the standard network's
    R = torch.randn(5, 2, dtype=torch.float64)
    (fac(x) * R).sum().backward()
    (net(x) * R).sum().backward()
    for name, k, pname in fac._plan:
        g_net = dict(net.named_parameters())[name].grad
        if pname == "bias":
            assert torch.allclose(fac.b[k].grad, g_net, atol=1e-12)
            continue
        if k in fac.Ms:
            gw = fac.W[k].grad.permute(2, 1, 0).reshape(g_net.shape)
        else:
            gw = fac.W[k].grad.T.reshape(g_net.shape)
        assert torch.allclose(gw, g_net, atol=1e-12), name
    for group in (fac.M1, fac.M2, fac.Ms):
        assert all(float(p.grad.abs().max()) == 0.0 for p in group.values())


@pytest.mark.parametrize("mode", ["tucker", "matrix"])
def test_factorized_cnn_is_first_order_expansion(mode):
    """f0 + J0 δ with δ = (M1 ⊗ Ms) W M2: against the linearized model at θ0 + δ, the explicit
    Jacobian (reverse mode) and central finite differences of the standard network (float64)."""
    from torch.func import functional_call, jacrev

    from tangentlab.linearize import Linearized

    net = _tiny_cnn()
    fac = Factorized(net, mode)
    _perturb(fac, 0.3, seed=1)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    params = dict(net.named_parameters())
    delta = {name: _oracle_delta(fac, name, key, pname, params[name].shape).detach()
             for name, key, pname in fac._plan}
    for name, d in fac.deltas().items():
        assert torch.allclose(d, delta[name], atol=1e-13), name
    out = fac(x)
    lin = Linearized(net)
    with torch.no_grad():
        for name, p in lin.theta().items():
            p.add_(delta[name])
    assert torch.allclose(out, lin(x), atol=1e-12)
    theta0 = {n: p.detach() for n, p in params.items()}
    J = jacrev(lambda th: functional_call(net, th, (x,)))(theta0)
    f0 = net(x)
    jd = sum((J[n].reshape(*f0.shape, -1) @ delta[n].reshape(-1)) for n in theta0)
    assert torch.allclose(out, f0 + jd, atol=1e-12)
    eps = 1e-5

    def f_at(sign):
        return functional_call(net, {n: theta0[n] + sign * eps * delta[n] for n in theta0}, (x,))

    fd = (f_at(1.0) - f_at(-1.0)) / (2 * eps)
    assert torch.allclose(out - f0, fd, atol=1e-7 * float(fd.abs().max()) + 1e-9)


@pytest.mark.parametrize("mode", ["tucker", "matrix"])
def test_factorized_cnn_gradients_match_finite_differences(mode):
    from torch.func import functional_call

    net = he_cnn(1, 2, (2,), (2,), 2, seed=0, bias=True, dtype=torch.float64)
    fac = Factorized(net, mode)
    _perturb(fac, 0.2, seed=2)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    names = [n for n, _ in fac.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for _, p in fac.named_parameters())

    def f(*vals):
        return functional_call(fac, dict(zip(names, vals)), (x,))

    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_targets_on_digits_match_the_reference():
    cfg = build_config(AdaptiveTangentConfig, sets=["progress=off"])
    x, lab = pair_data(cfg)
    assert x.shape == (360, 64) and torch.allclose(x.norm(dim=1), torch.ones(360, dtype=torch.float64))
    y, acc = make_targets(x, lab, "paper", 0, 128)
    assert acc == 1.0 and 0.9 < float(y.std()) < 1.05  # reference run: 100% accurate, std ≈ 0.98
    yh, _ = make_targets(x, lab, "hard", 0, 128)
    assert abs(float(yh.std()) - 1) < 1e-12 and 0.1 < float((yh.abs() < 0.25).double().mean()) < 0.3


@pytest.mark.slow
def test_hard_target_directions_on_digits(tmp_path):
    """Hard targets, reduced (150 digits, width 48): sign(y) is harder than y, and the average-feature
    kernel aligns more with K_ŷ and is amplified on its diagonal near y ≈ 0 (directions only)."""
    out = tmp_path / "s5b"
    run_study("adaptive-tangent", out=str(out), report=False,
              sets=["progress=off", "parts=alignment", "families=hard", "seeds=1", "n_points=150", "width=48",
                    "train_steps=600", "quadrature_points=20", "quadrature_check=20", "map_size=4"])
    A = {(r["target"], r["kernel"], r["metric"]): float(r["value"]) for r in _table(out, "alignment")}
    for tgt in ("y", "sign"):
        assert A[(tgt, "Kbar", "cos")] > A[(tgt, "K0", "cos")]
        assert A[(tgt, "Kfinal", "cos")] > A[(tgt, "K0", "cos")]
    assert A[("sign", "", "ntk_norm2")] > A[("y", "", "ntk_norm2")]  # the binarized target is harder
    assert A[("sign", "Kbar", "cos")] > A[("y", "Kbar", "cos")]
    assert A[("sign", "Kfinal", "cos")] > A[("y", "Kfinal", "cos")]
    assert A[("sign", "Kbar", "diag_ratio")] > A[("y", "Kbar", "diag_ratio")] > 0.9
    assert A[("sign", "Kbar", "diag_ratio")] > 1.2


def _write_idx(path, arr):
    import struct

    import numpy as np

    a = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">i", s) for s in a.shape) + a.tobytes())


def test_cifar10_files_path(tmp_path):
    """The fig4_cifar preset's data path (CNN on 3×32×32 images) on small synthetic CIFAR-10 batches."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 12) for i in range(1, 6)] + [("test_batch", 30)]:
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": list(np.arange(n) % 10)}, fh)
    out = tmp_path / "run"
    run_study("adaptive-tangent", out=str(out), report=False, sets=[
        "progress=off", "parts=training", "sweep_dataset=cifar10", f"data_dir={tmp_path}", "sweep_arch=cnn",
        "sweep_channels=2,2,2,2", "sweep_width=4", "sweep_n=20", "sweep_seeds=1", "sweep_epochs=1",
        "sweep_test=30", "sweep_models=standard,adaptive"])
    assert {(r["dataset"], r["arch"], r["model"]) for r in _table(out, "sweep")} == {
        ("cifar10", "cnn", "standard"), ("cifar10", "cnn", "adaptive")}


def test_mnist_files_path(tmp_path):
    """The MNIST presets' data path on small synthetic IDX files (no real MNIST here)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 80), ("t10k", 40)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    out = tmp_path / "run"
    run_study("adaptive-tangent", out=str(out), report=False, sets=[
        "progress=off", "parts=alignment,training", "dataset=mnist", "sweep_dataset=mnist", f"data_dir={tmp_path}",
        "n_points=12", "width=6", "families=paper", "seeds=1", "train_steps=5", "quadrature_points=2",
        "quadrature_check=2", "map_size=3", "sweep_n=20", "sweep_seeds=1", "sweep_width=6", "sweep_epochs=1",
        "sweep_test=30", "sweep_models=standard"])
    diag = _table(out, "diagonal")
    assert len(diag) == 2 * 12
    assert {r["model"] for r in _table(out, "sweep")} == {"standard"}


# ---- claims (issue 18): criteria, kinds, intervals ---------------------------------------------
def test_tiny_claims_have_criteria_kinds_and_intervals(tiny_run):
    rows = _table(tiny_run, "claims")
    assert rows and all(r["criterion"] and r["paper"] and r["kind"] in ("identity", "finding") for r in rows)
    ident = [r for r in rows if r["kind"] == "identity"]
    by_topic = {r["topic"]: r for r in rows}
    # tiny averages the features at T = 6 < the paper's 50 points: the identity's bound does not apply (n/a)
    na = {f"§1.2 average-feature identity ({f} targets)" for f in ("paper", "hard")}
    assert {r["topic"] for r in ident if r["verdict"] == "n/a"} == na
    assert len(ident) >= 9 and all(r["verdict"] == "yes" for r in ident if r["topic"] not in na), [
        (r["topic"], r["verdict"]) for r in ident if r["verdict"] != "yes"]
    # the 2-seed tiny run gives intervals to every per-seed finding of Figs. 1/3 and of the sweep
    for topic, r in by_topic.items():
        if topic.startswith(("Fig. 1", "Fig. 3", "Premise", "Fig. 4")):
            lo, hi, v = float(r["low"]), float(r["high"]), float(r["value"])
            assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi, topic
            assert topic.startswith("Fig. 4") or lo <= v <= hi, topic  # a t-interval holds its mean
    assert by_topic["Fig. 2 shape: ordering and crossing"]["verdict"] == "yes"
    html = (tiny_run / "report.html").read_text()
    assert "identities" in html and "95% Student-t interval" in html


def _align_rows(gaps_by_seed):
    """Synthetic ``alignment`` rows: cos(K̄, K_ŷ) of sign(y) exceeds y's by the given gap per seed."""
    rows = []
    for s, gap in enumerate(gaps_by_seed):
        for fam in ("hard",):
            for tgt, base in (("y", 0.10), ("sign", 0.10 + gap)):
                vals = {("K0", "cos"): 0.05, ("Kbar", "cos"): base, ("Kfinal", "cos"): base + 0.01,
                        ("Kbar", "diag_ratio"): 1.0 + (gap if tgt == "sign" else 0.0),
                        ("Kbar", "lsq_residual"): 0.1, ("Kbar", "lsq_a"): 2.0, ("Kbar", "lsq_c"): 0.3,
                        ("", "ntk_norm2"): 100.0 * (2 if tgt == "sign" else 1), ("", "identity_rel_error"): 1e-3,
                        ("", "train_mse"): 1e-5}
                rows += [{"seed": s, "family": fam, "target": tgt, "kernel": k, "metric": m, "value": v}
                         for (k, m), v in vals.items()]
    return rows


@pytest.mark.parametrize("gaps, verdict", [([0.03, 0.04, 0.05, 0.035, 0.045], "yes"),
                                           ([0.03, -0.02, 0.05, -0.01, 0.0], "inconclusive"),
                                           ([-0.03, -0.04, -0.05, -0.035, -0.045], "NO")])
def test_alignment_claims_decide_on_the_seed_interval(gaps, verdict):
    from scipy.stats import t as student

    from tangentlab.studies.adaptive_tangent.alignment_claims import alignment_claims, alignment_summary

    cfg = build_config(AdaptiveTangentConfig, sets=["families=hard"])
    rows = _align_rows(gaps)
    claims = {c.topic: c for c in alignment_claims(cfg, rows, [], alignment_summary(rows))}
    c = claims["Fig. 1: harder target, higher alignment (K̄, hard targets)"]
    g = torch.tensor(gaps, dtype=torch.float64)
    half = float(student.ppf(0.975, len(gaps) - 1)) * float(g.std()) / math.sqrt(len(gaps))  # Student t by hand
    assert c.value == pytest.approx(float(g.mean())) and c.high - c.low == pytest.approx(2 * half)
    assert c.verdict == verdict and c.kind == "finding"
    premise = claims["Premise: sign(y) is the harder task (hard targets)"]
    assert premise.value == pytest.approx(math.log(2)) and premise.verdict == "yes"
    ident = claims["§1.2 average-feature identity (hard targets)"]
    assert ident.kind == "identity" and ident.verdict == "yes"  # 1e-3 ≤ 1e-2 at T = 50


def test_sweep_claims_min_over_sizes_with_bootstrap():
    from tangentlab.studies.adaptive_tangent.claims import sweep_claims

    cfg = build_config(AdaptiveTangentConfig, sets=["sweep_arch=mlp"])
    rows = []
    for n, gain in ((50, 0.05), (100, 0.01)):
        for s in range(5):
            errs = {"standard": 0.1, "fixed": 0.3, "adaptive": 0.3 - gain - 0.002 * s}
            rows += [{"arch": "mlp", "n_train": n, "seed": s, "model": m, "metric": "test_error", "value": v}
                     for m, v in errs.items()]
    claims = {c.topic.split(": ")[1]: c for c in sweep_claims(cfg, rows)}
    ad = claims["adaptive beats fixed tangent features"]
    assert ad.value == pytest.approx(0.01 + 0.004)  # the smaller size's mean gain
    assert 0 < ad.low <= ad.value <= ad.high and ad.verdict == "yes"
    std = claims["the standard network is best"]
    assert std.value == pytest.approx(0.3 - 0.05 - 0.004 - 0.1) and std.verdict == "yes"
    rows = [dict(r, value=0.5) if r["model"] == "standard" else r for r in rows]
    assert {c.topic.split(": ")[1]: c for c in sweep_claims(cfg, rows)}["the standard network is best"].verdict == "NO"


def test_fig2_crossing_against_closed_forms():
    """The crossing of ω̃1 and ω̃2 from the closed forms (ω̃2 = 3·2^(−2/3)·v^(2/3) − 1 for v ≥ 1/√2;
    ω̃1 = (z−1)² + v²/z² with z³(z−1) = v²), bisected independently, against the claim's."""
    import numpy as np
    from scipy.optimize import brentq

    from tangentlab.analysis import adaptive as ad
    from tangentlab.studies.adaptive_tangent.claims import fig2_shape_claim

    def w1(v):
        z = brentq(lambda z: z ** 3 * (z - 1) - v ** 2, 1, 10)
        return (z - 1) ** 2 + v ** 2 / z ** 2

    def w2(v):
        return 3 * 2 ** (-2 / 3) * v ** (2 / 3) - 1

    cross = brentq(lambda v: w1(v) - w2(v), 1.5, 4)
    v = np.round(np.linspace(0, 5, 101), 10)
    pens = [{"penalty": k, "v": float(a), "value": float(b)} for k, vals in
            (("w1", ad.effective_penalty("sq", v)), ("w2", ad.effective_penalty("abs", v)),
             ("w3", ad.joint_effective_penalty("sq", "abs", v))) for a, b in zip(v, vals)]
    c = fig2_shape_claim(pens)
    assert c.kind == "identity" and c.verdict == "yes"
    assert abs(float(c.measured.split("sign at v = ")[1].split(" ")[0]) - cross) < 5e-3  # linear interpolation
