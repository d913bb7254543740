"""The quadratic model of thesis §5.4: closed forms vs numerical gradient flow, the examples' predicted
orderings, and the 2-layer counterpart's gradients against autograd."""

from __future__ import annotations

import numpy as np
import pytest

from tangentlab.studies.lazy_vs_hasty.quadratic import (
    QuadraticModel,
    example1,
    example2,
    example3,
    first_time_below,
    half_error_times,
    two_layer_dynamics,
    two_layer_torch_step,
)


@pytest.mark.parametrize("make", [lambda: example1(), lambda: example2(d=30, seed=1),
                                  lambda: example3(d=30, seed=2)])
def test_quadratic_closed_forms_match_numerical_gradient_flow(make):
    ex = make()
    m = ex.model
    scale = np.abs(m.theta_star).max()
    for regime, T in (("nonlinear", ex.t_nonlinear), ("linear", ex.t_linear)):
        t = np.linspace(0, T, 40)
        closed = m.theta(t, regime)
        assert np.abs(closed - m.simulate(t, regime)).max() / scale < 1e-8
        # sanity: the thesis' printed linear rate (μθ⁰ instead of 2μθ⁰) is far off
        if regime == "linear":
            wrong = m.theta_star + np.exp(-m.mu * m.theta0 * t[:, None]) * (m.theta0 - m.theta_star)
            assert np.abs(wrong - closed).max() / scale > 1e-2
    # plain gradient descent on w converges to the flow as the step shrinks (error O(lr))
    T = 0.5 * ex.t_nonlinear
    errs = [np.abs(m.gradient_descent(k, T / k, "nonlinear")[-1] - m.theta([T], "nonlinear")[0]).max()
            for k in (200, 2000)]
    assert errs[1] < errs[0] / 5


def test_quadratic_closed_form_special_cases():
    X = np.array([[2.0, 0.0], [0.0, 1.0]])
    m = QuadraticModel(X, np.array([0.0, 1.0]), sigma=0.1)  # mode with y_λ = 0: θ⁰/(1 + 2μθ⁰t)
    t = np.array([0.0, 1.0, 3.0])
    i = int(np.argmax(m.mu))  # the μ = 4 mode carries no label
    np.testing.assert_allclose(m.theta_nonlinear(t)[:, i], 0.05 / (1 + 2 * 4 * 0.05 * t), rtol=1e-14)
    np.testing.assert_allclose(m.theta_nonlinear(t)[:, i], m.simulate(t, "nonlinear")[:, i], rtol=1e-9, atol=1e-12)
    # labels fitted at t → ∞, both regimes; flipped signs make y_λ ≥ 0
    assert (m.y_lam >= 0).all()
    np.testing.assert_allclose(m.outputs(m.theta_nonlinear([1e4]))[0], [0.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(m.outputs(m.theta_linear([1e5]))[0], [0.0, 1.0], atol=1e-6)


def test_quadratic_examples_predicted_orderings():
    ex = example1()
    for regime, order in (("nonlinear", [4, 3, 2, 1, 0]), ("linear", [0, 1, 2, 3, 4])):
        t = np.linspace(0, 20 * (ex.t_nonlinear if regime == "nonlinear" else ex.t_linear), 4000)
        assert list(np.argsort(half_error_times(t, ex.model.sq_errors(t, regime)))) == order
    for make, easy, hard in ((example2, "clean", "noisy"), (example3, "majority", "minority")):
        gaps = []
        for seed in range(3):
            e = make(d=30, seed=seed)
            vals = []
            for regime, T in (("nonlinear", 20.0), ("linear", 2000.0)):
                t = np.concatenate([[0], np.geomspace(T * 1e-6, T, 3000)])
                se = e.model.sq_errors(t, regime)
                i = first_time_below(t, se[:, e.groups[easy]].mean(1), 0.3)
                vals.append(se[i, e.groups[hard]].mean())
            gaps.append(vals[0] - vals[1])
        assert np.mean(gaps) > 0.1, (make.__name__, gaps)


def test_two_layer_numpy_gradients_match_alpha_scaled_autograd():
    ex = example3(d=25, seed=0)
    for alpha in (0.1, 10.0):
        np.testing.assert_allclose(two_layer_dynamics(ex.model.X, ex.model.y, alpha, 1, 1e-3, seed=3)[1],
                                   two_layer_torch_step(ex.model.X, ex.model.y, alpha, 1e-3, seed=3), rtol=1e-10)

