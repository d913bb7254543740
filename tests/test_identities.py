"""Mathematical identities: KL expansion, Monte-Carlo convergence, finite differences,
adjointness, FIM/NTK duality, output kinds against their closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import tangentlab as tl

from . import oracle
from .cases import REPRESENTATIONS, arch_case, built, restrict
from .models import ARCHS

ARCH_NAMES = sorted(ARCHS)


def _perturbed(model, space, dw):
    import copy

    m2 = copy.deepcopy(model)
    (tl.PVector.from_model(m2, space).detach() + dw).copy_to_model(m2)
    return m2


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fisher_kl_second_order(arch):
    """2·KL(p_w ‖ p_{w+dw}) / dwᵀ F dw → 1 (KL averaged over examples)."""
    model, x, y, _ = arch_case(arch)
    Fm = built(arch, "dense")
    g = torch.Generator().manual_seed(0)
    for eps in (1e-3, 1e-4):
        dw = tl.PVector.randn(Fm.space, dtype=torch.float64, generator=g)
        if arch == "tokens":  # the padding row is a constant by PyTorch's convention
            dw["emb.weight"][0] = 0
        dw = dw * (eps / float(dw.norm()))
        with torch.no_grad():
            logp = torch.log_softmax(model(x), -1)
            logq = torch.log_softmax(_perturbed(model, Fm.space, dw)(x), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean()
        ratio = float(2 * kl / Fm.vTMv(dw))
        assert abs(ratio - 1) < 50 * eps, (eps, ratio)


def test_binary_and_regression_kl():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x = torch.randn(30, 4)
    Fb = tl.fim(model, x, "binary", "dense")
    Fr = tl.fim(model, x, "regression", "dense", variance=0.5)
    dw = tl.PVector.randn(Fb.space, dtype=torch.float64) * 1e-4
    m2 = _perturbed(model, Fb.space, dw)
    with torch.no_grad():
        p, q = torch.sigmoid(model(x)), torch.sigmoid(m2(x))
        kl_b = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()
        kl_r = ((model(x) - m2(x)).pow(2).sum(-1) / (2 * 0.5)).mean()
    assert abs(float(2 * kl_b / Fb.vTMv(dw)) - 1) < 1e-3
    assert abs(float(2 * kl_r / Fr.vTMv(dw)) - 1) < 1e-3
    # closed forms
    J = oracle.jacobian(model, x)[:, 0]
    with torch.no_grad():
        pp = torch.sigmoid(model(x))[:, 0]
    assert oracle.rel_err(Fb.to_dense(), (J.T * (pp * (1 - pp))) @ J / 30) < 1e-10
    assert oracle.rel_err(Fr.to_dense(), J.T @ J / (30 * 0.5)) < 1e-10


@pytest.mark.slow
def test_monte_carlo_fisher_converges():
    """Relative Frobenius error of the MC Fisher falls like 1/sqrt(k)."""
    model, x, y, F_exact = arch_case("mlp")
    errs = {}
    for k in (1, 10, 100, 1000):
        Fm = tl.fim(model, x, "mc", "dense", n_samples=k, seed=k)
        errs[k] = oracle.rel_err(Fm.to_dense(), F_exact)
    assert errs[1000] < errs[10] < errs[1]
    assert errs[1000] < 0.1
    assert errs[1000] < errs[1] / 8  # sqrt(1000) ≈ 31.6; generous margin


def test_monte_carlo_dense_equals_implicit_with_fixed_seed():
    model, x, y, _ = arch_case("cnn")
    D = tl.fim(model, x, "mc", "dense", n_samples=3, seed=5, batch_size=4)
    Im = tl.fim(model, x, "mc", "implicit", n_samples=3, seed=5, batch_size=4)
    v = tl.PVector.randn(D.space, dtype=torch.float64)
    assert oracle.rel_err(Im.mv(v).flat(), D.mv(v).flat()) < 1e-10
    assert abs(float(Im.trace() - D.trace())) < 1e-10 * float(D.trace())
    D2 = tl.fim(model, x, "mc", "dense", n_samples=3, seed=6, batch_size=4)
    assert oracle.rel_err(D2.to_dense(), D.to_dense()) > 1e-3  # another seed, other samples


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_empirical_fisher(arch):
    model, x, y, _ = arch_case(arch)
    want = oracle.empirical_fisher(model, x, y)
    for rep in ("dense", "implicit"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            M = tl.fim(model, (x, y), "empirical", rep, batch_size=4)
        v = tl.PVector.randn(M.space, dtype=torch.float64)
        assert oracle.rel_err(M.mv(v).flat(), want @ v.flat()) < 1e-10


def test_empirical_fisher_custom_loss():
    model, x, y, _ = arch_case("mlp")
    target = torch.randn(x.shape[0], 4)
    M = tl.fim(model, (x, target), "empirical", "dense",
               loss=lambda z, t: 0.5 * (z - t).pow(2).sum(-1))
    J = oracle.jacobian(model, x)
    with torch.no_grad():
        r = model(x) - target
    g = torch.einsum("ncp,nc->np", J, r)
    assert oracle.rel_err(M.to_dense(), g.T @ g / x.shape[0]) < 1e-10


def test_callable_output_class_difference():
    """Scalar function f_{c2} − f_{c1} (binary sub-kernel of the thesis)."""
    model, x, y, _ = arch_case("cnn")
    K = tl.ntk(model, x, output=lambda m, b: m(b[0])[:, 2] - m(b[0])[:, 0])
    J = oracle.jacobian(model, x)
    d = J[:, 2] - J[:, 0]
    assert K.shape == (x.shape[0], x.shape[0], 1, 1)
    assert oracle.rel_err(K.data[:, :, 0, 0], d @ d.T) < 1e-10


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_jv_finite_differences(arch):
    model, x, _, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Jd = tl.jacobian(model, x, batch_size=4)
        Ji = tl.jacobian(model, x, implicit=True, batch_size=4)
    v = tl.PVector.randn(Jd.space, dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd = (_perturbed(model, Jd.space, h * v)(x) - _perturbed(model, Jd.space, -h * v)(x)) / (2 * h)
    fd = fd.reshape(x.shape[0], -1)
    # padding rows of an embedding are constants by PyTorch's convention: skip that check there
    if arch != "tokens":
        assert oracle.rel_err(Jd.mv(v).tensor, fd) < 1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert oracle.rel_err(Ji.mv(v).tensor, Jd.mv(v).tensor) < 1e-10


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_adjointness(arch, implicit):
    """⟨J v, u⟩ = ⟨v, Jᵀ u⟩."""
    model, x, _, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        J = tl.jacobian(model, x, implicit=implicit, batch_size=4)
        v = tl.PVector.randn(J.space, dtype=torch.float64)
        jv = J.mv(v)
        u = tl.FVector(torch.randn_like(jv.tensor))
        jtu = J.T.mv(u)
    assert abs(float(jv.dot(u) - v.dot(jtu))) < 1e-10 * float(jv.norm() * u.norm())
    want = oracle.jacobian(model, x)
    assert oracle.rel_err(jv.tensor, want @ v.flat()) < 1e-10
    assert oracle.rel_err(jtu.flat(), torch.einsum("ncp,nc->p", want, u.tensor)) < 1e-10


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fim_ntk_duality(arch):
    """The Fisher (ΦᵀΦ/N) and the NTK of the same pseudo-outputs (ΦΦᵀ) share their non-zero spectrum."""
    model, x, _, _ = arch_case(arch)
    Fm = built(arch, "dense")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        K = tl.ntk(model, x, output="exact", batch_size=4)
    n = x.shape[0]
    k_eigs = torch.linalg.eigvalsh(K.as_matrix()).flip(0) / n
    f_eigs = torch.linalg.eigvalsh(Fm.to_dense()).flip(0)
    r = min(k_eigs.numel(), f_eigs.numel())
    assert oracle.rel_err(f_eigs[:r], k_eigs[:r]) < 1e-9
    if f_eigs.numel() > r:
        assert float(f_eigs[r:].abs().max()) < 1e-10 * float(f_eigs[0])


@pytest.mark.parametrize("rep", REPRESENTATIONS)
@pytest.mark.parametrize("arch", ["mlp", "norms", "tokens"])
def test_centered_fisher(arch, rep):
    model, x, _, _ = arch_case(arch)
    J = oracle.jacobian(model, x)
    Jc = J - J.mean(0, keepdim=True)
    want = torch.einsum("ncp,ncq->pq", Jc, Jc) / x.shape[0]
    M = tl.fim(model, x, "raw", rep, centering=True, batch_size=4)
    v = tl.PVector.randn(M.space, dtype=torch.float64)
    want = restrict(rep, M.space, want)
    assert oracle.rel_err(M.mv(v).flat(), want @ v.flat()) < 1e-9
    assert abs(float(M.trace() - want.trace())) < 1e-9 * float(want.trace())
    assert oracle.rel_err(M.diag().flat(), torch.diagonal(want)) < 1e-9


@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_parameter_selection(rep):
    """Restricting to a subset of layers / parameters gives the oracle's sub-block."""
    model, x, y, F_full = arch_case("norms")
    names = [n for n, _ in model.named_parameters()]
    chosen = ["c2", "bn1.weight", "out"]
    keep = [i for i, n in enumerate(names) if n.startswith("c2.") or n == "bn1.weight" or n.startswith("out.")]
    idx = torch.cat([torch.arange(sum(p.numel() for p in list(model.parameters())[:i]),
                                  sum(p.numel() for p in list(model.parameters())[:i + 1])) for i in keep])
    M = tl.fim(model, (x, y), "exact", rep, params=chosen, batch_size=3)
    assert M.space.names == tuple(names[i] for i in keep)
    want = F_full[idx][:, idx]
    v = tl.PVector.randn(M.space, dtype=torch.float64)
    want = restrict(rep, M.space, want)
    assert oracle.rel_err(M.mv(v).flat(), want @ v.flat()) < 1e-10


