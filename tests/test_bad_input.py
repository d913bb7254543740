"""Bad input gets a clear error and loses nothing.

Every case asserts the specific error type from :mod:`tangentlab.errors` (or the
specific correct behaviour, checked against the independent oracle) and that the
message is informative: it names the parameter / module / batch at fault or the fix.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

import tangentlab as tl
from tangentlab.engine import chunks
from tangentlab.errors import (
    InvalidInputError,
    MemoryBudgetError,
    MixedDeviceDtypeError,
    NonFiniteError,
    UnsupportedLayerError,
)
from tangentlab.memory import MemoryBudget

from . import oracle
from .models import mlp

TOL = 1e-10
DID_NOT_RAISE = pytest.fail.Exception  # what a failing ``pytest.raises`` block raises


# --------------------------------------------------------------------------------------
# helpers
def flat_jac(j: dict[str, torch.Tensor], n: int, c: int) -> torch.Tensor:
    return torch.cat([v.reshape(n, c, -1) for v in j.values()], 2)


def joint_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Jacobian of the *whole batch function* ``θ ↦ f(x_1..x_N; θ)`` (examples coupled),
    with copies of the buffers so the model's running statistics stay untouched."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    bufs = {k: v.detach() for k, v in model.named_buffers()}

    def f(p):
        return functional_call(model, {**p, **{k: b.clone() for k, b in bufs.items()}}, (x,))

    with torch.no_grad():
        out = f(params)
    return flat_jac(jacrev(f)(params), x.shape[0], out.shape[1])


def joint_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    bufs = {k: v.detach().clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        return functional_call(model, bufs, (x,))


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"tangentlab modified the model state: {changed}"


def count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


def pvec(model: nn.Module) -> tl.PVector:
    return tl.PVector.from_model(model).detach()


# --------------------------------------------------------------------------------------
# 1. BatchNorm in train mode
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.out(torch.tanh(self.bn(self.fc(x))))


class BN2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.out = nn.Linear(3, 3)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def bn_model(variant: str):
    if variant == "bn1d_train":
        return BNNet().train(), torch.randn(8, 3)
    if variant == "bn2d_train":
        return BN2dNet().train(), torch.randn(6, 2, 5, 5)
    if variant == "bn1d_train_in_eval_parent":  # only the BatchNorm is left in training mode
        m = BNNet().eval()
        m.bn.train()
        return m, torch.randn(8, 3)
    if variant == "no_running_stats":  # eval mode, but always batch statistics
        m = BNNet()
        m.bn = nn.BatchNorm1d(5, track_running_stats=False)
        return m.eval(), torch.randn(8, 3)
    raise AssertionError(variant)


BN_ENTRIES = {
    "fim_dense": lambda m, x, **kw: tl.fim(m, x, "regression", "dense", **kw),
    "fim_diag": lambda m, x, **kw: tl.fim(m, x, "regression", "diag", **kw),
    "fim_exact_lowrank": lambda m, x, **kw: tl.fim(m, x, "exact", "lowrank", **kw),
    "ntk": lambda m, x, **kw: tl.ntk(m, x, **kw),
    "jacobian": lambda m, x, **kw: tl.jacobian(m, x, **kw),
}


@pytest.mark.parametrize("entry,route", [(e, "auto") for e in sorted(BN_ENTRIES)]
                         + [("fim_dense", "generic"), ("ntk", "generic")])
@pytest.mark.parametrize("variant", ["bn1d_train", "bn2d_train", "bn1d_train_in_eval_parent",
                                     "no_running_stats"])
def test_batchnorm_batch_statistics_refused(variant, entry, route):
    model, x = bn_model(variant)
    before = state_copy(model)
    with pytest.raises(UnsupportedLayerError) as info:
        BN_ENTRIES[entry](model, x, route=route)
    msg = str(info.value)
    assert "'bn'" in msg  # the module path
    assert "BatchNorm" in msg and "route='joint'" in msg
    if variant == "no_running_stats":  # already in eval mode: model.eval() would not help
        assert "track_running_stats=False" in msg and "model.eval()" not in msg
    else:
        assert "training mode" in msg and "model.eval()" in msg
    assert_state_unchanged(model, before)  # refused before any forward pass


JOINT_CASES = ["jacobian", "ntk", "fim_regression_dense", "fim_exact_dense", "fim_regression_implicit",
               "jacobian_implicit", "fim_regression_diag"]


@pytest.mark.parametrize("variant,case,batch_size",
                         [("bn1d_train", c, 4) for c in JOINT_CASES]  # 2 batches of 4
                         + [("bn1d_train", c, 100) for c in ("jacobian", "fim_exact_dense")]  # 1 batch
                         + [("bn2d_train", c, 4) for c in ("jacobian", "ntk", "fim_exact_dense")]
                         + [("bn2d_train", "jacobian", 100)])
def test_batchnorm_joint_route_matches_whole_batch_oracle(variant, case, batch_size):
    model, x = bn_model(variant)
    n = x.shape[0]
    before = state_copy(model)
    # the oracle: the Jacobian of each batch's function (examples coupled within a batch)
    parts = [joint_jacobian(model, x[i:i + batch_size]) for i in range(0, n, batch_size)]
    jref = torch.cat(parts)  # (N, C, P)
    kw = dict(route="joint", batch_size=batch_size)
    if case == "jacobian":
        got, ref = tl.jacobian(model, x, **kw).data, jref
    elif case == "jacobian_implicit":
        J = tl.jacobian(model, x, implicit=True, **kw)
        v = torch.randn(jref.shape[2])
        got = J.mv(tl.PVector.from_flat(J.space, v)).tensor
        ref = jref @ v
    elif case == "ntk":
        got = tl.ntk(model, x, **kw).to_dense()
        ref = torch.einsum("ncp,mdp->nmcd", jref, jref)
        # examples of different batches still pair through their own batch Jacobians
    elif case == "fim_regression_dense":
        got = tl.fim(model, x, "regression", **kw).to_dense()
        ref = torch.einsum("ncp,ncq->pq", jref, jref) / n
    elif case == "fim_regression_diag":
        got = tl.fim(model, x, "regression", "diag", **kw).diag().flat()
        ref = jref.pow(2).sum((0, 1)) / n
    elif case == "fim_regression_implicit":
        F_ = tl.fim(model, x, "regression", "implicit", **kw)
        v = torch.randn(jref.shape[2])
        got = F_.mv(tl.PVector.from_flat(F_.space, v)).flat()
        ref = torch.einsum("ncp,ncq->pq", jref, jref) @ v / n
    elif case == "fim_exact_dense":
        got = tl.fim(model, x, "exact", **kw).to_dense()
        p = torch.cat([torch.softmax(joint_outputs(model, x[i:i + batch_size]), -1)
                       for i in range(0, n, batch_size)])
        s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        ref = torch.einsum("ncp,ncd,ndq->pq", jref, s, jref) / n
    else:  # pragma: no cover
        raise AssertionError(case)
    assert oracle.rel_err(got, ref) < TOL
    # loses nothing: running statistics, counters, parameters and the mode are untouched
    assert_state_unchanged(model, before)
    assert model.training and model.bn.training


def test_batchnorm_joint_route_differs_from_per_example_eval():
    """Sanity check that the joint oracle is not trivially the eval-mode Jacobian."""
    model, x = bn_model("bn1d_train")
    jt = tl.jacobian(model, x, route="joint", batch_size=100).data
    je = oracle.jacobian(model.eval(), x)
    assert oracle.rel_err(jt, je) > 1e-3


@pytest.mark.parametrize("which", ["fim_implicit_mv", "fim_implicit_vTMv", "jacobian_implicit_mv",
                                   "jacobian_implicit_T_mv"])
def test_batchnorm_train_mode_refused_by_matrix_free_products(which):
    model, x = bn_model("bn1d_train")
    before = state_copy(model)
    v = pvec(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedLayerError, match=r"model\.eval\(\)"):
            if which == "fim_implicit_mv":
                tl.fim(model, x, "regression", "implicit").mv(v)
            elif which == "fim_implicit_vTMv":
                tl.fim(model, x, "regression", "implicit").vTMv(v)
            elif which == "jacobian_implicit_mv":
                tl.jacobian(model, x, implicit=True).mv(v)
            else:
                tl.jacobian(model, x, implicit=True).T.mv(tl.FVector(torch.randn(8, 3)))
    assert_state_unchanged(model, before)


# --------------------------------------------------------------------------------------
# 2. modules called twice / parameters used without calling the module
class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))


class NeverCalled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(nnf.linear(x, self.a.weight, self.a.bias)))


class CalledAndUsedOutside(nn.Module):
    """``a`` is called once *and* its weight is used directly: hooks on ``a``'s output miss a path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + 0.5 * x @ self.a.weight.T)


