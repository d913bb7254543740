"""Linearity metrics and group tracking on constructed cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from tangentlab.analysis.linearity import (
    LinearityProbe,
    compare_at_progress,
    first_crossing,
    group_metrics,
    last_hidden_representation,
    ntk_matrix,
    relu_signs,
    representation_alignment,
    sign_similarity,
    values_at_progress,
)
from tangentlab.errors import InvalidInputError
from tangentlab.linearize import AlphaScaled, Linearized

DT = torch.float64


def _relu_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).to(DT)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
    return net


def test_relu_signs_and_sign_similarity_by_hand():
    net = _relu_net()
    x = torch.tensor([[1.0, -2.0], [-1.0, 3.0]], dtype=DT)
    # pre-activations: [1, -2, -1] and [-1, 3, 2]
    assert relu_signs(net, x).tolist() == [True, False, False, False, True, True]
    moved = _relu_net()
    with torch.no_grad():
        moved[0].bias.copy_(torch.tensor([0.0, 2.5, 0.0]))  # unit 2 of example 1 switches on: -2+2.5 > 0
    s0, st = relu_signs(net, x), relu_signs(moved, x)
    assert sign_similarity(st, s0) == pytest.approx(5 / 6)
    assert sign_similarity(relu_signs(AlphaScaled(moved, 100.0), x), s0) == pytest.approx(5 / 6)
    with pytest.raises(InvalidInputError, match="nn.ReLU"):
        relu_signs(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), x)


def _oracle_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)).reshape(-1))(params)
    J = torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1)
    return J @ J.T


def test_ntk_alignment_against_oracle_and_invariances():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)
    x = torch.randn(5, 3, dtype=DT)
    probe = LinearityProbe(net, x)
    assert probe.measure(net) == pytest.approx({"sign_similarity": math.nan, "ntk_alignment": 1.0,
                                                "representation_alignment": 1.0}, nan_ok=True)
    moved = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)
    K0, K1 = _oracle_ntk(net, x), _oracle_ntk(moved, x)
    torch.testing.assert_close(ntk_matrix(moved, x), K1)
    expected = float(torch.trace(K1 @ K0) / (torch.linalg.norm(K0) * torch.linalg.norm(K1)))
    assert probe.measure(moved)["ntk_alignment"] == pytest.approx(expected, rel=1e-12)
    assert expected < 0.999
    # a model linear in its parameters has a constant NTK: KA = 1 wherever it goes
    lin = nn.Linear(3, 2).to(DT)
    p = LinearityProbe(lin, x, metrics=("ntk_alignment",))
    with torch.no_grad():
        lin.weight.mul_(-7.0)
    assert p.measure(lin) == {"ntk_alignment": pytest.approx(1.0, abs=1e-14)}
    # α-scaling multiplies the kernel by α²: KA unchanged; a Linearized model keeps K0
    assert p.measure(AlphaScaled(lin, 50.0))["ntk_alignment"] == pytest.approx(1.0)
    lz = Linearized(moved)
    with torch.no_grad():
        for q in lz.parameters():
            q.add_(1.0)
    assert LinearityProbe(moved, x).measure(lz)["ntk_alignment"] == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(InvalidInputError, match="metrics"):
        LinearityProbe(net, x, metrics=("cka",))


def test_representation_alignment_constructed():
    R0 = torch.eye(2, dtype=DT)
    Rt = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT)
    assert representation_alignment(Rt, R0) == pytest.approx(1 / math.sqrt(2))
    Q = torch.linalg.qr(torch.randn(4, 4, dtype=DT))[0]
    R = torch.randn(6, 4, dtype=DT)
    assert representation_alignment(3.0 * R @ Q, R) == pytest.approx(1.0)  # rotation + scale of features
    assert representation_alignment(R @ Q, R, gram="features") < 0.999
    with pytest.raises(InvalidInputError, match="gram"):
        representation_alignment(R, R, gram="both")
    net = _relu_net()
    x = torch.randn(4, 2, dtype=DT)
    torch.testing.assert_close(last_hidden_representation(net, x), torch.relu(net[0](x)))


def test_probe_large_alpha_stays_linear_alpha_one_does_not():
    torch.manual_seed(1)
    x = torch.randn(64, 4, dtype=DT)
    y = (x[:, 0] * x[:, 1] > 0).long()
    res = {}
    for alpha in (1.0, 100.0):
        torch.manual_seed(2)
        net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2)).to(DT)
        probe = LinearityProbe(net, x[:16])
        m = AlphaScaled(net, alpha)
        opt = torch.optim.SGD(m.parameters(), lr=m.scaled_lr(1.0))
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        res[alpha] = probe.measure(m)
    for k in LinearityProbe.METRICS:
        assert res[100.0][k] > 0.99, res
        assert res[1.0][k] < res[100.0][k] - 0.005, (k, res)


def test_group_metrics_by_hand():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DT)
    y = torch.tensor([0, 0, 1])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.e), math.log(2)]
    g = group_metrics(out, y, {"a": torch.tensor([True, True, False]), "b": torch.tensor([2]),
                               "none": torch.tensor([], dtype=torch.long)})
    assert g["loss/a"] == pytest.approx((ce[0] + ce[1]) / 2)
    assert g["accuracy/a"] == 0.5 and g["loss/b"] == pytest.approx(ce[2]) and g["accuracy/b"] == 0.0
    assert math.isnan(g["loss/none"])
    z = torch.tensor([[1.0], [-2.0]], dtype=DT)
    for labels in (torch.tensor([1, 1]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])):
        b = group_metrics(z, labels, {"all": torch.tensor([True, True])})
        pos2 = bool(labels[1] > 0)
        l2 = math.log(1 + math.exp(2.0)) if pos2 else math.log(1 + math.exp(-2.0))
        assert b["loss/all"] == pytest.approx((math.log(1 + math.exp(-1.0)) + l2) / 2)
        assert b["accuracy/all"] == (0.5 if pos2 else 1.0)


def test_values_at_equal_progress():
    a = [{"train": 1.0, "g": 10.0}, {"train": 0.6, "g": 11.0}, {"train": 0.7, "g": 12.0},
         {"train": 0.4, "g": 13.0}, {"train": 0.2, "g": 14.0}]
    b = [{"train": 1.0, "g": 20.0}, {"train": 0.9, "g": 21.0}, {"train": 0.5, "g": 22.0}]
    assert first_crossing([r["train"] for r in a], 0.65) == 1
    assert first_crossing([1.0, 0.6, 0.7], 0.7) == 1  # cumulative minimum
    assert first_crossing([0.1, 0.5, 0.9], 0.8, decreasing=False) == 2
    v = values_at_progress(a, "train", [0.8, 0.5, 0.1], ["g"])
    assert [r["g"] for r in v[:2]] == [11.0, 13.0] and v[2]["index"] is None and math.isnan(v[2]["g"])
    rows = compare_at_progress(a, b, "train", [0.95, 0.5], ["g"])
    assert [(r["a"], r["b"], r["diff"]) for r in rows] == [(11.0, 21.0, -10.0), (13.0, 22.0, -9.0)]
