"""Item 7 (complexity measure): each measure against a direct float64 computation, the
training-time accumulation against a replay oracle, resume, claims and figures."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from tangentlab.analysis import capacity as cap
from tangentlab.studies.alignment import complexity as AC
from tangentlab.studies.alignment.config import COMPLEXITY_TABLE, COMPLEXITY_TRACE_TABLE, AlignmentConfig
from tangentlab.studies.framework.report import render_figure
from tangentlab.studies.framework.store import RunStore
from tests import oracle


def _mlp(sizes: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, dtype=dtype), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# --------------------------------------------------------------------------- measures vs oracles
def test_ntk_trace_matches_brute_force_and_closed_form() -> None:
    x = torch.randn(13, 5, dtype=torch.float64)
    deep = _mlp((5, 7, 6, 4), seed=1)
    J = oracle.jacobian(deep, x)
    assert cap.ntk_trace(deep, x) == pytest.approx(float((J * J).sum()), rel=1e-12)
    assert cap.ntk_trace(deep, x, batch_size=4) == pytest.approx(float((J * J).sum()), rel=1e-12)
    one = _mlp((5, 9, 3), seed=2)
    J1 = oracle.jacobian(one, x)
    brute = float((J1 * J1).sum())
    assert cap.ntk_trace(one, x) == pytest.approx(brute, rel=1e-12)
    assert cap.one_hidden_relu_ntk_trace(one, x) == pytest.approx(brute, rel=1e-12)
    with pytest.raises(ValueError, match="Linear-ReLU-Linear.*got 3 Linear layers"):
        cap.one_hidden_relu_ntk_trace(deep, x)


def test_fisher_rao_norm_matches_explicit_fisher() -> None:
    model = _mlp((4, 6, 3), seed=3)
    x = torch.randn(11, 4, dtype=torch.float64)
    F = oracle.fisher_exact(model, x)                     # (1/N) Σ_n J_nᵀ (diag p − ppᵀ) J_n
    w = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    assert cap.fisher_rao_norm(model, x) == pytest.approx(math.sqrt(float(w @ F @ w)), rel=1e-10)


def test_fisher_rao_norm_of_a_saturated_float32_net() -> None:
    """A float32 net with some saturated softmaxes (logit range 150, as after training to a small
    cross-entropy) against the explicit float64 Fisher of the same weights. The float32 closed
    form gave 0.09 instead of 0.30 here (and NaN on trained digits nets); float64 is exact."""
    model = _mlp((4, 6, 3), seed=4)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.zero_()                      # positively homogeneous: logits(s x) = s logits(x)
        x = torch.randn(11, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        z = model(x)
        x[6:] *= (150 / (z.max(1).values - z.min(1).values)[6:])[:, None]
    m32 = copy.deepcopy(model).float()
    x32 = x.float()
    m64 = copy.deepcopy(m32).double()
    F = oracle.fisher_exact(m64, x32.double())
    w = torch.cat([q.detach().reshape(-1) for q in m64.parameters()])
    assert cap.fisher_rao_norm(m32, x32) == pytest.approx(math.sqrt(float(w @ F @ w)), rel=1e-10)


def test_norm_measures_match_explicit_formulas() -> None:
    rng = np.random.default_rng(0)
    ws = [torch.as_tensor(rng.standard_normal(s)) for s in ((4, 3), (5, 4), (2, 5))]
    w0 = [torch.as_tensor(rng.standard_normal(w.shape)) for w in ws]
    npw = [w.numpy() for w in ws]
    # ℓ2 path norm: explicit sum over every input → hidden → hidden → output path
    total = 0.0
    for i, j, k, o in itertools.product(range(3), range(4), range(5), range(2)):
        total += (npw[0][j, i] * npw[1][k, j] * npw[2][o, k]) ** 2
    assert cap.path_norm(ws) == pytest.approx(math.sqrt(total), rel=1e-12)
    specs = [np.linalg.svd(w, compute_uv=False)[0] for w in npw]
    assert cap.spectral_product(ws) == pytest.approx(float(np.prod(specs)), rel=1e-12)
    assert cap.frobenius_product(ws) == pytest.approx(float(np.prod([np.sqrt((w ** 2).sum()) for w in npw])),
                                                      rel=1e-12)
    # Bartlett et al. 2017: ‖Aᵀ − Mᵀ‖_{2,1} = Σ over the columns of Aᵀ (rows of A)
    s = 0.0
    for w, m, sp in zip(npw, [m.numpy() for m in w0], specs):
        l21 = sum(math.sqrt(sum((w[r, c] - m[r, c]) ** 2 for c in range(w.shape[1]))) for r in range(w.shape[0]))
        s += (l21 / sp) ** (2 / 3)
    assert cap.bartlett_spectral(ws, w0) == pytest.approx(float(np.prod(specs)) * s ** 1.5, rel=1e-12)


def test_neyshabur2018_matches_unit_sum() -> None:
    rng = np.random.default_rng(1)
    U, V = rng.standard_normal((6, 4)), rng.standard_normal((3, 6))
    U0 = rng.standard_normal((6, 4))
    X = rng.standard_normal((9, 4))
    gamma = 0.7
    total = 0.0
    for j in range(6):
        alpha = math.sqrt(sum(V[y, j] ** 2 for y in range(3)))
        beta = math.sqrt(sum((U[j, i] - U0[j, i]) ** 2 for i in range(4)))
        init = math.sqrt(sum(float(X[k] @ U0[j]) ** 2 for k in range(9)))
        total += alpha * (beta * math.sqrt((X ** 2).sum()) + init)
    expect = (2 * math.sqrt(2) * 3 + 2) / (gamma * 9) * total
    got = cap.neyshabur2018([torch.as_tensor(U), torch.as_tensor(V)], [torch.as_tensor(U0), torch.as_tensor(V)],
                            torch.as_tensor(X), gamma)
    assert got == pytest.approx(expect, rel=1e-12)


def test_shape_error() -> None:
    gaps = [0.1, 0.2, 0.4]
    assert AC.shape_error([3.0, 6.0, 12.0], gaps) == pytest.approx(0.0, abs=1e-15)
    m = [1.0, 5.0, 2.0]
    d = np.log(m) - np.log(gaps)
    expect = math.sqrt(float(((d - d.mean()) ** 2).mean()))
    assert AC.shape_error(m, gaps) == pytest.approx(expect, rel=1e-12)
    assert AC.shape_error([10 * v for v in m], gaps) == pytest.approx(expect, rel=1e-12)
    assert math.isnan(AC.shape_error([1.0, -1.0, 2.0], gaps)) and math.isnan(AC.shape_error([1.0, 2.0, 3.0],
                                                                                           [0.1, 0.0, 0.2]))


def test_margins() -> None:
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0], [2.0, 2.0, 1.0]])
    y = torch.tensor([1, 2, 0])
    assert torch.allclose(cap.margins(z, y), torch.tensor([1.0, -5.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"labels \(N,\), got \(3, 3\) and \(2,\)"):
        cap.margins(z, y[:2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlations_match_scipy(seed: int) -> None:
    from scipy import stats

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=12).astype(float)      # with ties
    b = a + rng.integers(-2, 3, size=12)
    assert cap.kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    assert cap.spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    c = rng.standard_normal(7)
    d = rng.standard_normal(7)
    assert cap.kendall_tau(c, d) == pytest.approx(stats.kendalltau(c, d).statistic, abs=1e-12)
    assert cap.spearman_rho(c, d) == pytest.approx(stats.spearmanr(c, d).statistic, abs=1e-12)
    assert math.isnan(cap.kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(cap.spearman_rho([2, 2], [1, 3]))
    assert cap.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


# --------------------------------------------------------------------------- the study part
def _cfg(**kw) -> AlignmentConfig:
    """The study's own config class (fields, defaults), built without validation."""
    base = dict(complexity_widths=(8, 16), complexity_noise=(0.5,), complexity_seeds=1, complexity_target_loss=0.3,
                complexity_max_epochs=3, complexity_n_train=120, complexity_probe=30, complexity_batch_size=40,
                seed=0, threads=1)
    base.update(kw)
    return AlignmentConfig(**base)