class AliasedModule(nn.Module):
    """The same Linear registered under two names and called twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.c = self.a
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.c(torch.tanh(self.a(x)))))


REUSE = {
    "called_twice": (CalledTwice, "is called 2 times"),
    "never_called": (NeverCalled, "is never called"),
    "called_and_used_outside": (CalledAndUsedOutside, "used outside its forward"),
    "aliased": (AliasedModule, "shares a parameter"),
}


@pytest.mark.parametrize("entry", ["fim_dense", "fim_diag", "ntk", "jacobian", "fim_exact_blockdiag"])
@pytest.mark.parametrize("case", sorted(REUSE))
def test_reused_module_takes_generic_route_and_matches_oracle(case, entry):
    cls, reason = REUSE[case]
    model = cls().eval()
    x = torch.randn(7, 4)
    with pytest.warns(tl.GenericRouteWarning) as rec:
        if entry == "fim_dense":
            got, ref = tl.fim(model, x, "regression", batch_size=3).to_dense(), oracle.gauss_newton(model, x)
        elif entry == "fim_diag":
            got = tl.fim(model, x, "regression", "diag", batch_size=3).diag().flat()
            ref = torch.diagonal(oracle.gauss_newton(model, x))
        elif entry == "ntk":
            got, ref = tl.ntk(model, x, batch_size=3).to_dense(), oracle.ntk(model, x)
        elif entry == "jacobian":
            got, ref = tl.jacobian(model, x, batch_size=3).data, oracle.jacobian(model, x)
        else:
            F_ = tl.fim(model, x, "exact", "blockdiag", batch_size=3)
            full = oracle.fisher_exact(model, x)
            got = F_.to_dense()
            ref = torch.block_diag(*[full[lay.slice, lay.slice] for lay in F_.space.layers])
    msgs = " ".join(str(w.message) for w in rec if issubclass(w.category, tl.GenericRouteWarning))
    assert re.search(r"\ba \(", msgs), msgs  # names the module
    assert reason in msgs
    assert oracle.rel_err(got, ref) < TOL


def test_parameters_used_by_the_output_function_take_generic_route():
    """A callable output that also reads a layer's weight directly."""
    model, x, _ = mlp(7)

    def out(m, b):
        return m(b[0]) + (b[0] @ m[0].weight.T)[:, :4]

    class Wrapped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, xx):
            return out(self.m, (xx,))

    with pytest.warns(tl.GenericRouteWarning, match=r"0 \(has parameters also used outside"):
        K = tl.ntk(model, x, output=out, batch_size=3)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(Wrapped(model), x)) < TOL


