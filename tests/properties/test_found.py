"""Cases found by the property tests (``test_properties.py``), kept as explicit tests so
that they are checked on every run, whatever the hypothesis profile draws."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tangentlab as tl

from ..cases import REPRESENTATIONS
from . import reference
from .grammar import Case

#: expected on these models: generic-route notices (shared modules, attention) and PyTorch's
#: note on 'same' padding with even kernels
pytestmark = [pytest.mark.filterwarnings("ignore::tangentlab.engine.plan.GenericRouteWarning"),
              pytest.mark.filterwarnings("ignore:Using padding='same'")]


def _all_exact(case: Case, **kw) -> dict[str, tl.PMat]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {rep: tl.fim(case.model, case.batches, case.kind, rep, **kw) for rep in REPRESENTATIONS}


def test_nearly_scale_invariant_weight():
    """A one-channel 1×1 convolution followed by GroupNorm(1, 1): the output depends on the
    conv's single weight only through GroupNorm's ``eps``, so its Fisher is tiny (about 1e-11
    after one GroupNorm, 1e-20 after two, as drawn) and computed from nearly cancelling terms,
    by tangentlab and by the oracle alike. Every representation agrees with the oracle
    relatively to 1e-8 plus an absolute 1e-24: round-off of the cancelled terms, which the
    property tests absorb in their floor."""
    for seed, norms in ((0, 1), (1, 1), (0, 2)):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 1, 1, padding="same", bias=False),
                              *(nn.GroupNorm(1, 1, affine=False) for _ in range(norms)),
                              nn.ELU(), nn.Flatten(), nn.Linear(9, 1)).double().eval()
        for p in model[-1].parameters():
            p.requires_grad_(False)
        x = torch.randn(3, 1, 3, 3)
        case = Case("conv", model, x, torch.zeros(3, dtype=torch.long), [2, 1], "raw", 1)
        want = float(reference.fisher(case, reference.features(case)))
        assert 0 < want < 1e-10
        for rep, M in _all_exact(case).items():
            got = float(M.trace())
            assert abs(got - want) <= 1e-8 * abs(want) + 1e-24, (seed, norms, rep, got, want)


def test_centered_fisher_of_one_example_is_zero():
    """Centering the tangent features of a single example leaves nothing: ``F = 0`` up to
    round-off of the features' own size, in every exact representation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 1)).double()
    model[0].bias.requires_grad_(False)
    x = torch.tensor([[1.5410]])
    case = Case("vector", model, x, torch.zeros(1, dtype=torch.long), [1], "binary", 1)
    size = float(reference.fisher(case, reference.features(case)).norm())
    for rep, M in _all_exact(case, centering=True).items():
        assert abs(float(M.trace())) <= 1e-14 * size, rep
        assert float(M.diag().flat().abs().max()) <= 1e-14 * size, rep


class _Chain(nn.Module):
    """As drawn: one Linear used inside a residual block and again in the chain, plus another
    Linear holding the same weight (tied), then a frozen head."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.tied = nn.Linear(1, 1, bias=False)
        self.tied.weight = self.lin.weight
        self.res = nn.Sequential(self.lin, nn.ELU())
        self.head = nn.Linear(1, 1)
        self.head.requires_grad_(False)

    def forward(self, x):
        h = x + self.res(x)
        return self.head(self.tied(torch.nn.functional.elu(self.lin(h))))


def test_module_used_at_several_places_keeps_its_parameters():
    """``torch.func.functional_call`` (the generic route) swaps the tensors of each path of a
    module used at several places and swaps them back in the same order, so the module kept
    the replacement tensors: after ``tl.fim`` the model's weight was a plain tensor, no longer
    the user's Parameter (an optimizer holding it would train nothing), and the tie to
    ``tied.weight`` was broken, so the next Fisher counted two parameters. The engine puts
    the tensors back (``engine.keep_tensors``)."""
    torch.manual_seed(0)
    model = _Chain().double().eval()
    weight = model.lin.weight
    x = torch.tensor([[1.5410], [-0.3], [0.7]])
    case = Case("vector", model, x, torch.zeros(3, dtype=torch.long), [2, 1], "raw", 1)
    want = reference.fisher(case, reference.features(case))
    for _ in range(2):
        for rep, M in _all_exact(case).items():
            assert M.space.names == ("lin.weight",), rep
            assert abs(float(M.trace()) - float(want.trace())) <= 1e-10 * float(want.trace()), rep
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tl.ntk(model, x)
            J = tl.jacobian(model, x, implicit=True)
            J.T.mv(J.mv(tl.PVector.randn(J.space, dtype=torch.float64)))
        for m in (model.lin, model.res[0], model.tied):
            assert m.weight is weight and isinstance(m.weight, nn.Parameter)


def test_layernorm_over_one_feature_has_a_zero_jacobian():
    """LayerNorm over a single feature outputs ``0·weight``: its weight's Jacobian is 0. The
    oracle (PyTorch's batched composite) gives an exact 0; tangentlab's LayerNorm rule takes
    the normalized input from PyTorch's ``F.layer_norm`` kernel, whose round-off of ``x − mean``
    (about 1e-16·|x|) is amplified by ``1/sqrt(eps)``: bounded by that, not zero."""
    model = nn.Sequential(nn.LayerNorm(1, bias=False), nn.Linear(1, 1)).double().eval()
    model[1].requires_grad_(False)
    x = torch.tensor([[1.5410], [-2.0], [1e3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        J = tl.jacobian(model, x)
        Ji = tl.jacobian(model, x, implicit=True)
        u = tl.FVector(torch.ones(3, 1))
        for got in (J.to_dense(), Ji.T.mv(u).flat(), J.T.mv(u).flat(), tl.fim(model, x, "raw", "dense").to_dense()):
            assert float(got.abs().max()) <= 1e-15 * float(x.abs().max()) / 1e-5 ** 0.5
