"""The CUDA path against the CPU float64 oracle (skipped without a CUDA device).

Run on a lent GPU machine by ``benchmarks/gpu_check.sh`` (see benchmarks/README.md):
every quantity computed on the GPU in float64 equals the CPU oracle to float64
precision, per architecture and representation; the mixed-precision policies stay
within their documented errors; and the NCCL backend works for the distributed
accumulation (a one-rank group: a machine with one GPU cannot hold two NCCL ranks).
"""

from __future__ import annotations

import copy
import socket
import warnings

import pytest
import torch

import tangentlab as tl
from tangentlab.engine import engine as engine_mod

from .cases import arch_case, reference
from .models import ARCHS
from .oracle import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ARCH_NAMES = sorted(ARCHS)
CUDA = torch.device("cuda", 0)
TOL = 1e-9


def _on_cuda(arch: str):
    model, x, y, F = arch_case(arch)
    return copy.deepcopy(model).to(CUDA), x.to(CUDA), y.to(CUDA), F


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


@pytest.mark.parametrize("rep", ["dense", "diag", "blockdiag", "quasidiag", "lowrank"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fisher_on_cuda_matches_cpu_oracle(arch, rep):
    model, x, y, _ = _on_cuda(arch)
    M = _quiet(tl.fim, model, (x, y), "exact", rep, batch_size=4)
    assert rel_err(M.to_dense().cpu(), reference(arch, rep)) < TOL


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_implicit_on_cuda_with_output_blocks(monkeypatch, arch):
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
    model, x, y, _ = _on_cuda(arch)
    R = reference(arch, "implicit")
    M = _quiet(tl.fim, model, (x, y), "exact", "implicit", batch_size=4)
    assert abs(float(M.trace()) - float(R.trace())) < TOL * float(R.trace())
    v = tl.PVector.randn(M.space, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(M.mv(v.to(CUDA)).flat().cpu(), R @ v.flat()) < TOL


@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_kronecker_on_cuda_matches_cpu(arch, rep):
    model_c, x_c, y_c, _ = arch_case(arch)
    try:
        ref = _quiet(tl.fim, model_c, (x_c, y_c), "exact", rep, batch_size=4)
    except tl.UnsupportedLayerError:
        pytest.skip(f"{arch} has layers without a Kronecker structure")
    model, x, y, _ = _on_cuda(arch)
    M = _quiet(tl.fim, model, (x, y), "exact", rep, batch_size=4)
    assert rel_err(M.to_dense().cpu(), ref.to_dense()) < 1e-10


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_ntk_and_jacobian_on_cuda_match_cpu(arch):
    model_c, x_c, _, _ = arch_case(arch)
    model, x, _, _ = _on_cuda(arch)
    k_cpu = _quiet(tl.ntk, model_c, x_c, batch_size=4).data
    k = _quiet(tl.ntk, model, x, batch_size=4).data
    assert k.device.type == "cuda" and rel_err(k.cpu(), k_cpu) < 1e-10
    j_cpu = _quiet(tl.jacobian, model_c, x_c, batch_size=4).data
    assert rel_err(_quiet(tl.jacobian, model, x, batch_size=4).data.cpu(), j_cpu) < 1e-10


def test_tiled_ntk_on_cuda_equals_in_memory(tmp_path):
    from tangentlab.ntk_large import ntk_tiled

    model, x, _, _ = _on_cuda("mlp")
    full = tl.ntk(model, x).data.cpu()
    tiled = ntk_tiled(model, x, block=3, path=tmp_path / "k").data
    assert rel_err(tiled.cpu(), full) < 1e-12


@pytest.mark.parametrize("policy,tol", [("tf32", 5e-3), ("bf16", 5e-2), ("model/fp64", 1e-6)])
def test_mixed_precision_on_cuda(policy, tol):
    model, x, _, _ = _on_cuda("cnn")
    ref = tl.ntk(model, x).data
    m32 = copy.deepcopy(model).float()
    k = tl.ntk(m32, x.float(), precision=policy).data
    assert rel_err(k.double(), ref) < tol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nccl_one_rank_group_equals_local():
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    model, x, y, _ = _on_cuda("mlp")
    local = tl.fim(model, (x, y), "exact", "diag", batch_size=4).to_dense()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            device_id=CUDA)
    try:
        dist_f = tl.fim(model, (x, y), "exact", "diag", batch_size=4, distributed=True).to_dense()
        ekfac = tl.fim(model, (x, y), "exact", "ekfac", batch_size=4, distributed=True).to_dense()
    finally:
        dist.destroy_process_group()
    assert rel_err(dist_f, local) < 1e-12
    assert rel_err(ekfac, tl.fim(model, (x, y), "exact", "ekfac", batch_size=4).to_dense()) < 1e-10
