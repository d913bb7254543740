"""Item 6 (SuperNat): closed forms, the algorithm box in parameter space as an oracle for the
function-space implementation, Prop. 3, and the study plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tangentlab.studies.alignment import supernat as SN
from tangentlab.studies.alignment.config import SUPERNAT_TABLE, AlignmentConfig
from tangentlab.studies.framework.config import ConfigError
from tangentlab.studies.framework.report import render_figure
from tangentlab.studies.framework.store import RunStore


def test_noisy_regression_data() -> None:
    phi, y, phi_t, y_t = SN.noisy_regression(400, 8, 0.1, 300, seed=0)
    assert phi.shape == (400, 9) and phi_t.shape == (300, 9) and y.shape == (400,)
    assert np.array_equal(y_t, phi_t[:, 0])
    # φ ~ N(0, 1), φ_noise ~ N(0, I/d)
    assert abs(phi[:, 0].var() - 1) < 0.2 and abs(phi[:, 1:].var() * 8 - 1) < 0.1
    # y − φ lies in the span of the noise features (P_noise ε)
    resid = y - phi[:, 0]
    coef, *_ = np.linalg.lstsq(phi[:, 1:], resid, rcond=None)
    assert np.allclose(phi[:, 1:] @ coef, resid, atol=1e-10)
    again = SN.noisy_regression(400, 8, 0.1, 300, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((phi, y, phi_t, y_t), again))


def test_gd_matches_closed_form_and_lstsq() -> None:
    phi, y, phi_t, y_t = SN.noisy_regression(30, 5, 0.1, 40, seed=1)
    n, lr = 30, 0.2
    w_ls, *_ = np.linalg.lstsq(phi, y, rcond=None)
    f_star = phi @ w_ls
    K = phi @ phi.T
    steps = [0, 1, 7, 50, 400]
    rows = SN.run_method(phi, y, phi_t, y_t, 400, lr, "gd", set(steps))
    for r in rows:
        t = r["step"]
        # f_t = f* + (I − ηK/n)^t (f_0 − f*), f_0 = 0
        f_t = f_star - np.linalg.matrix_power(np.eye(n) - lr * K / n, t) @ f_star
        assert r["train_mse"] == pytest.approx(float(np.mean((f_t - y) ** 2)), rel=1e-10, abs=1e-14)
        assert r["trace_K"] == pytest.approx(float(np.trace(K)), rel=1e-12)
    # after many steps GD reaches the least-squares solution (n > P: unique)
    final = SN.run_method(phi, y, phi_t, y_t, 3000, lr, "gd", set())[-1]
    assert final["train_mse"] == pytest.approx(float(np.mean((f_star - y) ** 2)), rel=1e-8)
    assert final["test_mse"] == pytest.approx(float(np.mean((phi_t @ w_ls - y_t) ** 2)), rel=1e-8)


def _supernat_parameter_space(phi, y, phi_t, steps, lr, kind):
    """The algorithm box of Fig. 5 with explicit w, Ã and Φ_t (float64), from w_0 = 0."""
    n, P = phi.shape
    w = np.zeros(P)
    A = np.eye(P)                      # Φ_t(x) = A_t^{-1} Φ(x), A_t = Ã_1 ⋯ Ã_t
    out = []
    kappa0 = None
    for _ in range(steps):
        Phi_t = phi @ np.linalg.inv(A).T                 # rows Φ_t(x_i)ᵀ
        f = Phi_t @ w
        out.append((f.copy(), phi_t @ np.linalg.inv(A).T @ w))
        g = (f - y) / n
        w_tilde = w - lr * Phi_t.T @ g                   # step 1
        U, S, Vt = np.linalg.svd(Phi_t, full_matrices=False)
        lam, c = S ** 2, U.T @ g
        if kappa0 is None:
            kappa0 = np.abs(c).max()
        kappa = {"fixed": kappa0, "trace": (lam * np.abs(c)).sum() / lam.sum(),
                 "max": (lam * np.abs(c)).max() / lam.max()}[kind]
        nu = kappa / np.abs(c)                           # step 2 (Prop. 3)
        A_step = Vt.T @ np.diag(np.sqrt(nu)) @ Vt + (np.eye(P) - Vt.T @ Vt)
        w = A_step.T @ w_tilde                           # step 3
        A = A @ A_step
    Phi_t = phi @ np.linalg.inv(A).T
    out.append((Phi_t @ w, phi_t @ np.linalg.inv(A).T @ w))
    return out


@pytest.mark.parametrize("kind", ["fixed", "trace", "max"])
def test_function_space_supernat_matches_the_algorithm_box(kind: str) -> None:
    phi, y, phi_t, y_t = SN.noisy_regression(12, 3, 0.1, 9, seed=2)
    # few steps: the oracle inverts A_t explicitly, whose condition number explodes as directions freeze
    steps, lr = 10, 0.2
    ref = _supernat_parameter_space(phi, y, phi_t, steps, lr, kind)
    rows = SN.run_method(phi, y, phi_t, y_t, steps, lr, f"supernat_{kind}", set(range(steps + 1)))
    assert [r["step"] for r in rows] == list(range(steps + 1))
    for r, (f, ft) in zip(rows, ref):
        assert r["train_mse"] == pytest.approx(float(np.mean((f - y) ** 2)), rel=1e-9, abs=1e-15)
        assert r["test_mse"] == pytest.approx(float(np.mean((ft - y_t) ** 2)), rel=1e-9, abs=1e-15)


def test_prop3_minimiser_and_eigenvalue_update() -> None:
    rng = np.random.default_rng(3)
    B, g = rng.standard_normal((10, 4)), rng.standard_normal(10)
    a_inv, lam, c, kappa = SN.supernat_rescaling(B, g, "trace", 0.0)
    U, S, Vt = np.linalg.svd(B, full_matrices=False)
    eta = 0.3
    dw = -eta * B.T @ g

    def objective(nu: np.ndarray) -> float:
        A = Vt.T @ np.diag(np.sqrt(nu)) @ Vt + (np.eye(4) - Vt.T @ Vt)
        Ainv = np.linalg.inv(A)
        return math.sqrt(dw @ A @ A.T @ dw) * np.linalg.norm(Ainv @ B.T)

    nu_star = kappa / np.abs(c)
    best = objective(nu_star)
    assert best == pytest.approx(eta * float((lam * np.abs(c)).sum()), rel=1e-10)   # closed-form optimum
    assert best <= objective(np.ones(4)) + 1e-12                                      # ≤ plain GD (ν = 1)
    for _ in range(200):
        assert objective(nu_star * np.exp(0.5 * rng.standard_normal(4))) >= best * (1 - 1e-12)
    assert objective(7.0 * nu_star) == pytest.approx(best, rel=1e-10)                 # any κ
    # eq. (17): the new kernel eigenvalues are λ_j |u_jᵀ g| / κ, same singular vectors
    expected = U @ np.diag(np.sqrt(lam * np.abs(c) / kappa)) @ Vt
    assert np.allclose(B @ a_inv, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="unknown kappa"):
        SN.kappa_value("median", lam, c, 1.0)
    with pytest.raises(ValueError, match="unknown method 'supernat_median'.*supernat_trace"):
        SN.run_method(B, np.ones(B.shape[0]), B, np.ones(B.shape[0]), 1, 0.1, "supernat_median", {0})


def test_record_steps() -> None:
    r = SN.record_steps(3000, 60)
    assert 0 in r and 3000 in r and 1 in r and len(r) <= 61 and max(r) == 3000


def _cfg(**kw) -> AlignmentConfig:
    """The study's own config class (fields, defaults), built without validation."""
    base = dict(supernat_n_train=20, supernat_dim=5, supernat_noise=0.1, supernat_steps=200, seed=0, threads=1,
                supernat_seeds=3, supernat_n_test=200, supernat_records=20)
    base.update(kw)
    return AlignmentConfig(**base)


