"""The helpers of ``linearized-generalization`` against oracles: same-step network/linearization
updates, the unbiased linearization at a checkpoint, the eq. 5 task geometry and the other tasks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tangentlab.linearize import Linearized
from tangentlab.studies.framework.config import ConfigError
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
    assert sum(p.numel() for p in net.parameters()) == 18989  # the small LeNet on 8x8 digits
    with pytest.raises(ConfigError):
        make_lenet((1, 8, 8), "swish")
