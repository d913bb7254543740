"""Finite networks approach the infinite-width kernels of ``tangentlab.limits`` like 1/√width.

For each width ``n`` the networks are drawn by PyTorch's default initialization and their
limits computed from the variances read off the same modules. Measured per width (mean over
a few seeds):

* the empirical NTK (``tl.ntk`` for the standard parameterization,
  ``limits.empirical_ntk`` for the NTK parameterization) against ``limits.ntk``;
* the Monte-Carlo NNGP ``(1/C) Σ_c f_c(x) f_c(x')`` of a network with ``C = n`` outputs
  (independent and identically distributed given the hidden layers, so the average over
  outputs is the average over the last layer's draws) against ``limits.nngp``;

as the relative Frobenius error. Its log-log slope in ``n`` is fitted by least squares and
must lie in ``[−0.75, −0.25]`` (the central limit rate is −0.5; with 4–5 widths and 2–3 seeds
the fitted slope scatters by about ±0.1 around it).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab import limits
from tangentlab.analysis.limits import distance_to_limit

SLOPE = (-0.75, -0.25)


def _slope(widths: list[int], errors: list[float]) -> float:
    x = torch.tensor([math.log(w) for w in widths])
    y = torch.tensor([math.log(e) for e in errors])
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


SW, SB = 2.0, 0.1  # σ_w², σ_b² of the family (He-normal weights, fixed bias variance)


def _init(model: nn.Module) -> nn.Module:
    """Weights ``N(0, σ_w²/fan_in)``, biases ``N(0, σ_b²)``: one family across widths."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0.0, math.sqrt(SW / (m.weight[0].numel())))
                m.bias.normal_(0.0, math.sqrt(SB))
    return model


def _mlp1(n: int, n_out: int = 1) -> nn.Module:
    return _init(nn.Sequential(nn.Linear(4, n), nn.ReLU(), nn.Linear(n, n_out)))


def _mlp2(n: int, n_out: int = 1) -> nn.Module:
    return _init(nn.Sequential(nn.Linear(4, n), nn.Tanh(), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n_out)))


def _cnn(n: int, n_out: int = 1) -> nn.Module:
    return _init(nn.Sequential(nn.Conv2d(2, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, stride=2, padding=1),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n, n_out)))


def _errors(make, x: torch.Tensor, widths: list[int], seeds: int) -> dict[str, list[float]]:
    """Mean relative Frobenius errors per width: NTK (both parameterizations) and MC NNGP."""
    out: dict[str, list[float]] = {"standard": [], "ntk": [], "nngp": []}
    kw = {"weight_var": SW, "bias_var": SB}
    for n in widths:
        acc = dict.fromkeys(out, 0.0)
        for s in range(seeds):
            torch.manual_seed(1000 * s + n)
            model = make(n)
            for p in ("standard", "ntk"):
                emp = limits.empirical_ntk(model, x, parameterization=p, **kw).data[:, :, 0, 0]
                lim = limits.ntk(model, x, parameterization=p, **kw).data[:, :, 0, 0]
                acc[p] += _rel(emp, lim) / seeds
            net = make(n, n)  # C = n outputs: the MC average over the last layer's draws
            with torch.no_grad():
                f = net(x)
            acc["nngp"] += _rel(f @ f.T / f.shape[1], limits.nngp(net, x, **kw).data[:, :, 0, 0]) / seeds
        for k in out:
            out[k].append(acc[k])
    return out


def _check(errs: dict[str, list[float]], widths: list[int]) -> None:
    for kind, e in errs.items():
        slope = _slope(widths, e)
        assert SLOPE[0] < slope < SLOPE[1], (kind, slope, e)


def test_one_hidden_layer_mlp_converges_like_inverse_sqrt_width():
    widths = [64, 256, 1024, 4096]
    _check(_errors(_mlp1, torch.randn(5, 4), widths, seeds=3), widths)


def test_two_hidden_layer_mlp_converges_like_inverse_sqrt_width():
    widths = [32, 128, 512, 2048]
    _check(_errors(_mlp2, torch.randn(5, 4), widths, seeds=2), widths)


@pytest.mark.slow
def test_two_hidden_layer_mlp_converges_up_to_width_4096():
    widths = [64, 256, 1024, 4096]
    errs = _errors(_mlp2, torch.randn(5, 4), widths, seeds=2)
    _check(errs, widths)
    assert max(e[-1] for e in errs.values()) < 0.1, errs


def test_cnn_converges_like_inverse_sqrt_width():
    widths = [16, 64, 256, 1024]
    _check(_errors(_cnn, torch.randn(4, 2, 5, 5), widths, seeds=2), widths)


def test_distance_to_limit_shrinks_with_width():
    x = torch.randn(6, 4)
    rows = []
    for n in (32, 2048):
        torch.manual_seed(n)
        model = nn.Sequential(nn.Linear(4, n), nn.ReLU(), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, 2))
        rows.append(distance_to_limit(tl.ntk(model, x), limits.ntk(model, x, parameterization="standard")))
    assert rows[1]["rel_frobenius"] < rows[0]["rel_frobenius"]
    assert rows[1]["cka"] > 0.99 and rows[1]["cka"] >= rows[0]["cka"] - 1e-3
