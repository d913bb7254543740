"""Output-blocked captures (``Engine.capture_blocks``): consumers that sum over output
coordinates receive a batch in several captures, one backward per block of outputs, so
that only one block's ``g`` is alive. Forced to blocks of one output here, every such
representation still equals the float64 oracle, per architecture; and the grouped-
convolution squared norms (no unfolded patches) equal the im2col ones."""

from __future__ import annotations

import warnings

import pytest
import torch

import tangentlab as tl
from tangentlab.engine import OutputBlocks
from tangentlab.engine import engine as engine_mod
from tangentlab.layers import linear as linear_mod

from .cases import arch_case, reference
from .models import ARCHS
from .oracle import rel_err

ARCH_NAMES = sorted(ARCHS)
TOL = 1e-9
SUMMED = ["dense", "diag", "blockdiag", "quasidiag"]


@pytest.fixture
def one_output_blocks(monkeypatch):
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)


def _fim(arch: str, rep: str, **kw):
    model, x, y, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.fim(model, (x, y), "exact", rep, batch_size=4, **kw)


@pytest.mark.parametrize("rep", SUMMED)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_summed_representations_match_oracle(one_output_blocks, arch, rep):
    assert rel_err(_fim(arch, rep).to_dense(), reference(arch, rep)) < TOL


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_implicit_trace_and_diag_match_oracle(one_output_blocks, arch):
    M, R = _fim(arch, "implicit"), reference(arch, "implicit")
    assert abs(float(M.trace()) - float(R.trace())) < TOL * float(R.trace())
    assert rel_err(M.diag().flat(), torch.diagonal(R)) < TOL


@pytest.mark.parametrize("rep", ["dense", "diag", "quasidiag"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_centered_blocks_equal_unblocked(monkeypatch, arch, rep):
    full = _fim(arch, rep, centering=True).to_dense()
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
    assert rel_err(_fim(arch, rep, centering=True).to_dense(), full) < 1e-12


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_capture_blocks_partition_the_outputs(arch):
    model, x, y, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = tl.Engine(model, "exact")
        whole = eng.capture((x[:5], y[:5]))
        blocks = list(eng.capture_blocks((x[:5], y[:5]), 0, OutputBlocks.of(2)))
    c = whole.n_outputs
    assert [b.out_start for b in blocks] == list(range(0, c, 2))
    assert [b.first for b in blocks] == [True] + [False] * (len(blocks) - 1)
    assert all(b.total_outputs == c and b.n == 5 for b in blocks)
    assert sum(b.n_outputs for b in blocks) == c
    for j, lc in enumerate(whole.layers):
        got = torch.cat([b.layers[j].g for b in blocks])
        assert torch.equal(got, lc.g) or rel_err(got, lc.g) < 1e-13
        assert all(b.layers[j].feat is blocks[0].layers[j].feat for b in blocks)  # features shared
    for name, jac in whole.generic.items():
        assert rel_err(torch.cat([b.generic[name] for b in blocks]), jac) < 1e-13


def test_default_block_bounds_g(monkeypatch):
    """With the default rule a block's g holds about OUTPUT_BLOCK_ELEMENTS entries."""
    model, x, y, _ = arch_case("cnn")
    eng = tl.Engine(model, "exact")
    out_numel = sum(lc.g[0].numel() for lc in eng.capture((x, y)).layers)
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 2 * out_numel)
    sizes = [b.n_outputs for b in eng.capture_blocks((x, y), 0)]
    assert sizes[:-1] == [2] * (len(sizes) - 1) and sum(sizes) == eng.capture((x, y)).n_outputs


@pytest.mark.parametrize("conv", [
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    dict(in_channels=3, out_channels=4, kernel_size=(2, 3), stride=2, dilation=(1, 2), padding=2),
    dict(in_channels=3, out_channels=5, kernel_size=3, bias=False, padding="same", padding_mode="reflect"),
])
def test_grouped_sq_norms_equal_im2col(monkeypatch, conv):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(**conv), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3)).double()
    x = torch.randn(7, 3, 9, 9, dtype=torch.float64)
    model(x)
    eng = tl.Engine(model, "raw")

    def norms(min_positions: int) -> torch.Tensor:
        monkeypatch.setattr(linear_mod, "GROUPED_MIN_POSITIONS", min_positions)
        out = []
        for cap in eng.capture_blocks((x,), 0, OutputBlocks.of(1)):
            lc = cap.layers[0]
            assert isinstance(lc.feat, linear_mod.Patches)
            assert lc.feat.a_ is None or not cap.first  # the blocks of a batch share the features
            out.append(lc.rule.sq_norms(lc.module, lc.feat, lc.g))  # many positions: materialized
            unfolded = lc.feat.a_ is not None
        return torch.cat(out), unfolded

    grouped, unfolded_g = norms(10**9)
    im2col, unfolded_i = norms(0)
    assert not unfolded_g and unfolded_i  # the grouped route never unfolds the patches
    per_example = torch.func.vmap(torch.func.jacrev(
        lambda p, xi: torch.func.functional_call(model, p, (xi[None],))[0]), in_dims=(None, 0))(
        {k: v.detach() for k, v in model[0].named_parameters(prefix="0")}, x)
    ref = sum(j.pow(2).reshape(7, 3, -1).sum(-1) for j in per_example.values()).T
    assert rel_err(grouped, ref) < 1e-12 and rel_err(im2col, ref) < 1e-12


