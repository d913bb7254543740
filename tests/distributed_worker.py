"""Worker functions run in separate processes by tests/test_distributed.py (gloo, CPU).

Every rank builds the same model and data from fixed seeds, takes its shard and
writes what it computed to ``out_dir/rank<r>.pt``; the test compares every rank's
results with the single-process ones.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

import tangentlab as tl
from tangentlab.distributed import shard
from tangentlab.ntk_large import NTKOperator, ntk_tiled

N = 23
REPS = ("dense", "diag", "blockdiag", "quasidiag", "lowrank", "kfac", "ekfac", "mixed")


def problem():
    """Model (float64), inputs, labels and a parameter-space vector, identical on every rank."""
    g = torch.Generator().manual_seed(0)  # independent of the default dtype and the global seed
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=g)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=torch.float64)
    return model, x, y, v


def uneven_shard(rank: int, world: int) -> range:
    """Deliberately unequal contiguous shards (sizes 2, 3, ... then the rest)."""
    sizes = [2 + r for r in range(world - 1)]
    sizes.append(N - sum(sizes))
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


def compute(rank: int, world: int, uneven: bool, tile_dir: str | None) -> dict:
    model, x, y, v = problem()
    idx = uneven_shard(rank, world) if uneven else shard(N, rank, world)
    xs, ys = x[idx.start:idx.stop], y[idx.start:idx.stop]
    out: dict = {"shard": (idx.start, idx.stop)}
    for rep in REPS:
        out[rep] = tl.fim(model, (xs, ys), "exact", rep, batch_size=4, distributed=True).to_dense()
    out["dense_centered"] = tl.fim(model, xs, "raw", "dense", centering=True, batch_size=3,
                                   distributed=True).to_dense()
    ddp = nn.parallel.DistributedDataParallel(model)
    out["ddp_diag"] = tl.fim(ddp, (xs, ys), "empirical", "diag", batch_size=5, distributed=True).to_dense()
    imp = tl.fim(model, (xs, ys), "exact", "implicit", batch_size=4, distributed=True)
    pv = tl.PVector.from_flat(imp.space, v)
    out["implicit_mv"] = imp.mv(pv).flat()
    out["implicit_vTMv"] = imp.vTMv(pv)
    out["implicit_trace"] = imp.trace()
    out["implicit_diag"] = imp.diag().flat()
    out["implicit_eig"] = imp.eigh(2)[0]
    ek = tl.fim(model, (xs, ys), "exact", "ekfac", batch_size=4, distributed=True)
    ek.update_diag((xs[:5], ys[:5]))  # s* re-estimated on the first 5 examples of each shard
    out["ekfac_update"] = ek.to_dense()
    # kernels: every rank passes the full data, the ranks split the tiles / batches
    out["ntk"] = ntk_tiled(model, x, block=4, distributed=True).data
    out["ntk_cross"] = ntk_tiled(model, x, x[:9], block=5, distributed=True).data
    if tile_dir is not None:
        out["ntk_disk"] = ntk_tiled(model, x, block=4, path=tile_dir, distributed=True).data.clone()
    op = NTKOperator(model, x, batch_size=5, distributed=True)
    u = torch.linspace(-1, 1, N * 4, dtype=torch.float64).reshape(N, 4)
    out["ntk_mv"] = op.mv(u)
    out["ntk_diag"] = op.diag()
    # tl.ntk / tl.jacobian with distributed=: full data on every rank, the work split
    out["ntk_api"] = tl.ntk(model, x, batch_size=4, distributed=True).data
    out["ntk_api_cross"] = tl.ntk(model, x, x[:9], batch_size=5, distributed=True).data
    out["ntk_api_layers"] = tl.ntk(model, x, batch_size=4, per_layer=True, centering=True,
                                   distributed=True).layer("0").data
    out["jac_dense"] = tl.jacobian(model, x, batch_size=4, distributed=True).to_dense()
    J = tl.jacobian(model, x, batch_size=4, implicit=True, distributed=True)
    pv = tl.PVector.from_flat(J.space, v)
    out["jac_mv"] = J.mv(pv).tensor
    out["jac_T"] = J.T.mv(tl.FVector(u)).flat()
    return out


def main(rank: int, world: int, init_file: str, out_dir: str, uneven: bool, tile_dir: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        res = compute(rank, world, uneven, tile_dir)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


OPT_STEPS = 3


def optimizer_run(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, distributed: bool) -> torch.Tensor:
    """``OPT_STEPS`` steps of KFAC / EKFAC / EKFAC-ra (period 2) on (x, y); the final flat parameters."""
    from tangentlab.optim import EKFAC, KFAC

    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    make = {"kfac": lambda m: KFAC(m, lr=0.1, damping=1e-2, period=2, distributed=distributed),
            "ekfac": lambda m: EKFAC(m, lr=0.1, damping=1e-2, period=2, distributed=distributed),
            "ekfac-ra": lambda m: EKFAC(m, lr=0.1, damping=1e-2, period=2, running=True,
                                        distributed=distributed)}[kind]
    opt = make(net)
    for _ in range(OPT_STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    opt.remove_hooks()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def optimizer_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Data-parallel KFAC/EKFAC on equal shards of the first ``world * (N // world)`` examples."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        per = N // world
        out = {}
        for kind in ("kfac", "ekfac", "ekfac-ra"):
            model, x, y, _ = problem()
            out[kind] = optimizer_run(kind, model, x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per],
                                      True)
        torch.save(out, os.path.join(out_dir, f"opt{rank}.pt"))
    finally:
        dist.destroy_process_group()


def torchrun_main() -> None:
    """Entry point under ``torchrun`` (environment variables set by the launcher)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, x, y, _ = problem()
    idx = shard(N)
    F = tl.fim(model, (x[idx.start:idx.stop], y[idx.start:idx.stop]), "exact", "diag", distributed=True)
    torch.save({"diag": F.to_dense(), "world": world}, os.path.join(os.environ["TL_OUT"], f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    torchrun_main()
