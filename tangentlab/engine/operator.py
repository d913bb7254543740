"""The base of matrix-free operators: the loop over the data, once.

A matrix-free operator applies ``Jᵀ H J`` (the Fisher, :class:`~tangentlab.pmat.PMatImplicit`),
``J`` or ``Jᵀ`` (:mod:`tangentlab.maps`) or ``J Jᵀ`` (the NTK,
:class:`~tangentlab.ntk_large.NTKOperator`) without storing it: every product is a sum
over batches of a per-batch product. :class:`MatrixFreeOperator` owns what they share,
and each operator supplies only its per-batch products:

* the data (:class:`~tangentlab.data.Batches`) and the **shuffle guard**: an operator whose
  result depends on the order of the examples (rows of ``J v``, Monte-Carlo samples tied
  to batch positions) refuses a loader that shuffles, with one message;
* the **loop** over the batches (:meth:`MatrixFreeOperator._sum` for sums over batches,
  :meth:`MatrixFreeOperator._rows` for per-example rows), with each batch's row offset;
* the **reduction** across ranks (:mod:`tangentlab.distributed`), in one of two modes:
  ``split_batches=False``, each rank passes its own shard and the sums and example counts
  are all-reduced (parameter-space means such as the Fisher); ``split_batches=True``,
  every rank passes the same full data, takes every ``world_size``-th batch, and the
  results are all-reduced (function-space operators, whose rows index all examples);
* the **precision policy**: inputs are converted to the engine's accumulation dtype, the
  per-batch products run under the engine's :class:`~tangentlab.engine.precision.Precision`
  (:mod:`tangentlab.engine.functional`), and the results have the accumulation dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..data import Batch, Batches
from ..distributed import Reducer
from ..errors import InvalidInputError
from .engine import Engine

#: a per-batch product: ``(batch index, batch, offset of its first example) -> tensor``
BatchProduct = Callable[[int, Batch, int], torch.Tensor]


def refuse_shuffling(examples: Batches, what: str) -> None:
    """The one refusal of loaders that visit the examples in a random order."""
    if examples.shuffles:
        raise InvalidInputError(
            f"the data loader shuffles, so the examples would not line up between passes ({what} needs "
            "a fixed order); use shuffle=False"
        )


class MatrixFreeOperator:
    """Base of the matrix-free operators (see the module docstring).

    ``engine``: the engine (its options give the reduction and the precision); ``data``:
    the examples (anything :class:`~tangentlab.data.Batches` accepts).
    """

    #: every rank passes the full data and takes every ``world_size``-th batch
    split_batches: bool = False

    def __init__(self, engine: Engine, data: Any, batch_size: int | None = None):
        self.engine = engine
        self.space = engine.space
        self.examples = data if isinstance(data, Batches) and batch_size is None else Batches(data, batch_size)
        if self.needs_order():
            refuse_shuffling(self.examples, type(self).__name__)

    def needs_order(self) -> bool:
        """Whether results depend on the order of the examples (default: yes)."""
        return True

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the results (the engine's accumulation dtype)."""
        return self.engine.dtype

    @property
    def device(self) -> torch.device:
        """The device of the results (the model's)."""
        return self.engine.device

    @property
    def reducer(self) -> Reducer:
        """The reduction over ranks of the engine (inactive in one process)."""
        return self.engine.reducer

    def _input(self, t: torch.Tensor) -> torch.Tensor:
        """An input vector in the accumulation dtype."""
        return t.detach().to(self.dtype)

    def _batches(self, desc: str) -> Iterator[tuple[int, Batch, int]]:
        """``(index, batch, first row)`` of this rank's batches; sets ``self._seen``, the
        number of examples read (all ranks' with ``split_batches``)."""
        red = self.reducer
        split = self.split_batches and red.active
        start = 0
        for i, b in self.engine.batches(self.examples, desc):
            n = b[0].shape[0]
            if not split or i % red.world_size == red.rank:
                yield i, b, start
            start += n
        self._seen = start

    def _sum(self, product: BatchProduct, out: torch.Tensor, desc: str) -> int:
        """``out += Σ_batches product(batch)`` over every rank's batches; returns the number
        of examples ``N`` (over all ranks)."""
        for i, b, s in self._batches(desc):
            out += product(i, b, s)
        n = self._seen
        red = self.reducer
        if red.active:
            if not self.split_batches:
                n = red.total(n, device=self.device)  # refuses, on every rank, when a shard is empty
            red.sum_(out)
        return n

    def _rows(self, product: BatchProduct, desc: str) -> torch.Tensor:
        """The per-batch results ``(n_batch, ...)`` stacked in example order; with
        ``split_batches`` each rank computes its batches and the rows are all-reduced."""
        parts = [(s, product(i, b, s)) for i, b, s in self._batches(desc)]
        red = self.reducer
        if not (self.split_batches and red.active):
            return parts[0][1] if len(parts) == 1 else torch.cat([p for _, p in parts])
        width = max(red.counts(parts[0][1].shape[1] if parts else 0, self.device))
        out = torch.zeros(self._seen, width, dtype=self.dtype, device=self.device)
        for s, p in parts:
            out[s:s + p.shape[0]] = p
        red.sum_(out)
        return out