class ShapeOnlyOutside(nn.Module):
    """Reads ``a.weight.shape`` / ``dtype`` outside ``a``: not a use of its values."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x)).reshape(x.shape[0], self.a.weight.shape[0])
        return self.b(h.to(self.a.weight.dtype))


def test_metadata_reads_outside_a_module_keep_the_hook_route():
    model = ShapeOnlyOutside().eval()
    x = torch.randn(7, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tl.GenericRouteWarning)
        K = tl.ntk(model, x, batch_size=3)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        if x.shape[0] == 2:
            raise RuntimeError("boom")
        return h


@pytest.mark.parametrize("case", ["ok", "forward_raises", "reuse"])
def test_no_hooks_left_on_the_model(case):
    model = {"ok": CalledAndUsedOutside, "forward_raises": Exploding, "reuse": CalledTwice}[case]().eval()
    x = torch.randn(5 if case != "forward_raises" else 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case == "forward_raises":
            with pytest.raises(RuntimeError, match="boom"):
                tl.ntk(model, x)
        else:
            tl.fim(model, x, "regression", "diag")
            tl.ntk(model, x)
    for name, mod in model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, name


class DataDependentCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        if x.shape[0] < 2:  # the last batch (1 example) calls `a` a second time; the plan probe
            # (the first 2 examples of the first batch) and batches 0-1 call it once
            h = self.a(torch.tanh(h))
        return self.b(h)


def test_data_dependent_call_count_is_refused_then_generic_route_works(monkeypatch):
    # the model's function depends on the batch size, which merged chunks would change
    monkeypatch.setattr(chunks, "MERGE_MAX_EXAMPLES", 1)
    model = DataDependentCalls().eval()
    x = torch.randn(7, 4)
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, x, "regression", batch_size=3)
    msg = str(info.value)
    assert "batch 2" in msg and "'a'" in msg and "route='generic'" in msg
    F_ = tl.fim(model, x, "regression", batch_size=3, route="generic")
    ref = sum(oracle.gauss_newton(model, x[i:i + 3]) * len(x[i:i + 3]) for i in range(0, 7, 3)) / 7
    assert oracle.rel_err(F_.to_dense(), ref) < TOL


# --------------------------------------------------------------------------------------
# 3. mixed dtypes / devices
DTYPE_ENTRIES = {
    "fim": lambda m, d: tl.fim(m, d, "regression"),
    "fim_implicit": lambda m, d: tl.fim(m, d, "regression", "implicit"),
    "ntk": lambda m, d: tl.ntk(m, d),
    "jacobian": lambda m, d: tl.jacobian(m, d),
    "jacobian_implicit": lambda m, d: tl.jacobian(m, d, implicit=True),
}


def small_net():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()


@pytest.mark.parametrize("entry", sorted(DTYPE_ENTRIES))
def test_mixed_parameter_dtypes_name_the_parameter(entry):
    model = small_net()
    model[2].float()
    with pytest.raises(MixedDeviceDtypeError) as info:
        DTYPE_ENTRIES[entry](model, torch.randn(5, 3))
    msg = str(info.value)
    assert "'2.weight'" in msg and "torch.float32" in msg and "torch.float64" in msg
    assert "model.double()" in msg


@pytest.mark.parametrize("entry", sorted(DTYPE_ENTRIES))
def test_parameter_on_another_device_names_the_parameter(entry):
    model = small_net()
    model[2].to("meta")
    with pytest.raises(MixedDeviceDtypeError) as info:
        DTYPE_ENTRIES[entry](model, torch.randn(5, 3))
    msg = str(info.value)
    assert "'2.weight'" in msg and "meta" in msg and "one device" in msg


def _float32_batches(where: str):
    x = torch.randn(7, 3)
    y = torch.randn(7, 2)
    if where == "input":
        return (x.float(), y), "batch 0, element 0"
    if where == "target":
        return (x, y.float()), "batch 0, element 1"
    if where == "second_batch":
        return [(x[:4], y[:4]), (x[4:].float(), y[4:])], "batch 1, element 0"
    if where == "loader_third_batch":
        xs = [x[:2], x[2:4], x[4:6].float()]
        return [(t,) for t in xs], "batch 2, element 0"
    if where == "half":
        return x.half(), "batch 0, element 0"
    raise AssertionError(where)


@pytest.mark.parametrize("entry", ["fim", "ntk", "jacobian"])
@pytest.mark.parametrize("where", ["input", "target", "second_batch", "loader_third_batch", "half"])
def test_input_dtype_differs_from_parameters(where, entry):
    data, expected = _float32_batches(where)
    with pytest.raises(MixedDeviceDtypeError) as info:
        DTYPE_ENTRIES[entry](small_net(), data)
    msg = str(info.value)
    assert expected in msg
    assert "torch.float64" in msg and ".to(" in msg


def test_input_dtype_checked_by_matrix_free_products():
    model = small_net()
    x = torch.randn(5, 3).float()
    with pytest.raises(MixedDeviceDtypeError, match="batch 0, element 0"):
        tl.fim(model, x, "regression", "implicit").mv(pvec(model))
    with pytest.raises(MixedDeviceDtypeError, match="batch 0, element 0"):
        tl.jacobian(model, x, implicit=True).mv(pvec(model))


def test_ntk_second_set_dtype_checked():
    model = small_net()
    with pytest.raises(MixedDeviceDtypeError, match=r"batch 0, element 0 has dtype torch.float32"):
        tl.ntk(model, torch.randn(5, 3), torch.randn(4, 3).float())


def test_input_on_unmovable_device_names_the_batch():
    model = small_net()
    with pytest.raises(MixedDeviceDtypeError) as info:
        tl.ntk(model, torch.randn(5, 3, device="meta"))
    msg = str(info.value)
    assert "batch 0, element 0" in msg and "meta" in msg and "cpu" in msg


# --------------------------------------------------------------------------------------
# 4. NaN / Inf in outputs
def nan_loader(value=float("nan")):
    """10 examples in batches of 3; example 7 (batch 2, row 1) holds a NaN or Inf. The model has
    no saturating non-linearity, so the non-finite value reaches the outputs."""
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    x[7, 1] = value
    return model, DataLoader(TensorDataset(x, y), batch_size=3)


NONFINITE = {
    **{f"fim_exact_{r}": (lambda m, d, r=r: tl.fim(m, d, "exact", r))
       for r in ("dense", "diag", "blockdiag", "lowrank")},
    **{f"fim_{k}_dense": (lambda m, d, k=k: tl.fim(m, d, k)) for k in ("mc", "regression", "empirical")},
    "fim_generic": lambda m, d: tl.fim(m, d, "exact", route="generic"),
    "fim_joint": lambda m, d: tl.fim(m, d, "exact", route="joint"),
    "fim_mc_generic": lambda m, d: tl.fim(m, d, "mc", n_samples=2, route="generic"),
    "fim_centered": lambda m, d: tl.fim(m, d, "exact", centering=True),
    "fim_implicit_trace": lambda m, d: tl.fim(m, d, "exact", "implicit").trace(),
    "ntk": lambda m, d: tl.ntk(m, d),
    "ntk_second_set": lambda m, d: tl.ntk(m, torch.randn(4, 6), d),
    "fim_binary": lambda m, d: tl.fim(m, d, lambda mm, b: mm(b[0])[:, :1], "diag"),
    "ntk_exact": lambda m, d: tl.ntk(m, d, output="exact"),
    "jacobian": lambda m, d: tl.jacobian(m, d),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("entry", sorted(NONFINITE))
def test_nonfinite_outputs_name_the_batch(entry, value):
    model, loader = nan_loader(value)
    with pytest.raises(NonFiniteError) as info:
        NONFINITE[entry](model, loader)
    msg = str(info.value)
    assert "batch 2" in msg and "[1]" in msg and "NaN/Inf" in msg


def test_nonfinite_parameters_name_the_first_batch():
    model, x, y = mlp(6)
    with torch.no_grad():
        model[4].bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"batch 0: .*examples \[0, 1, 2\]"):
        tl.fim(model, (x, y), "exact", batch_size=3)


@pytest.mark.parametrize("route", ["auto", "generic"])
def test_errors_leave_parameters_flags_and_grads_untouched(route):
    model, loader = nan_loader()
    model[0].requires_grad_(False)  # frozen, but explicitly selected below
    before = state_copy(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteError, match="batch 2"):
        tl.fim(model, loader, "exact", params=["0", "2.weight"], route=route)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert_state_unchanged(model, before)
    assert not model.training


@pytest.mark.parametrize("entry", ["fim", "ntk", "jacobian"])
def test_inf_input_with_finite_outputs_gives_nan_features(entry):
    model, x, y = mlp(10)
    x[7, 1] = float("inf")  # tanh(±inf) = ±1: the outputs stay finite
    assert torch.isfinite(model(x)).all()
    with pytest.raises(NonFiniteError, match="batch 2"):
        if entry == "fim":
            tl.fim(model, (x, y), "exact", batch_size=3)
        elif entry == "ntk":
            tl.ntk(model, x, batch_size=3)
        else:
            tl.jacobian(model, x, batch_size=3)


@pytest.mark.parametrize("which", ["fim_implicit_mv", "jacobian_implicit_mv"])
def test_nonfinite_outputs_in_matrix_free_products(which):
    model, loader = nan_loader()
    v = pvec(model)
    with pytest.raises(NonFiniteError, match="batch 2"):
        if which == "fim_implicit_mv":
            tl.fim(model, loader, "exact", "implicit").mv(v)
        else:
            tl.jacobian(model, loader, implicit=True).mv(v)


# --------------------------------------------------------------------------------------
# 8. empirical Fisher: targets and per-example losses
@pytest.mark.parametrize("route", ["auto", "generic", "joint"])
@pytest.mark.parametrize("representation", ["dense", "diag", "blockdiag", "lowrank"])
def test_empirical_fisher_without_targets(representation, route):
    model, x, _ = mlp(5)
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, x, "empirical", representation, route=route)
    msg = str(info.value)
    assert "needs targets" in msg and "batch 0" in msg and "(y)" in msg


@pytest.mark.parametrize("entry", ["fim_implicit_mv", "ntk", "jacobian", "jacobian_implicit_mv"])
def test_empirical_outputs_without_targets_elsewhere(entry):
    model, x, _ = mlp(5)
    with pytest.raises(InvalidInputError, match="needs targets") as info:
        if entry == "fim_implicit_mv":
            tl.fim(model, x, "empirical", "implicit").mv(pvec(model))
        elif entry == "ntk":
            tl.ntk(model, x, output="empirical")
        elif entry == "jacobian":
            tl.jacobian(model, x, output="empirical")
        else:
            tl.jacobian(model, x, output="empirical", implicit=True).mv(pvec(model))
    assert "(x, y)" in str(info.value) or "(y)" in str(info.value)


@pytest.mark.parametrize("route", ["auto", "generic"])
@pytest.mark.parametrize("representation", ["dense", "diag", "implicit"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empirical_loss_must_not_reduce(reduction, representation, route):
    model, x, y = mlp(5)

    def loss(z, t):
        return nnf.cross_entropy(z, t, reduction=reduction)

    with pytest.raises(InvalidInputError) as info:
        F_ = tl.fim(model, (x, y), "empirical", representation, loss=loss, route=route)
        F_.mv(pvec(model))
    msg = str(info.value)
    assert "reduction='none'" in msg and "one loss per example" in msg and "shape ()" in msg


@pytest.mark.parametrize("route", ["auto", "generic"])
def test_empirical_loss_with_extra_dimensions_is_refused(route):
    """An (N, C) loss was silently treated as C separate outputs (a different matrix)."""
    model, x, _ = mlp(5)
    y = torch.randn(5, 4)
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, (x, y), "empirical", loss=lambda z, t: nnf.mse_loss(z, t, reduction="none"),
               route=route)
    msg = str(info.value)
    assert "(5, 4)" in msg or "(1, 4)" in msg
    assert ".sum(-1)" in msg


def test_empirical_loss_reduced_per_example_matches_oracle():
    model, x, _ = mlp(6)
    y = torch.randn(6, 4)
    F_ = tl.fim(model, (x, y), "empirical", batch_size=4,
                loss=lambda z, t: nnf.mse_loss(z, t, reduction="none").sum(-1))
    p = {k: v.detach() for k, v in model.named_parameters()}

    def ell(q, xi, yi):
        return nnf.mse_loss(functional_call(model, q, (xi[None],)), yi[None], reduction="sum")

    g = torch.func.vmap(torch.func.grad(ell), in_dims=(None, 0, 0))(p, x, y)
    g = torch.cat([g[k].reshape(6, -1) for k in p], 1)
    assert oracle.rel_err(F_.to_dense(), g.T @ g / 6) < TOL


# --------------------------------------------------------------------------------------
# 9. memory budget
def fmt(nbytes: int) -> str:
    return tl.errors.format_bytes(nbytes)


@pytest.mark.parametrize("representation,suggests", [
    ("dense", "representation='diag'"),
    ("blockdiag", "representation='diag'"),
    ("lowrank", "representation='implicit'"),
])
def test_fisher_over_budget_raises_before_allocating(representation, suggests):
    model, x, y = mlp(11)
    calls = count_forwards(model)
    with pytest.raises(MemoryBudgetError) as info:
        tl.fim(model, (x, y), "exact", representation, memory_budget=1000)
    e = info.value
    msg = str(e)
    assert e.budget == 1000 and e.nbytes > 1000
    assert fmt(e.nbytes) in msg and "1000 B" in msg and "memory_budget=" in msg
    assert suggests in msg
    if representation != "lowrank":  # dense/blockdiag: checked before any forward pass
        assert calls[0] == 0
    if representation == "dense":
        p = sum(t.numel() for t in model.parameters())
        assert e.nbytes == p * p * 8 and f"{p}×{p}" in msg


def test_huge_dense_fisher_refused_without_allocating(monkeypatch):
    """8 TB would fail (or swap) if attempted: the budget error comes first, at any budget."""
    monkeypatch.delenv("TANGENTLAB_MEMORY_BUDGET", raising=False)
    model = nn.Sequential(nn.Linear(1000, 1000)).eval()
    calls = count_forwards(model)
    with pytest.raises(MemoryBudgetError, match=r"TiB.*representation='diag'"):
        tl.fim(model, torch.randn(2, 1000), "regression")
    assert calls[0] == 0


@pytest.mark.parametrize("budget", [1000, "1KiB", MemoryBudget(2000)])
def test_ntk_over_budget(budget):
    model, _, _ = mlp()
    x = torch.randn(600, 6)
    calls = count_forwards(model)
    with pytest.raises(MemoryBudgetError) as info:
        tl.ntk(model, x, batch_size=50, memory_budget=budget)
    msg = str(info.value)
    e = info.value
    assert e.nbytes == 600 * 600 * 4 * 4 * 8
    assert "(600, 600, 4, 4)" in msg and fmt(e.nbytes) in msg
    assert "ntk_diag" in msg or "scalar output" in msg
    assert calls[0] <= 2  # only the first batch was looked at (to learn C), not all 12


def test_jacobian_over_budget_suggests_implicit():
    model, x, _ = mlp(11)
    with pytest.raises(MemoryBudgetError, match=r"implicit=True") as info:
        tl.jacobian(model, x, memory_budget=1000)
    assert "Jacobian" in str(info.value) and "151 parameters" in str(info.value)


@pytest.mark.parametrize("how", ["built_with_budget", "constructed"])
def test_pmatdiag_to_dense_over_budget(how):
    model, x, y = mlp(11)
    if how == "built_with_budget":
        D = tl.fim(model, (x, y), "exact", "diag", memory_budget=1000)
    else:
        D0 = tl.fim(model, (x, y), "exact", "diag")
        D = tl.PMatDiag(D0.space, D0.data, MemoryBudget(1000))
    assert D.trace() > 0  # the diagonal itself is fine
    with pytest.raises(MemoryBudgetError) as info:
        D.to_dense()
    msg = str(info.value)
    assert fmt(151 * 151 * 8) in msg and "1000 B" in msg and "P×P" in msg


def test_pmatdiag_to_dense_suggestion_is_not_itself():
    model, x, y = mlp(11)
    D = tl.fim(model, (x, y), "exact", "diag", memory_budget=1000)
    with pytest.raises(MemoryBudgetError) as info:
        D.to_dense()
    assert "PMatDiag" not in str(info.value).split("needs")[1]


@pytest.mark.parametrize("budget", [0, -5, "lots", "12 parsecs", float("nan")])
def test_bad_memory_budget_values(budget):
    model, x, y = mlp(5)
    with pytest.raises(InvalidInputError, match="memory"):
        tl.fim(model, (x, y), "exact", memory_budget=budget)


# --------------------------------------------------------------------------------------
# 10. unknown strings and bad option combinations
BAD_OPTIONS = {
    "unknown_kind": (dict(kind="exactt"), ["'exactt'", "'exact'", "callable"]),
    "unknown_representation": (dict(representation="dens"), ["'dens'", "'dense'", "'diag'"]),
    "representation_type": (dict(representation=int), ["int", "'dense'"]),
    "representation_none": (dict(representation=None), ["None", "'dense'"]),
    "kind_number": (dict(kind=42), ["42"]),
    "n_samples_with_exact": (dict(kind="exact", n_samples=3), ["n_samples", "kind='mc'"]),
    "n_samples_with_empirical": (dict(kind="empirical", n_samples=3), ["n_samples", "kind='mc'"]),
    "loss_with_exact": (dict(kind="exact", loss=nnf.cross_entropy), ["loss", "kind='empirical'"]),
    "variance_with_exact": (dict(kind="exact", variance=2.0), ["variance", "kind='regression'"]),
    "options_with_callable_kind": (dict(kind=lambda m, b: m(b[0]), n_samples=2), ["string kinds"]),
    "n_samples_fraction": (dict(kind="mc", n_samples=2.5), ["n_samples", "2.5"]),
    "n_samples_negative": (dict(kind="mc", n_samples=-1), ["n_samples", "-1"]),
    "variance_zero": (dict(kind="regression", variance=0.0), ["variance", "positive"]),
    "variance_negative": (dict(kind="regression", variance=-1.0), ["variance", "positive"]),
    "variance_nan": (dict(kind="regression", variance=float("nan")), ["variance", "nan"]),
    "variance_inf": (dict(kind="regression", variance=float("inf")), ["variance", "inf"]),
    "unknown_route": (dict(route="fast"), ["'fast'", "'joint'"]),
    "batch_size_zero": (dict(batch_size=0), ["batch_size", "0"]),
    "batch_size_negative": (dict(batch_size=-2), ["batch_size", "-2"]),
    "batch_size_fraction": (dict(batch_size=2.5), ["batch_size", "2.5"]),
    "batch_size_bool": (dict(batch_size=True), ["batch_size", "True"]),
    "unknown_param": (dict(params="nope"), ["'nope'", "0.weight"]),
    "empty_selection": (dict(params=[]), ["matched no parameter"]),
    "registry_type": (dict(registry="default"), ["registry", "LayerRegistry"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_fim_options(case):
    model, x, y = mlp(5)
    opts, words = BAD_OPTIONS[case]
    opts = dict(opts)
    kind = opts.pop("kind", "exact")
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, (x, y), kind, **opts)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_mc_zero_samples_refused():
    model, x, y = mlp(5)
    with pytest.raises(InvalidInputError, match="n_samples"):
        tl.fim(model, (x, y), "mc", n_samples=0)


@pytest.mark.parametrize("entry", ["ntk", "jacobian", "jacobian_implicit", "make_output", "engine"])
@pytest.mark.parametrize("output", ["bogus", 3])
def test_bad_output_kinds(entry, output):
    model, x, _ = mlp(5)
    with pytest.raises(InvalidInputError) as info:
        if entry == "ntk":
            tl.ntk(model, x, output=output)
        elif entry == "jacobian":
            tl.jacobian(model, x, output=output)
        elif entry == "jacobian_implicit":
            tl.jacobian(model, x, output=output, implicit=True)
        elif entry == "make_output":
            tl.make_output(output)
        else:
            tl.Engine(model, output)
    assert repr(output) in str(info.value) or str(output) in str(info.value)


def test_bad_options_for_output_kinds():
    with pytest.raises(InvalidInputError, match="bad options for kind 'exact'"):
        tl.make_output("exact", foo=1)
    with pytest.raises(InvalidInputError, match="n_samples must be an integer >= 1, got 0"):
        tl.make_output("mc", n_samples=0)


def test_model_must_be_a_module():
    _, x, y = mlp(5)
    with pytest.raises(InvalidInputError, match="nn.Module, got function"):
        tl.fim(lambda t: t, (x, y))


# --------------------------------------------------------------------------------------
# 11. Embedding options that no route can honour
class EmbNet(nn.Module):
    def __init__(self, bag: bool = False, **kw):
        super().__init__()
        self.emb = nn.EmbeddingBag(10, 4, mode="mean", **kw) if bag else nn.Embedding(10, 4, **kw)
        self.bag = bag
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.emb(x) if self.bag else self.emb(x).mean(1)
        return self.fc(h)


EMB_OPTIONS = {
    "max_norm": (dict(max_norm=0.5), ["max_norm=0.5", "in place"]),
    "scale_grad_by_freq": (dict(scale_grad_by_freq=True), ["scale_grad_by_freq=True",
                                                           "scale_grad_by_freq=False"]),
}


@pytest.mark.parametrize("entry,route", [("fim", "auto"), ("ntk", "auto"), ("jacobian", "auto"),
                                         ("fim", "generic"), ("jacobian", "joint")])
@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
@pytest.mark.parametrize("option", sorted(EMB_OPTIONS))
def test_embedding_options_refused(option, bag, route, entry):
    kw, words = EMB_OPTIONS[option]
    model = EmbNet(bag, **kw).eval()
    with torch.no_grad():
        model.emb.weight.mul_(3.0)  # rows with norm > max_norm
    x = torch.randint(0, 10, (6, 5))
    before = state_copy(model)
    with pytest.raises(UnsupportedLayerError) as info:
        if entry == "fim":
            tl.fim(model, x, "regression", route=route)
        elif entry == "ntk":
            tl.ntk(model, x, route=route)
        else:
            tl.jacobian(model, x, route=route)
    msg = str(info.value)
    assert "'emb'" in msg and ("EmbeddingBag" if bag else "Embedding") in msg
    for w in words:
        assert w in msg
    assert_state_unchanged(model, before)  # max_norm would renormalize the weight in place


@pytest.mark.parametrize("which", ["fim_implicit", "jacobian_implicit"])
def test_embedding_max_norm_refused_by_matrix_free_products(which):
    model = EmbNet(max_norm=0.5).eval()
    with torch.no_grad():
        model.emb.weight.mul_(3.0)
    x = torch.randint(0, 10, (6, 5))
    before = state_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedLayerError, match="max_norm"):
            if which == "fim_implicit":
                tl.fim(model, x, "regression", "implicit").mv(pvec(model))
            else:
                tl.jacobian(model, x, implicit=True).mv(pvec(model))
    assert_state_unchanged(model, before)


# --------------------------------------------------------------------------------------
# 12. vectors of the wrong space / shape
@pytest.mark.parametrize("representation", ["dense", "diag", "blockdiag", "lowrank", "implicit"])
@pytest.mark.parametrize("verb", ["mv", "vTMv", "solve"])
def test_pvector_from_another_model(representation, verb):
    model, x, _ = mlp(6)
    other = nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
    F_ = tl.fim(model, x, "regression", representation)
    v = pvec(other)
    with pytest.raises(InvalidInputError) as info:
        if verb == "solve":
            F_.solve(v, damping=1e-2)
        else:
            getattr(F_, verb)(v)
    msg = str(info.value)
    assert "different parameter space" in msg or "different parameter spaces" in msg
    if "than the matrix" in msg:
        assert f"{v.space.numel} vs {F_.space.numel}" in msg


@pytest.mark.parametrize("representation", ["dense", "diag", "lowrank", "implicit"])
def test_pvector_of_a_parameter_subset(representation):
    model, x, _ = mlp(6)
    F_ = tl.fim(model, x, "regression", representation, params="0")
    with pytest.raises(InvalidInputError, match=r"different parameter space.*\(151 vs 56"):
        F_.mv(pvec(model))


@pytest.mark.parametrize("representation", ["dense", "diag", "implicit"])
def test_plain_tensor_instead_of_pvector(representation):
    model, x, _ = mlp(6)
    F_ = tl.fim(model, x, "regression", representation)
    with pytest.raises(InvalidInputError, match="expected a PVector, got Tensor"):
        F_.mv(torch.randn(F_.space.numel))


def _same_names_other_shapes():
    a = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    b = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 3))
    return a, b  # same names and sizes (17 parameters), transposed shapes


@pytest.mark.parametrize("representation", ["dense", "diag", "lowrank"])
def test_pvector_same_names_other_shapes(representation):
    a, b = _same_names_other_shapes()
    F_ = tl.fim(a, torch.randn(5, 2), "regression", representation)
    with pytest.raises(InvalidInputError):
        F_.mv(pvec(b))


def test_jacobian_pvector_same_names_other_shapes():
    a, b = _same_names_other_shapes()
    J = tl.jacobian(a, torch.randn(5, 2))
    with pytest.raises(InvalidInputError):
        J.mv(pvec(b))


def test_jacobian_maps_reject_wrong_vectors():
    model, x, _ = mlp(6)
    other = nn.Sequential(nn.Linear(6, 3))
    for J in (tl.jacobian(model, x), tl.jacobian(model, x, implicit=True)):
        with pytest.raises(InvalidInputError, match="parameter space"):
            J.mv(pvec(other))
    J = tl.jacobian(model, x)
    with pytest.raises(InvalidInputError, match=r"shape \(6, 4\)"):
        J.T.mv(tl.FVector(torch.randn(5, 4)))
    Ji = tl.jacobian(model, x, implicit=True)
    with pytest.raises(InvalidInputError, match="5 rows"):
        Ji.T.mv(tl.FVector(torch.randn(5, 4)))
    with pytest.raises(InvalidInputError, match="7 rows but the data has 6 examples"):
        Ji.T.mv(tl.FVector(torch.randn(7, 4)))


def test_implicit_pullback_wrong_columns():
    model, x, _ = mlp(6)
    with pytest.raises(InvalidInputError):
        tl.jacobian(model, x, implicit=True).T.mv(tl.FVector(torch.randn(6, 3)))


@pytest.mark.parametrize("shape", [(11, 3), (10, 4), (4, 11), (44, 1)])
@pytest.mark.parametrize("verb", ["mv", "vTMv"])
def test_fvector_of_wrong_shape_to_fmat(shape, verb):
    model, x, _ = mlp(11)
    K = tl.ntk(model, x)
    with pytest.raises(InvalidInputError, match=re.escape("expected an FVector of shape (11, 4)")):
        getattr(K, verb)(tl.FVector(torch.randn(*shape)))


def test_tensor_instead_of_fvector_and_rectangular_kernel():
    model, x, _ = mlp(11)
    with pytest.raises(InvalidInputError, match=re.escape("(11, 4)")):
        tl.ntk(model, x).mv(torch.randn(11, 4))
    K = tl.ntk(model, x, x[:3])
    with pytest.raises(InvalidInputError, match=re.escape("(3, 4)")):
        K.mv(tl.FVector(torch.randn(11, 4)))
    with pytest.raises(InvalidInputError, match="square"):
        K.trace()
    with pytest.raises(InvalidInputError, match=r"\(N, C\)"):
        tl.FVector(torch.randn(11))


@pytest.mark.parametrize("arg", ["wrong_shape", "tensor"])
def test_fmat_solve_wrong_vector(arg):
    model, x, _ = mlp(11)
    K = tl.ntk(model, x)
    v = tl.FVector(torch.randn(10, 4)) if arg == "wrong_shape" else torch.randn(11, 4)
    with pytest.raises(InvalidInputError):
        K.solve(v, damping=1e-3)


# --------------------------------------------------------------------------------------
# 13. custom layers: registered rule (hook route) and unregistered (generic route)
class Scale(nn.Module):
    """``y = x ⊙ w + b`` (elementwise)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.bias = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.weight + self.bias


