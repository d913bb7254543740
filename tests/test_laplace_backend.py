"""tangentlab's laplace-torch backends against laplace-torch's own (float64, 1e-8 relative).

``TangentlabGGN`` / ``TangentlabEF`` fitted through ``laplace.Laplace`` on small MLPs and a
small CNN, classification and regression, all weights and last layer, diag / kron / full
Hessians: the Hessian (for kron: every Kronecker factor and the expanded matrix), the loss,
the log marginal likelihood and the GLM predictive equal those of the curvlinops backend
(BackPACK's for the empirical-Fisher diagonal of the last layer, which laplace-torch's
generic ``gradients`` does not cover). The data loader splits the data into uneven batches,
so the per-batch scaling of the Kronecker factors is exercised.

Skipped when laplace-torch cannot be imported (install the ``[laplace]`` extra as the
README's laplace-torch section says).
"""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import laplace
    from laplace.curvature import BackPackEF, CurvlinopsEF, CurvlinopsGGN
except Exception as exc:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
    pytest.skip(f"laplace-torch is not importable ({type(exc).__name__}: {exc}); install the "
                "[laplace] extra as the README's laplace-torch section says", allow_module_level=True)

from tangentlab.errors import InvalidInputError
from tangentlab.integrations.laplace import TangentlabEF, TangentlabGGN

RTOL = 1e-8
C = 3


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, C))


def _mlp_nobias() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 7, bias=False), nn.Tanh(), nn.Linear(7, C))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 2, bias=False), nn.Tanh(),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, C))


MODELS = {"mlp": (_mlp, (4,)), "mlp_nobias": (_mlp_nobias, (4,)), "cnn": (_cnn, (2, 6, 6))}


def _problem(model_name: str, likelihood: str):
    make, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    x = torch.randn(20, *shape)
    y = torch.randint(0, C, (20,)) if likelihood == "classification" else torch.randn(20, C)
    return model, x, DataLoader(TensorDataset(x, y), batch_size=7)


def _fit(model, likelihood, subset, structure, backend, loader):
    la = laplace.Laplace(model, likelihood, subset_of_weights=subset, hessian_structure=structure,
                         backend=backend)
    la.fit(loader)
    return la


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _compare(mine, ref, likelihood: str, x: torch.Tensor) -> None:
    assert mine.H is not None
    if isinstance(ref.H, torch.Tensor):
        assert ref.H.norm() > 0
        assert _rel(mine.H, ref.H) < RTOL
    else:  # Kron: factor by factor, and the expanded matrix
        assert len(mine.H_facs.kfacs) == len(ref.H_facs.kfacs)
        for fm, fr in zip(mine.H_facs.kfacs, ref.H_facs.kfacs):
            assert len(fm) == len(fr)
            for a, b in zip(fm, fr):
                assert a.shape == b.shape and _rel(a, b) < RTOL
        assert _rel(mine.H.to_matrix(), ref.H.to_matrix()) < RTOL
    assert _rel(mine.loss, ref.loss) < RTOL
    prior, sigma = torch.tensor(0.7), torch.tensor(0.9) if likelihood == "regression" else None
    assert _rel(mine.log_marginal_likelihood(prior, sigma), ref.log_marginal_likelihood(prior, sigma)) < RTOL
    if likelihood == "classification":
        for link in ("probit", "bridge"):
            pm = mine(x[:5], pred_type="glm", link_approx=link)
            pr = ref(x[:5], pred_type="glm", link_approx=link)
            assert _rel(pm, pr) < RTOL
    else:
        for pm, pr in zip(mine(x[:5], pred_type="glm"), ref(x[:5], pred_type="glm")):
            assert _rel(pm, pr) < RTOL


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_ggn_matches_curvlinops(model_name, likelihood, subset, structure):
    model, x, loader = _problem(model_name, likelihood)
    ref = _fit(model, likelihood, subset, structure, CurvlinopsGGN, loader)
    mine = _fit(_problem(model_name, likelihood)[0], likelihood, subset, structure, TangentlabGGN, loader)
    _compare(mine, ref, likelihood, x)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_ef_matches_curvlinops(model_name, likelihood, subset, structure):
    model, x, loader = _problem(model_name, likelihood)
    backend = BackPackEF if (subset, structure) == ("last_layer", "diag") else CurvlinopsEF
    ref = _fit(model, likelihood, subset, structure, backend, loader)  # BackPACK extends `model` in place
    mine = _fit(_problem(model_name, likelihood)[0], likelihood, subset, structure, TangentlabEF, loader)
    _compare(mine, ref, likelihood, x)


def test_jacobians_and_gradients_match_torch_func():
    """``jacobians`` ``(M, C, P)`` and ``gradients`` ``(M, P)`` equal laplace-torch's torch.func ones."""
    model, x, _ = _problem("cnn", "classification")
    y = torch.randint(0, C, (x.shape[0],))
    ggn = TangentlabGGN(model, "classification")
    j, f = ggn.jacobians(x)
    j_ref, f_ref = laplace.curvature.CurvatureInterface.jacobians(ggn, x)
    assert j.shape == j_ref.shape and _rel(j, j_ref) < RTOL and _rel(f, f_ref) < RTOL
    ef = TangentlabEF(model, "classification")
    g, loss = ef.gradients(x, y)
    g_ref, loss_ref = laplace.curvature.CurvatureInterface.gradients(ef, x, y)
    assert g.shape == g_ref.shape and _rel(g, g_ref) < RTOL and _rel(loss, loss_ref) < RTOL


def test_refusals():
    model, x, _ = _problem("mlp", "classification")
    with pytest.raises(InvalidInputError, match="stochastic"):
        TangentlabGGN(model, "classification", stochastic=True)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, C))
    ggn = TangentlabGGN(grouped, "classification")
    with pytest.raises(InvalidInputError, match="Kron"):
        ggn.kron(torch.randn(5, 2, 6, 6), torch.randint(0, C, (5,)), N=5)
