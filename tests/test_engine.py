"""The engine's per-layer quantities against brute-force per-example Jacobians."""

from __future__ import annotations

import warnings

import pytest
import torch

from tangentlab.engine import Engine, ops

from . import oracle
from .models import ARCHS

ARCH_NAMES = sorted(ARCHS)
QUANTITIES = ["per_example", "diag", "grad_sum", "sq_norms", "gram", "dot"]


def _setup(arch, route):
    torch.manual_seed(7)
    model, x, y = ARCHS[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = Engine(model, "raw", route=route)
        cap = eng.capture((x,), 0)
    return model, x, eng, cap, oracle.jacobian(model, x)


@pytest.mark.parametrize("route", ["auto", "generic"])
@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_quantity(arch, quantity, route):
    model, x, eng, cap, J = _setup(arch, route)  # J: (N, C, P)
    space = eng.space
    if quantity == "per_example":
        got, want = ops.per_example(cap, space).transpose(0, 1), J
    elif quantity == "diag":
        got, want = ops.diag(cap, space), J.pow(2).sum((0, 1))
    elif quantity == "grad_sum":
        got, want = ops.grad_sum(cap, space), J.sum(0)
    elif quantity == "sq_norms":
        got, want = ops.sq_norms(cap, space), J.pow(2).sum(-1).T
    elif quantity == "gram":
        got, want = ops.gram(cap, cap, space), torch.einsum("ncp,mdp->nmcd", J, J)
    else:
        v = torch.randn(space.numel)
        got, want = ops.dot(cap, space, space.unflatten(v)), (J @ v).T
    assert oracle.rel_err(got, want) < 1e-10


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_gram_between_batches(arch):
    model, x, eng, _, J = _setup(arch, "auto")
    c1 = eng.capture((x[:3],), 0)
    c2 = eng.capture((x[3:],), 1)
    got = ops.gram(c1, c2, eng.space)
    assert oracle.rel_err(got, torch.einsum("ncp,mdp->nmcd", J[:3], J[3:])) < 1e-10
    blocks = ops.gram(c1, c2, eng.space, per_layer=True)
    assert oracle.rel_err(sum(blocks.values()), got) < 1e-12
    for lay in eng.space.layers:
        want = torch.einsum("ncp,mdp->nmcd", J[:3, :, lay.slice], J[3:, :, lay.slice])
        assert oracle.rel_err(blocks[lay.module], want) < 1e-10


def test_hook_route_used_for_builtin_layers():
    model, x, _ = ARCHS["norms"]()
    eng = Engine(model, "raw")
    cap = eng.capture((x,), 0)
    assert not cap.generic, "every layer of this model has a built-in rule"
    assert {lc.layer.module for lc in cap.layers} == {lay.module for lay in eng.space.layers}


def test_generic_route_warning_names_parameters():
    model, x, _ = ARCHS["tied_attention"]()
    eng = Engine(model, "raw")
    with pytest.warns(UserWarning, match="emb .*shares a parameter with out"):
        cap = eng.capture((x,), 0)
    assert "emb.weight" in cap.generic
    assert "mix.weight" not in cap.generic and "att.in_proj_weight" not in cap.generic


def test_inplace_activation_after_layer():
    """ReLU(inplace=True) right after a conv must not corrupt the captured gradients."""
    model, x, _ = ARCHS["cnn"]()
    assert isinstance(model[1], torch.nn.ReLU) and model[1].inplace
    eng = Engine(model, "raw")
    cap = eng.capture((x,), 0)
    assert oracle.rel_err(ops.per_example(cap, eng.space).transpose(0, 1), oracle.jacobian(model, x)) < 1e-10


@pytest.mark.parametrize("strategy", ["structured", "materialize"])
def test_gram_strategies(strategy):
    """Structured (Gram-trick) and materialized paths give the same layer NTK and norms."""
    from tangentlab.layers import ConvRule, EmbeddingRule, LinearRule

    torch.manual_seed(3)
    cases = [
        (LinearRule(strategy), torch.nn.Linear(4, 3), torch.randn(5, 6, 4), (2, 5, 6, 3)),
        (ConvRule(strategy), torch.nn.Conv2d(2, 4, 3, groups=2), torch.randn(3, 2, 5, 5), (2, 3, 4, 3, 3)),
        (ConvRule(strategy), torch.nn.Conv1d(2, 4, 2, stride=2), torch.randn(3, 2, 7), (2, 3, 4, 3)),
        (EmbeddingRule(strategy), torch.nn.Embedding(7, 3, padding_idx=2), torch.randint(0, 7, (4, 5)),
         (2, 4, 5, 3)),
    ]
    for rule, mod, x, gshape in cases:
        f = rule.features(mod, (x,), {})
        g = torch.randn(*gshape)
        pe = rule.flat_per_example(mod, f, g)
        assert oracle.rel_err(rule.gram(mod, f, g, f, g), torch.einsum("cnp,dmp->nmcd", pe, pe)) < 1e-12
        assert oracle.rel_err(rule.sq_norms(mod, f, g), pe.pow(2).sum(-1)) < 1e-12
        f2 = rule.features(mod, (x[:2],), {})
        g2 = torch.randn(3, 2, *gshape[2:])
        pe2 = rule.flat_per_example(mod, f2, g2)
        assert oracle.rel_err(rule.gram(mod, f, g, f2, g2), torch.einsum("cnp,dmp->nmcd", pe, pe2)) < 1e-12


@pytest.mark.parametrize("logits", [[60.0] + [0.0] * 9, [90.0, 30.0, 0.0, -30.0], [5.0, -1.0, 2.0]])
def test_categorical_covariance_root_is_finite_and_exact_in_float32(logits):
    """L Lᵀ = diag(p) − ppᵀ without NaN for confident float32 predictions (products of two tiny
    tail masses q_k q_{k+1} underflowed to 0 and made the entries inf·0)."""
    from tangentlab.outputs import sqrt_categorical_covariance

    z = torch.tensor([logits])
    L = sqrt_categorical_covariance(torch.softmax(z.float(), -1))
    assert torch.isfinite(L).all()
    p = torch.softmax(z.double(), -1)
    ref = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    L = L.double()
    assert (L @ L.transpose(-1, -2) - ref).abs().max() < 1e-6


@pytest.mark.parametrize("strategy", ["structured", "materialize"])
@pytest.mark.parametrize("layer", ["linear_seq", "conv", "conv_groups"])
def test_gram_strategies_many_rows(strategy, layer):
    """N·C = 600 rows: the symmetric Gram runs in several block rows (lower triangle + mirror,
    accumulated in place), including into a strided view of a larger kernel."""
    from tangentlab.layers import ConvRule, LinearRule

    torch.manual_seed(4)
    rule, mod, x, gshape = {
        "linear_seq": (LinearRule(strategy), torch.nn.Linear(4, 3), torch.randn(60, 2, 4), (10, 60, 2, 3)),
        "conv": (ConvRule(strategy), torch.nn.Conv2d(2, 4, 3), torch.randn(60, 2, 4, 4), (10, 60, 4, 2, 2)),
        "conv_groups": (ConvRule(strategy), torch.nn.Conv2d(2, 4, 3, groups=2), torch.randn(60, 2, 4, 4),
                        (10, 60, 4, 2, 2)),
    }[layer]
    f = rule.features(mod, (x,), {})
    g = torch.randn(*gshape)
    pe = rule.flat_per_example(mod, f, g)
    want = torch.einsum("cnp,dmp->nmcd", pe, pe)
    assert oracle.rel_err(rule.gram(mod, f, g, f, g), want) < 1e-12
    big = torch.ones(70, 65, 10, 10)
    rule.gram_into(mod, f, g, f, g, big[5:65, 3:63])
    assert oracle.rel_err(big[5:65, 3:63] - 1, want) < 1e-12
    assert (big[:5] == 1).all() and (big[:, :3] == 1).all() and (big[:, 63:] == 1).all()
    assert oracle.rel_err(rule.sq_norms(mod, f, g), pe.pow(2).sum(-1)) < 1e-12


@pytest.mark.parametrize("layer", ["linear_seq", "conv", "conv_groups"])
def test_materialized_sq_norms_in_example_chunks(monkeypatch, layer):
    """Squared norms on the materialized route, a few examples at a time (tiny chunk size)."""
    from tangentlab.layers import ConvRule, LinearRule, patch

    monkeypatch.setattr(patch, "CHUNK_ELEMENTS", 200)
    torch.manual_seed(5)
    rule, mod, x, gshape = {
        "linear_seq": (LinearRule("materialize"), torch.nn.Linear(4, 3), torch.randn(11, 2, 4), (3, 11, 2, 3)),
        "conv": (ConvRule("materialize"), torch.nn.Conv2d(2, 4, 3), torch.randn(11, 2, 4, 4), (3, 11, 4, 2, 2)),
        "conv_groups": (ConvRule("materialize"), torch.nn.Conv2d(2, 4, 3, groups=2), torch.randn(11, 2, 4, 4),
                        (3, 11, 4, 2, 2)),
    }[layer]
    f = rule.features(mod, (x,), {})
    g = torch.randn(*gshape)
    pe = rule.flat_per_example(mod, f, g)
    assert oracle.rel_err(rule.sq_norms(mod, f, g), pe.pow(2).sum(-1)) < 1e-12


@pytest.mark.parametrize("conv", [
    dict(in_channels=3, out_channels=5, kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2), padding=1,
         padding_mode="reflect"),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="same", dilation=2, bias=False),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, dims=1),
])
def test_conv_grouped_backward_route_equals_patches(conv):
    """Group-free convolutions: per-example gradients by one convolution backward with the
    examples as groups (no unfolded patches) equal the im2col route, in every output layout."""
    from tangentlab.layers import ConvRule

    torch.manual_seed(6)
    conv = dict(conv)
    dims = conv.pop("dims", 2)
    mod = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(**conv)
    x = torch.randn(5, conv["in_channels"], *((9,) if dims == 1 else (7, 8)))
    rule = ConvRule("materialize")
    out = mod(x)
    g = torch.randn(1, *out.shape)  # one output coordinate: the grouped route
    f = rule.features(mod, (x,), {})
    assert f.a_ is None  # lazily unfolded
    want = {k: v.clone() for k, v in rule.per_example(mod, f, g).items()}  # im2col route (unfolds)
    f = rule.features(mod, (x,), {})
    outs = {k: torch.empty_like(v) for k, v in want.items()}
    rule.per_example_into(mod, f, g, outs)
    assert f.a_ is None, "the grouped-convolution route does not unfold"
    for k in want:
        assert oracle.rel_err(outs[k], want[k]) < 1e-12
    pe = torch.cat([want[k].reshape(1, 5, -1) for k in ("weight", "bias") if k in want], 2)
    assert oracle.rel_err(rule.gram(mod, f, g, f, g), torch.einsum("cnp,dmp->nmcd", pe, pe)) < 1e-12
