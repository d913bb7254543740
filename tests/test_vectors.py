"""PVector / FVector algebra and model interaction; parameter spaces."""

from __future__ import annotations

import pytest
import torch

import tangentlab as tl

from .models import ARCHS


@pytest.fixture
def model():
    return ARCHS["norms"]()[0]


def test_algebra_matches_flat(model):
    space = tl.ParamSpace.from_model(model)
    a = tl.PVector.randn(space, dtype=torch.float64)
    b = tl.PVector.randn(space, dtype=torch.float64)
    fa, fb = a.flat(), b.flat()
    assert torch.allclose((a + b).flat(), fa + fb)
    assert torch.allclose((a - b).flat(), fa - fb)
    assert torch.allclose((2.5 * a).flat(), 2.5 * fa)
    assert torch.allclose((a * 2.5).flat(), 2.5 * fa)
    assert torch.allclose((a / 4).flat(), fa / 4)
    assert torch.allclose((-a).flat(), -fa)
    assert torch.allclose((a * b).flat(), fa * fb)
    assert torch.allclose(a.dot(b), fa @ fb)
    assert torch.allclose(a @ b, fa @ fb)
    assert torch.allclose(a.norm(), fa.norm())
    assert torch.allclose(a.norm(1), fa.abs().sum())
    assert len(a) == space.numel == sum(p.numel() for p in model.parameters())
    c = tl.PVector.from_flat(space, fa)
    assert all(torch.equal(c[n], a[n]) for n in space.names)


def test_from_model_is_live_and_differentiable(model):
    v = tl.PVector.from_model(model)
    assert v["c1.weight"] is model.c1.weight
    loss = (v * v).flat().sum()
    loss.backward()
    assert torch.allclose(model.c1.weight.grad, 2 * model.c1.weight.detach())
    g = tl.PVector.from_grad(model)
    assert torch.allclose(g["c1.weight"], 2 * model.c1.weight.detach())


def test_copy_and_add_to_model(model):
    space = tl.ParamSpace.from_model(model)
    v = tl.PVector.randn(space, dtype=torch.float64)
    v.copy_to_model(model)
    assert torch.equal(model.fc.bias.detach(), v["fc.bias"])
    v.add_to_model(model)
    assert torch.allclose(model.fc.bias.detach(), 2 * v["fc.bias"])


def test_selection_and_subspaces(model):
    space = tl.ParamSpace.from_model(model, ["c1", "bn.bias", model.out])
    assert space.names == ("c1.weight", "c1.bias", "bn.bias", "out.weight", "out.bias")
    assert [lay.module for lay in space.layers] == ["c1", "bn", "out"]
    offsets = [p.offset for p in space.params]
    assert offsets == sorted(offsets) and offsets[0] == 0
    sub = space.select(["out"])
    assert sub.names == ("out.weight", "out.bias")
    v = tl.PVector.randn(space, dtype=torch.float64)
    assert torch.equal(v.select(sub).flat(), v.flat()[space.info("out.weight").offset:])
    pred = tl.ParamSpace.from_model(model, lambda n, p: n.endswith("bias"))
    assert all(n.endswith("bias") for n in pred.names)
    assert tl.ParamSpace.from_state(space.state()) == space


def test_frozen_parameters_are_excluded_by_default(model):
    model.c1.weight.requires_grad_(False)
    space = tl.ParamSpace.from_model(model)
    assert "c1.weight" not in space.names and "c1.bias" in space.names


def test_errors(model):
    space = tl.ParamSpace.from_model(model)
    other = tl.ParamSpace.from_model(model, ["c1"])
    with pytest.raises(tl.InvalidInputError, match="different parameter spaces"):
        tl.PVector.randn(space) + tl.PVector.randn(other)
    with pytest.raises(tl.InvalidInputError, match="matched no parameter|names no parameter"):
        tl.ParamSpace.from_model(model, ["nonexistent"])
    with pytest.raises(tl.InvalidInputError, match="shape"):
        tl.PVector(other, {"c1.weight": torch.zeros(1), "c1.bias": torch.zeros(4)})


def test_fvector():
    u = tl.FVector(torch.arange(6.0).reshape(3, 2))
    w = tl.FVector(torch.ones(3, 2))
    assert torch.equal((u + w).tensor, u.tensor + 1)
    assert torch.equal((2 * u - w).tensor, 2 * u.tensor - 1)
    assert float(u.dot(w)) == 15.0
    assert torch.equal(u.flat(), torch.arange(6.0))
    with pytest.raises(tl.InvalidInputError):
        tl.FVector(torch.zeros(3))
    with pytest.raises(tl.InvalidInputError, match="shapes differ"):
        u + tl.FVector(torch.ones(2, 2))