@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_kronecker_blocks_equal_unblocked(monkeypatch, arch, rep):
    """KFAC's input factor is taken once per batch (first block), its output factor and
    EKFAC's s* summed over the blocks: the same matrices as with one capture per batch."""
    try:
        full = _fim(arch, rep)
    except tl.errors.UnsupportedLayerError:
        pytest.skip(f"{arch} has layers without a Kronecker structure")
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
    blocked = _fim(arch, rep)
    assert rel_err(blocked.to_dense(), full.to_dense()) < 1e-12
    v = tl.PVector.randn(full.space, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel_err(blocked.mv(v).flat(), full.mv(v).flat()) < 1e-12


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_jacobian_and_ntk_diagonal_in_output_blocks(monkeypatch, arch):
    """The dense Jacobian, the kernel diagonal and NTKOperator.diag fill their (N, C, ·) rows
    one output block at a time: the same values as with one capture per batch."""
    from tangentlab.fmat import ntk_diag
    from tangentlab.ntk_large import NTKOperator

    model, x, _, _ = arch_case(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        j_full = tl.jacobian(model, x, batch_size=4).data
        d_full = ntk_diag(tl.Engine(model, "raw"), tl.data.Batches(x, 4))
        monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
        j = tl.jacobian(model, x, batch_size=4).data
        d = ntk_diag(tl.Engine(model, "raw"), tl.data.Batches(x, 4))
        op = NTKOperator(model, x, batch_size=4).diag()
    assert rel_err(j, j_full) < 1e-13
    assert rel_err(d, d_full) < 1e-13 and rel_err(op, d_full) < 1e-13
    k = tl.ntk(model, x).as_matrix().diagonal()
    assert rel_err(d.reshape(-1), k) < 1e-10


@pytest.mark.parametrize("policy", ["bf16", "model/fp64"])
@pytest.mark.parametrize("rep", ["diag", "kfac", "implicit"])
def test_output_blocks_under_precision_policy(monkeypatch, rep, policy):
    """Mixed precision casts the shared features once per batch and each block's g: the
    blocked matrices equal the unblocked ones in the accumulation dtype, up to the float32
    rounding of g (a backward per block rounds its matmuls differently from a batched one)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).float()
    x, y = torch.randn(12, 1, 8, 8, dtype=torch.float32), torch.randint(0, 5, (12,))
    full = tl.fim(model, (x, y), "exact", rep, precision=policy, batch_size=5)
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
    blocked = tl.fim(model, (x, y), "exact", rep, precision=policy, batch_size=5)
    v = tl.PVector.randn(full.space, dtype=full.dtype, generator=torch.Generator().manual_seed(1))
    a, b = blocked.mv(v).flat(), full.mv(v).flat()
    assert a.dtype == b.dtype == full.dtype
    assert rel_err(a.double(), b.double()) < 1e-6
    assert abs(float(blocked.trace()) - float(full.trace())) <= 1e-6 * abs(float(full.trace()))