class ScaleRule(tl.LayerRule):
    def __init__(self):
        self.calls = 0

    def features(self, module, args, kwargs):
        self.calls += 1
        return args[0]

    def per_example(self, module, feat, g):
        return {"weight": g * feat[None], "bias": g}


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.scale = Scale(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.scale(torch.tanh(self.fc(x)))))


CUSTOM_ENTRIES = ["fim_dense", "fim_diag", "fim_blockdiag", "fim_exact_lowrank", "ntk", "ntk_per_layer",
                  "jacobian"]


def _custom_entry(entry, model, x, registry):
    kw = dict(registry=registry, batch_size=4)
    if entry == "fim_dense":
        return tl.fim(model, x, "regression", **kw).to_dense(), oracle.gauss_newton(model, x)
    if entry == "fim_diag":
        return (tl.fim(model, x, "regression", "diag", **kw).diag().flat(),
                torch.diagonal(oracle.gauss_newton(model, x)))
    if entry == "fim_blockdiag":
        F_ = tl.fim(model, x, "regression", "blockdiag", **kw)
        full = oracle.gauss_newton(model, x)
        return F_.to_dense(), torch.block_diag(*[full[lay.slice, lay.slice] for lay in F_.space.layers])
    if entry == "fim_exact_lowrank":
        return tl.fim(model, x, "exact", "lowrank", **kw).to_dense(), oracle.fisher_exact(model, x)
    if entry == "ntk":
        return tl.ntk(model, x, **kw).to_dense(), oracle.ntk(model, x)
    if entry == "ntk_per_layer":
        K = tl.ntk(model, x, per_layer=True, **kw)
        return K.layer("scale").to_dense(), oracle.ntk(model, x, names=["scale.weight", "scale.bias"])
    return tl.jacobian(model, x, **kw).data, oracle.jacobian(model, x)