def test_run_resume_claims(tmp_path) -> None:
    cfg = _cfg()
    store = RunStore.create(tmp_path / "run", {})
    logs: list[str] = []
    SN.run_supernat(store, cfg, logs.append, False)
    rows = store.read(SUPERNAT_TABLE)
    assert {r["method"] for r in rows} == {"gd", "supernat_fixed", "supernat_trace"}
    assert {r["seed"] for r in rows} == {"0", "1", "2"}
    before = (tmp_path / "run/tables/supernat.csv").read_text()
    SN.run_supernat(RunStore.open(tmp_path / "run"), cfg, logs.append, False)
    assert (tmp_path / "run/tables/supernat.csv").read_text() == before and "9 runs already done" in logs[-1]
    claims = {c.topic: c for c in SN.supernat_claims(store, cfg)}
    assert claims["SuperNat bound term"].held is True and claims["SuperNat bound term"].kind == "identity"
    for kappa in ("fixed", "trace"):  # judged for each κ, on the interval over the 3 seeds
        for what in ("vs GD", "stretches along φ", "freezes"):
            c = claims[f"Fig. 5: SuperNat ({kappa} κ) {what}"]
            assert c.kind == "finding" and c.criterion and c.low <= c.value <= c.high
    assert SN.supernat_tables(store, cfg)[0].rows
    assert render_figure(SN.supernat_figures(store, cfg)[0])[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="supernat_kappas"):
        SN.run_supernat(store, _cfg(supernat_kappas=("huge",)), logs.append, False)


@pytest.mark.slow
def test_supernat_beats_gd_on_the_paper_problem(tmp_path) -> None:
    """Paper setting (d = 10, σ² = 0.1, n = 50), 5 seeds, 1500 steps: the fixed-κ SuperNat ends
    with a lower test error than GD, which fits the noise (paper 000 Fig. 5)."""
    cfg = _cfg(supernat_n_train=50, supernat_dim=10, supernat_steps=1500, supernat_seeds=5, supernat_n_test=1000,
               supernat_kappas=("fixed",))
    store = RunStore.create(tmp_path / "run", {})
    SN.run_supernat(store, cfg, lambda m: None, False)
    claims = {c.topic: c for c in SN.supernat_claims(store, cfg)}
    assert claims["Fig. 5: SuperNat (fixed κ) vs GD"].verdict == "yes"
    assert claims["Fig. 5: SuperNat (fixed κ) freezes"].verdict == "yes"
