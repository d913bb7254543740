"""Data-parallel accumulation and tiled kernels across processes (gloo on CPU).

Each multi-process test starts 2 or 3 local processes; every rank's result must
equal the single-process result on the whole data to float64 precision.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import tangentlab as tl
from tangentlab.distributed import Reducer, shard
from tangentlab.errors import InvalidInputError
from tangentlab.ntk_large import NTKOperator, ntk_tiled

from . import distributed_worker as W

TOL = 1e-10


def rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / max(b.norm(), 1e-300))


@pytest.fixture(scope="module")
def reference():
    model, x, y, v = W.problem()
    ref = {rep: tl.fim(model, (x, y), "exact", rep, batch_size=7).to_dense() for rep in W.REPS}
    ref["dense_centered"] = tl.fim(model, x, "raw", "dense", centering=True).to_dense()
    ref["ddp_diag"] = tl.fim(model, (x, y), "empirical", "diag").to_dense()
    imp = tl.fim(model, (x, y), "exact", "implicit")
    pv = tl.PVector.from_flat(imp.space, v)
    ref["implicit_mv"] = imp.mv(pv).flat()
    ref["implicit_vTMv"] = imp.vTMv(pv)
    ref["implicit_trace"] = imp.trace()
    ref["implicit_diag"] = imp.diag().flat()
    ref["implicit_eig"] = torch.linalg.eigvalsh(ref["dense"]).flip(0)[:2]
    K = tl.ntk(model, x)
    ref["ntk"] = K.data
    ref["ntk_disk"] = K.data
    ref["ntk_cross"] = tl.ntk(model, x, x[:9]).data
    u = torch.linspace(-1, 1, W.N * 4, dtype=torch.float64).reshape(W.N, 4)
    ref["ntk_mv"] = (K.as_matrix() @ u.reshape(-1)).reshape(W.N, 4)
    ref["ntk_diag"] = K.as_matrix().diagonal().reshape(W.N, 4)
    ref["ntk_api"] = K.data
    ref["ntk_api_cross"] = ref["ntk_cross"]
    ref["ntk_api_layers"] = tl.ntk(model, x, per_layer=True, centering=True).layer("0").data
    J = tl.jacobian(model, x)
    ref["jac_dense"] = J.to_dense()
    ref["jac_mv"] = J.mv(tl.PVector.from_flat(J.space, v)).tensor
    ref["jac_T"] = J.T.mv(tl.FVector(u)).flat()
    return ref


def _spawn(world: int, tmp_path: Path, uneven: bool, tile_dir: str | None) -> list[dict]:
    init = tmp_path / "init"
    mp.spawn(W.main, args=(world, str(init), str(tmp_path), uneven, tile_dir), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _check(results: list[dict], reference: dict) -> None:
    shards = [r["shard"] for r in results]
    assert shards[0][0] == 0 and shards[-1][1] == W.N
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))  # contiguous, no overlap
    model, x, y, _ = W.problem()
    ek = tl.fim(model, (x, y), "exact", "ekfac", batch_size=7)
    idx = torch.cat([torch.arange(a, min(a + 5, b)) for a, b in shards])
    reference = {**reference, "ekfac_update": ek.update_diag((x[idx], y[idx])).to_dense()}
    for rank, res in enumerate(results):
        for key, ref in reference.items():
            if key in res:
                assert rel(res[key], ref) < TOL, (rank, key, rel(res[key], ref))


@pytest.mark.distributed
def test_two_processes_equal_shards(tmp_path, reference):
    results = _spawn(2, tmp_path, uneven=False, tile_dir=None)
    _check(results, reference)


@pytest.mark.distributed
def test_three_processes_uneven_shards_and_resumed_tiles(tmp_path, reference):
    model, x, _, _ = W.problem()
    tile_dir = tmp_path / "tiles"
    # a first, single-process run killed after 4 tiles leaves finished tiles on disk
    count = []

    def stop(i, j):
        count.append((i, j))
        if len(count) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ntk_tiled(model, x, block=4, path=tile_dir, on_tile=stop)
    done = sorted(p.name for p in (tile_dir / "tiles").glob("*.done"))
    assert len(done) == 4
    results = _spawn(3, tmp_path, uneven=True, tile_dir=str(tile_dir))
    assert [r["shard"][1] - r["shard"][0] for r in results] == [2, 3, W.N - 5]
    _check(results, reference)


@pytest.mark.distributed
def test_data_parallel_optimizers_match_one_process(tmp_path):
    world = 2
    mp.spawn(W.optimizer_main, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    per = W.N // world
    for kind in ("kfac", "ekfac", "ekfac-ra"):
        model, x, y, _ = W.problem()
        ref = W.optimizer_run(kind, model, x[:world * per], y[:world * per], False)
        for r in range(world):
            got = torch.load(tmp_path / f"opt{r}.pt", weights_only=False)[kind]
            assert rel(got, ref) < 1e-10, (kind, r, rel(got, ref))


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "TL_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "tests.distributed_worker"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, x, y, _ = W.problem()
    ref = tl.fim(model, (x, y), "exact", "diag").to_dense()
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert res["world"] == 2 and rel(res["diag"], ref) < TOL


# ---------------------------------------------------------------- single process
def test_shard_covers_everything_without_padding():
    for n, w in [(10, 3), (2, 2), (7, 1), (5, 4)]:
        parts = [shard(n, r, w) for r in range(w)]
        assert [i for p in parts for i in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(InvalidInputError):
        shard(5, 3, 2)


def test_local_reducer_is_identity_and_distributed_needs_a_process_group():
    red = Reducer.resolve(None)
    t = torch.ones(3)
    red.sum_(t)
    assert not red.active and red.world_size == 1 and red.total(5) == 5 and torch.equal(t, torch.ones(3))
    with pytest.raises(InvalidInputError, match="init_process_group"):
        Reducer.resolve(True)
    with pytest.raises(InvalidInputError, match="init_process_group"):
        tl.fim(W.problem()[0], W.problem()[1], "raw", "diag", distributed=True)


@pytest.mark.parametrize("x2", [False, True])
def test_ntk_tiled_matches_ntk(x2):
    model, x, _, _ = W.problem()
    other = x[:9] if x2 else None
    ref = tl.ntk(model, x, other).data
    assert rel(ntk_tiled(model, x, other, block=5).data, ref) < 1e-13


def test_ntk_tiled_resumes_and_refuses_other_inputs(tmp_path):
    model, x, _, _ = W.problem()
    seen = []

    def stop(i, j):
        seen.append((i, j))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ntk_tiled(model, x, block=6, path=tmp_path, on_tile=stop)
    rest = []
    K = ntk_tiled(model, x, block=6, path=tmp_path, on_tile=lambda i, j: rest.append((i, j)))
    assert not set(seen) & set(rest) and len(seen) + len(rest) == 10  # 4 row blocks: 10 tiles
    assert rel(K.data, tl.ntk(model, x).data) < 1e-13
    with pytest.raises(InvalidInputError, match="other inputs"):
        ntk_tiled(model, x + 1, block=6, path=tmp_path)


def test_ntk_operator_products_diag_and_spectrum():
    model, x, _, _ = W.problem()
    M = tl.ntk(model, x).as_matrix()
    op = NTKOperator(model, x, batch_size=6)
    u = torch.randn(W.N, 4, dtype=torch.float64)
    assert rel(op.mv(u).reshape(-1), M @ u.reshape(-1)) < 1e-12
    assert rel(op.diag().reshape(-1), M.diagonal()) < 1e-12
    assert float(op.trace()) == pytest.approx(float(M.trace()), rel=1e-12)
    vals, vecs = op.eigh(3)
    assert rel(vals, torch.linalg.eigvalsh(M).flip(0)[:3]) < 1e-8
    assert rel(torch.as_tensor(op.to_scipy() @ u.reshape(-1).numpy()), M @ u.reshape(-1)) < 1e-12
    with pytest.raises(InvalidInputError):
        op.mv(torch.zeros(3, 4))


@pytest.mark.parametrize("kwargs, match", [({"block": 0}, "block"), ({"block": True}, "block"),
                                           ({"gather": "rank1"}, "gather")])
def test_ntk_tiled_bad_arguments_are_named(kwargs, match):
    model, x, _, _ = W.problem()
    with pytest.raises(InvalidInputError, match=match):
        ntk_tiled(model, x, **kwargs)
