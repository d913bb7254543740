"""Bad inputs that used to crash deep inside or mislead (issue 20, items 1-6 and 8).

Each case is tried as a new user would (a float32 model, default options) and asserts the
error type and the key words of its message, or the corrected value against the float64
oracle of :mod:`tests.oracle`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tangentlab as tl
from tangentlab.errors import InvalidInputError, MemoryBudgetError, MixedDeviceDtypeError, format_bytes
from tangentlab.ntk_large import NTKOperator, ntk_tiled
from tangentlab.pmat import registry
from tangentlab.vectors import PVector

from . import oracle

TOL = 1e-10


def net(c: int = 5, d: int = 4, dtype=torch.float32) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c)).to(dtype).eval()


def inputs(n: int = 16, d: int = 4, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, dtype=dtype)


# ---- 1: a softmax Fisher of one logit ------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda m, x: tl.fim(m, x, kind="exact"),
    lambda m, x: tl.fim(m, x, kind="mc"),
    lambda m, x: tl.ntk(m, x, output="exact"),
    lambda m, x: tl.jacobian(m, x, output="exact"),
], ids=["fim-exact", "fim-mc", "ntk-exact", "jacobian-exact"])
def test_softmax_fisher_of_one_logit_is_refused(call):
    with pytest.raises(InvalidInputError) as info:
        call(net(c=1), inputs())
    msg = str(info.value)
    assert "one" in msg and "constant" in msg and "zero" in msg and "kind='binary'" in msg


def test_binary_fisher_of_one_logit_still_works():
    model = net(c=1, dtype=torch.float64)
    x = inputs(dtype=torch.float64)
    F = tl.fim(model, x, kind="binary")
    j = oracle.jacobian(model, x)[:, 0]  # (N, P)
    with torch.no_grad():
        p = torch.sigmoid(model(x))[:, 0]
    expected = torch.einsum("n,np,nq->pq", p * (1 - p), j, j) / x.shape[0]
    assert oracle.rel_err(F.to_dense(), expected) < TOL


# ---- 2: labels equal to the loss's ignore_index -------------------------------------------
def _ignored(n: int = 16, c: int = 5):
    model = net(c, dtype=torch.float64)
    x = inputs(n, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    y[torch.tensor([0, 1, 3, 5, 9, 10, 12, 14])] = -100  # 8 of 16, spread unevenly over batches
    keep = y != -100
    return model, x, y, oracle.empirical_fisher(model, x[keep], y[keep])


@pytest.mark.parametrize("batch_size", [None, 4, 3])
@pytest.mark.parametrize("representation", ["dense", "diag", "blockdiag", "implicit", "lowrank"])
def test_ignored_labels_are_skipped_and_not_counted(representation, batch_size):
    model, x, y, expected = _ignored()
    F = tl.fim(model, (x, y), kind="empirical", representation=representation, batch_size=batch_size)
    if representation == "diag":
        assert oracle.rel_err(F.diag().flat(), expected.diagonal()) < TOL
    elif representation in ("blockdiag", "implicit"):
        assert oracle.rel_err(F.trace(), expected.trace()) < TOL
        assert oracle.rel_err(F.diag().flat(), expected.diagonal()) < TOL
        if representation == "implicit":
            v = torch.randn(F.space.numel)
            assert oracle.rel_err(F.mv(PVector.from_flat(F.space, v)).flat(), expected @ v) < TOL
    else:
        assert oracle.rel_err(F.to_dense(), expected) < TOL


def test_ignore_index_of_a_loss_module_is_followed():
    model = net(dtype=torch.float64)
    x = inputs(dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    y[:6] = 3
    loss = nn.CrossEntropyLoss(reduction="none", ignore_index=3)
    F = tl.fim(model, (x, y), kind="empirical", loss=loss)
    keep = y != 3
    assert oracle.rel_err(F.to_dense(), oracle.empirical_fisher(model, x[keep], y[keep])) < TOL


def test_a_plain_loss_function_keeps_every_example():
    """Without a known ignore_index nothing is dropped: -100 is a regression target like any."""
    model = net(c=1, dtype=torch.float64)
    x = inputs(dtype=torch.float64)
    y = torch.randn(16, 1)
    y[:4] = -100.0
    F = tl.fim(model, (x, y), kind="empirical", loss=lambda z, t: ((z - t) ** 2).sum(-1))
    j = oracle.jacobian(model, x)[:, 0]
    with torch.no_grad():
        r = 2 * (model(x) - y)[:, 0]
    expected = torch.einsum("n,np,nq->pq", r * r, j, j) / 16
    assert oracle.rel_err(F.to_dense(), expected) < TOL


def test_ignored_labels_in_kernels_drop_those_examples():
    model, x, y, _ = _ignored()
    keep = y != -100
    K = tl.ntk(model, (x, y), output="empirical", batch_size=4)
    g = oracle.loss_grads(model, x[keep], y[keep])
    assert K.shape == (8, 8, 1, 1)
    assert oracle.rel_err(K.data[:, :, 0, 0], g @ g.T) < TOL
    assert NTKOperator(model, (x, y), output="empirical", batch_size=4).shape == (8, 8)
    assert ntk_tiled(model, (x, y), output="empirical", block=4).shape == (8, 8, 1, 1)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_batch_with_every_label_ignored_is_refused(batch_size):
    model = net()
    x = inputs()
    y = torch.randint(0, 5, (16,))
    y[:4] = -100  # with batch_size=4: the whole first batch; without: all 16 when y[:] = -100
    if batch_size is None:
        y[:] = -100
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, (x, y), kind="empirical", batch_size=batch_size)
    msg = str(info.value)
    assert "batch 0" in msg and "ignore_index" in msg and "-100" in msg


# ---- 3: class labels out of range, of the wrong dtype or shape ----------------------------
@pytest.mark.parametrize("bad, shown", [(7, "[7]"), (-1, "[-1]"), (5, "[5]")])
def test_labels_out_of_range(bad, shown):
    y = torch.randint(0, 5, (16,))
    y[3] = bad
    with pytest.raises(InvalidInputError) as info:
        tl.fim(net(), (inputs(), y), kind="empirical")
    msg = str(info.value)
    assert "out of range" in msg and shown in msg and "5 logits" in msg and "0 to 4" in msg
    assert "ignore_index" in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16,), (16, 1)])
def test_float_class_labels_are_refused(dtype, shape):
    y = torch.randint(0, 5, shape).to(dtype)
    with pytest.raises(InvalidInputError) as info:
        tl.fim(net(), (inputs(), y), kind="empirical")
    msg = str(info.value)
    assert not isinstance(info.value, MixedDeviceDtypeError)
    assert "class labels" in msg and str(dtype) in msg and "y.long()" in msg
    assert "x.to(" not in msg  # no advice to convert class labels to the model's float dtype


@pytest.mark.parametrize("convert", [lambda y: y.int(), lambda y: y[:, None], lambda y: y.to(torch.uint8)[:, None]],
                         ids=["int32", "(N,1)", "uint8 (N,1)"])
def test_unambiguous_labels_are_converted(convert):
    model = net(dtype=torch.float64)
    x = inputs(dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    ref = tl.fim(model, (x, y), kind="empirical").to_dense()
    assert torch.equal(tl.fim(model, (x, convert(y)), kind="empirical").to_dense(), ref)


def test_several_labels_per_example_are_refused():
    with pytest.raises(InvalidInputError) as info:
        tl.fim(net(), (inputs(), torch.randint(0, 5, (16, 2))), kind="empirical")
    assert "(16, 2)" in str(info.value) and "(N,)" in str(info.value) and "loss=" in str(info.value)


def test_class_probabilities_are_accepted():
    model = net(dtype=torch.float64)
    x = inputs(dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    soft = nn.functional.one_hot(y, 5).double()
    ref = tl.fim(model, (x, y), kind="empirical").to_dense()
    assert oracle.rel_err(tl.fim(model, (x, soft), kind="empirical").to_dense(), ref) < TOL


# ---- 4: every parameter frozen -------------------------------------------------------------
def test_frozen_model_says_no_parameter_requires_grad():
    model = net()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, inputs())
    msg = str(info.value)
    assert "no parameter requires grad" in msg and "requires_grad=False" in msg and "params=" in msg
    F = tl.fim(model, inputs(), params=model)  # the advice works
    assert F.shape == (85, 85)
    assert not any(p.requires_grad for p in model.parameters())


# ---- 5: inputs of the wrong feature size or dtype ------------------------------------------
@pytest.mark.parametrize("route", ["auto", "generic"])
@pytest.mark.parametrize("call", [
    lambda m, x, r: tl.fim(m, x, route=r),
    lambda m, x, r: tl.fim(m, x, representation="implicit", route=r).trace(),
    lambda m, x, r: tl.ntk(m, x, route=r),
    lambda m, x, r: tl.jacobian(m, x, route=r),
], ids=["fim", "implicit", "ntk", "jacobian"])
def test_wrong_feature_size_names_the_layer(call, route):
    with pytest.raises(InvalidInputError) as info:
        call(net(), inputs(d=3), route)
    msg = str(info.value)
    assert "layer '0' (Linear)" in msg and "(N, 3)" in msg and "(..., 4)" in msg


@pytest.mark.parametrize("x", [torch.randint(0, 3, (16, 4)), torch.rand(16, 4) > 0.5], ids=["int64", "bool"])
def test_integer_or_bool_inputs_name_the_layer_and_the_dtype(x):
    with pytest.raises(InvalidInputError) as info:
        tl.fim(net(), x)
    msg = str(info.value)
    assert "layer '0' (Linear)" in msg and str(x.dtype) in msg and "torch.float32" in msg
    assert "x.to(torch.float32)" in msg


def test_wrong_channels_of_a_convolution():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2)).float().eval()
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, torch.randn(4, 1, 8, 8, dtype=torch.float32))
    msg = str(info.value)
    assert "layer '0' (Conv2d)" in msg and "(N, 1, 8, 8)" in msg and "(N, 3, H, W)" in msg


def test_float_tokens_to_an_embedding():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).float().eval()
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, torch.rand(4, 3, dtype=torch.float32))
    msg = str(info.value)
    assert "(Embedding)" in msg and "integer indices" in msg and "x.long()" in msg


def test_other_forward_failures_are_not_rewritten():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            raise ValueError("a bug in the user's forward")

    with pytest.raises(ValueError, match="a bug in the user's forward") as info:
        tl.fim(Broken().float(), inputs())
    assert not isinstance(info.value, InvalidInputError)


# ---- 6: an NTK over the memory budget ------------------------------------------------------
def test_ntk_over_budget_offers_tiled_and_operator_with_sizes():
    model = net(c=1)
    x = inputs(2000)
    with pytest.raises(MemoryBudgetError) as info:
        tl.ntk(model, x, memory_budget="1MiB")
    msg = str(info.value)
    assert "ntk_tiled" in msg and "path=" in msg and "NTKOperator" in msg and "ntk_diag" in msg
    assert f"{format_bytes(2000 * 2000 * 4)} on disk" in msg
    assert "scalar output" not in msg  # the model has one output already


def test_ntk_tiled_in_memory_over_budget_offers_the_disk_and_the_operator():
    with pytest.raises(MemoryBudgetError) as info:
        ntk_tiled(net(c=1), inputs(2000), memory_budget="1MiB")
    msg = str(info.value)
    assert "path=" in msg and f"{format_bytes(2000 * 2000 * 4)} on disk" in msg and "NTKOperator" in msg
    assert "scalar output" not in msg


def test_ntk_over_budget_with_several_outputs_also_offers_a_scalar_output():
    with pytest.raises(MemoryBudgetError) as info:
        tl.ntk(net(c=5), inputs(500), memory_budget="1MiB")
    msg = str(info.value)
    assert "ntk_tiled" in msg and "NTKOperator" in msg and "scalar output" in msg and "1/25" in msg


def test_ntk_of_two_data_sets_over_budget_does_not_offer_the_operator():
    with pytest.raises(MemoryBudgetError) as info:
        tl.ntk(net(c=1), inputs(2000), inputs(1000), memory_budget="1MiB")
    msg = str(info.value)
    assert "ntk_tiled(model, x1, x2, path=...)" in msg and "NTKOperator" not in msg


# ---- 8: refusals offer only what fits ------------------------------------------------------
def _offered(msg: str) -> set[str]:
    return {name for name in registry.names() if f"representation={name!r}" in msg}


def test_dense_refusal_does_not_offer_a_blockdiag_that_does_not_fit():
    """One 2000×2000 Linear: its block alone is 58 TiB; a 1 GiB budget must not see it offered."""
    model = nn.Sequential(nn.Linear(2000, 2000), nn.Linear(2000, 10)).float().eval()
    with pytest.raises(MemoryBudgetError) as info:
        tl.fim(model, torch.randn(4, 2000, dtype=torch.float32), memory_budget="1GiB")
    offered = _offered(str(info.value))
    assert "blockdiag" not in offered and "dense" not in offered
    assert {"diag", "implicit", "kfac", "ekfac", "quasidiag"} <= offered
    assert "MiB)" in str(info.value)  # with sizes


def test_dense_refusal_offers_blockdiag_when_it_fits():
    model = nn.Sequential(*[nn.Linear(20, 20) for _ in range(4)]).double().eval()  # P = 1680
    p = 1680
    budget = (4 * 420**2 + 1) * 8  # the blocks fit, the dense P² does not
    with pytest.raises(MemoryBudgetError) as info:
        tl.fim(model, torch.randn(4, 20), memory_budget=budget)
    msg = str(info.value)
    assert f"{p}×{p}" in msg and "blockdiag" in _offered(msg)
    assert f"representation='blockdiag' ({format_bytes(4 * 420**2 * 8)})" in msg


def test_blockdiag_and_to_dense_refusals_never_offer_themselves():
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 10)).float().eval()
    x = torch.randn(4, 300, dtype=torch.float32)
    with pytest.raises(MemoryBudgetError) as info:
        tl.fim(model, x, representation="blockdiag", memory_budget="10MiB")
    assert "blockdiag" not in _offered(str(info.value)) and "dense" not in _offered(str(info.value))
    D = tl.fim(model, x, representation="diag", memory_budget="10MiB")
    with pytest.raises(MemoryBudgetError) as info:
        D.to_dense()
    assert _offered(str(info.value)) <= {"implicit", "quasidiag"}


def test_nothing_fits_says_so():
    model = nn.Sequential(*[nn.Linear(20, 20) for _ in range(4)]).double().eval()
    assert registry.fitting(tl.fim(model, torch.randn(2, 20), "raw", "diag").space,
                            tl.memory.MemoryBudget(10), torch.float64, "dense", light=False) == []
    space = tl.fim(model, torch.randn(2, 20), "raw", "diag").space
    advice = registry.fitting_advice(space, tl.memory.MemoryBudget(10), torch.float64, "dense", light=False)
    assert "No representation" in advice and "params=" in advice


def test_footprints_of_the_built_in_representations():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3, bias=False), nn.LayerNorm(3)).double()
    space = tl.fim(model.eval(), torch.randn(2, 6), "raw", "diag").space
    p = space.numel
    sizes = {r.name: r.footprint(space) for r in registry.representations() if r.footprint is not None}
    assert sizes["dense"] == p * p and sizes["diag"] == p and sizes["implicit"] == p
    assert sizes["blockdiag"] == 56**2 + 24**2 + 6**2
    assert sizes["kfac"] == (7**2 + 8**2) + (8**2 + 3**2) + 6**2
    assert sizes["ekfac"] == sizes["kfac"] + 7 * 8 + 8 * 3
    assert "lowrank" not in sizes  # N·C·P: depends on the data


def test_a_registered_footprint_is_used(monkeypatch):
    @registry.register("toyfit", stores="s", memory="1", summary="F ≈ s·I", keeps="all",
                       footprint=lambda space: 1)
    class PMatToyFit(tl.pmat.PMat):
        def mv(self, v):
            return v

    try:
        model = nn.Sequential(nn.Linear(300, 300)).double().eval()
        with pytest.raises(MemoryBudgetError) as info:
            tl.fim(model, torch.randn(2, 300), "raw", memory_budget="1MiB")
        assert "representation='toyfit' (8 B)" in str(info.value)
    finally:
        registry.unregister("toyfit")


def test_joint_route_diagnosis_leaves_batchnorm_statistics_alone():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).float().train()
    before = model[1].running_mean.clone()
    with pytest.raises(InvalidInputError, match=r"layer '0' \(Linear\).*\(N, 3\)"):
        tl.fim(model, inputs(d=3), route="joint")
    assert torch.equal(model[1].running_mean, before)
