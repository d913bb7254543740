"""The Gram tiler: the NTK ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` tile by tile.

A tile pairs the capture of one row batch with the capture of one column batch
(:func:`tangentlab.engine.ops.gram`); the captures come from two
:class:`~tangentlab.engine.passes.CaptureCache` sources (one for a kernel of a set with
itself, whose tiles are then only those with ``column ≤ row``: the caller mirrors the
others). The dense kernel (:func:`tangentlab.fmat.build_ntk`), the tiled and resumable
kernel (:func:`tangentlab.ntk_large.ntk_tiled`) and the Frobenius norm of a Fisher
(through ``‖F‖_F = ‖Φ Φᵀ‖_F / N``) all run on it. ``keep`` selects the tiles one rank
computes (:func:`deal_tiles`: round-robin over the ranks) or those a resumed run has
left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from ..distributed import Reducer
from ..space import ParamSpace
from . import ops
from .engine import Capture, Engine
from .passes import CaptureCache


class Tile(NamedTuple):
    """Tile ``(i, j)``: row batch ``i`` against column batch ``j``; ``rows``/``cols`` are its
    example ranges, ``block`` its ``(n_i, n_j, C, D)`` Gram block (or per-layer dict)."""

    i: int
    j: int
    rows: slice
    cols: slice
    block: Any


def deal_tiles(n_rows: int, n_cols: int, symmetric: bool, reducer: Reducer) -> list[tuple[int, int]]:
    """This rank's tiles: the tiles in row-major order (``j ≤ i`` when ``symmetric``) dealt
    round-robin to the ranks."""
    tiles = [(i, j) for i in range(n_rows) for j in range(n_cols) if not symmetric or j <= i]
    return [t for k, t in enumerate(tiles) if k % reducer.world_size == reducer.rank]


def center_terms(cap: Capture, mean: torch.Tensor, space: ParamSpace) -> torch.Tensor:
    """``A[n, c, d] = ⟨φ_c(x_n), m_d⟩`` for mean features ``m`` (D, P) on ``space``."""
    cols = [ops.dot(cap, space, space.unflatten(mean[d])) for d in range(mean.shape[0])]  # (C, N) each
    return torch.stack(cols, -1).transpose(0, 1)  # (N, C, D)


def gram_tiles(engine: Engine, rows: CaptureCache, cols: CaptureCache | None = None, *,
               per_layer: bool = False, mean: torch.Tensor | None = None, into: torch.Tensor | None = None,
               keep: Callable[[int, int], bool] | None = None) -> Iterator[Tile]:
    """The tiles of the Gram tensor of ``rows`` against ``cols`` (``None``: ``rows`` with
    itself, tiles with ``j ≤ i`` only), row by row.

    ``mean``: mean features ``(C, P)`` to center with; ``into``: a zero ``(N1, N2, C, D)``
    tensor the tiles are accumulated into in place (``per_layer=False`` only; the yielded
    block is then the view ``into[rows, cols]``); ``keep(i, j)``: compute only these tiles
    (the captures of batches no kept tile needs are not computed).
    """
    symmetric = cols is None
    src2 = rows if cols is None else cols
    space = engine.space
    layers = {lay.module: space.select([p.name for p in lay.params]) for lay in space.layers} if per_layer else {}
    starts1 = starts2 = None
    need_row = None
    if keep is not None:  # offsets of rows and columns whose captures may be skipped
        starts1 = np.cumsum([0] + rows.sizes()).tolist()
        starts2 = starts1 if symmetric else np.cumsum([0] + src2.sizes()).tolist()
        n_cols = len(starts2) - 1
        need_row = lambda i: any(keep(i, j) for j in range(i + 1 if symmetric else n_cols))  # noqa: E731
    row0 = 0
    for i, c1 in rows.captures(need_row):
        if starts1 is not None:
            row0 = starts1[i]
        r = slice(row0, row0 + c1.n)
        col0 = 0
        keep_row: Callable[[int], bool] | None = None if keep is None else (lambda j, i=i: keep(i, j))
        inner = src2.captures(keep_row, stop=i if symmetric else None)
        if symmetric and (keep is None or keep(i, i)):  # the diagonal tile, with the row capture itself
            inner = _chain(inner, i, c1)
        for j, c2 in inner:
            if starts2 is not None:
                col0 = starts2[j]
            q = slice(col0, col0 + c2.n)
            target = into[r, q] if into is not None and not per_layer else None
            blk = ops.gram(c1, c2, space, per_layer=per_layer, out=target)
            if mean is not None:
                blk = _center(blk, c1, c2, mean, space, layers, target is not None)
            yield Tile(i, j, r, q, blk)
            col0 += c2.n
        row0 += c1.n


def _chain(inner: Iterator[tuple[int, Capture]], i: int, cap: Capture) -> Iterator[tuple[int, Capture]]:
    yield from inner
    yield i, cap


def _center(blk: Any, c1: Capture, c2: Capture, mean: torch.Tensor, space: ParamSpace,
            layers: dict[str, ParamSpace], in_place: bool) -> Any:
    """``⟨φ − m, φ' − m⟩ = ⟨φ, φ'⟩ − ⟨φ, m⟩ − ⟨m, φ'⟩ + ⟨m, m⟩`` on every block."""
    def corr(sp: ParamSpace, m: torch.Tensor) -> torch.Tensor:
        a1 = center_terms(c1, m, sp)
        a2 = center_terms(c2, m, sp)
        return -a1[:, None, :, :] - a2.permute(0, 2, 1)[None] + (m @ m.T)[None, None]

    if layers:
        for name, sp in layers.items():
            blk[name] = blk[name] + corr(sp, mean[:, space.layer(name).slice])
        return blk
    if in_place:
        blk += corr(space, mean)
        return blk
    return blk + corr(space, mean)


def gram_sq_frobenius(engine: Engine, data: Any, mean: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """``‖Φ Φᵀ‖_F²`` tile by tile (without storing the kernel) and the number of examples.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Any
        The ``N`` examples (rows ``Φ`` of ``N·C`` tangent features).
    mean : torch.Tensor, optional
        Mean features to subtract first (centering).

    Returns
    -------
    total : torch.Tensor
        ``‖Φ Φᵀ‖_F²``, a 0-d tensor (not normalized).
    n : int
        The number ``N`` of examples.
    """
    total = torch.zeros((), dtype=engine.dtype, device=engine.device)
    n = 0
    for t in gram_tiles(engine, CaptureCache.of(engine, data, "NTK rows"), mean=mean):
        w = 1.0 if t.i == t.j else 2.0
        total += w * t.block.pow(2).sum()
        if t.i == t.j:
            n += t.rows.stop - t.rows.start
    return total, n