def test_partial_layer_selection_uses_materialized_path():
    """Selecting only a Linear's weight must exclude its bias from NTK blocks and norms."""
    model, x, _, _ = arch_case("mlp")
    K = tl.ntk(model, x, params=["0.weight", "4.bias"])
    names = [n for n, _ in model.named_parameters()]
    J = oracle.jacobian(model, x, names=["0.weight", "4.bias"])
    assert oracle.rel_err(K.data, torch.einsum("ncp,mdp->nmcd", J, J)) < 1e-10
    T = tl.fim(model, x, "raw", "implicit", params=["0.weight", "4.bias"])
    assert abs(float(T.trace()) - float(J.pow(2).sum() / x.shape[0])) < 1e-10 * float(J.pow(2).sum())
    assert names  # keep names used


def test_tied_embedding_with_padding_idx_implicit():
    """Forward-mode products must follow backward's padding_idx convention, also for tied weights."""
    torch.manual_seed(0)

    class Tied(torch.nn.Module):
        def __init__(self, tie):
            super().__init__()
            self.emb = torch.nn.Embedding(9, 5, padding_idx=1)
            self.out = torch.nn.Linear(5, 9, bias=False)
            if tie:
                self.out.weight = self.emb.weight

        def forward(self, x):
            return self.out(torch.tanh(self.emb(x)).mean(1))

    for tie in (False, True):
        model = Tied(tie).double()
        x = torch.randint(0, 9, (6, 4))
        x[:, 0] = 1
        want = oracle.gauss_newton(model, x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            M = tl.fim(model, x, "raw", "implicit")
            D = tl.fim(model, x, "raw", "dense")
        v = tl.PVector.randn(M.space, dtype=torch.float64)
        assert oracle.rel_err(M.mv(v).flat(), want @ v.flat()) < 1e-10
        assert oracle.rel_err(D.to_dense(), want) < 1e-10


def test_joint_route_matches_whole_batch_jacobian():
    """route='joint' differentiates the whole batch function (BatchNorm in train mode)."""
    from torch.func import functional_call, jacrev

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 2)).double().train()
    x = torch.randn(8, 3)
    before = model[1].running_mean.clone()
    J = tl.jacobian(model, x, route="joint", batch_size=8)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    jac = jacrev(lambda p, b: functional_call(model, {**p, **b}, (x,)))(params, buffers)
    want = torch.cat([jac[k].reshape(8, 2, -1) for k in params], 2)
    assert oracle.rel_err(J.data, want) < 1e-10
    assert torch.equal(model[1].running_mean, before), "running statistics must not change"


def test_loss_is_per_example_in_empirical_fisher():
    model, x, y, _ = arch_case("mlp")
    with pytest.raises(tl.InvalidInputError, match="reduction='none'"):
        tl.fim(model, (x, y), "empirical", "diag", loss=lambda z, t: F.cross_entropy(z, t))


def test_double_vjp_fallback_without_forward_mode():
    """An op without a forward-mode rule: J·v falls back to the double-VJP identity (warned once)."""
    from tangentlab.engine.functional import ForwardADWarning

    class Cube(torch.autograd.Function):  # backward (and vmap) only, no jvp
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 5)
            self.b = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.b(Cube.apply(self.a(x)))

    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(7, 4)
    M = tl.fim(model, x, "raw", "implicit")
    v = tl.PVector.randn(M.space, dtype=torch.float64)
    with pytest.warns(ForwardADWarning, match="double-VJP"):
        got = M.mv(v)
    assert oracle.rel_err(got.flat(), oracle.gauss_newton(model, x) @ v.flat()) < 1e-10
