"""Filling representations from the engine: one pass over the data each.

Every builder computes ``(1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ`` in its own storage,
where ``N`` is the number of examples actually seen. With ``centering=True`` the
tangent features are centered, ``φ_c(x) − m_c`` with ``m_c = (1/N) Σ_n φ_c(x_n)``,
which subtracts ``Σ_c m_c m_cᵀ``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..distributed import Reducer
from ..engine import Capture, Engine, ops
from ..errors import UnsupportedOperationError
from ..layers.base import CHUNK_ELEMENTS
from ..memory import tensor_nbytes
from ..vectors import PVector
from . import registry
from .dense import PMatBlockDiag, PMatDense, PMatDiag
from .lowrank import PMatLowRank


class CaptureStash:
    """The captures of one pass, kept for a second pass over the same data (EKFAC's ``s*``
    after its factors) while they fit ``limit`` bytes; past it they are dropped and the
    second pass recomputes them (same batches, same random streams: same values)."""

    def __init__(self, limit: int):
        self.limit, self.nbytes, self.caps = limit, 0, []
        self.ok = limit > 0

    def add(self, cap: Capture) -> None:
        if not self.ok:
            return
        self.nbytes += tensor_nbytes(cap, skip=("module", "rule", "layer"))
        if self.nbytes > self.limit:
            self.ok, self.caps = False, []
        else:
            self.caps.append(cap)


def one_pass(engine: Engine, data: Any, desc: str, consume: Callable[[Capture], None],
             centering: bool = False,
             reduce: Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]] | None = None,
             local: bool = False, stash: CaptureStash | None = None,
             replay: CaptureStash | None = None,
             output_blocks: bool = False) -> tuple[int, torch.Tensor | None]:
    """Run ``consume`` on every capture; return ``N`` and, if centering, the mean features ``(C, P)``.

    ``reduce``: the accumulators ``consume`` adds to (or a function returning them after
    the pass, in the same order on every rank). With a distributed engine they are
    summed over the ranks (in place) after the pass, as are ``N`` and the feature sums;
    a builder that does not name its accumulators refuses to run distributed.
    ``local=True``: no reduction (every rank passes the same full data, as for kernels).
    ``stash``: keep the captures for a later pass; ``replay``: use the captures a previous
    pass over the same data kept (if it kept them all) instead of recomputing them.
    ``output_blocks=True``: ``consume`` sums over output coordinates, so it may receive a
    batch in several captures, one per block of outputs (:meth:`Engine.capture_blocks`),
    which bounds the memory of ``g`` when ``C·N·Σ|layer outputs|`` is large; per-batch
    quantities that do not depend on the outputs belong to the capture with ``cap.first``.
    """
    red = engine.reducer
    if local:
        red = Reducer()
    if red.active and reduce is None:
        raise UnsupportedOperationError(
            desc, "distributed=...", "one process, or representation="
            + registry.quoted(registry.alternatives(distributed=True, fmt="name")),
            "this computation does not support distributed accumulation yet")
    n = 0
    total = None
    if replay is not None and replay.ok:
        caps = replay.caps
    else:
        caps = engine.captures(data, desc, block=0 if output_blocks else None)
    for cap in caps:
        if stash is not None:
            stash.add(cap)
        consume(cap)
        if cap.first:
            n += cap.n
        if centering:
            s = ops.grad_sum(cap, engine.space)
            if total is None:
                total = s.new_zeros(cap.total_outputs, s.shape[1])
            total[cap.out_slice] += s
        del cap  # an output block's g is freed before the next block's backward
    if red.active:
        n = red.total(n, device=engine.device)  # refuses, on every rank, when a shard is empty
        accs = reduce() if callable(reduce) else reduce
        red.sum_(*(accs or ()), total)
    return n, (total / n if total is not None else None)


def c_chunks(n_outputs: int, n: int, p: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, n * p))
    return [slice(i, min(n_outputs, i + step)) for i in range(0, n_outputs, step)]


def build_dense(engine: Engine, data: Any, centering: bool = False) -> PMatDense:
    space = engine.space
    p = space.numel
    engine.budget.check(
        f"a dense {p}×{p} matrix", p * p, engine.dtype,
        "Use representation='diag', 'blockdiag', 'lowrank' or 'implicit', or select fewer "
        "parameters with `params=`.",
    )
    acc = torch.zeros(p, p, dtype=engine.dtype, device=engine.device)

    def consume(cap: Capture) -> None:
        for c in c_chunks(cap.n_outputs, cap.n, p):
            phi = ops.per_example(cap, space, c).reshape(-1, p)
            acc.addmm_(phi.T, phi)

    n, mean = one_pass(engine, data, "dense matrix", consume, centering, reduce=[acc], output_blocks=True)
    acc /= n
    if mean is not None:
        acc -= mean.T @ mean
    return PMatDense(space, acc, engine.budget)


def build_diag(engine: Engine, data: Any, centering: bool = False) -> PMatDiag:
    acc = torch.zeros(engine.space.numel, dtype=engine.dtype, device=engine.device)

    def consume(cap: Capture) -> None:
        acc.add_(ops.diag(cap, engine.space))

    n, mean = one_pass(engine, data, "diagonal", consume, centering, reduce=[acc], output_blocks=True)
    acc /= n
    if mean is not None:
        acc -= mean.pow(2).sum(0)
    return PMatDiag(engine.space, acc, engine.budget)


def build_blockdiag(engine: Engine, data: Any, centering: bool = False) -> PMatBlockDiag:
    space = engine.space
    total = sum(lay.numel**2 for lay in space.layers)
    biggest = max(space.layers, key=lambda lay: lay.numel)
    engine.budget.check(
        f"layer blocks ({total} entries; largest {biggest.module!r} with {biggest.numel}² )",
        total, engine.dtype,
        "Use representation='diag', 'lowrank' or 'implicit', or select fewer parameters.",
    )
    blocks = {lay.module: torch.zeros(lay.numel, lay.numel, dtype=engine.dtype, device=engine.device)
              for lay in space.layers}

    def consume(cap: Capture) -> None:
        for lay in space.layers:
            for c in c_chunks(cap.n_outputs, cap.n, lay.numel):
                phi = ops.layer_per_example(cap, lay, c).reshape(-1, lay.numel)
                blocks[lay.module].addmm_(phi.T, phi)

    n, mean = one_pass(engine, data, "layer blocks", consume, centering, reduce=list(blocks.values()),
                       output_blocks=True)
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
        engine.budget.check(
            f"a {counts[0]}×{p} Jacobian (so far)", counts[0] * p, engine.dtype,
            "Use representation='implicit' (matrix-free) or 'diag', or fewer examples.",
        )
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
    """``m_c = (1/N) Σ_n φ_c(x_n)`` for each output coordinate ``c``."""
    _, mean = one_pass(engine, data, "mean features", lambda cap: None, centering=True, reduce=[])
    assert mean is not None
    return [PVector.from_flat(engine.space, row) for row in mean]