def test_plan() -> None:
    cfg = _cfg(complexity_widths=(16, 256, 64), complexity_noise=(0.2, 0.4), complexity_seeds=2)
    plan = AC.planned_settings(cfg)
    assert plan["width"] == [(16, 0.0), (64, 0.0), (256, 0.0)]
    assert plan["noise"] == [(256, 0.0), (256, 0.2), (256, 0.4)]
    assert len(AC.planned_runs(cfg)) == 2 * 5
    assert AC.planned_settings(_cfg())["noise"] == [(16, 0.0), (16, 0.5)]


def test_a_diverging_run_is_stored_not_fatal() -> None:
    cfg = _cfg(complexity_lr=1e12, complexity_max_epochs=2, complexity_n_train=60, complexity_probe=20)
    row, _ = AC.train_and_measure(cfg, 8, 0.0, 0, AC.load_complexity_data(cfg), False)
    assert row["reached"] == 0 and not math.isfinite(row["train_loss"]) and math.isnan(row["trK_final"])


def test_accumulated_complexity_matches_replay() -> None:
    """Replay the run's SGD trajectory and recompute C = Σ_t ‖w_{t+1} − w_t‖ sqrt(n/|S'| Tr K_t(S'))
    with Tr K from torch.func Jacobians in float64."""
    from tangentlab.studies.framework.datasets import randomize_labels
    from tangentlab.studies.framework.models import make_mlp
    from tangentlab.training import BatchStream

    cfg = _cfg(complexity_max_epochs=2, complexity_target_loss=1e-9, complexity_n_train=60)
    data = AC.load_complexity_data(cfg)
    row, trace = AC.train_and_measure(cfg, 8, 0.5, 0, data)
    x, y_clean, _, _ = data
    n = x.shape[0]
    base = 0 * 1000 + 0 * 17 + 500
    y, mask = randomize_labels(y_clean, 0.5, 10, seed=base + 1)
    assert int(mask.sum()) == 30
    torch.manual_seed(base + 2)
    model = make_mlp(64, (8,), 10, "relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stream = BatchStream(n, 40, base + 3)
    probe = torch.randperm(n, generator=torch.Generator().manual_seed(base + 4))[:30]
    C = 0.0
    for _ in range(2 * stream.steps_per_epoch):
        w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        J = oracle.jacobian(copy.deepcopy(model).double(), x[probe].double())
        trk = float((J * J).sum()) * n / 30
        idx = stream.next()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        dw = float((torch.nn.utils.parameters_to_vector(model.parameters()).detach() - w).norm())
        C += dw * math.sqrt(trk)
    assert row["steps"] == 4 and row["reached"] == 0
    assert row["C"] == pytest.approx(C, rel=1e-4)
    assert row["C_norm"] == pytest.approx(C / n, rel=1e-4)
    assert trace[-1]["C_partial"] == pytest.approx(row["C"], rel=1e-12)
    assert row["trK_final"] == pytest.approx(row["trK_closed_form"], rel=1e-4)
    # C_code sums displacements between evaluations: with every step evaluated it is C again
    assert row["C_code"] > 0 and row["l2"] > 0 and row["dist_init"] > 0


def test_run_resume_claims_figures(tmp_path) -> None:
    cfg = _cfg(complexity_widths=(4, 8), complexity_noise=(0.5,), complexity_max_epochs=2, complexity_n_train=80,
               complexity_probe=20)
    store = RunStore.create(tmp_path / "run", {})
    logs: list[str] = []
    AC.run_complexity(store, cfg, logs.append, False)
    rows = store.read(COMPLEXITY_TABLE)
    assert {(r["width"], r["noise"], r["seed"]) for r in rows} == {("4", "0.0", "0"), ("8", "0.0", "0"),
                                                                    ("8", "0.5", "0")}
    assert len(store.read(COMPLEXITY_TRACE_TABLE)) >= 3
    before = (tmp_path / "run/tables/complexity.csv").read_text()
    AC.run_complexity(RunStore.open(tmp_path / "run"), cfg, logs.append, False)   # resume: nothing to do
    assert (tmp_path / "run/tables/complexity.csv").read_text() == before
    assert "3 of 3 runs already done" in logs[-1]
    more = dataclasses.replace(cfg, complexity_seeds=2)
    AC.run_complexity(RunStore.open(tmp_path / "run"), more, logs.append, False)
    assert len(store.read(COMPLEXITY_TABLE)) == 6
    claims = AC.complexity_claims(store, more)
    topics = [c.topic for c in claims]
    assert {"complexity vs gap (all, rank)", "complexity vs gap (all, shape)", "complexity: Tr K"} <= set(topics)
    trk = next(c for c in claims if c.topic == "complexity: Tr K")
    assert trk.held is True and trk.kind == "identity"
    assert next(c for c in claims if c.topic == "complexity vs gap (noise, rank)").held is None   # 2 settings
    corr = {r["measure"]: r for r in AC.correlations(store, more)}
    assert math.isnan(corr["params"]["tau_noise"])            # constant over the noise sweep
    assert corr["C"]["n_all"] == 3
    assert all(len(t.rows) > 0 for t in AC.complexity_tables(store, more))
    for fig in AC.complexity_figures(store, more):
        assert render_figure(fig)[:4] == b"\x89PNG"


def test_empty_store(tmp_path) -> None:
    store = RunStore.create(tmp_path / "e", {})
    cfg = _cfg()
    assert AC.complexity_claims(store, cfg)[0].held is None
    assert AC.complexity_figures(store, cfg) == [] and AC.complexity_tables(store, cfg) == []


def test_log_steps() -> None:
    assert AC.log_steps(100) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 22, 26, 31, 38, 46, 55, 66, 79, 95}


@pytest.mark.slow
def test_complexity_grows_with_label_noise() -> None:
    """Direction of effect of paper 000 Fig. 6: with half of the labels random, the gap and C are both
    larger than with clean labels (width 32, 200 examples, trained to cross-entropy 0.1)."""
    cfg = _cfg(complexity_target_loss=0.1, complexity_max_epochs=400, complexity_n_train=200, complexity_probe=50,
               complexity_batch_size=50, complexity_trace_every=4)
    data = AC.load_complexity_data(cfg)
    clean, _ = AC.train_and_measure(cfg, 32, 0.0, 0, data)
    noisy, _ = AC.train_and_measure(cfg, 32, 0.5, 0, data)
    assert clean["reached"] == 1 and noisy["reached"] == 1
    assert noisy["gap"] > clean["gap"] + 0.1
    assert noisy["C"] > 1.5 * clean["C"]
