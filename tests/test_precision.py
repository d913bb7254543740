"""Mixed-precision policy (``precision=``): bf16 Jacobians / float64 accumulation, against
the float64 oracle, per representation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.engine import Engine
from tangentlab.engine.precision import Precision
from tangentlab.errors import InvalidInputError

REPS = ["dense", "diag", "blockdiag", "quasidiag", "kfac", "ekfac", "lowrank", "implicit", "mixed"]
#: policy -> (dtype of the result, bound on the relative error against float64, lower bound)
POLICIES = {
    "model/fp64": (torch.float64, 1e-6, 0.0),
    "bf16": (torch.float32, 3e-2, 1e-5),  # the lower bound: the features really were rounded to bf16
    "bf16/fp64": (torch.float64, 3e-2, 1e-5),
}


def _problem():
    torch.manual_seed(0)
    # float32 on purpose (the test suite's default dtype is float64)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).float()
    x = torch.randn(24, 1, 8, 8, dtype=torch.float32)
    y = torch.randint(0, 5, (24,))
    return model, x, y


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("rep", REPS)
def test_fisher_under_precision_policy(rep, policy):
    model, x, y = _problem()
    ref = tl.fim(copy.deepcopy(model).double(), (x.double(), y), "exact", rep)
    fm = tl.fim(model, (x, y), "exact", rep, precision=policy)
    dtype, hi, lo = POLICIES[policy]
    v = {k: torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
         for k, p in model.named_parameters()}
    v_ref = tl.PVector(ref.space, {k: t.double() for k, t in v.items()})
    v_got = tl.PVector(fm.space, {k: t.to(fm.dtype) for k, t in v.items()})
    got, want = fm.mv(v_got).flat(), ref.mv(v_ref).flat()
    assert got.dtype == dtype
    err = _rel(got, want)
    assert lo <= err < hi, (rep, policy, err)
    tr_err = abs(float(fm.trace()) - float(ref.trace())) / float(ref.trace())
    assert tr_err < hi, (rep, policy, tr_err)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_ntk_and_jacobian_under_precision_policy(policy):
    model, x, _ = _problem()
    m64 = copy.deepcopy(model).double()
    dtype, hi, lo = POLICIES[policy]
    K = tl.ntk(model, x[:10], precision=policy).data
    K64 = tl.ntk(m64, x[:10].double()).data
    assert K.dtype == dtype and lo <= _rel(K, K64) < hi
    J = tl.jacobian(model, x[:6], implicit=True, precision=policy)
    J64 = tl.jacobian(m64, x[:6].double(), implicit=True)
    v = {k: torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
         for k, p in model.named_parameters()}
    jv = J.mv(tl.PVector(J.space, v)).flat()
    jv64 = J64.mv(tl.PVector(J64.space, {k: t.double() for k, t in v.items()})).flat()
    assert jv.dtype == dtype and _rel(jv, jv64) < hi


def test_float64_accumulation_beats_float32_on_a_long_sum():
    # a Fisher diagonal summed over many batches: float32 sums drift, float64 sums do not
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 3)).float()
    x = torch.randn(4000, 20, dtype=torch.float32)
    ref = tl.fim(copy.deepcopy(model).double(), x.double(), "exact", "diag", batch_size=50).diag().flat()
    e32 = _rel(tl.fim(model, x, "exact", "diag", batch_size=50).diag().flat(), ref)
    e64 = _rel(tl.fim(model, x, "exact", "diag", batch_size=50, precision="model/fp64").diag().flat(), ref)
    assert e64 < e32 and e64 < 1e-6


def test_default_policy_changes_nothing():
    model, x, y = _problem()
    a = tl.fim(model, (x, y), "exact", "diag").diag().flat()
    b = tl.fim(model, (x, y), "exact", "diag", precision="model").diag().flat()
    assert torch.equal(a, b)
    eng = Engine(model, "raw")
    assert eng.dtype == eng.model_dtype == torch.float32 and eng.precision.is_default


@pytest.mark.parametrize("spec, message", [
    ("tf32", "CUDA"),
    ("int8", "accepted values"),
    ("bf16/fp16", "accumulate dtype"),
    ({"compute": "model", "accumulate": torch.float16}, "accepted values"),
    (3, "must be None"),
])
def test_bad_precision_is_refused(spec, message):
    model, x, _ = _problem()
    with pytest.raises(InvalidInputError, match=message):
        tl.fim(model, x, "exact", "diag", precision=spec)


def test_low_precision_needs_a_float32_model():
    model, x, _ = _problem()
    with pytest.raises(InvalidInputError, match="float32 model"):
        tl.fim(model.double(), x.double(), "exact", "diag", precision="bf16")
    p = Precision.resolve("bf16", torch.float32, torch.device("cpu"))
    assert p.accumulate == torch.float32 and p.low == torch.bfloat16
