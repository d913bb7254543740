"""Filling representations from the engine: one pass over the data each.

Every builder computes ``(1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ`` in its own storage,
where ``N`` is the number of examples actually seen. With ``centering=True`` the
tangent features are centered, ``φ_c(x) − m_c`` with ``m_c = (1/N) Σ_n φ_c(x_n)``,
which subtracts ``Σ_c m_c m_cᵀ``. Each builder supplies its per-capture accumulation to
the pass driver :func:`tangentlab.engine.passes.one_pass`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import Capture, Engine, OutputBlocks, ops
from ..engine.passes import one_pass
from ..layers.base import CHUNK_ELEMENTS
from ..vectors import PVector
from . import registry
from .dense import PMatBlockDiag, PMatDense, PMatDiag
from .lowrank import PMatLowRank

__all__ = ["c_chunks", "build_dense", "build_diag", "build_blockdiag",
           "build_lowrank", "mean_features"]


def c_chunks(n_outputs: int, n: int, p: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, n * p))
    return [slice(i, min(n_outputs, i + step)) for i in range(0, n_outputs, step)]


def build_dense(engine: Engine, data: Any, centering: bool = False) -> PMatDense:
    space = engine.space
    p = space.numel
    if not engine.budget.fits(p * p, engine.dtype):
        engine.budget.check(f"a dense {p}×{p} matrix", p * p, engine.dtype,
                            registry.fitting_advice(space, engine.budget, engine.dtype, "dense"))
    acc = torch.zeros(p, p, dtype=engine.dtype, device=engine.device)

    def consume(cap: Capture) -> None:
        for c in c_chunks(cap.n_outputs, cap.n, p):
            phi = ops.per_example(cap, space, c).reshape(-1, p)
            acc.addmm_(phi.T, phi)

    n, mean = one_pass(engine, data, "dense matrix", consume, centering, reduce=[acc], merge=True,
                       output_blocks=OutputBlocks.auto())
    acc /= n
    if mean is not None:
        acc -= mean.T @ mean
    return PMatDense(space, acc, engine.budget)


def build_diag(engine: Engine, data: Any, centering: bool = False) -> PMatDiag:
    acc = torch.zeros(engine.space.numel, dtype=engine.dtype, device=engine.device)

    def consume(cap: Capture) -> None:
        acc.add_(ops.diag(cap, engine.space))

    n, mean = one_pass(engine, data, "diagonal", consume, centering, reduce=[acc], merge=True,
                       output_blocks=OutputBlocks.auto())
    acc /= n
    if mean is not None:
        acc -= mean.pow(2).sum(0)
    return PMatDiag(engine.space, acc, engine.budget)


def build_blockdiag(engine: Engine, data: Any, centering: bool = False) -> PMatBlockDiag:
    space = engine.space
    total = sum(lay.numel**2 for lay in space.layers)
    biggest = max(space.layers, key=lambda lay: lay.numel)
    if not engine.budget.fits(total, engine.dtype):
        engine.budget.check(f"layer blocks ({total} entries; largest {biggest.module!r} with {biggest.numel}²)",
                            total, engine.dtype,
                            registry.fitting_advice(space, engine.budget, engine.dtype, "blockdiag"))
    blocks = {lay.module: torch.zeros(lay.numel, lay.numel, dtype=engine.dtype, device=engine.device)
              for lay in space.layers}

    def consume(cap: Capture) -> None:
        for lay in space.layers:
            for c in c_chunks(cap.n_outputs, cap.n, lay.numel):
                phi = ops.layer_per_example(cap, lay, c).reshape(-1, lay.numel)
                blocks[lay.module].addmm_(phi.T, phi)

    n, mean = one_pass(engine, data, "layer blocks", consume, centering, reduce=list(blocks.values()), merge=True,
                       output_blocks=OutputBlocks.auto())
    for lay in space.layers:
        blocks[lay.module] /= n
        if mean is not None:
            m = mean[:, lay.slice]
            blocks[lay.module] -= m.T @ m
    return PMatBlockDiag(space, blocks, engine.budget)


def build_lowrank(engine: Engine, data: Any, centering: bool = False) -> PMatLowRank:
    space = engine.space
    p = space.numel
    rows: list[torch.Tensor] = []
    counts = [0]

    def consume(cap: Capture) -> None:
        counts[0] += cap.n * cap.n_outputs
        if not engine.budget.fits(counts[0] * p, engine.dtype):
            engine.budget.check(f"a {counts[0]}×{p} Jacobian (so far)", counts[0] * p, engine.dtype,
                                registry.fitting_advice(space, engine.budget, engine.dtype, "lowrank")
                                + " Or use fewer examples.")
        # rows ordered (example, output), as in FVector.flat()
        rows.append(ops.per_example(cap, space).transpose(0, 1).reshape(-1, p))

    n, mean = one_pass(engine, data, "Jacobian", consume, centering, reduce=[])
    u = engine.reducer.gather_rows(torch.cat(rows))  # every rank's rows, in rank order
    if mean is not None:
        c = mean.shape[0]
        u = (u.reshape(-1, c, p) - mean[None]).reshape(-1, p)
    u /= n**0.5
    return PMatLowRank(space, u, None, 0.0, engine.budget)


def mean_features(engine: Engine, data: Any) -> list[PVector]:
    """The mean tangent features ``m_c = (1/N) Σ_n φ_c(x_n)`` for each output coordinate ``c``.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Batches
        The ``N`` examples.

    Returns
    -------
    list of PVector
        ``C`` vectors, one per output coordinate.
    """
    _, mean = one_pass(engine, data, "mean features", lambda cap: None, centering=True, reduce=[])
    assert mean is not None
    return [PVector.from_flat(engine.space, row) for row in mean]