@pytest.mark.parametrize("entry", CUSTOM_ENTRIES)
def test_registered_rule_is_used_on_hook_route(entry, monkeypatch):
    monkeypatch.setattr(chunks, "MERGE_MAX_EXAMPLES", 1)  # one capture per batch: features() runs 3 times
    model = CustomNet().eval()
    x = torch.randn(9, 4)
    rule = ScaleRule()
    reg = tl.LayerRegistry.default().register(Scale, rule)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tl.GenericRouteWarning)  # nothing goes generic
        got, ref = _custom_entry(entry, model, x, reg)
    assert rule.calls >= 3  # features() ran for every batch
    assert oracle.rel_err(got, ref) < TOL
    assert Scale not in tl.LayerRegistry.default()  # registering did not leak into the defaults


def test_registered_rule_route_plan():
    model = CustomNet().eval()
    reg = tl.LayerRegistry.default().register(Scale, ScaleRule())
    plan = tl.Engine(model, "raw", registry=reg).plan((torch.randn(3, 4),))
    assert [h.layer.module for h in plan.hooked] == ["fc", "scale", "out"]
    assert plan.generic == []


@pytest.mark.parametrize("registry", ["none", "default"])
@pytest.mark.parametrize("entry", CUSTOM_ENTRIES)
def test_unregistered_custom_layer_takes_generic_route(entry, registry):
    model = CustomNet().eval()
    x = torch.randn(9, 4)
    reg = None if registry == "none" else tl.LayerRegistry.default()
    with pytest.warns(tl.GenericRouteWarning, match=r"scale \(no layer rule for Scale\)") as rec:
        got, ref = _custom_entry(entry, model, x, reg)
    msgs = " ".join(str(w.message) for w in rec)
    assert "fc (" not in msgs and "out (" not in msgs  # only the custom layer
    assert oracle.rel_err(got, ref) < TOL


def test_registry_rejects_bad_registrations():
    reg = tl.LayerRegistry.default()
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        reg.register(int, ScaleRule())
    with pytest.raises(TypeError, match="not a LayerRule"):
        reg.register(Scale, object())
